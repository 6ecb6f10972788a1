"""The images and compose follow the registry of sets (upload_common.sets): build.sh and
prefill-wheelhouse.sh ask it for the extras (no extra is written in images/ by hand), and every set
compose/compose.yaml makes, consumes, documents and publishes is checked against its row."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from upload_common import registry_cli
from upload_common.sets import SETS

ROOT = Path(__file__).resolve().parents[1]
OUT = "/work/out/"


def _run(*args: str, code: str | None = None) -> subprocess.CompletedProcess:
    """registry_cli as the image scripts run it: the sources on PYTHONPATH, the project not needed."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "tools")}
    cmd = [sys.executable, "-c", code] if code else [sys.executable, "-m", "upload_common.registry_cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60, cwd=ROOT / "images")


def _query(*args: str) -> str:
    done = _run(*args)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_the_query_prints_each_tools_extras_from_its_rows():
    assert _query("extras", "merge-tool") == ",".join(
        dict.fromkeys(s.extra for s in SETS.values() if s.tool == "merge-tool")
    )
    assert _query("extras", "gguf-tool") == SETS["gguf"].extra
    assert _query("extras", "docs-tool") == "docs" and _query("extras", "hf-push-tool") == "push"
    assert _query("extras", "--images").split(",") == registry_cli.image_extras()


def test_the_query_imports_nothing_but_the_standard_library():
    code = (
        "import sys; before = set(sys.modules); import upload_common.registry_cli; "
        "print(sorted({m.split('.')[0] for m in set(sys.modules) - before} - set(sys.stdlib_module_names)))"
    )
    done = _run(code=code)
    assert done.stdout.strip() == "['upload_common']", done.stderr


def test_an_unknown_tool_is_one_line():
    done = _run("extras", "exl2-tool")
    assert done.returncode == 1 and done.stderr.strip().startswith("registry_cli: unknown tool 'exl2-tool'")


@pytest.mark.parametrize(
    "name", ["build.sh", "build-helper.sh", "prefill-wheelhouse.sh", "python-tool.Dockerfile", "gguf-tool.Dockerfile"]
)
def test_no_extra_is_named_by_hand_in_the_image_files(name):
    text = (ROOT / "images" / name).read_text()
    extras = {s.extra for s in SETS.values()} | set(registry_cli.OTHER_TOOLS.values())
    # `[extra]` in a pip argument, a table column, or an EXTRA= value other than the Dockerfile's default
    named = {
        e for e in extras if re.search(rf"\[{re.escape(e)}\]|\|\s*{re.escape(e)}\s*\||EXTRA={re.escape(e)}\b", text)
    }
    if name == "gguf-tool.Dockerfile":  # its ARG default, for a plain `docker build` (build.sh passes the query's)
        assert re.findall(r"^ARG EXTRA=(\S+)$", text, re.MULTILINE) == [registry_cli.extras("gguf-tool")[0]]
        named.discard(SETS["gguf"].extra)
    assert not named
    if name in ("build.sh", "prefill-wheelhouse.sh"):
        assert "upload_common.registry_cli extras" in text


# ---------------------------------------------------------------------------------------------------
# compose/compose.yaml: written by hand, checked here against the registry


def _services() -> dict[str, dict]:
    return yaml.safe_load((ROOT / "compose" / "compose.yaml").read_text())["services"]


def _args(service: dict) -> list[str]:
    return service["command"].split()


def _option(service: dict, name: str) -> list[str]:
    args = _args(service)
    return [args[i + 1] for i, a in enumerate(args[:-1]) if a == name]


def _tool(service: dict) -> str:
    return re.match(r"upload-driver/([a-z-]+):", service["image"]).group(1)


def _made() -> dict[str, str]:
    """set -> the service that makes it (its --out under the artifacts volume)."""
    made = {}
    for name, service in _services().items():
        out = _option(service, "--out")[0].removeprefix(OUT)
        if out in SETS:
            made[out] = name
    return made


def test_each_set_service_runs_its_rows_tool_and_method():
    services = _services()
    made = _made()
    assert made, "compose makes no set"
    for set_name, service_name in made.items():
        service, row = services[service_name], SETS[set_name]
        assert _tool(service) == row.tool, service_name
        if row.module:  # a merge-tool format: --method names the row
            assert _option(service, "--method") == [set_name], service_name
        mounts = " ".join(service.get("volumes", []))
        assert ("--base" in _args(service)) == row.needs_base == ("/work/in/base:ro" in mounts), service_name


def test_each_set_service_runs_after_the_sets_it_consumes():
    services, made = _services(), _made()
    order = list(services)
    for set_name, service_name in made.items():
        for consumed in SETS[set_name].consumes:
            assert consumed in made, f"{set_name} consumes {consumed}, which compose does not make"
            assert order.index(made[consumed]) < order.index(service_name)
            assert f"{OUT}{consumed}" in _args(services[service_name]), service_name
        before = order[order.index(service_name) - 1] if order.index(service_name) else None
        if before:
            assert before in services[service_name]["depends_on"], service_name


def test_docs_and_publish_take_every_set_compose_makes():
    services, made = _services(), _made()
    for name, tool in (("docs", "docs-tool"), ("publish", "hf-push-tool")):
        assert _tool(services[name]) == tool
        assert _option(services[name], "--artifact") == [f"{OUT}{s}" for s in made], name
