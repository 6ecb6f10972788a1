"""upload-driver against mistakes and faults in its runs: two runs on one work folder, a lock left by a killed
run, outputs changed behind its back, what a step's process may see and the options that reach it, a killed
step's leftovers, kill -9 at each step then a rerun, the summary on a narrow terminal, the demo's next steps.
Mistakes found before the first step are tested in test_hostile_driver_preflight.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import textwrap
import time
from pathlib import Path

import pytest

from conftest import start_until
from driver_helpers import NO_DOCKER, drive, driver_process, one_line_error, skipped
from upload_driver.plan import PlannedStep


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


def test_a_second_run_on_the_same_work_folder_is_refused(sft_output, tmp_path):
    """The first run holds the lock (seen in its file); the second refuses in one line naming it; the
    first finishes with outputs that match their manifests; a rerun skips everything."""
    work = tmp_path / "work"
    cmd = driver_process(sft_output, work, "--formats", "lora,merged_16bit")
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
    cmd = driver_process(sft_output, work, "--formats", "lora,gguf", "--quant", "F16", "--push", f"local:{site}")
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
    again = drive(*cmd[3:], "--json")  # the same run in this process
    assert all(skipped(again).values())
