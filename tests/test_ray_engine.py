"""The Ray engine on a real two-node cluster on 127.0.0.1 (tests/ray_cluster.py): the work folder probed on
every node, a run's steps submitted as Ray tasks give the files a sequential ``upload-driver run`` gives,
GPU steps land on the node with the GPU resource, a rerun skips every step. Nothing is mocked."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import sys
from pathlib import Path

import pytest
from ray_cluster import run_in_cluster, unavailable

from driver_helpers import drive, one_line_error
from upload_common.errors import UsageError

NO_CLUSTER = unavailable()

SCENARIO = """
import json, sys
from pathlib import Path
from upload_common.errors import UploadError
from upload_driver import ray_engine

address, work, not_shared, readonly, config, out = sys.argv[1:7]
found = {"probe": ray_engine.probe_work(Path(work), address=address), "refusals": {}}
for name, folder in (("not_shared", not_shared), ("readonly", readonly)):
    try:
        ray_engine.probe_work(Path(folder), address=address)
    except UploadError as exc:
        found["refusals"][name] = [type(exc).__name__, exc.message, exc.fields.get("node")]
jobs = ray_engine.unit_jobs("sft/final", json.loads(config))
found["jobs"] = [[j.key, list(j.after), j.num_gpus] for j in jobs]
for attempt in ("first", "rerun"):
    events = []
    results = ray_engine.submit(jobs, address=address, on_event=lambda e: events.append([e.key, e.what, e.node]))
    found[attempt] = {"results": results, "events": events}

# a node lost in the middle of a step: the merge made again (its output deleted), the worker node killed
# as soon as the merge writes its partial folder, then started again (the only node with a GPU)
import shutil, subprocess, threading, time
import ray, ray_cluster
artifacts = Path(work) / "artifacts"
shutil.rmtree(artifacts / "merged_16bit")
gpu = next(n["NodeID"] for n in ray.nodes() if n["Alive"] and n["Resources"].get("GPU"))
lost = found["lost"] = {"node": gpu}

def lose_and_return():
    partial, deadline = artifacts / "merged_16bit.partial", time.monotonic() + 120
    while not partial.exists() and time.monotonic() < deadline:
        time.sleep(0.002)
    lost["partial_seen"] = partial.exists()
    lost["pids"] = ray_cluster.lose_node(gpu)
    subprocess.run(ray_cluster.worker_command(), shell=True, check=True, capture_output=True)

thread = threading.Thread(target=lose_and_return)
thread.start()
events = []
lost["results"] = ray_engine.submit(jobs, address=address, on_event=lambda e: events.append([e.key, e.what, e.node]))
thread.join()
lost["events"] = events
lost["gpu_nodes"] = [n["NodeID"] for n in ray.nodes() if n["Alive"] and n["Resources"].get("GPU")]

def assigned():
    return ray_engine._assigned_gpus()

found["assigned"] = ray.get([ray.remote(num_gpus=1)(assigned).remote(), ray.remote(num_gpus=0)(assigned).remote()])
Path(out).write_text(json.dumps(found))
"""


MOMENT = {"timings", "free_bytes"}  # when a step ran, the free disk space it saw then


def _record(data: dict) -> dict:
    """A JSON record (a step manifest, the upload manifest) without what depends on the moment a step ran:
    its timings and free space, and so the hashes of the manifests that hold them (an input's or a set's
    ``manifest_sha256``, the fingerprint of a step made from them, the sha256 of a record it wrote)."""
    upstream = any("manifest_sha256" in i for i in (data.get("inputs") or {}).values() if isinstance(i, dict))

    def clean(value):
        if isinstance(value, dict):
            skip = MOMENT | {"manifest_sha256"} | ({"fingerprint"} if upstream else set())
            if str(value.get("path", "")).endswith(".json"):
                skip |= {"sha256", "size"}
            return {k: clean(v) for k, v in value.items() if k not in skip}
        return [clean(v) for v in value] if isinstance(value, list) else value

    return clean(data)


def _files(root: Path) -> dict[str, str]:
    """sha256 of every file below ``root``, byte for byte; a JSON record as ``_record`` keeps it."""
    found = {}
    for p in sorted(root.rglob("*")):
        if not p.is_file():
            continue
        data = p.read_bytes()
        if p.name in ("manifest.json", "upload_manifest.json"):
            data = json.dumps(_record(json.loads(data)), sort_keys=True).encode()
        found[str(p.relative_to(root))] = hashlib.sha256(data).hexdigest()
    return found


@pytest.fixture(scope="module")
def batch(sft_output, tmp_path_factory):
    """One sequential `upload-driver run` of the sample (its files kept as hashes), then the same run's
    steps on the cluster in the same work folder, probes first, then a rerun."""
    pytest.importorskip("ray", reason="the Ray engine's tests need upload-driver[ray]")
    if NO_CLUSTER:
        pytest.skip(NO_CLUSTER)
    tmp = tmp_path_factory.mktemp("ray")
    work = tmp / "work"
    result = drive("run", sft_output, "--work", work, "--formats", "lora,merged_16bit", "--runtime", "local")
    assert result.exit_code == 0, result.output
    sequential = _files(work / "artifacts")
    shutil.move(work, tmp / "sequential")  # kept for a look when the files differ
    not_shared, readonly = tmp / "not-shared", tmp / "readonly"
    not_shared.mkdir()
    readonly.mkdir()
    config = {"trainer_output": str(sft_output), "work": str(work), "formats": ["lora", "merged_16bit"]}
    config["runtime"] = "local"
    out = tmp / "found.json"
    run = run_in_cluster(
        SCENARIO,
        tmp / "c",
        args=[work, not_shared, readonly, json.dumps(config), out],
        private=[not_shared],
        readonly=[readonly],
    )
    assert run.returncode == 0 and out.is_file(), run.stderr[-12000:]
    return {"found": json.loads(out.read_text()), "run": run, "sequential": sequential, "work": work}


def test_probe_passes_on_a_shared_folder_and_names_a_node_that_cannot_use_it(batch):
    found, run = batch["found"], batch["run"]
    assert sorted(p["node"] for p in found["probe"]) == sorted(n["node"] for n in run.nodes)
    kind, message, node = found["refusals"]["readonly"]
    assert kind == "InvalidInput" and node == run.gpu_node  # only the worker node sees it read-only
    assert f"node {node[:12]} (127.0.0.1) cannot write" in message and "\n" not in message
    kind, message, node = found["refusals"]["not_shared"]  # the worker has a folder of its own there
    assert kind == "InvalidInput" and "is not shared with every node" in message and "does not see" in message
    assert not list((batch["work"] / ".upload-driver" / "probe").iterdir())  # the probe files went away


def test_steps_on_the_cluster_give_the_sequential_runs_files(batch):
    found = batch["found"]
    assert [k for k, _, _ in found["jobs"]] == ["sft/final/lora", "sft/final/merged_16bit", "sft/final/docs"]
    assert found["jobs"][2][1] == ["sft/final/lora", "sft/final/merged_16bit"]  # docs-tool waits for both
    first = found["first"]["results"]
    assert {k: r["status"] for k, r in first.items()} == dict.fromkeys(first, "finished"), first
    assert _files(batch["work"] / "artifacts") == batch["sequential"]


def test_gpu_steps_run_on_the_node_with_the_gpu_resource(batch):
    found, gpu = batch["found"], batch["run"].gpu_node
    gpu_jobs = [k for k, _, gpus in found["jobs"] if gpus]
    assert gpu_jobs == ["sft/final/lora", "sft/final/merged_16bit"]
    assert all(found["first"]["results"][k]["node"] == gpu for k in gpu_jobs)
    events = found["first"]["events"]
    for key in gpu_jobs:  # told where it started, then that it finished, in that order
        assert [what for k, what, _ in events if k == key] == ["started", "finished"]
        assert [node for k, what, node in events if k == key and what == "started"] == [gpu]


def test_a_task_asking_for_a_gpu_is_pinned_to_the_one_ray_gave_it(batch):
    assert batch["found"]["assigned"] == ["0", None]  # a step's container then gets that GPU alone


def test_a_rerun_skips_every_step(batch):
    rerun = batch["found"]["rerun"]["results"]
    assert {r["status"] for r in rerun.values()} == {"skipped"}, rerun
    assert _files(batch["work"] / "artifacts") == batch["sequential"]


def test_a_step_on_a_lost_node_is_retried_and_the_files_are_the_same(batch):
    lost = batch["found"]["lost"]
    assert lost["partial_seen"] and lost["pids"], lost  # the merge was writing when its node went
    results = lost["results"]
    assert {k: r["status"] for k, r in results.items()} == {
        "sft/final/lora": "skipped",
        "sft/final/merged_16bit": "finished",
        "sft/final/docs": "finished",
    }, results
    merge = [what for k, what, _ in lost["events"] if k == "sft/final/merged_16bit"]
    assert merge == ["started", "retried", "started", "finished"], lost["events"]
    node = results["sft/final/merged_16bit"]["node"]
    assert node != lost["node"] and lost["gpu_nodes"] == [node]  # the node that came back, the one with a GPU
    assert _files(batch["work"] / "artifacts") == batch["sequential"]
    assert not (batch["work"] / "artifacts" / "merged_16bit.partial").exists()


def test_without_ray_the_engine_refuses_naming_the_extra(monkeypatch):
    from upload_driver import ray_engine

    monkeypatch.setitem(sys.modules, "ray", None)  # as if upload-driver[ray] were not installed
    with pytest.raises(UsageError) as info:
        ray_engine.submit([], address="127.0.0.1:1", on_event=print)
    assert info.value.exit_code == 2 and "pip install 'upload-driver[ray]'" in info.value.message


def test_no_cluster_at_the_address_is_one_line_in_bounded_time():
    import socket

    from upload_driver import ray_engine

    with socket.socket() as s:  # a port on this machine where nothing listens any more
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(UsageError, match=f"no Ray cluster answered at 127.0.0.1:{port}"):
        ray_engine.connect(f"127.0.0.1:{port}")


def test_jobs_out_of_order_or_waiting_for_nothing_are_refused():
    from upload_driver.ray_engine import StepJob, _ordered

    a, b = StepJob("r/c/a", "a", {}), StepJob("r/c/b", "b", {}, after=("r/c/a",))
    assert [j.key for j in _ordered([b, a])] == ["r/c/a", "r/c/b"]
    with pytest.raises(UsageError, match="waits for unknown job"):
        _ordered([StepJob("r/c/x", "x", {}, after=("r/c/gone",))])
    with pytest.raises(UsageError, match="cycle"):
        _ordered([StepJob("r/c/a", "a", {}, after=("r/c/b",)), StepJob("r/c/b", "b", {}, after=("r/c/a",))])


BATCH_SCENARIO = """
import json, subprocess, sys
address, batch_file, work, unseen, out = sys.argv[1:6]
batch = [sys.executable, "-m", "upload_driver.cli", "batch", batch_file, "--engine", "ray"]
found = {}
attempts = (
    ("first", ["--work", work, "--address", address, "--json"]),
    ("rerun", ["--work", work]),
    ("unseen", ["--work", unseen, "--address", address]),  # a folder the worker node has a copy of its own of
)
for attempt, args in attempts:
    env = None if "--address" in args else {**__import__("os").environ, "RAY_ADDRESS": address}
    p = subprocess.run([*batch, *args], capture_output=True, text=True, env=env)
    found[attempt] = {"rc": p.returncode, "stdout": p.stdout, "stderr": p.stderr}
open(out, "w").write(json.dumps(found))
"""


@pytest.fixture(scope="module")
def ray_batch(sft_output, tmp_path_factory):
    """`upload-driver batch` of two trainer outputs (the sample and a copy) with --engine local (its files
    kept as hashes), then the same batch in the same work folder with --engine ray on the cluster, twice."""
    pytest.importorskip("ray", reason="the Ray engine's tests need upload-driver[ray]")
    if NO_CLUSTER:
        pytest.skip(NO_CLUSTER)
    tmp = tmp_path_factory.mktemp("ray-batch")
    shutil.copytree(sft_output, tmp / "copy")
    batch_file, work = tmp / "batch.toml", tmp / "work"
    runs = "".join(
        f'[[run]]\ntrainer_output = "{p}"\nname = "{n}"\n' for n, p in (("one", sft_output), ("two", "copy"))
    )
    batch_file.write_text(f'formats = ["lora", "merged_16bit"]\nruntime = "local"\n{runs}')
    local = drive("batch", batch_file, "--work", work, "--engine", "local", "--json")
    assert local.exit_code == 0, local.output
    units = ("one/final", "two/final")
    expected = {u: _files(work / u / "artifacts") for u in units}
    shutil.move(work, tmp / "local")
    out = tmp / "found.json"
    unseen = tmp / "unseen"
    unseen.mkdir()
    run = run_in_cluster(BATCH_SCENARIO, tmp / "c", args=[batch_file, work, unseen, out], private=[unseen])
    assert run.returncode == 0 and out.is_file(), run.stderr[-12000:]
    found = json.loads(out.read_text())
    got = {u: _files(work / u / "artifacts") for u in units}
    return {"found": found, "run": run, "expected": expected, "got": got, "unseen": unseen}


def test_a_batch_on_the_cluster_gives_the_local_engines_files_gpu_steps_on_the_gpu_node(ray_batch):
    first, gpu = ray_batch["found"]["first"], ray_batch["run"].gpu_node
    assert first["rc"] == 0, first["stderr"][-4000:]
    assert ray_batch["got"] == ray_batch["expected"]
    result = json.loads(first["stdout"])
    assert result["engine"] == "ray" and result["failed"] == []
    steps = {(u["run"], s["step"]): s for u in result["units"] for s in u["steps"]}
    assert {k: s["status"] for k, s in steps.items()} == {
        (run, step): "done" for run in ("one", "two") for step in ("lora", "merged_16bit", "docs")
    }
    for run in ("one", "two"):
        assert steps[run, "lora"]["node"] == steps[run, "merged_16bit"]["node"] == gpu
        assert f"{run}/final merged_16bit: started on 127.0.0.1 ({gpu[:12]})" in first["stderr"]
        assert f"{run}/final docs: finished in " in first["stderr"]


def test_a_batch_rerun_on_the_cluster_skips_every_step(ray_batch):
    rerun = ray_batch["found"]["rerun"]
    assert rerun["rc"] == 0, rerun["stderr"][-4000:]
    assert rerun["stderr"].count(": skipped") == 6
    rows = [line for line in rerun["stdout"].splitlines() if len(re.findall("[│┃]", line)) == 7]
    cells = [[c.strip() for c in re.split("[│┃]", line)[1:7]] for line in rows]
    assert cells[0] == ["run", "checkpoint", "step", "node", "seconds", "status"]
    assert len(cells) == 7 and {r[5] for r in cells[1:]} == {"skipped"}


def test_a_batch_whose_work_folder_a_node_cannot_see_is_refused_before_any_step(ray_batch):
    unseen = ray_batch["found"]["unseen"]
    assert unseen["rc"] != 0 and "Traceback" not in unseen["stderr"]
    errors = [line for line in unseen["stderr"].splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "is not shared with every node" in errors[0], unseen["stderr"][-2000:]
    assert ": started" not in unseen["stderr"]
    assert not any(ray_batch["unseen"].glob("*/*/artifacts"))  # no unit wrote a thing


def test_the_ray_engine_without_ray_is_one_line_naming_the_extra(sft_output, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if upload-driver[ray] were not installed
    result = drive("batch", sft_output, "--engine", "ray", "--address", "127.0.0.1:1", "--work", tmp_path / "w")
    assert "pip install 'upload-driver[ray]'" in one_line_error(result, 2)
    assert not (tmp_path / "w").exists()
