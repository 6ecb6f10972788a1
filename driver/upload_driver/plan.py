"""The plan: which steps a request needs, each with every path explicit.

A step is a plain dict: the tool and its module, its image, named inputs (folders or files, read
only), its output folder, and its arguments, where a path is a placeholder (``("in", key)``,
``("out",)``, ``("rw", key, prefix)``) that each runtime renders: host paths for a local process,
mount points for a container. Only the driver knows the artifact layout: ``WORK/artifacts/<step>``."""

from __future__ import annotations

from pathlib import Path

from upload_common import __version__
from upload_common.errors import UsageError
from upload_common.safety import hub_name
from upload_common.sets import SETS, sets_of

PUBLISH_KINDS = ("hf", "local", "ollama")


def image(tool: str) -> str:
    return f"upload-driver/{tool}:{__version__}"


def _step(name, tool, module, out, args, *, inputs=None, gpu=False, network=False, token=False, rw=None,
          hf_cache=False) -> dict:
    return {"name": name, "tool": tool, "module": module, "image": image(tool), "inputs": inputs or {}, "out": out,
            "args": args, "gpu": gpu, "network": network, "token": token, "rw": rw or {}, "hf_cache": hf_cache}


def render(step: dict, *, inp, out, rw, device: str) -> list[str]:
    """The step's arguments with each placeholder replaced: ``inp(key)``, ``out()`` and ``rw(key)``
    say where those paths are for whoever runs (or identifies) the step."""
    rendered = []
    for a in step["args"]:
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


def naming(req: dict) -> tuple[str, str | None]:
    """(model name, Hub namespace): hf:ORG/NAME decides both; else --name or the run folder's name."""
    hub = [t.split(":", 1)[1] for t in req["push"] if t.startswith("hf:")]
    if len(set(hub)) > 1:
        raise UsageError(f"several hf: targets ({', '.join(hub)}): publish to one ORG/NAME per run")
    if hub:
        org, sep, name = hub[0].partition("/")
        if not sep or not org or not name or "/" in name:
            raise UsageError(f"hf:{hub[0]}: use hf:ORG/NAME (the repos become ORG/NAME, ORG/NAME-lora, ORG/NAME-GGUF)")
        return name, org
    return hub_name(req.get("name") or Path(req["trainer_output"]).name), None


def plan(req: dict, found: dict) -> list[dict]:
    """The steps for ``req`` on the trainer output described by ``found`` (trainer_output.inspect)."""
    formats = list(dict.fromkeys(req["formats"]))
    unknown = [f for f in formats if f not in SETS]
    if unknown or not formats:
        raise UsageError(f"unknown format(s) {', '.join(unknown) or '(none)'}: choose among {', '.join(SETS)}")
    targets = []
    for t in req["push"]:
        kind = t.split(":", 1)[0]
        if kind not in PUBLISH_KINDS:
            raise UsageError(f"--push {t}: use hf:ORG/NAME, local:DIR or ollama[:NAME]")
        targets.append(t)
    name, namespace = naming(req)
    art = Path(req["work"]) / "artifacts"
    merge, gguf, docs, pub = req["merge"], req["gguf"], req["docs"], req["publish"]
    trainer = Path(req["trainer_output"])
    base = merge.get("base") or found.get("base_model")
    base_local = bool(base) and Path(str(base)).is_dir()
    steps, sets = [], {}
    needed = {*formats, *(c for f in formats for c in SETS[f].consumes)}  # a consumed set is made, not published
    for fmt, spec in sets_of("merge-tool").items():
        if fmt not in needed:
            continue
        needs_base = spec.needs_base
        inputs = {"adapter": trainer}
        args = ["--adapter", ("in", "adapter"), "--out", ("out",), "--method", fmt, "--device", ("device",)]
        if needs_base and base_local:
            inputs["base"] = Path(base)
            args += ["--base", ("in", "base")]
        elif needs_base and base:
            args += ["--base", str(base)]
        if spec.calibration and merge.get("calibration"):
            inputs["calibration"] = Path(merge["calibration"])
            args += ["--calibration", ("in", "calibration")]
        args += _opts(merge, {"checkpoint": "--checkpoint", "dtype": "--dtype", "max_shard_size": "--max-shard-size",
                              "allow_pickle": "--allow-pickle"})
        steps.append(_step(fmt, "merge-tool", "merge_tool.cli", art / fmt, args, inputs=inputs, gpu=spec.gpu,
                           network=needs_base and not base_local, token=needs_base and not base_local,
                           hf_cache=needs_base and not base_local))
        sets[fmt] = fmt
    if "gguf" in formats:
        inputs = {"model": art / "merged_16bit"}
        args = ["--model", ("in", "model"), "--out", ("out",), *[a for q in req["quants"] for a in ("--quant", q)],
                "--name", name]
        for key in ("imatrix", "calibration"):
            if gguf.get(key):
                inputs[key] = Path(gguf[key])
                args += [f"--{key}", ("in", key)]
        args += _opts(gguf, {"split_max_size": "--split-max-size", "validate_tokens": "--validate-tokens"})
        steps.append(_step("gguf", "gguf-tool", "gguf_tool.cli", art / "gguf", args, inputs=inputs,
                           gpu=SETS["gguf"].gpu))
        sets["gguf"] = "gguf"
    published = [s for s in sets if s in formats]
    inputs = {s: art / s for s in published}
    args = [*[a for s in published for a in ("--artifact", ("in", s))], "--out", ("out",), "--name", name]
    if namespace:
        args += ["--namespace", namespace]
    repos = docs.get("repos") or {}
    args += [a for s, r in repos.items() for a in ("--repo", f"{s}={r}")]
    args += _opts(docs, {"license": "--license", "license_link": "--license-link", "base_model": "--base-model",
                         "datasets": "--dataset", "language": "--language", "system": "--system",
                         "ollama_quant": "--ollama-quant"})
    steps.append(_step("docs", "docs-tool", "docs_tool.cli", art / "docs", args, inputs=inputs))
    for i, target in enumerate(targets):
        kind, _, arg = target.partition(":")
        pinputs = {"docs": art / "docs", **inputs}
        pargs = ["--docs", ("in", "docs"), *[a for s in published for a in ("--artifact", ("in", s))],
                 "--out", ("out",)]
        rw = {}
        if kind == "local":
            rw = {"site": Path(arg)}
            pargs += ["--to", ("rw", "site", "local:")]
        else:  # hf: the repos are in docs-tool's upload manifest; ollama[:NAME] as given
            pargs += ["--to", "hf" if kind == "hf" else target]
        pargs += _opts(pub, {"private": "--private", "ollama_push": "--ollama-push"})
        step_name = f"publish-{kind}" if sum(t.startswith(kind) for t in targets) == 1 else f"publish-{kind}-{i}"
        steps.append(_step(step_name, "hf-push-tool", "hf_push_tool.cli", art / step_name, pargs, inputs=pinputs,
                           network=kind != "local", token=kind == "hf", rw=rw))
    return steps
