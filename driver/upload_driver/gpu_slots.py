"""One GPU step per GPU: the GPUs this machine offers a batch, and the pool its GPU-marked steps draw
from. A step holds one GPU while it runs and sees that one only (``CUDA_VISIBLE_DEVICES`` for a local
process, the container's device request for Docker); with no GPU known there is one slot, so GPU-marked
steps still run one at a time (on a CPU-only machine: one model held at once)."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator, Mapping

from .nvidia import indexes


def visible_gpus(env: Mapping[str, str] | None = None, query: Callable[[], str] = indexes) -> tuple[str, ...]:
    """The GPUs steps may be given, as ``CUDA_VISIBLE_DEVICES`` names them: its own entries when it is set
    (set but empty: none), else every index ``nvidia-smi`` lists."""
    env = os.environ if env is None else env
    listed = env["CUDA_VISIBLE_DEVICES"] if "CUDA_VISIBLE_DEVICES" in env else ",".join(query().split())
    ids = [i.strip() for i in listed.split(",") if i.strip()]
    return tuple(dict.fromkeys(i for i in ids if i != "-1"))


class GpuSlots:
    """``take()``: a context manager that waits for a free GPU and gives its id while held (None: no GPU
    known, the single slot)."""

    def __init__(self, ids: tuple[str, ...]):
        self.ids = ids
        self._free = list(ids) or [None]
        self._ready = threading.Condition()

    @property
    def count(self) -> int:
        return max(1, len(self.ids))

    @contextlib.contextmanager
    def take(self) -> Iterator[str | None]:
        with self._ready:
            self._ready.wait_for(lambda: bool(self._free))
            gpu = self._free.pop(0)
        try:
            yield gpu
        finally:
            with self._ready:
                self._free.append(gpu)
                self._ready.notify()
