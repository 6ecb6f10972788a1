"""What would make transformers run Python from a model folder, found without running any of it.

transformers imports code from a model only through a *code reference*: ``auto_map`` (``"module.Class"``
for a .py file beside the config, ``"org/repo--module.Class"`` for one it downloads from the Hub) and
``custom_pipelines``, in config.json, tokenizer_config.json, the processor configs and
generation_config.json. Everything else it loads is a class it ships itself. So:

- A folder a tool *writes* (merge-tool's outputs) never carries a code reference nor a .py file.
  Where the model stays usable without the code — the file also names a class transformers ships (a
  ``tokenizer_class``, a ``model_type`` and ``architectures``, a processor class) — the reference is
  removed and a warning says so (``sanitize``). Where only the code defines what the file names (a
  ``tokenizer_class`` transformers does not ship, an unknown ``model_type``), the input is refused in one
  line before any work.
- A folder a tool *reads as it is* (gguf-tool's model) is refused when it carries a code reference
  (``refuse_code``): nothing can be removed from someone else's folder.
- A process that loads models with transformers calls ``forbid_in_process()`` first: whatever a
  caller (llama.cpp's converter passes ``trust_remote_code=True``) asks, no remote code is loaded.

A class name transformers does not ship *without* any code reference cannot run code (transformers
falls back to its generic tokenizer or fails); it is not this module's concern.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .errors import InvalidInput

CODE_KEYS = ("auto_map", "custom_pipelines")
CONFIG_FILES = {  # file name -> what it describes
    "config.json": "model",
    "tokenizer_config.json": "tokenizer",
    "processor_config.json": "processor",
    "preprocessor_config.json": "processor",
    "video_preprocessor_config.json": "processor",
    "generation_config.json": "generation",
}
_PROCESSOR_KEYS = ("processor_class", "image_processor_type", "feature_extractor_type", "video_processor_type")
_TODO = {
    "tokenizer": "save the tokenizer with a class transformers ships (e.g. PreTrainedTokenizerFast) and rerun",
    "model": "use a base model whose architecture transformers ships, or a folder converted to one",
    "processor": "save the processor with a class transformers ships and rerun",
    "generation": "remove the code reference from the file and rerun",
}


@dataclass(frozen=True)
class Finding:
    """One config file that refers to code. ``needs_code`` names what only that code defines (empty:
    the model stays usable once the reference is removed)."""

    file: str
    what: str
    refs: tuple[str, ...]
    needs_code: tuple[str, ...] = ()

    @property
    def keys(self) -> str:
        return "/".join(k for k in CODE_KEYS if any(r.startswith(k + " ") for r in self.refs))

    def describe(self) -> str:
        return ", ".join(self.refs[:3]) + (f" and {len(self.refs) - 3} more" if len(self.refs) > 3 else "")


def code_references(data: dict) -> list[str]:
    """``"auto_map AutoTokenizer -> tok.Evil"``, one per class a config's code keys point at."""
    refs = []
    auto_map = data.get("auto_map")
    if isinstance(auto_map, (list, tuple)):  # the legacy tokenizer form: [slow, fast]
        auto_map = {"AutoTokenizer": auto_map}
    if isinstance(auto_map, dict):
        for key, value in auto_map.items():
            for ref in value if isinstance(value, (list, tuple)) else [value]:
                if ref:
                    refs.append(f"auto_map {key} -> {ref}")
    elif auto_map is not None:
        refs.append(f"auto_map {auto_map!r}")
    pipelines = data.get("custom_pipelines")
    if isinstance(pipelines, dict):
        for task, spec in pipelines.items():
            impl = spec.get("impl") if isinstance(spec, dict) else spec
            refs.append(f"custom_pipelines {task} -> {impl}")
    elif pipelines is not None:
        refs.append(f"custom_pipelines {pipelines!r}")
    return refs


def _transformers_names() -> set[str]:
    import transformers

    return set(dir(transformers))  # the lazy module lists every public name without importing it


def _known_tokenizer(name) -> bool:
    """Whether transformers ships a tokenizer class of this name (its own lookup, which imports only
    transformers' modules)."""
    if not isinstance(name, str) or not name:
        return False
    from transformers import PreTrainedTokenizerBase
    from transformers.models.auto.tokenization_auto import tokenizer_class_from_name

    for candidate in dict.fromkeys((name, name.removesuffix("Fast"), name + "Fast")):
        cls = tokenizer_class_from_name(candidate)
        if isinstance(cls, type) and issubclass(cls, PreTrainedTokenizerBase):
            return True
    return False


def _needs_code(what: str, data: dict) -> tuple[str, ...]:
    """What the file names that transformers does not ship (so only the referenced code defines it)."""
    if what == "tokenizer":
        cls = data.get("tokenizer_class")
        if not _known_tokenizer(cls):
            return (f"tokenizer_class {cls!r}" if cls else "no tokenizer_class",)
    elif what == "model":
        from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

        missing = []
        if data.get("model_type") not in CONFIG_MAPPING_NAMES:
            missing.append(f"model_type {data.get('model_type')!r}")
        names = _transformers_names()
        archs = data.get("architectures") or []
        missing += [f"architecture {a!r}" for a in archs if not (isinstance(a, str) and a in names)]
        if (
            "AutoTokenizer" in (data.get("auto_map") or {})
            and data.get("tokenizer_class") is not None
            and not _known_tokenizer(data.get("tokenizer_class"))
        ):
            missing.append(f"tokenizer_class {data.get('tokenizer_class')!r}")
        return tuple(missing)
    elif what == "processor":
        names = _transformers_names()
        given = [data[k] for k in _PROCESSOR_KEYS if isinstance(data.get(k), str)]
        unknown = [f"processor class {n!r}" for n in given if n not in names]
        return tuple(unknown) if given else ("no processor class",)
    return ()


def inspect_config(name: str, data: dict) -> Finding | None:
    """The finding for one parsed config file (``name``: its file name), None when it refers to no code."""
    what = CONFIG_FILES.get(name, "model")
    refs = code_references(data)
    if not refs:
        return None
    return Finding(name, what, tuple(refs), _needs_code(what, data))


def read_config(path: Path) -> dict | None:
    """A config file's JSON object; None when it is not one (for the tool that reads it to report)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _inspect_if_known(name: str, data: dict) -> Finding | None:
    """``inspect_config``; without transformers (the driver's extra alone) the finding names no
    ``needs_code``: what the driver says of it is a note, and merge-tool, which decides, looks itself."""
    try:
        return inspect_config(name, data)
    except ImportError:
        return Finding(name, CONFIG_FILES.get(name, "model"), tuple(code_references(data)))


def scan(folder) -> list[Finding]:
    """Every config file in ``folder`` that refers to code, with what only that code defines (where
    transformers is installed: see ``_inspect_if_known``)."""
    findings = []
    for name in CONFIG_FILES:
        data = read_config(Path(folder) / name) if (Path(folder) / name).is_file() else None
        found = _inspect_if_known(name, data) if data else None
        if found:
            findings.append(found)
    return findings


def python_files(folder) -> list[str]:
    """The .py files at the top of a folder: code a model folder may carry (never copied by a tool)."""
    return sorted(p.name for p in Path(folder).glob("*.py"))


def _refusal(finding: Finding, where, tool: str) -> InvalidInput:
    return InvalidInput(
        f"{Path(where) / finding.file} names custom {finding.what} code ({finding.describe()}) and "
        f"{', '.join(finding.needs_code)}, which only that code defines: {tool} never runs code from a model "
        f"folder; {_TODO[finding.what]}",
        path=str(Path(where) / finding.file),
        refs=list(finding.refs),
    )


def sanitize(name: str, data: dict, where, tool: str) -> tuple[dict, str | None]:
    """A copy of a parsed config file without its code references, and the warning that says what was
    removed (None when nothing was). Refuses (InvalidInput) when the model needs that code."""
    found = inspect_config(name, data)
    if found is None:
        return dict(data), None
    if found.needs_code:
        raise _refusal(found, where, tool)
    clean = {k: v for k, v in data.items() if k not in CODE_KEYS}
    return clean, (
        f"{name} of {where} refers to custom {found.what} code ({found.describe()}): removed, since "
        f"transformers ships what the file names; the output loads without that code and never runs it"
    )


def check_sanitizable(folder, names, tool: str) -> list[str]:
    """Refuse now (before any slow step) when one of the config files ``names`` in ``folder`` needs its
    code; else the warnings ``sanitize`` will give."""
    warnings = []
    for name in names:
        data = read_config(Path(folder) / name) if (Path(folder) / name).is_file() else None
        if data:
            warning = sanitize(name, data, folder, tool)[1]
            if warning:
                warnings.append(warning)
    return warnings


def refuse_code(folder, tool: str, what: str = "model folder") -> None:
    """Refuse a folder used as it is (nothing can be removed from it) when it refers to any code."""
    findings = scan(folder)
    if findings:
        f = findings[0]
        path = Path(folder) / f.file
        raise InvalidInput(
            f"{what} {folder} refers to custom code ({f.file} {f.describe()}): {tool} never runs code "
            f"from a model folder; give it merge-tool's output (which never carries a code reference), "
            f"or remove {f.keys} from {f.file} if the model loads without it, and rerun",
            path=str(path),
            refs=[r for x in findings for r in x.refs],
        )


REFUSED = "remote code refused: this process never runs code from a model folder or the Hub"


def forbid_in_process() -> None:
    """Make transformers in this process refuse remote code whatever its callers ask: the trust
    question every Auto class asks (resolve_trust_remote_code) is always answered no, the functions that
    fetch or import a model's module raise, and AutoConfig and AutoTokenizer load with
    ``trust_remote_code=False``. Imports transformers (call it only where it is used)."""
    import transformers
    from transformers import dynamic_module_utils as dyn

    def refuse(*args, _why=REFUSED, **kwargs):  # runs with another module's globals: no names from here
        raise PermissionError(_why)

    def never(*args, **kwargs):
        return False

    # swapping the code object reaches every module that imported these functions by name
    for fn in (
        dyn.get_class_from_dynamic_module,
        dyn.get_class_in_module,
        dyn.get_cached_module_file,
        dyn.check_imports,
    ):
        fn.__code__, fn.__defaults__, fn.__kwdefaults__ = refuse.__code__, None, refuse.__kwdefaults__
    resolve = dyn.resolve_trust_remote_code
    resolve.__code__, resolve.__defaults__, resolve.__kwdefaults__ = never.__code__, None, None
    for name in _LOADERS:
        cls = getattr(transformers, name, None)
        loader = isinstance(cls, type) and cls.__dict__.get("from_pretrained")
        if isinstance(loader, classmethod) and not getattr(loader.__func__, "_no_remote_code", False):
            cls.from_pretrained = classmethod(_without_remote_code(loader.__func__))


# the Auto classes llama.cpp's converter calls; the others (whose modules are slow to import) are
# covered by the trust question and the refusing loaders alone
_LOADERS = ("AutoConfig", "AutoTokenizer")


def _without_remote_code(func):
    import functools

    @functools.wraps(func)
    def load(cls, *args, **kwargs):
        kwargs["trust_remote_code"] = False
        return func(cls, *args, **kwargs)

    load._no_remote_code = True
    return load
