"""A real two-node Ray cluster for a test, on 127.0.0.1 only.

Ray advertises a machine's outward interface address even when told ``--node-ip-address=127.0.0.1``;
inside a network namespace that holds only the loopback device it has no other choice. ``run_in_cluster``
starts such a namespace (``unshare -n``) with a PID namespace of its own (``-p -f --mount-proc``), so
every Ray process ends with it: nothing is left behind and nothing is stopped by name. In it: a head
with one CPU and a worker with one CPU and one GPU resource (``--num-gpus 1``, which Ray accepts
without a GPU: the resource only proves where GPU steps are placed, the steps run on the CPU), then the
test's script. The worker node can be given folders of its own that the head does not share (an empty
tmpfs over them) or sees read-only: a node that cannot see or write the work folder."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

PORT = 6379
ADDRESS = f"127.0.0.1:{PORT}"
# Ray's socket paths must fit in 107 bytes: the cluster's temp folder (under the test's tmp folder) is
# bound onto this short path inside the namespace's own mount namespace (the machine's is not touched)
SHORT = "/mnt"
NODES = """
import json, sys, time, ray
ray.init(address=sys.argv[1], logging_level="error", log_to_driver=False)
for _ in range(300):
    nodes = [n for n in ray.nodes() if n["Alive"]]
    if len(nodes) >= 2:
        break
    time.sleep(0.1)
print(json.dumps([{"node": n["NodeID"], "address": n["NodeManagerAddress"], "resources": n["Resources"]}
                  for n in nodes]))
"""


@dataclass(frozen=True)
class ClusterRun:
    """The script's exit code and output, and the nodes as Ray listed them (node, address, resources)."""

    returncode: int
    stdout: str
    stderr: str
    nodes: tuple[dict, ...]

    @property
    def gpu_node(self) -> str:
        return next(n["node"] for n in self.nodes if n["resources"].get("GPU"))


def unavailable() -> str | None:
    """Why a cluster of loopback-only namespaces cannot be made here, or None."""
    if not sys.platform.startswith("linux") or not shutil.which("unshare") or not shutil.which("ip"):
        return "needs Linux with unshare and ip (util-linux, iproute2)"
    probe = subprocess.run(
        ["unshare", "-n", "-p", "-f", "--mount-proc", "ip", "link", "set", "lo", "up"],
        capture_output=True,
        text=True,
    )
    return None if probe.returncode == 0 else f"unshare -n cannot run here: {probe.stderr.strip()}"


def _ray(*args) -> str:
    return shlex.join([str(Path(sys.executable).with_name("ray")), *map(str, args)])


def _common() -> list:
    return ["--num-cpus", 1, "--object-store-memory", 80 * 2**20, "--disable-usage-stats"]


def worker_command() -> str:
    """``ray start`` of the worker node: one CPU, one GPU resource."""
    return _ray("start", "--address", ADDRESS, "--num-gpus", 1, *_common())


def lose_node(node_id: str) -> list[int]:
    """Inside the cluster's namespace: end a node as a lost machine ends, at once and whole: SIGKILL to
    its raylet (found by the port it listens on) and to every process under it (its Ray workers and the
    step they run). The namespace holds only this test's processes. Returns the pids."""
    import psutil
    import ray

    port = next(n["NodeManagerPort"] for n in ray.nodes() if n["NodeID"] == node_id)
    listening = [c.pid for c in psutil.net_connections("tcp") if c.laddr and c.laddr.port == port and c.pid]
    raylet = psutil.Process(listening[0])
    doomed = [raylet, *raylet.children(recursive=True)]
    for proc in doomed:
        proc.kill()
    psutil.wait_procs(doomed, timeout=30)
    return [p.pid for p in doomed]


def _worker_mounts(private: Sequence[Path], readonly: Sequence[Path]) -> str:
    lines = [f"mount -t tmpfs -o size=16m tmpfs {shlex.quote(str(p))}" for p in private]
    for p in map(lambda x: shlex.quote(str(x)), readonly):
        lines += [f"mount --bind {p} {p}", f"mount -o remount,bind,ro {p}"]
    return "; ".join(lines) or "true"


def run_in_cluster(
    script: str,
    tmp: Path,
    *,
    args: Sequence[str] = (),
    private: Sequence[Path] = (),
    readonly: Sequence[Path] = (),
    env: dict | None = None,
    timeout: float = 600,
) -> ClusterRun:
    """Run ``script`` (Python, given the cluster's address as argv[1], then ``args``; it can import this
    module) in a fresh loopback-only namespace holding a two-node cluster whose files live under ``tmp``,
    with ``env`` over this process's environment; every node's address is asserted to be 127.0.0.1."""
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "script.py").write_text(script, encoding="utf-8")
    (tmp / "nodes.py").write_text(NODES, encoding="utf-8")
    head = _ray("start", "--head", "--port", PORT, "--include-dashboard=false", "--temp-dir", SHORT, *_common())
    worker = worker_command()
    py = shlex.quote(sys.executable)
    body = "; ".join(
        [
            "set -e",
            "ip link set lo up",
            f"mkdir -p {shlex.quote(str(tmp / 'ray'))}",
            f"mount --bind {shlex.quote(str(tmp / 'ray'))} {SHORT}",
            f"{head} >{shlex.quote(str(tmp / 'head.log'))} 2>&1",
            f"unshare -m --propagation private bash -c {shlex.quote(_worker_mounts(private, readonly) + '; ' + worker)}"
            f" >{shlex.quote(str(tmp / 'worker.log'))} 2>&1",
            f"{py} {shlex.quote(str(tmp / 'nodes.py'))} {ADDRESS} >{shlex.quote(str(tmp / 'nodes.json'))}",
            "set +e",
            f"{py} {shlex.quote(str(tmp / 'script.py'))} {ADDRESS} {shlex.join(map(str, args))}",
        ]
    )
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1", **(env or {})}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).parent), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        ["unshare", "-n", "-p", "-f", "--mount-proc", "bash", "-c", body],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )
    nodes_file = tmp / "nodes.json"
    assert nodes_file.is_file() and nodes_file.read_text().strip(), (
        f"the cluster did not start: {proc.stderr[-2000:]}\n{_logs(tmp)}"
    )
    nodes = tuple(json.loads(nodes_file.read_text()))
    assert len(nodes) == 2, nodes
    assert {n["address"] for n in nodes} == {"127.0.0.1"}, nodes  # never the machine's other interfaces
    return ClusterRun(proc.returncode, proc.stdout, proc.stderr, nodes)


def _logs(tmp: Path) -> str:
    return "\n".join(
        p.read_text(errors="replace")[-2000:] for p in (tmp / "head.log", tmp / "worker.log") if p.exists()
    )
