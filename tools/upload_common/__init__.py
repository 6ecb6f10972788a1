"""Shared foundation of upload-driver's tools: the step contract, errors, CLI helpers."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("upload-driver")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0+unknown"
