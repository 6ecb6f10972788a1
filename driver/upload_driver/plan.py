"""The plan: which steps a request needs, each with every path explicit.

A step is a ``PlannedStep``: the tool and its module, its image, named inputs (folders or files, read
only), its output folder, and its arguments, where a path is a placeholder (``("in", key)``,
``("out",)``, ``("rw", key, prefix)``, ``("device",)``) that each runtime renders: host paths for a
local process, mount points for a container. Only the driver knows the artifact layout:
``WORK/artifacts/<step>``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from upload_common import __version__
from upload_common.errors import UsageError
from upload_common.safety import hub_name
from upload_common.sets import SETS

from .request import Request

PUBLISH_KINDS = ("hf", "local", "ollama")


def image(tool: str) -> str:
    return f"upload-driver/{tool}:{__version__}"


Placeholder = tuple[str, ...]  # ("in", key), ("out",), ("rw", key, prefix) or ("device",)
Arg = str | Placeholder


@dataclass(frozen=True)
class PlannedStep:
    """One step of the plan. ``inputs`` are read only; ``rw`` are folders the step writes beside its
    output (a local publish target); ``network``/``token``/``hf_cache``: what the step may reach."""

    name: str
    tool: str
    module: str
    out: Path
    args: tuple[Arg, ...] = ()
    inputs: Mapping[str, Path] = field(default_factory=dict)
    rw: Mapping[str, Path] = field(default_factory=dict)
    gpu: bool = False
    network: bool = False
    token: bool = False
    hf_cache: bool = False
    variant: str = ""  # an image variant of the tool's ("unsloth-cuda": merge-tool with Unsloth)

    def __post_init__(self):  # read-only, and every path a Path
        object.__setattr__(self, "out", Path(self.out))
        object.__setattr__(self, "args", tuple(self.args))
        for key in ("inputs", "rw"):
            object.__setattr__(self, key, MappingProxyType({k: Path(p) for k, p in getattr(self, key).items()}))

    @property
    def image(self) -> str:
        return image(self.tool) + (f"-{self.variant}" if self.variant else "")


def render(step: PlannedStep, *, inp, out, rw, device: str) -> list[str]:
    """The step's arguments with each placeholder replaced: ``inp(key)``, ``out()`` and ``rw(key)``
    say where those paths are for whoever runs (or identifies) the step."""
    rendered = []
    for a in step.args:
        if isinstance(a, str):
            rendered.append(a)
        elif a[0] == "in":
            rendered.append(inp(a[1]))
        elif a[0] == "out":
            rendered.append(out())
        elif a[0] == "rw":
            rendered.append(f"{a[2]}{rw(a[1])}")
        else:  # ("device",)
            rendered.append(device)
    return rendered


def _opts(section: dict, names: dict) -> list:
    """--flag value pairs for the options set in a config section ({key: flag})."""
    out = []
    for key, flag in names.items():
        value = section.get(key)
        if value in (None, "", [], False):
            continue
        for v in value if isinstance(value, list) else [value]:
            out += [flag] if v is True else [flag, str(v)]
    return out


def naming(req: Request) -> tuple[str, str | None]:
    """(model name, Hub namespace): hf:ORG/NAME decides both; else --name or the run folder's name."""
    hub = [t.split(":", 1)[1] for t in req.push if t.startswith("hf:")]
    if len(set(hub)) > 1:
        raise UsageError(f"several hf: targets ({', '.join(hub)}): publish to one ORG/NAME per run")
    if hub:
        org, sep, name = hub[0].partition("/")
        if not sep or not org or not name or "/" in name:
            raise UsageError(f"hf:{hub[0]}: use hf:ORG/NAME (the repos become ORG/NAME, ORG/NAME-lora, ORG/NAME-GGUF)")
        return name, org
    return hub_name(req.name or req.trainer_output.name), None


def _check(req: Request) -> tuple[list[str], list[str]]:
    """(formats, publish targets) as asked, each known."""
    formats = list(dict.fromkeys(req.formats))
    unknown = [f for f in formats if f not in SETS]
    if unknown or not formats:
        raise UsageError(f"unknown format(s) {', '.join(unknown) or '(none)'}: choose among {', '.join(SETS)}")
    for t in req.push:
        if t.split(":", 1)[0] not in PUBLISH_KINDS:
            raise UsageError(f"--push {t}: use hf:ORG/NAME, local:DIR or ollama[:NAME]")
    return formats, list(req.push)


def _merge_args(spec, req: Request, found: dict) -> tuple[dict, list, dict]:
    """merge-tool's inputs and arguments for the set ``spec`` (from the adapter, or from the merged
    set it consumes), and whether it reaches the network for the base."""
    merge, trainer = req.merge, req.trainer_output
    access: dict = {}
    if spec.consumes:  # a quantized format: validated on the run's text, against the run's shared reference
        inputs, args = {}, ["--model", ("in", "model")]
        if req.gguf.get("eval_text"):
            inputs["eval_text"] = Path(req.gguf["eval_text"])
            args += ["--eval-text", ("in", "eval_text")]
        args += REFERENCE_ARGS
        access["rw"] = reference_store(req)
    else:
        inputs, args = {"adapter": trainer}, ["--adapter", ("in", "adapter")]
    args += ["--out", ("out",), "--method", spec.name, "--device", ("device",)]
    base = merge.get("base") or found.get("base_model")
    base_local = bool(base) and Path(str(base)).is_dir()
    remote = spec.needs_base and not base_local  # resolved on the Hub (from the adapter's config when not named)
    if spec.needs_base and base_local:
        inputs["base"] = Path(base)
        args += ["--base", ("in", "base")]
    elif remote and base:
        args += ["--base", str(base)]
    if spec.calibration and merge.get("calibration"):
        inputs["calibration"] = Path(merge["calibration"])
        args += ["--calibration", ("in", "calibration")]
    if not spec.consumes:
        args += _opts(
            merge,
            {
                "checkpoint": "--checkpoint",
                "dtype": "--dtype",
                "max_shard_size": "--max-shard-size",
                "allow_pickle": "--allow-pickle",
            },
        )
    engine = merge_engine(req)
    if spec.name == "merged_16bit" and engine != "streaming":  # in merge-tool's Unsloth image
        args += ["--engine", engine]
        access["variant"] = f"{engine}-cuda"
    return inputs, args, {**access, "network": remote, "token": remote, "hf_cache": remote}


ENGINES = ("streaming", "unsloth")


def merge_engine(req: Request) -> str:
    """``[merge] engine``: streaming (merge-tool's own merge, the default) or unsloth."""
    engine = str(req.merge.get("engine") or "streaming")
    if engine not in ENGINES:
        raise UsageError(f"merge.engine {engine!r}: choose {' or '.join(ENGINES)}")
    return engine


def _gguf_args(spec, req: Request, found: dict) -> tuple[dict, list, dict]:
    """gguf-tool's inputs and arguments: the merged set it consumes, the quantization types."""
    gguf = req.gguf
    inputs = {}
    args = [
        "--model",
        ("in", "model"),
        "--out",
        ("out",),
        *[a for q in req.quants for a in ("--quant", q)],
        "--name",
        naming(req)[0],
    ]
    for key in ("imatrix", "calibration", "eval_text"):
        if gguf.get(key):
            inputs[key] = Path(gguf[key])
            args += [f"--{key.replace('_', '-')}", ("in", key)]
    args += _opts(gguf, {"split_max_size": "--split-max-size", "validate_tokens": "--validate-tokens"})
    bars = gguf.get("min_top1") or {}  # [gguf.min_top1] Q4_K_M = 0.9
    if not isinstance(bars, dict) or not all(isinstance(v, int | float) for v in bars.values()):
        raise UsageError("gguf.min_top1: give a table of type = bar, e.g. [gguf.min_top1] Q4_K_M = 0.9")
    args += [a for q, bar in bars.items() for a in ("--min-top1", f"{q}={bar}")]
    args += REFERENCE_ARGS  # kept for a rerun with other types too
    return inputs, args, {"rw": reference_store(req)}


# the validations' reference log-probabilities, content-addressed: one store per run, which gguf-tool and the
# quantized formats share (the 16-bit merge's reference is computed once)
REFERENCE_ARGS = ("--reference-cache", ("rw", "reference_cache", ""))


def reference_store(req: Request) -> dict[str, Path]:
    return {"reference_cache": req.work / "cache" / "reference"}


MAKERS = {"merge-tool": ("merge_tool.cli", _merge_args), "gguf-tool": ("gguf_tool.cli", _gguf_args)}


def deferred_base(formats: list[str], req: Request, found: dict) -> Path | None:
    """The local base folder when gguf-tool alone reads the merged 16-bit model, which is not published:
    merge-tool then writes only the merge's recipe (--defer-weights) and gguf-tool computes the weights
    from the base and the adapter while converting. None: the merge is written."""
    readers = [f for f in formats if "merged_16bit" in SETS[f].consumes]
    base = req.merge.get("base") or found.get("base_model")
    if "merged_16bit" in formats or readers != ["gguf"] or not base or not Path(str(base)).is_dir():
        return None
    if merge_engine(req) != "streaming":  # another engine writes the merge itself: no recipe to defer
        return None
    return Path(base)


def _deferred(name: str, inputs: dict, args: list, req: Request, base: Path | None) -> tuple[dict, list]:
    """A step's inputs and arguments for a deferred merge (``deferred_base``)."""
    if base is None or name not in ("merged_16bit", "gguf"):
        return inputs, args
    if name == "merged_16bit":
        return inputs, [*args, "--defer-weights"]
    return {**inputs, "adapter": req.trainer_output, "base": base}, [
        *args,
        *("--adapter", ("in", "adapter"), "--base", ("in", "base")),
    ]


def _set_steps(formats: list[str], req: Request, found: dict) -> list[PlannedStep]:
    """A step for each set asked for or consumed by one asked for, in registry order (a consumed set
    comes first); a set made from another reads that one's folder as ``model``."""
    art = req.work / "artifacts"
    needed = {*formats, *(c for f in formats for c in SETS[f].consumes)}  # a consumed set is made, not published
    defer = deferred_base(formats, req, found)
    steps = []
    for name, spec in SETS.items():
        if name not in needed:
            continue
        module, make = MAKERS[spec.tool]
        inputs, args, access = make(spec, req, found)
        inputs, args = _deferred(name, inputs, args, req, defer)
        if spec.consumes:
            inputs = {"model": art / spec.consumes[0], **inputs}
        steps.append(PlannedStep(name, spec.tool, module, art / name, args, inputs, gpu=spec.gpu, **access))
    return steps


def _docs_step(published: list[str], req: Request) -> PlannedStep:
    art, docs = req.work / "artifacts", req.docs
    name, namespace = naming(req)
    inputs = {s: art / s for s in published}
    args = [*[a for s in published for a in ("--artifact", ("in", s))], "--out", ("out",), "--name", name]
    if namespace:
        args += ["--namespace", namespace]
    repos = docs.get("repos") or {}
    args += [a for s, r in repos.items() for a in ("--repo", f"{s}={r}")]
    args += _opts(
        docs,
        {
            "license": "--license",
            "license_link": "--license-link",
            "base_model": "--base-model",
            "datasets": "--dataset",
            "language": "--language",
            "system": "--system",
            "ollama_quant": "--ollama-quant",
        },
    )
    return PlannedStep("docs", "docs-tool", "docs_tool.cli", art / "docs", args, inputs)


def _publish_steps(targets: list[str], published: list[str], req: Request) -> list[PlannedStep]:
    art = req.work / "artifacts"
    steps = []
    for i, target in enumerate(targets):
        kind, _, arg = target.partition(":")
        inputs = {"docs": art / "docs", **{s: art / s for s in published}}
        args = ["--docs", ("in", "docs"), *[a for s in published for a in ("--artifact", ("in", s))], "--out", ("out",)]
        rw = {}
        if kind == "local":
            rw = {"site": Path(arg)}
            args += ["--to", ("rw", "site", "local:")]
        else:  # hf: the repos are in docs-tool's upload manifest; ollama[:NAME] as given
            args += ["--to", "hf" if kind == "hf" else target]
        args += _opts(req.publish, {"private": "--private", "ollama_push": "--ollama-push"})
        name = f"publish-{kind}" if sum(t.startswith(kind) for t in targets) == 1 else f"publish-{kind}-{i}"
        steps.append(
            PlannedStep(
                name,
                "hf-push-tool",
                "hf_push_tool.cli",
                art / name,
                args,
                inputs,
                rw,
                network=kind != "local",
                token=kind == "hf",
            )
        )
    return steps


def plan(req: Request, found: dict) -> tuple[PlannedStep, ...]:
    """The steps for ``req`` on the trainer output described by ``found`` (trainer_output.inspect):
    one per set (registry order), docs-tool over the sets asked for, one publish step per target."""
    formats, targets = _check(req)
    naming(req)  # an ill-formed hf: target is refused before anything else
    merge_engine(req)
    steps = _set_steps(formats, req, found)
    published = [s.name for s in steps if s.name in formats]
    return (*steps, _docs_step(published, req), *_publish_steps(targets, published, req))
