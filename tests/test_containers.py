"""The pipeline in the real tool images on a real Docker engine: same bytes as local processes, images
that run as non-root with labels, the GPU probe's failure path, no container for bad input, and the
token kept out of container metadata. Skipped where no engine or no images are at hand (CI builds
them: .ci/run)."""

from __future__ import annotations

import json
import os
import time

import pytest
from click.testing import CliRunner

from upload_common import __version__
from upload_driver.cli import main
from upload_driver.containers import LABEL, DockerUnavailable, client, missing_images, work_id
from upload_driver.plan import image

pytestmark = pytest.mark.docker

TOOLS = ("merge-tool", "gguf-tool", "docs-tool", "hf-push-tool")


@pytest.fixture(scope="module")
def docker_client():
    try:
        c = client()
    except DockerUnavailable as exc:
        pytest.skip(f"no Docker engine: {exc.message}")
    missing = missing_images(c, [image(t) for t in TOOLS])
    if missing:
        pytest.skip(f"images not built: {', '.join(missing)} (images/build.sh --cpu)")
    return c


@pytest.fixture(scope="module")
def sample(tmp_path_factory, docker_client):
    """The demo's briefly trained sample: GGUF validation passes on it."""
    from upload_driver.demo import make_sample

    return make_sample(tmp_path_factory.mktemp("sample") / "sample")


def drive(*args, env=None):
    return CliRunner().invoke(main, [str(a) for a in args], env=env)


def pipeline_args(sample, work, runtime) -> list:
    """The whole pipeline on the sample, published to a local folder, with either runtime."""
    quants = ["--quant", "Q4_K_M", "--quant", "Q8_0"]
    where = ["--push", f"local:{work / 'site'}", "--runtime", runtime]
    return ["run", sample, "--work", work, "--name", "sample-chat", *quants, *where, "--json"]


def outputs(work, step):
    m = json.loads((work / "artifacts" / step / "manifest.json").read_text())
    return {o["path"]: o["sha256"] for o in m["outputs"]}


@pytest.mark.parametrize("tool", TOOLS)
def test_image_runs_help_as_non_root_with_labels(docker_client, tool):
    name = image(tool)
    out = docker_client.containers.run(name, ["--help"], remove=True, network_mode="none").decode()
    assert "Usage:" in out
    uid = docker_client.containers.run(name, ["-u"], entrypoint="id", remove=True, network_mode="none").decode()
    assert uid.strip() == "1000"
    labels = docker_client.images.get(name).labels
    assert labels["org.opencontainers.image.title"] == tool
    assert labels["org.opencontainers.image.version"] == __version__
    assert labels["org.opencontainers.image.revision"]


def test_pipeline_in_containers_writes_what_local_processes_write(docker_client, sample, tmp_path):
    runs = {}
    for runtime in ("local", "docker"):
        work = tmp_path / runtime
        result = drive(*pipeline_args(sample, work, runtime))
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["runtime"] == runtime
        runs[runtime] = work
        again = drive(*pipeline_args(sample, work, runtime))
        assert again.exit_code == 0, again.output  # each tool, asked in its container, gives the recorded key
        assert all(r["skipped"] for r in json.loads(again.stdout)["steps"]), again.output
    for step in ("lora", "merged_16bit", "gguf", "docs"):
        a, b = outputs(runs["local"], step), outputs(runs["docker"], step)
        if step == "docs":  # it names each step manifest by hash (paths, times differ); the content must not
            a.pop("upload_manifest.json"), b.pop("upload_manifest.json")
            sets = [
                {
                    s: e["content_sha256"]
                    for s, e in json.loads((runs[r] / "artifacts" / "docs" / "upload_manifest.json").read_text())[
                        "sets"
                    ].items()
                }
                for r in runs
            ]
            assert sets[0] == sets[1]
        assert a == b, step
    site = {p.relative_to(runs["docker"] / "site") for p in (runs["docker"] / "site").rglob("*") if p.is_file()}
    assert site == {p.relative_to(runs["local"] / "site") for p in (runs["local"] / "site").rglob("*") if p.is_file()}
    # the caller owns what the containers wrote
    owners = {p.stat().st_uid for p in (runs["docker"] / "artifacts").rglob("*")}
    assert owners == {os.getuid()}
    assert not docker_client.containers.list(all=True, filters={"label": f"{LABEL}={work_id(runs['docker'])}"})


def test_a_quantized_format_runs_in_its_image_with_the_calibration_mounted(docker_client, sample, tmp_path):
    cal = tmp_path / "calibration.jsonl"
    cal.write_text("".join(json.dumps({"text": f"sample sentence number {i} about the sea"}) + "\n" for i in range(40)))
    (tmp_path / "upload.toml").write_text(
        'formats = ["merged_16bit", "gptq"]\n[merge]\ncalibration = "calibration.jsonl"\n'
    )
    work = tmp_path / "w"
    result = drive("run", sample, "--config", tmp_path / "upload.toml", "--work", work, "--runtime", "docker", "--json")
    assert result.exit_code == 0, result.output
    m = json.loads((work / "artifacts" / "gptq" / "manifest.json").read_text())
    assert m["inputs"]["calibration"]["path"] == "/work/in/calibration/calibration.jsonl"  # read-only mount
    assert m["quantization"]["calibration_samples"] >= 1 and m["validation"]["top1_agreement"] >= 0.8
    config = json.loads((work / "artifacts" / "gptq" / "config.json").read_text())
    assert config["quantization_config"]["quant_method"] == "compressed-tensors"


def test_gpu_probe_without_a_gpu_runtime(docker_client, sample, tmp_path):
    if "nvidia" in (docker_client.info().get("Runtimes") or {}):
        pytest.skip("this engine has a GPU runtime")
    work = tmp_path / "w"
    result = drive(
        "run", sample, "--work", work, "--formats", "lora", "--runtime", "docker", "--gpus", "all", "--dry-run"
    )
    assert result.exit_code == 0, result.output
    assert "no GPU for containers: no NVIDIA container runtime" in result.output and "running on CPU" in result.output
    assert "Traceback" not in result.output and "--gpus all" not in result.stdout
    assert not docker_client.containers.list(all=True, filters={"label": f"{LABEL}={work_id(work)}"})


def test_bad_trainer_folder_starts_no_container(docker_client, tmp_path):
    empty = tmp_path / "empty-run"
    empty.mkdir()
    since = int(time.time()) - 1
    result = drive("run", empty, "--work", tmp_path / "w", "--runtime", "docker")
    assert result.exit_code == 1 and "no adapter found" in result.output
    events = docker_client.events(
        since=since, until=int(time.time()) + 1, decode=True, filters={"type": "container", "event": "create"}
    )
    assert [e for e in events if e.get("Actor", {}).get("Attributes", {}).get(LABEL) == work_id(tmp_path / "w")] == []


def test_token_never_in_container_metadata(docker_client, sample, tmp_path, monkeypatch):
    from huggingface_hub import constants

    from servers.hub import HubServer

    # the driver asks the Hub who the token belongs to before the first step, in this process, where
    # huggingface_hub read HF_HUB_OFFLINE when it was imported
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)

    token = "hf_container_secret_TOKEN_777"
    with HubServer(tmp_path / "hub", tokens={token: {"user": "alice", "orgs": [], "role": "write"}}) as hub:
        env = {**hub.client_env(token), "UPLOAD_DRIVER_KEEP_CONTAINERS": "1"}
        work = tmp_path / "w"
        try:
            result = drive(
                "run",
                sample,
                "--work",
                work,
                "--formats",
                "lora",
                "--push",
                "hf:alice/tiny",
                "--runtime",
                "docker",
                "--json",
                env=env,
            )
            assert result.exit_code == 0, result.output
            assert hub.files("alice/tiny-lora")["adapter_model.safetensors"]
            kept = docker_client.containers.list(all=True, filters={"label": f"{LABEL}={work_id(work)}"})
            assert {c.labels["upload-driver.step"] for c in kept} == {"lora", "docs", "publish-hf"}
            for c in kept:
                inspect = json.dumps(docker_client.api.inspect_container(c.id))
                assert token not in inspect
            publish = next(c for c in kept if c.labels["upload-driver.step"] == "publish-hf")
            cfg = docker_client.api.inspect_container(publish.id)
            assert "HF_TOKEN_PATH=/run/secrets/hf_token" in cfg["Config"]["Env"]
            assert cfg["HostConfig"]["NetworkMode"] == "host"
            lora = next(c for c in kept if c.labels["upload-driver.step"] == "lora")
            lcfg = docker_client.api.inspect_container(lora.id)
            assert lcfg["HostConfig"]["NetworkMode"] == "none"
            assert lcfg["Config"]["User"] == f"{os.getuid()}:{os.getgid()}"
            assert all(m["RW"] is False for m in lcfg["Mounts"] if m["Destination"].startswith("/work/in/"))
            secret = next(m for m in cfg["Mounts"] if m["Destination"] == "/run/secrets/hf_token")
            assert not os.path.exists(secret["Source"])  # the token file is gone once the step is done
        finally:
            for c in docker_client.containers.list(all=True, filters={"label": f"{LABEL}={work_id(work)}"}):
                c.remove(force=True)


def test_compose_runs_the_steps_in_sequence(docker_client, sample, tmp_path):
    """compose/compose.yaml with docker-compose (Debian's 1.29): every service exits 0 in order
    (compose/check.sh), the published files belong to the caller, the volume goes away with `down -v`."""
    import shutil
    import subprocess
    from pathlib import Path

    if not shutil.which("docker-compose"):
        pytest.skip("docker-compose is not installed")
    root = Path(__file__).resolve().parents[1]
    site = tmp_path / "site"
    site.mkdir()
    project = f"udtest{os.getpid()}"
    env = {
        **os.environ,
        "TRAINER_OUTPUT": str(sample),
        "BASE_MODEL_DIR": str(sample.parent / "base_model"),
        "MODEL_NAME": "sample-chat",
        "PUBLISH_DIR": str(site),
        "UID": str(os.getuid()),
        "GID": str(os.getgid()),
        "PUBLISH_NETWORK": "none",
        "COMPOSE_PROJECT_NAME": project,
    }
    compose = ["docker-compose", "-f", str(root / "compose" / "compose.yaml")]
    try:
        up = subprocess.run([*compose, "up", "--no-color"], env=env, capture_output=True, text=True, timeout=900)
        check = subprocess.run(["bash", str(root / "compose" / "check.sh")], env=env, capture_output=True, text=True)
        assert check.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:] + check.stdout
        assert [line.split()[0] for line in check.stdout.splitlines()] == [
            "merge-lora",
            "merge-16bit",
            "gguf",
            "docs",
            "publish",
        ]
        published = {p.relative_to(site).as_posix() for p in site.rglob("*") if p.is_file() and p.name[0] != "."}
        assert {
            "sample-chat-GGUF/sample-chat-Q4_K_M.gguf",
            "sample-chat-GGUF/Modelfile",
            "sample-chat/README.md",
            "sample-chat-lora/adapter_model.safetensors",
        } <= published
        assert {p.stat().st_uid for p in site.rglob("*")} == {os.getuid()}
    finally:
        subprocess.run([*compose, "down", "-v"], env=env, capture_output=True, timeout=300)
