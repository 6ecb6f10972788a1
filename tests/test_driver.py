"""upload-driver run with local processes: plan, skipping by content, --force, a killed step, dry run,
config files, Windows paths, runtime fallback, doctor."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path, PureWindowsPath

import pytest
from click.testing import CliRunner

from conftest import start_until
from driver_helpers import driver_process
from upload_common.errors import InvalidInput, UsageError
from upload_driver.cli import main
from upload_driver.config import docker_bind_path, local_path, request
from upload_driver.plan import naming, plan, render
from upload_driver.request import Request

NO_DOCKER = {"DOCKER_HOST": "unix:///nonexistent/docker.sock"}


def drive(*args, env=None):
    return CliRunner().invoke(main, [str(a) for a in args], env=env)


def published_run(trainer: Path, work: Path, *extra):
    """lora and merged_16bit, cards and a local publish beside the work folder, as local processes."""
    args = ["run", trainer, "--work", work, "--formats", "lora,merged_16bit", "--push", f"local:{work.parent / 'site'}"]
    return drive(*args, "--runtime", "local", *extra, "--json", env=NO_DOCKER)


def outputs(work: Path, step: str) -> dict:
    m = json.loads((work / "artifacts" / step / "manifest.json").read_text())
    return {o["path"]: o["sha256"] for o in m["outputs"]}


def test_plan_from_the_request(sft_output, tmp_path):
    from upload_common.trainer_output import inspect_trainer_output

    found = inspect_trainer_output(sft_output)
    req = request(
        sft_output,
        work=str(tmp_path / "w"),
        formats="lora,gguf",
        push=("hf:acme/tiny", f"local:{tmp_path / 'site'}", "ollama"),
    )
    steps = plan(req, found)
    assert [s.name for s in steps] == [
        "lora",
        "merged_16bit",
        "gguf",
        "docs",
        "publish-hf",
        "publish-local",
        "publish-ollama",
    ]
    by = {s.name: s for s in steps}
    assert by["merged_16bit"].inputs["base"] == Path(found["base_model"])  # local base: mounted, not downloaded
    assert set(by["docs"].inputs) == {"lora", "gguf"}  # merged_16bit is made for the GGUF, not published
    assert list(by["docs"].args[by["docs"].args.index("--namespace") :][:2]) == ["--namespace", "acme"]
    assert by["publish-hf"].network and by["publish-hf"].token and not by["publish-local"].network
    assert not any(s.network for s in steps[:4]) and by["gguf"].gpu and not by["docs"].gpu
    assert naming(Request(trainer_output=Path("/x/sft out"), work=tmp_path / "w")) == ("sft-out", None)
    for bad, message in (
        (dict(formats="exl2"), "unknown format"),
        (dict(push=("ftp:x",)), "hf:ORG/NAME"),
        (dict(push=("hf:noslash",)), "hf:ORG/NAME"),
        (dict(push=("hf:a/b", "hf:c/d")), "one ORG/NAME"),
    ):
        with pytest.raises(UsageError, match=message):
            plan(request(sft_output, work=str(tmp_path / "w"), **bad), found)


def test_gguf_validation_settings_reach_gguf_tool(sft_output, tmp_path):
    """[gguf] eval_text (an input, read only), min_top1 (a --min-top1 per type) and the reference cache (a
    folder of the run the step writes), the text and the cache shared with the quantized formats."""
    from upload_common.trainer_output import inspect_trainer_output

    text = tmp_path / "mine.txt"
    text.write_text("my own validation text")
    req = Request(
        trainer_output=sft_output,
        work=tmp_path / "w",
        formats=("gguf",),
        gguf={"eval_text": text, "min_top1": {"Q4_K_M": 0.9, "Q8_0": 0.98}},
    )
    gguf = {s.name: s for s in plan(req, inspect_trainer_output(sft_output))}["gguf"]
    argv = render(gguf, inp=lambda k: f"in:{k}", out=lambda: "out", rw=lambda k: f"rw:{k}", device="cpu")
    assert gguf.inputs["eval_text"] == text and argv[argv.index("--eval-text") + 1] == "in:eval_text"
    assert " ".join(argv).count("--min-top1") == 2 and "Q4_K_M=0.9" in argv and "Q8_0=0.98" in argv
    assert argv[argv.index("--reference-cache") + 1] == "rw:reference_cache"
    assert gguf.rw["reference_cache"] == tmp_path / "w" / "cache" / "reference"
    req = Request(trainer_output=sft_output, work=tmp_path / "w", formats=("fp8",), gguf={"eval_text": text})
    fp8 = {s.name: s for s in plan(req, inspect_trainer_output(sft_output))}["fp8"]  # the same text and store
    argv = render(fp8, inp=lambda k: f"in:{k}", out=lambda: "out", rw=lambda k: f"rw:{k}", device="cpu")
    assert argv[argv.index("--eval-text") + 1] == "in:eval_text" and fp8.inputs["eval_text"] == text
    assert argv[argv.index("--reference-cache") + 1] == "rw:reference_cache" and fp8.rw == gguf.rw
    bad = Request(trainer_output=sft_output, work=tmp_path / "w", formats=("gguf",), gguf={"min_top1": 0.9})
    with pytest.raises(UsageError, match="gguf.min_top1"):
        plan(bad, inspect_trainer_output(sft_output))


@pytest.fixture(scope="module")
def finished(sft_output, tmp_path_factory):
    """A finished local run: lora and merged_16bit, cards, a local publish."""
    work = tmp_path_factory.mktemp("drive") / "work"
    result = published_run(sft_output, work)
    assert result.exit_code == 0, result.output
    return work, json.loads(result.stdout)


def test_run_then_rerun_skips_everything(finished, sft_output):
    work, first = finished
    assert [r["step"] for r in first["steps"]] == ["lora", "merged_16bit", "docs", "publish-local"]
    assert not any(r["skipped"] for r in first["steps"])
    assert (work.parent / "site" / "sft-output-uni" / "model.safetensors").is_file()  # a name the Hub would take
    before = {s: outputs(work, s) for s in ("lora", "merged_16bit", "docs")}
    result = published_run(sft_output, work)
    assert result.exit_code == 0, result.output
    assert all(r["skipped"] for r in json.loads(result.stdout)["steps"])  # (its speed: bench/driver.py)
    assert before == {s: outputs(work, s) for s in ("lora", "merged_16bit", "docs")}


def test_force_redoes_a_step_and_what_depends_on_it(finished, sft_output):
    work, _ = finished
    result = published_run(sft_output, work, "--force", "docs")
    assert result.exit_code == 0, result.output
    skipped = {r["step"]: r["skipped"] for r in json.loads(result.stdout)["steps"]}
    assert skipped == {"lora": True, "merged_16bit": True, "docs": False, "publish-local": False}
    result = drive("run", sft_output, "--work", work, "--formats", "lora", "--runtime", "local", "--force", "nope")
    assert result.exit_code == 2 and "the steps are lora, docs" in result.output


def test_changed_input_reruns_only_what_it_feeds(sft_output, tmp_path):
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(sft_output, run_dir)
    work = tmp_path / "work"
    args = ["run", run_dir, "--work", work, "--formats", "lora", "--runtime", "local", "--json"]
    assert drive(*args, env=NO_DOCKER).exit_code == 0
    (run_dir / "trainer_state.json").write_text((run_dir / "trainer_state.json").read_text() + "\n")
    result = drive(*args, env=NO_DOCKER)
    assert [r["skipped"] for r in json.loads(result.stdout)["steps"]] == [False, False]


def test_killed_step_leaves_nothing_finished_and_the_rerun_completes(finished, sft_output, tmp_path):
    """kill -9 of the running merge; the rerun makes outputs with the hashes of an uninterrupted run."""
    import psutil

    work = tmp_path / "work"
    cmd = driver_process(sft_output, work, "--formats", "lora,merged_16bit")
    partial = work / "artifacts" / "merged_16bit.partial"
    proc = start_until(cmd, partial.exists, env=NO_DOCKER, stderr=subprocess.PIPE)
    assert partial.exists(), "the merge step never started"
    for child in psutil.Process(proc.pid).children(recursive=True):
        child.send_signal(signal.SIGKILL)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1 and "merged_16bit (merge-tool) was killed (signal 9)" in err
    assert not (work / "artifacts" / "merged_16bit").exists()
    result = drive(
        "run",
        sft_output,
        "--work",
        work,
        "--formats",
        "lora,merged_16bit",
        "--runtime",
        "local",
        "--json",
        env=NO_DOCKER,
    )
    assert result.exit_code == 0, result.output
    assert {r["step"]: r["skipped"] for r in json.loads(result.stdout)["steps"]} == {
        "lora": True,
        "merged_16bit": False,
        "docs": False,
    }
    done, _ = finished
    assert outputs(work, "merged_16bit") == outputs(done, "merged_16bit")
    assert not (work / "artifacts" / "merged_16bit.partial").exists()


def test_dry_run_prints_commands_and_disk_use(sft_output, tmp_path):
    work = tmp_path / "work"
    result = drive(
        "run", sft_output, "--work", work, "--push", "hf:acme/tiny", "--runtime", "local", "--dry-run", env=NO_DOCKER
    )
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "merge-tool --adapter" in out and "gguf-tool --model" in out and "hf-push-tool --docs" in out
    assert "--to hf" in out and "expected disk use: ~" in out and "will run" in out
    assert not work.exists()
    result = drive("run", sft_output, "--work", work, "--dry-run", "--json", env=NO_DOCKER)
    steps = json.loads(result.stdout)["steps"]
    assert steps[1]["step"] == "merged_16bit" and steps[1]["expected_bytes"] > 0


def test_no_docker_engine_falls_back_to_local(sft_output, tmp_path):
    result = drive("run", sft_output, "--work", tmp_path / "w", "--formats", "lora", "--dry-run", env=NO_DOCKER)
    assert result.exit_code == 0 and "runtime: local processes: no Docker engine answers" in result.output
    result = drive(
        "run",
        sft_output,
        "--work",
        tmp_path / "w",
        "--formats",
        "lora",
        "--runtime",
        "docker",
        "--dry-run",
        env=NO_DOCKER,
    )
    assert result.exit_code == 2 and "start Docker" in result.output and "Traceback" not in result.output


def test_bad_trainer_folder_stops_before_any_step(tmp_path):
    empty = tmp_path / "not-a-run"
    empty.mkdir()
    result = drive("run", empty, "--work", tmp_path / "w", env=NO_DOCKER)
    assert result.exit_code == 1 and "no adapter found" in result.output
    assert not (tmp_path / "w").exists()
    result = drive("run", env=NO_DOCKER)
    assert result.exit_code == 2 and "no trainer output folder" in result.output


def test_config_file_and_wrapper_settings(sft_output, tmp_path):
    cfg = tmp_path / "cfg" / "upload.toml"
    cfg.parent.mkdir()
    cfg.write_text(f"""
trainer_output = {json.dumps(str(sft_output))}
work = "work"
formats = ["lora"]
push = ["local:published"]
runtime = "local"
[docs]
license = "apache-2.0"
language = ["en"]
""")
    result = drive("run", "--config", cfg, "--json", env=NO_DOCKER)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "cfg" / "work" / "artifacts" / "lora" / "manifest.json").is_file()
    card = next((tmp_path / "cfg" / "published").glob("*/README.md")).read_text()
    assert "license: apache-2.0" in card and "- en" in card
    (tmp_path / "bad.toml").write_text("formats = [\n")
    result = drive("run", "--config", tmp_path / "bad.toml")
    assert result.exit_code == 2 and "not valid TOML" in result.output
    (tmp_path / "unknown.toml").write_text("colour = 'blue'\n")
    result = drive("run", "--config", tmp_path / "unknown.toml")
    assert result.exit_code == 2 and "unknown key(s) colour" in result.output


@pytest.mark.parametrize(
    "text, platform, wsl, expected",
    [
        ("C:\\Users\\me\\sft_output", "linux", True, "/mnt/c/Users/me/sft_output"),
        ("D:/runs/kto output", "linux", True, "/mnt/d/runs/kto output"),
        ("\\\\wsl$\\Ubuntu\\home\\me\\run", "linux", None, "/home/me/run"),
        ("\\\\wsl.localhost\\Debian\\srv\\x", "linux", None, "/srv/x"),
        ("/home/me/run", "linux", None, "/home/me/run"),
    ],
)
def test_windows_paths_on_linux_and_wsl(text, platform, wsl, expected):
    assert str(local_path(text, platform=platform, wsl=wsl)) == expected


def test_windows_paths_for_docker_desktop():
    assert docker_bind_path(PureWindowsPath("C:\\Users\\me\\run"), platform="win32") == "C:/Users/me/run"
    assert docker_bind_path(Path("/tmp/x/../y"), platform="linux") == "/tmp/y"
    with pytest.raises(InvalidInput, match="Windows path"):
        local_path("C:\\x", platform="linux", wsl=False)


def test_doctor_reports_without_showing_the_token(tmp_path):
    result = drive("doctor", "--work", tmp_path, env={**NO_DOCKER, "HF_TOKEN": "hf_doctor_secret_123"})
    assert "docker engine" in result.output and "-> install Docker" in result.output
    assert "Hugging Face token: present (from HF_TOKEN; not shown)" in result.output
    assert "hf_doctor_secret_123" not in result.output
    result = drive("doctor", "--json", "--work", tmp_path, env={**NO_DOCKER, "HF_TOKEN": ""})
    found = {f["check"]: f for f in json.loads(result.stdout)}
    assert found["Hugging Face token"]["status"] == "warning" and found["llama.cpp (local)"]["status"] == "ok"


@pytest.mark.parametrize("trainer, kind, steps", [("sft", "sft", (10, 20)), ("kto", "kto", (600, 1200))])
def test_example_wrappers_run(trainer, kind, steps, llama_base, tokenizer_dir, tmp_path):
    """examples/<trainer>/upload.sh as a user runs it, next to a trainer output where its config says."""
    import shutil

    from upload_common.sample import make_trainer_output

    root = Path(__file__).resolve().parents[1]
    shutil.copytree(root / "examples", tmp_path / "repo" / "examples")
    make_trainer_output(
        tmp_path / "repo" / f"{trainer}_output_rtx3090", llama_base, kind=kind, steps=steps, tokenizer_dir=tokenizer_dir
    )
    env = {**os.environ, **NO_DOCKER, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run(
        ["bash", str(tmp_path / "repo" / "examples" / trainer / "upload.sh"), "--dry-run", "--runtime", "local"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert f"({kind};" in proc.stderr and "publish-hf" in proc.stdout and "publish-local" in proc.stdout
    assert str(tmp_path / "repo" / "upload-work" / trainer / "artifacts" / "gguf") in proc.stdout
    if trainer == "kto":
        assert "--checkpoint 1200" in proc.stdout
