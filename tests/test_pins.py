"""One source of pins: constraints.txt. The images' versions.env and the Dockerfiles' ARG defaults
repeat some of its versions (a plain `docker build` must mean the same); they are checked against it
here, so a pin changed in one place and not the other fails the tests, not a release."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# versions.env key -> the package whose pin in constraints.txt it repeats
REPEATED = {"TORCH_VERSION": "torch", "LLAMA_CPP_PYTHON_VERSION": "llama-cpp-python"}


def _constraints() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        m = re.match(r"^\s*([A-Za-z0-9_.-]+)\s*==\s*([^\s;#]+)", line)
        if m:
            pins[m.group(1).lower().replace("_", "-")] = m.group(2)
    return pins


def _env_file() -> dict[str, str]:
    return dict(re.findall(r"^([A-Z_]+)=(.*)$", (ROOT / "images" / "versions.env").read_text(), re.MULTILINE))


def test_versions_env_repeats_constraints_exactly():
    pins, env = _constraints(), _env_file()
    for key, package in REPEATED.items():
        assert env[key] == pins[package], (
            f"images/versions.env {key}={env[key]} but constraints.txt pins {package}=={pins[package]}"
        )


def test_dockerfile_arg_defaults_repeat_versions_env():
    env = _env_file()
    for dockerfile in sorted((ROOT / "images").glob("*.Dockerfile")):
        for key, value in re.findall(r"^ARG ([A-Z_]+)=(\S+)$", dockerfile.read_text(), re.MULTILINE):
            if key in env and "${" not in env[key]:
                assert value == env[key], f"{dockerfile.name}: ARG {key}={value}, versions.env says {env[key]}"


def test_every_constraint_is_an_exact_pin_once():
    lines = [line.split("#")[0].strip() for line in (ROOT / "constraints.txt").read_text().splitlines()]
    names = [re.split(r"[=<>!~ ]", line)[0].lower() for line in lines if line]
    assert len(names) == len(set(names)) and all("==" in line for line in lines if line)
