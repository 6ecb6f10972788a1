"""upload-driver against mistakes and faults: two runs on one work folder, outputs changed behind its
back, every mistake found before the first step (bad options, a missing or refused token, a stalled
Hub, no Ollama, a target it cannot write, a full disk), what a step's process may see, a killed step's
leftovers, the summary on a narrow terminal."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import start_until, tree_hash
from upload_driver.cli import main
from upload_driver.plan import PlannedStep

NO_DOCKER = {"DOCKER_HOST": "unix:///nonexistent/docker.sock"}


def drive(*args, env=None):
    return CliRunner().invoke(main, [str(a) for a in args], env={**NO_DOCKER, **(env or {})})


def one_line_error(result, code: int) -> str:
    assert result.exit_code == code, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.output, result.output
    return errors[0]


@pytest.fixture(scope="module")
def done(sft_output, tmp_path_factory):
    """A finished local run (lora, docs, a local publish) to tamper with."""
    root = tmp_path_factory.mktemp("done")
    args = [
        "run",
        sft_output,
        "--work",
        root / "work",
        "--formats",
        "lora",
        "--push",
        f"local:{root / 'site'}",
        "--runtime",
        "local",
        "--json",
    ]
    result = drive(*args)
    assert result.exit_code == 0, result.output
    return root, args


def skipped(result) -> dict:
    assert result.exit_code == 0, result.output
    return {r["step"]: r["skipped"] for r in json.loads(result.stdout)["steps"]}


def test_a_second_run_on_the_same_work_folder_is_refused(sft_output, tmp_path):
    """The first run holds the lock (seen in its file); the second refuses in one line naming it; the
    first finishes with outputs that match their manifests; a rerun skips everything."""
    work = tmp_path / "work"
    cmd = [
        sys.executable,
        "-m",
        "upload_driver.cli",
        "run",
        str(sft_output),
        "--work",
        str(work),
        "--formats",
        "lora,merged_16bit",
        "--runtime",
        "local",
    ]
    lock = work / ".upload-driver" / "lock"
    first = start_until(cmd, lambda: lock.is_file() and lock.read_text(), env=NO_DOCKER, stderr=subprocess.PIPE)
    second = drive("run", sft_output, "--work", work, "--formats", "lora,merged_16bit", "--runtime", "local")
    line = one_line_error(second, 1)
    assert f"pid {first.pid}" in line and "in use by another upload-driver run" in line
    _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    again = drive("run", sft_output, "--work", work, "--formats", "lora,merged_16bit", "--runtime", "local", "--json")
    assert all(skipped(again).values())


def test_a_lock_left_by_a_killed_run_is_not_in_the_way(done, sft_output):
    root, args = done
    lock = root / "work" / ".upload-driver" / "lock"
    lock.write_text(json.dumps({"pid": 999999, "host": os.uname().nodename, "since": "earlier", "command": "run"}))
    result = drive(*args)
    assert all(skipped(result).values())
    assert "the last run on this folder (pid 999999) was interrupted" in result.output


def test_outputs_changed_behind_its_back_are_made_again(done):
    """Same size, other bytes (a concurrent writer, a careless edit): the step is not up to date; a
    file deleted from the local publish target makes the publish run again."""
    root, args = done
    weights = root / "work" / "artifacts" / "lora" / "adapter_model.safetensors"
    good = weights.read_bytes()
    weights.write_bytes(good[:-4] + b"\0\0\0\0")
    assert skipped(drive(*args)) == {"lora": False, "docs": False, "publish-local": False}
    assert weights.read_bytes() == good
    published = next((root / "site").glob("*/adapter_model.safetensors"))
    published.unlink()
    assert skipped(drive(*args)) == {"lora": True, "docs": True, "publish-local": False}
    assert published.read_bytes() == good
    os.utime(weights, ns=(1, 1))  # only the time changed: hashed again, still the same, still skipped
    assert all(skipped(drive(*args)).values())


def test_a_step_is_never_recorded_done_when_its_files_differ_from_its_manifest(done):
    from upload_common.errors import InvalidInput
    from upload_driver import state

    root, _ = done
    out = root / "work" / "artifacts" / "lora"
    step = PlannedStep("lora", "merge-tool", "merge_tool.cli", out)
    assert state.verify(step)  # what the run recorded holds
    cfg = out / "adapter_config.json"
    text = cfg.read_text()
    try:
        cfg.write_text(text.replace("{", "{ ", 1))
        with pytest.raises(InvalidInput, match="does not match its manifest"):
            state.verify(step)
    finally:
        cfg.write_text(text)


@pytest.fixture
def no_token(tmp_path, monkeypatch):
    """No token anywhere, and huggingface_hub online (the Hub itself is never reached: no token)."""
    from huggingface_hub import constants

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token-file"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)


@pytest.mark.parametrize(
    "args, code, says",
    [
        (["--quant", "Q4_K_X"], 2, "unknown quantization 'Q4_K_X'"),
        (["--quant", "IQ2_XS"], 2, "IQ2_XS need an importance matrix"),
        (["--push", "local:"], 2, "name the folder to publish into"),
        (["--push", "hf:acme/x"], 1, "no Hugging Face token"),
        (
            ["--config", "REPOS", "--push", "local:SITE"],
            2,
            "[docs] repos gguf = '../../ESCAPED' is not a valid Hub repo id",
        ),
        (["--base-model", "not a repo"], 2, "--base-model 'not a repo' is not a valid Hub repo id"),
        (["--config", "missing.toml"], 2, "config file"),
    ],
)
def test_mistakes_stop_the_run_before_any_step(sft_output, tmp_path, no_token, args, code, says):
    before = tree_hash(sft_output)
    (tmp_path / "repos.toml").write_text('[docs]\nrepos = {gguf = "../../ESCAPED"}\n')
    args = [a.replace("SITE", str(tmp_path / "site")).replace("REPOS", str(tmp_path / "repos.toml")) for a in args]
    result = drive("run", sft_output, "--work", tmp_path / "w", "--runtime", "local", *args)
    assert says in one_line_error(result, code)
    assert not (tmp_path / "w" / "artifacts").exists() and not (tmp_path / "site").exists()
    assert tree_hash(sft_output) == before


def test_dry_run_reports_the_same_findings(sft_output, tmp_path, no_token):
    result = drive(
        "run",
        sft_output,
        "--work",
        tmp_path / "w",
        "--runtime",
        "local",
        "--push",
        "hf:acme/x",
        "--quant",
        "Q4_K_X",
        "--dry-run",
    )
    assert result.exit_code == 0, result.output
    assert (
        "PROBLEM: unknown quantization 'Q4_K_X'" in result.stdout
        and "PROBLEM: no Hugging Face token" in result.stdout
        and "the run would stop before its first step: 2 problem(s)" in result.stdout
    )
    assert not (tmp_path / "w").exists()


def test_local_target_inside_the_trainer_output_or_unwritable(sft_output, tmp_path):
    result = drive(
        "run",
        sft_output,
        "--work",
        tmp_path / "w",
        "--runtime",
        "local",
        "--formats",
        "lora",
        "--push",
        f"local:{sft_output / 'published'}",
    )
    assert "overlaps the trainer output" in one_line_error(result, 2)
    ro = tmp_path / "ro"
    ro.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(ro)], capture_output=True).returncode:
        pytest.skip("cannot mount a read-only file system here (needs root)")
    try:
        result = drive(
            "run",
            sft_output,
            "--work",
            tmp_path / "w",
            "--runtime",
            "local",
            "--formats",
            "lora",
            "--push",
            f"local:{ro / 'site'}",
        )
        assert "cannot be written" in one_line_error(result, 2) and not (tmp_path / "w" / "artifacts").exists()
        result = drive("run", sft_output, "--work", ro / "w", "--runtime", "local", "--formats", "lora")
        assert "the work folder" in one_line_error(result, 2)
    finally:
        subprocess.run(["umount", str(ro)], check=True)


def test_a_full_disk_is_found_before_the_first_step(sft_output, tmp_path):
    small = tmp_path / "small"
    small.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(small)], capture_output=True).returncode:
        pytest.skip("cannot mount a small file system here (needs root)")
    try:
        result = drive("run", sft_output, "--work", small / "w", "--runtime", "local", "--formats", "merged_16bit")
        line = one_line_error(result, 1)
        assert "the plan writes ~" in line and "MB margin" in line and not (small / "w" / "artifacts").exists()
    finally:
        subprocess.run(["umount", str(small)], check=True)


def test_no_ollama_server_is_found_before_the_first_step(sft_output, tmp_path):
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = drive(
        "run",
        sft_output,
        "--work",
        tmp_path / "w",
        "--runtime",
        "local",
        "--push",
        "ollama",
        env={"OLLAMA_HOST": f"127.0.0.1:{port}"},
    )
    assert f"no Ollama server answers at http://127.0.0.1:{port}" in one_line_error(result, 1)
    assert not (tmp_path / "w" / "artifacts").exists()


TOKENS = {
    "hf_w": {"user": "alice", "orgs": ["acme"], "role": "write"},
    "hf_r": {"user": "alice", "orgs": [], "role": "read"},
}


@pytest.fixture
def hub_tokens():
    """The `hub` fixture (conftest.py) with these tokens."""
    return TOKENS


@pytest.mark.parametrize(
    "token, target, says",
    [
        ("hf_r", "hf:alice/x", "read-only"),
        ("hf_w", "hf:bob/x", "cannot create repos under bob"),
        ("hf_nope", "hf:alice/x", "refused the token (401)"),
    ],
)
def test_the_token_is_checked_against_the_hub_before_the_first_step(
    hub, sft_output, tmp_path, monkeypatch, token, target, says
):
    monkeypatch.setenv("HF_TOKEN", token)
    result = drive("run", sft_output, "--work", tmp_path / "w", "--runtime", "local", "--push", target)
    assert says in one_line_error(result, 1) and not (tmp_path / "w" / "artifacts").exists()


def test_a_stalled_hub_does_not_hang_the_driver(hub, sft_output, tmp_path, monkeypatch):
    from upload_driver import preflight

    monkeypatch.setenv("HF_TOKEN", "hf_w")
    monkeypatch.setattr(preflight, "NET_WAIT", 1.0)
    hub.add_fault("GET", r"/api/whoami", action="delay", delay=8.0)
    result = drive("run", sft_output, "--work", tmp_path / "w", "--runtime", "local", "--push", "hf:alice/x")
    line = one_line_error(result, 1)  # given up on the driver's own 1 s bound, not after the server's 8 s
    assert hub.url.split("//")[1] in line and "did not answer within 1 s" in line, line
    assert not (tmp_path / "w" / "artifacts").exists()


def test_only_publishing_steps_see_the_token(monkeypatch):
    from upload_driver.local import environment

    base = {"HF_TOKEN": "hf_x", "HUGGING_FACE_HUB_TOKEN": "hf_y", "PATH": "/bin"}
    lora = PlannedStep("lora", "merge-tool", "merge_tool.cli", Path("out"))
    publish = PlannedStep("publish-hf", "hf-push-tool", "hf_push_tool.cli", Path("out"), token=True)
    merge = environment(lora, base)
    assert "HF_TOKEN" not in merge and "HUGGING_FACE_HUB_TOKEN" not in merge
    assert not Path(merge["HF_TOKEN_PATH"]).exists()
    assert environment(publish, base)["HF_TOKEN"] == "hf_x"
    monkeypatch.delenv("UPLOAD_DRIVER_DEBUG", raising=False)
    assert environment(lora, base)["TRANSFORMERS_VERBOSITY"] == "error"
    monkeypatch.setenv("UPLOAD_DRIVER_DEBUG", "1")
    assert "TQDM_DISABLE" not in environment(lora, base)


def test_a_killed_step_takes_what_it_started_with_it(tmp_path, monkeypatch):
    """The step's process starts a long-lived child, then is killed: the child is ended too, and the
    message says the step was killed without pointing at a message that does not exist."""
    from upload_common.errors import UploadError
    from upload_driver import local

    pidfile = tmp_path / "grandchild.pid"
    (tmp_path / "fakestep.py").write_text(
        textwrap.dedent(f"""
        import os, signal, subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        open({str(pidfile)!r}, "w").write(str(child.pid))
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    )
    monkeypatch.setenv("PYTHONPATH", f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    step = PlannedStep("gguf", "gguf-tool", "fakestep", tmp_path / "out")
    with pytest.raises(UploadError) as err:
        local.run(step, device="cpu", log=lambda m: None)
    assert "was killed (signal 9)" in err.value.message and "message above" not in err.value.message
    pid = int(pidfile.read_text())
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
            if Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z":
                break
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        os.kill(pid, signal.SIGKILL)
        pytest.fail("the step's child outlived it")


def test_the_summary_fits_a_narrow_terminal(done):
    root, args = done
    result = drive(*[a for a in args if a != "--json"], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    table = result.stdout.splitlines()
    assert max(len(line) for line in table) <= 80 and "…" not in result.stdout
    published = "".join(line.replace("│", "").replace(" ", "") for line in table)
    assert str(root / "site").replace(" ", "") in published


def test_run_options_reach_the_steps(sft_output, tmp_path):
    from upload_common.trainer_output import inspect_trainer_output
    from upload_driver.config import request
    from upload_driver.plan import plan

    req = request(
        sft_output, work=str(tmp_path / "w"), formats="merged_16bit", allow_pickle=True, base_model="acme/base"
    )
    steps = {s.name: s for s in plan(req, inspect_trainer_output(sft_output))}
    assert "--allow-pickle" in steps["merged_16bit"].args
    assert steps["docs"].args[steps["docs"].args.index("--base-model") + 1] == "acme/base"


def test_the_demo_says_what_to_do_next(tmp_path):
    from upload_driver.demo import next_steps

    (tmp_path / "artifacts" / "docs" / "gguf").mkdir(parents=True)
    (tmp_path / "artifacts" / "docs" / "gguf" / "README.md").write_text("card")
    lines = "\n".join(next_steps({"work": str(tmp_path)}))
    assert str(tmp_path / "artifacts" / "docs" / "gguf" / "README.md") in lines
    assert "upload-driver run ./your_sft_output --dry-run" in lines and str(tmp_path / "published") in lines


def test_kill_9_at_each_step_then_the_rerun_finishes_the_same(sft_output, tmp_path):
    """The driver and its step killed (kill -9, the whole tree) while each step in turn is half done;
    each rerun resumes; the last one finishes with every file matching its manifest, no partial folder
    left, and the adapter as an uninterrupted run makes it."""
    import psutil

    from upload_driver import state

    work, site = tmp_path / "work", tmp_path / "site"
    cmd = [
        sys.executable,
        "-m",
        "upload_driver.cli",
        "run",
        str(sft_output),
        "--work",
        str(work),
        "--formats",
        "lora,gguf",
        "--quant",
        "F16",
        "--push",
        f"local:{site}",
        "--runtime",
        "local",
    ]
    killed = []
    for step in ("merged_16bit", "gguf", "docs", "publish-local"):
        partial = work / "artifacts" / f"{step}.partial"
        proc = start_until(cmd, partial.exists, env=NO_DOCKER, timeout=180)
        if proc.poll() is None:
            for p in [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]:
                p.kill()
            proc.wait(timeout=60)
            killed.append(step)
    assert {"merged_16bit", "gguf"} <= set(killed), killed
    final = subprocess.run(
        [*cmd, "--json"], capture_output=True, text=True, env={**os.environ, **NO_DOCKER}, timeout=600
    )
    assert final.returncode == 0, final.stderr
    assert not list((work / "artifacts").glob("*.partial"))
    recorded = state.load(work)
    steps = [r["step"] for r in json.loads(final.stdout)["steps"]]
    assert steps == ["lora", "merged_16bit", "gguf", "docs", "publish-local"] and set(recorded) == set(steps)
    for name in ("lora", "merged_16bit", "gguf", "docs"):
        assert state.verify(PlannedStep(name, "merge-tool", "merge_tool.cli", work / "artifacts" / name))
    again = drive(
        "run",
        sft_output,
        "--work",
        work,
        "--formats",
        "lora,gguf",
        "--quant",
        "F16",
        "--push",
        f"local:{site}",
        "--runtime",
        "local",
        "--json",
    )
    assert all(skipped(again).values())


def test_a_tokenizer_only_its_code_defines_stops_the_run_before_any_step(sft_output, tmp_path):
    import shutil

    run_dir = Path(shutil.copytree(sft_output, tmp_path / "run"))
    marker = tmp_path / "ran"
    (run_dir / "tok.py").write_text(f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n")
    cfg = json.loads((run_dir / "tokenizer_config.json").read_text())
    cfg.update(auto_map={"AutoTokenizer": ["tok.EvilTokenizer", None]}, tokenizer_class="EvilTokenizer")
    (run_dir / "tokenizer_config.json").write_text(json.dumps(cfg))
    before = tree_hash(run_dir)
    result = drive("run", run_dir, "--work", tmp_path / "w", "--runtime", "local")
    assert "never runs code" in one_line_error(result, 1) and "EvilTokenizer" in result.output
    assert not (tmp_path / "w" / "artifacts").exists() and not marker.exists() and tree_hash(run_dir) == before


def test_a_local_target_inside_the_artifacts_is_refused(sft_output, tmp_path):
    result = drive(
        "run",
        sft_output,
        "--work",
        tmp_path / "w",
        "--runtime",
        "local",
        "--formats",
        "lora",
        "--push",
        f"local:{tmp_path / 'w' / 'artifacts' / 'site'}",
    )
    assert "overlaps the artifacts" in one_line_error(result, 2)


def test_doctor_asks_gguf_tool_itself_where_llama_cpp_is(tmp_path):
    result = drive("doctor", "--json", "--work", tmp_path, env={"UPLOAD_DRIVER_LLAMA_CPP_DIR": str(tmp_path / "none")})
    found = {f["check"]: f for f in json.loads(result.stdout)}["llama.cpp (local)"]
    assert found["status"] == "warning" and "converter is not set up" in found["detail"]
    assert found["remedy"].startswith("gguf-tool setup")
