"""Checks on names and paths that come from input someone else wrote: a Hub repo id, a path inside a
repo, a file that must stay inside the folder it was found in. Everything a tool writes to is
derived through these, so an edited manifest or config cannot point a tool outside its target."""

from __future__ import annotations

import os
import re
from pathlib import Path, PurePosixPath

from .errors import InvalidInput, UsageError

_WINDOWS_DRIVE = re.compile(r"^[A-Za-z]:")


def check_repo_id(value, what: str, *, namespace: bool = False, usage: bool = True) -> str:
    """``value`` if it is a valid Hub repo id by huggingface_hub's own rules (``name`` or
    ``namespace/name``; letters, digits, ``-_.``; no ``--`` or ``..``; at most 96 characters);
    ``namespace=True`` also requires the ``namespace/`` part. Else a one-line error (a usage error
    when it came from the command line or a config, an invalid input when from a file)."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    cls = UsageError if usage else InvalidInput
    text = value if isinstance(value, str) else repr(value)
    try:
        if not isinstance(value, str) or not value or value.startswith((".", "/", "\\")):
            raise HFValidationError("not a name")
        validate_repo_id(value)
    except HFValidationError:
        raise cls(
            f"{what} {text!r} is not a valid Hub repo id: use NAME or NAMESPACE/NAME with letters, digits, "
            "'-', '_' and '.' only (no '..', '--', '/' at either end, at most 96 characters)",
            repo_id=text,
        ) from None
    if namespace and "/" not in value:
        raise cls(f"{what} {value!r} has no namespace: use NAMESPACE/NAME (your user or organisation)", repo_id=value)
    return value


def check_namespace(value, what: str) -> str:
    """A Hub user or organisation name (the part before the ``/``)."""
    if isinstance(value, str) and value and "/" not in value:
        try:
            check_repo_id(f"{value}/x", what)
            return value
        except UsageError:
            pass
    raise UsageError(
        f"{what} {value!r} is not a Hub user or organisation name: use letters, digits, '-', '_' and "
        "'.' only, without '/'",
        namespace=str(value),
    )


def relative_path(value, what: str) -> PurePosixPath:
    """A path inside a repo or folder as the Hub writes it: relative, '/'-separated, no '..', no
    empty or '.' parts, no drive, no backslash. Else InvalidInput."""
    ok = (
        isinstance(value, str)
        and value
        and "\\" not in value
        and "\0" not in value
        and not value.startswith("/")
        and not _WINDOWS_DRIVE.match(value)
    )
    parts = value.split("/") if ok else []
    if not ok or any(p in ("", ".", "..") for p in parts):
        raise InvalidInput(
            f"{what} {value!r} is not a relative path inside the repo: the file was edited or made by "
            "something else; rerun the step that wrote it",
            path=str(value),
        )
    return PurePosixPath(value)


def join_inside(root: Path, rel, what: str) -> Path:
    """``root / rel`` for a checked relative path, proven to resolve inside ``root`` (symlinks included)."""
    path = Path(root) / relative_path(str(rel), what)
    if not is_inside(path, root):
        raise InvalidInput(
            f"{what} {rel!r} leads outside {root} (through a symbolic link): refusing to write there", path=str(path)
        )
    return path


def is_inside(path: Path, root: Path) -> bool:
    """Whether ``path`` (following every symbolic link that exists) stays within ``root``."""
    real_root = os.path.realpath(root)
    real = os.path.realpath(path)
    return real == real_root or real.startswith(real_root.rstrip(os.sep) + os.sep)


def hub_name(text: str, fallback: str = "model") -> str:
    """A repo name the Hub accepts, made from any text (a folder name): accents dropped, other
    characters to '-', no '--' or '..', no '-' or '.' at either end, at most 80 characters (room for a
    set's suffix)."""
    import unicodedata

    ascii_text = unicodedata.normalize("NFKD", str(text)).encode("ascii", "ignore").decode()
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", ascii_text)
    name = re.sub(r"-{2,}", "-", re.sub(r"\.{2,}", ".", name))
    name = name[:80].strip("-.")
    return name or fallback
