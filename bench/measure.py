"""Measuring a process tree while it runs, for the benchmarks: peak memory, bytes read and written and the
disk a folder takes, per child of the root process (a pipeline's steps), sampled from /proc; a cgroup v1
memory group to run a command under a limit; a least-squares line through figures measured at several sizes.

``TreeSampler(pid, folder)`` samples every 50 ms in a thread: the root's direct children are the windows
(``Window``: from a child's start to the next child's start, so the root's own work after a child, such as
checking its files, counts with it); per window the peak RSS summed over the child's whole tree (and its
anonymous part: file pages of mapped model files are in RSS too, and the kernel can drop them), the peak of
the folder's bytes, and the tree's /proc/<pid>/io counters (a reaped child's counters move into its parent's,
so the sum over the live tree, root included, only grows). Linux only.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

IO_KEYS = ("read_bytes", "write_bytes", "rchar", "wchar")
CGROUP_V1 = Path("/sys/fs/cgroup/memory")


@dataclass
class Window:
    """One child of the root: what it ran and what it cost while it was the current child."""

    label: str
    start: float
    io_start: dict
    end: float | None = None
    io_end: dict | None = None
    peak_rss: int = 0
    peak_anon: int = 0
    peak_disk: int = 0
    pids: set = field(default_factory=set)

    def figures(self) -> dict:
        io = {k: self.io_end[k] - self.io_start[k] for k in IO_KEYS}
        return {
            "step": self.label,
            "wall_s": self.end - self.start,
            "peak_rss": self.peak_rss,
            "peak_anon": self.peak_anon,
            "peak_disk": self.peak_disk,
            **io,
        }


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:  # the process ended between listing and reading
        return ""


def children(pid: int) -> list[int]:
    out = []
    for tid in os.listdir(f"/proc/{pid}/task") if os.path.isdir(f"/proc/{pid}/task") else ():
        out += [int(c) for c in _read(f"/proc/{pid}/task/{tid}/children").split()]
    return out


def memory(pid: int) -> tuple[int, int]:
    """(VmRSS, RssAnon) in bytes."""
    fields = dict(line.split(":", 1) for line in _read(f"/proc/{pid}/status").splitlines() if ":" in line)
    kib = [int(fields.get(k, "0 kB").split()[0]) for k in ("VmRSS", "RssAnon")]
    return kib[0] * 1024, kib[1] * 1024


def io(pid: int) -> dict:
    fields = dict(line.split(": ", 1) for line in _read(f"/proc/{pid}/io").splitlines() if ": " in line)
    return {k: int(fields.get(k, 0)) for k in IO_KEYS}


def cmdline(pid: int) -> list[str]:
    return [a for a in _read(f"/proc/{pid}/cmdline").split("\0") if a]


def folder_bytes(folder: Path) -> int:
    total = 0
    for root, _, files in os.walk(folder):
        for name in files:
            with contextlib.suppress(OSError):  # renamed or deleted while walking
                total += os.lstat(os.path.join(root, name)).st_size
    return total


def step_label(argv: list[str]) -> str:
    """A child's label: the folder name after ``--out`` (the driver's WORK/artifacts/<step>), else its module."""
    name = Path(argv[argv.index("--out") + 1]).name if "--out" in argv[:-1] else ""
    module = argv[argv.index("-m") + 1] if "-m" in argv[:-1] else Path(argv[0]).name if argv else "?"
    if "--fingerprint" in argv:
        return f"{name or module} (--fingerprint)"
    return name or module


class TreeSampler(threading.Thread):
    def __init__(self, root: int, folder: Path, interval: float = 0.05, label=step_label):
        super().__init__(daemon=True)
        self.root, self.folder, self.interval, self.label = root, Path(folder), interval, label
        self.windows: list[Window] = []
        self.stop = threading.Event()
        self.peak_rss = self.peak_anon = self.peak_disk = 0
        self.io_total = dict.fromkeys(IO_KEYS, 0)
        self.samples = 0

    def run(self) -> None:
        self.windows.append(Window("(driver: start, checks)", time.monotonic(), dict(self.io_total)))
        while not self.stop.is_set():
            self.sample()
            self.stop.wait(self.interval)

    def finish(self) -> list[Window]:
        """Stop sampling and close the last window (the root's own last 50 ms of I/O may be missed)."""
        self.stop.set()
        self.join()
        self.sample_io()
        last = self.windows[-1]
        last.end, last.io_end = time.monotonic(), dict(self.io_total)
        return self.windows

    def sample(self) -> None:
        tree, disk = self._walk(), folder_bytes(self.folder)
        self.sample_io(tree)
        self.samples += 1
        for pid in tree[1:]:
            if self._steps[pid] == pid and not any(pid in w.pids for w in self.windows):  # a child of the root
                self._open(pid)
        current = self.windows[-1]
        if current.pids and (argv := cmdline(next(iter(current.pids)))):  # read again: a forked child execs
            current.label = self.label(argv)
        rss = anon = 0
        for pid in tree:
            if self._steps.get(pid) in current.pids:
                r, a = memory(pid)
                rss, anon = rss + r, anon + a
        current.peak_rss, current.peak_anon = max(current.peak_rss, rss), max(current.peak_anon, anon)
        current.peak_disk = max(current.peak_disk, disk)
        root_rss, root_anon = memory(self.root)
        self.peak_rss = max(self.peak_rss, rss + root_rss)
        self.peak_anon = max(self.peak_anon, anon + root_anon)
        self.peak_disk = max(self.peak_disk, disk)
        if current.label.startswith("(driver"):
            current.peak_rss, current.peak_anon = max(current.peak_rss, root_rss), max(current.peak_anon, root_anon)

    def sample_io(self, tree: list[int] | None = None) -> None:
        counters = [io(p) for p in (tree or self._walk())]
        total = {k: sum(c[k] for c in counters) for k in IO_KEYS}
        self.io_total = {k: max(self.io_total[k], total[k]) for k in IO_KEYS}  # a pid read mid-exit reads 0

    def _walk(self) -> list[int]:
        """The root, then every descendant; ``self._steps`` maps each to the root's child above it."""
        self._steps, tree, todo = {}, [self.root], [(c, c) for c in children(self.root)]
        while todo:
            pid, step = todo.pop()
            tree.append(pid)
            self._steps[pid] = step
            todo += [(c, step) for c in children(pid)]
        return tree

    def _open(self, pid: int) -> None:
        now, last = time.monotonic(), self.windows[-1]
        last.end, last.io_end = now, dict(self.io_total)
        self.windows.append(Window(self.label(cmdline(pid)), now, dict(self.io_total), pids={pid}))


def fit(sizes: list[float], values: list[float]) -> tuple[float, float] | None:
    """(intercept, slope) of the least-squares line through (size, value); None with fewer than 2 sizes."""
    if len(set(sizes)) < 2:
        return None
    slope, intercept = statistics.linear_regression(sizes, values)
    return intercept, slope


class MemoryGroup:
    """A cgroup v1 memory group with a limit; ``enter`` (a Popen preexec_fn) moves the starting child into it,
    so that the whole tree it starts is inside. ``why_not()`` says why none can be made here."""

    def __init__(self, name: str, limit_bytes: int):
        self.path, self.limit = CGROUP_V1 / name, limit_bytes

    @staticmethod
    def why_not() -> str | None:
        if not CGROUP_V1.is_dir():
            return f"no cgroup v1 memory controller at {CGROUP_V1}"
        if not os.access(CGROUP_V1, os.W_OK):
            return f"{CGROUP_V1} is not writable (root is needed)"
        return None

    def __enter__(self) -> MemoryGroup:
        self.path.mkdir(exist_ok=True)
        (self.path / "memory.limit_in_bytes").write_text(str(self.limit))
        return self

    def enter(self) -> None:
        with open(self.path / "cgroup.procs", "w") as f:
            f.write(str(os.getpid()))

    def report(self) -> dict:
        oom = dict(line.split() for line in _read(str(self.path / "memory.oom_control")).splitlines())
        return {
            "limit": self.limit,
            "max_usage": int(_read(str(self.path / "memory.max_usage_in_bytes")) or 0),
            "failcnt": int(_read(str(self.path / "memory.failcnt")) or 0),
            "oom_kills": int(oom.get("oom_kill", 0)),
        }

    def __exit__(self, *exc) -> None:
        for _ in range(50):  # the tree's last processes may still be exiting
            try:
                self.path.rmdir()
                return
            except OSError:
                time.sleep(0.1)


def print_figures(figures: dict, as_json: bool, width: int = 40) -> None:
    """A benchmark's named figures on stdout: JSON, or one aligned line each (floats to two decimals)."""
    import json

    if as_json:
        print(json.dumps(figures, indent=2))
        return
    for key, value in figures.items():
        print(f"{key:<{width}} {value:.2f}" if isinstance(value, float) else f"{key:<{width}} {value}")


def sample_copies(root: Path, copies: int) -> list[Path]:
    """``copies`` trainer outputs under ``root/runs`` (made afresh), each a copy of the demo's sample (made
    once, in ``root/sample``): the batch benchmarks' runs."""
    import shutil
    import sys

    from upload_driver.demo import make_sample

    shutil.rmtree(root / "runs", ignore_errors=True)
    print("making the sample (once)", file=sys.stderr)
    sample = make_sample(root / "sample")
    return [Path(shutil.copytree(sample, root / "runs" / f"run-{i}")) for i in range(copies)]
