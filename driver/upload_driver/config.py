"""The request: command-line options over a TOML config file over defaults; paths as the user wrote
them (a Windows path in a config shared with Windows users works on Linux/WSL2 too)."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path, PurePosixPath, PureWindowsPath

from upload_common.errors import InvalidInput, UsageError

from .request import Request

DEFAULTS = {
    "work": None,  # default: <trainer output>-upload beside it
    "formats": ["lora", "merged_16bit", "gguf"],
    "quants": ["Q4_K_M", "Q8_0"],
    "push": [],
    "runtime": "auto",
    "gpus": "auto",
    "name": None,
    "merge": {},  # base, checkpoint, dtype, max_shard_size, calibration, allow_pickle, engine
    "gguf": {},  # imatrix, calibration, eval_text, split_max_size, validate_tokens, min_top1
    "docs": {},  # license, license_link, base_model, datasets, language, system, ollama_quant, repos
    "publish": {},  # private, ollama_push
}
KEYS = {"trainer_output", *DEFAULTS}
_DRIVE = re.compile(r"^([A-Za-z]):[\\/]")
_WSL_UNC = re.compile(r"^[\\/]{2}wsl(?:\$|\.localhost)[\\/][^\\/]+[\\/](.*)$", re.IGNORECASE)


def local_path(text, *, platform: str | None = None, wsl: bool | None = None) -> Path:
    """A path as written by the user (POSIX, Windows drive, or WSL UNC) as this machine reaches it:
    on Windows a drive path stays one (Docker Desktop binds it); on Linux under WSL2 ``C:\\x`` is
    ``/mnt/c/x`` and ``\\\\wsl$\\Distro\\home\\me`` is ``/home/me``."""
    text = str(text)
    platform = platform or sys.platform
    if platform == "win32":
        return Path(text)
    unc = _WSL_UNC.match(text)
    if unc:
        return Path("/" + unc.group(1).replace("\\", "/"))
    m = _DRIVE.match(text)
    if m:
        if wsl is None:
            wsl = "microsoft" in _kernel_release().lower() or Path("/mnt/c").is_dir()
        rest = PureWindowsPath(text).parts[1:]
        if not wsl:
            raise InvalidInput(
                f"{text} is a Windows path, and this is not Windows or WSL2: give the path as this machine sees it"
            )
        return Path("/mnt", m.group(1).lower(), *rest)
    return Path(os.path.expanduser(text))


def docker_bind_path(path: Path, *, platform: str | None = None) -> str:
    """The host side of a bind mount as the Docker engine wants it: absolute, and with forward slashes
    on Windows (Docker Desktop accepts ``C:/Users/...``)."""
    platform = platform or sys.platform
    if platform == "win32":
        return PureWindowsPath(path).as_posix()
    return str(PurePosixPath(os.path.abspath(path)))


def _kernel_release() -> str:
    try:
        return os.uname().release
    except AttributeError:  # pragma: no cover - Windows
        return ""


def load_config(path) -> dict:
    """A TOML config: top-level keys as in DEFAULTS plus trainer_output; relative paths are relative to
    the config file's folder."""
    path = local_path(path)
    return config_table(read_toml(path), path)


def config_table(data: dict, path: Path, *, keys=KEYS, where: str = "") -> dict:
    """One table of settings read from the file ``path`` (``where`` in it, e.g. a batch file's [[run]]):
    its keys checked against ``keys``, its paths made relative to the file's folder."""
    _check_keys(path, data, keys, where)
    return _relative_paths(data, path.parent)


def read_toml(path: Path) -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # pragma: no cover - Python 3.10
        import tomli as tomllib
    if not path.is_file():
        raise UsageError(f"config file {path} does not exist: pass the path of a TOML file", path=str(path))
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(
            f"config file {path} is not valid TOML ({' '.join(str(exc).split())}): fix it", path=str(path)
        ) from None


def _check_keys(path: Path, data: dict, keys=KEYS, where: str = "") -> None:
    unknown = sorted(set(data) - set(keys))
    if unknown:
        raise UsageError(
            f"config file {path}{where}: unknown key(s) {', '.join(unknown)}: valid keys are {', '.join(sorted(keys))}",
            path=str(path),
        )
    for key in ("merge", "gguf", "docs", "publish"):
        if not isinstance(data.get(key, {}), dict):
            raise UsageError(f"config file {path}{where}: {key} must be a table ([{key}])", path=str(path))


def _relative_paths(data: dict, base: Path) -> dict:
    """The config's paths made relative to its folder ``base``; a merge base is a path only when it
    exists or looks like one (otherwise it is a Hub model id)."""

    def rel(value):
        p = local_path(value)
        return p if p.is_absolute() else (base / p)

    for key in ("trainer_output", "work"):
        if data.get(key):
            data[key] = rel(data[key])
    for section, keys in (("merge", ("base", "calibration")), ("gguf", ("imatrix", "calibration", "eval_text"))):
        for key in keys:
            value = (data.get(section) or {}).get(key)
            if value and (key != "base" or _looks_like_path(value)):
                data[section][key] = rel(value)
    if "push" in data:  # a table without push leaves the one under it (config_table's layers)
        data["push"] = [_rel_target(t, rel) for t in data["push"] or []]
    return data


def _looks_like_path(value) -> bool:
    return local_path(value).exists() or str(value).startswith((".", "/")) or bool(_DRIVE.match(str(value)))


def _rel_target(target: str, rel) -> str:
    kind, sep, arg = str(target).partition(":")
    return f"local:{rel(arg)}" if kind == "local" and sep else str(target)


SECTION_OPTIONS = {"base_model": "docs", "allow_pickle": "merge"}  # options that set one key of a config table


def request(trainer_output=None, *, config=None, settings=None, **options) -> Request:
    """Defaults, then the config file, then ``settings`` (a table as ``config_table`` read it), then every
    option given on the command line (None = not given)."""
    req = _layered(config, options, settings)
    _resolve_paths(req, trainer_output)
    if isinstance(req["formats"], str):
        req["formats"] = [f.strip() for f in req["formats"].split(",") if f.strip()]
    req["push"] = _push_targets(req["push"])
    for key, choices in (("runtime", ("auto", "docker", "local")), ("gpus", ("auto", "all", "none"))):
        if req[key] not in choices:
            raise UsageError(f"{key} {req[key]!r}: choose {', '.join(choices)}")
    return Request(**req)


def layer(under: dict, over: dict) -> dict:
    """``over``'s settings over ``under``'s (tables merged key by key), as a new dict."""
    merged = {k: (dict(v) if isinstance(v, dict) else list(v) if isinstance(v, list) else v) for k, v in under.items()}
    for key, value in over.items():
        merged[key] = {**merged[key], **value} if isinstance(merged.get(key), dict) else value
    return merged


def _layered(config, options: dict, settings=None) -> dict:
    """DEFAULTS, the config file over them, ``settings`` over that, the options over all."""
    req = layer(DEFAULTS, load_config(config) if config else {})
    req = layer(req, settings or {})
    for key, section in SECTION_OPTIONS.items():
        value = options.pop(key, None)
        if value not in (None, False):
            req[section] = {**req[section], key: value}
    for key, value in options.items():
        if value not in (None, (), []):
            req[key] = list(value) if isinstance(value, tuple) else value
    return req


def _resolve_paths(req: dict, trainer_output) -> None:
    """trainer_output (the argument over the config) and work made absolute; work defaults to
    ``<trainer output>-upload`` beside it."""
    if trainer_output:
        req["trainer_output"] = local_path(trainer_output)
    if not req.get("trainer_output"):
        raise UsageError(
            "no trainer output folder: pass it (upload-driver run ./sft_output) or set trainer_output "
            "in the config file"
        )
    req["trainer_output"] = Path(os.path.abspath(req["trainer_output"]))
    work = req.get("work")
    req["work"] = Path(
        os.path.abspath(
            local_path(work) if work else req["trainer_output"].with_name(req["trainer_output"].name + "-upload")
        )
    )


def _push_targets(targets: list) -> list[str]:
    """The publish targets with each local folder made absolute; ``local:`` without a folder is refused."""
    for t in targets:
        if str(t).partition(":")[0] == "local" and not str(t).partition(":")[2].strip():
            raise UsageError(f"--push {t}: name the folder to publish into, e.g. local:./published")
    return [_rel_target(t, lambda v: Path(os.path.abspath(local_path(v)))) for t in targets]
