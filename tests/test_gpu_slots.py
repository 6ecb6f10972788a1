"""One GPU step per GPU: the GPUs a batch offers its GPU steps (CUDA_VISIBLE_DEVICES, else nvidia-smi),
the pool they wait on, and each step pinned to its GPU (a local process's environment, a container's
device request)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from upload_driver import containers, local
from upload_driver.gpu_slots import GpuSlots, visible_gpus
from upload_driver.plan import PlannedStep


@pytest.mark.parametrize(
    ("env", "listed", "expected"),
    [
        ({"CUDA_VISIBLE_DEVICES": "0,2"}, "0\n1\n2\n", ("0", "2")),  # the user's choice wins
        ({"CUDA_VISIBLE_DEVICES": "GPU-5f1c, GPU-9a2b"}, "", ("GPU-5f1c", "GPU-9a2b")),
        ({"CUDA_VISIBLE_DEVICES": ""}, "0\n", ()),  # set and empty: no GPU
        ({"CUDA_VISIBLE_DEVICES": "-1"}, "0\n", ()),
        ({}, "0\n1\n", ("0", "1")),  # nvidia-smi --query-gpu=index
        ({}, "", ()),  # no nvidia-smi, or no answer
    ],
)
def test_the_gpus_a_batch_may_use(env, listed, expected):
    assert visible_gpus(env, query=lambda: listed) == expected


def _hold_all(slots: GpuSlots, n: int) -> tuple[int, list]:
    """``n`` threads each holding a slot for a moment: the most held at once, and the ids they got."""
    lock, held, most, got = threading.Lock(), set(), [0], []

    def work():
        with slots.take() as gpu:
            with lock:
                assert gpu not in held  # never two steps on one GPU
                held.add(gpu)
                got.append(gpu)
                most[0] = max(most[0], len(held))
            time.sleep(0.05)
            with lock:
                held.discard(gpu)

    threads = [threading.Thread(target=work) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return most[0], got


def test_two_gpus_run_two_steps_at_once_and_never_two_on_one():
    slots = GpuSlots(("0", "1"))
    most, got = _hold_all(slots, 6)
    assert slots.count == 2 and most == 2 and sorted(set(got)) == ["0", "1"] and len(got) == 6


def test_without_a_gpu_gpu_steps_run_one_at_a_time():
    slots = GpuSlots(())
    most, got = _hold_all(slots, 3)
    assert slots.count == 1 and most == 1 and got == [None, None, None]


def test_a_local_step_sees_only_its_gpu(tmp_path, monkeypatch):
    """A real process: the step's module writes the CUDA_VISIBLE_DEVICES it was started with."""
    (tmp_path / "mods").mkdir()
    (tmp_path / "mods" / "show_gpus.py").write_text(
        "import os, sys\nopen(sys.argv[1], 'w').write(os.environ.get('CUDA_VISIBLE_DEVICES', '(unset)'))\n"
    )
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "mods"))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    step = PlannedStep("merged_16bit", "merge-tool", "show_gpus", tmp_path / "seen.txt", (("out",),), gpu=True)
    local.run(step, device="cuda", log=print, gpu_id="1")
    assert (tmp_path / "seen.txt").read_text() == "1"
    local.run(step, device="cuda", log=print)  # not pinned: what the user set
    assert (tmp_path / "seen.txt").read_text() == "0,1"


def test_a_container_gets_only_its_gpu(tmp_path):
    step = PlannedStep("merged_16bit", "merge-tool", "merge_tool.cli", tmp_path / "artifacts" / "m", gpu=True)
    pinned = containers.spec(step, device="cuda", gpu=True, work=tmp_path, token_file=None, gpu_id="1")
    (request,) = pinned["device_requests"]
    assert request["DeviceIDs"] == ["1"] and request["Capabilities"] == [["gpu"]]
    assert "--gpus device=1" in containers.describe(pinned)
    every = containers.spec(step, device="cuda", gpu=True, work=tmp_path, token_file=None)
    assert every["device_requests"][0]["Count"] == -1 and "--gpus all" in containers.describe(every)
    none = containers.spec(step, device="cpu", gpu=False, work=tmp_path, token_file=None, gpu_id="1")
    assert none["device_requests"] is None and "--gpus" not in containers.describe(none)


def test_a_batch_records_its_gpu_slots(sft_output, tmp_path, monkeypatch):
    """The local engine's pool is the visible GPUs: two named, two slots (steps run on the CPU here)."""
    import json

    from driver_helpers import drive

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    result = drive("batch", sft_output, "--work", tmp_path / "w", "--json", "--config", _lora_only(tmp_path))
    assert result.exit_code == 0, (result.output, result.stderr)
    assert json.loads(result.stdout)["gpu_slots"] == 2


def _lora_only(tmp_path: Path) -> Path:
    config = tmp_path / "run.toml"
    config.write_text('formats = ["lora"]\nruntime = "local"\n')
    return config
