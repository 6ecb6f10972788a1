"""A file written from a stream of blocks by a chain of threads: check, write, hash.

The caller's thread produces the blocks (the computation); each stage runs in a thread of its own
and hands a block on through a queue of one, so computing, checking, writing and hashing successive
blocks overlap: numpy, file writes and hashlib release the GIL on large buffers. The sha256 of a file
is sequential, so hashing is one stage, fed in file order; it no longer waits behind the disk. A
block is written only once checked, and at most a few blocks are held at once, whatever the file's
size. The first error of any stage stops the chain and is raised in the caller's thread, with the
stage's frames in its traceback, once every thread has ended.
"""

from __future__ import annotations

import hashlib
import os
import queue
import threading
from collections.abc import Callable, Iterable

WRITEBACK_BYTES = 64 << 20
_END = object()


def write_blocks(f, head: bytes, blocks: Iterable, check: Callable | None = None, on_bytes=None) -> str:
    """Write ``head``, then the data of each ``(data, tag)`` in ``blocks`` (flat uint8 numpy arrays), to
    the open file ``f``; ``check(data, tag)`` runs on each block before it is written, and may raise
    to refuse it. ``on_bytes(n)`` counts the blocks' bytes as they are written. Returns the sha256
    of everything written."""
    h = hashlib.sha256(head)
    f.write(head)
    kicked = [0]

    def checker(item):
        if check:
            check(*item)

    def writer(item):
        f.write(item[0])
        if on_bytes:
            on_bytes(item[0].nbytes)
        if f.tell() - kicked[0] >= WRITEBACK_BYTES:
            kicked[0] = _start_writeback(f, kicked[0])

    def hasher(item):
        h.update(item[0])

    chain = _Chain([checker, writer, hasher])
    try:
        for item in blocks:
            chain.put(item)
    finally:
        chain.close()
    if chain.failed:
        raise chain.failed[0]
    return h.hexdigest()


def _start_writeback(f, start: int) -> int:
    """Start writing the range to disk now (asynchronously) and let its pages go from the cache, so
    the disk works while the next blocks are computed instead of all at the final fsync."""
    f.flush()
    end = f.tell()
    if hasattr(os, "posix_fadvise"):
        os.posix_fadvise(f.fileno(), start, end - start, os.POSIX_FADV_DONTNEED)
    return end


def fsync_path(path) -> None:
    """Flush a finished file to disk (run in the background while the next one is written)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _Chain:
    """Threads applying ``stages`` in order to each item put; bounded queues between them."""

    def __init__(self, stages: list[Callable]):
        self.failed: list[BaseException] = []
        self.inboxes = [queue.Queue(maxsize=1) for _ in stages]
        self.threads = [
            threading.Thread(target=self._run, args=(n, stage), daemon=True) for n, stage in enumerate(stages)
        ]
        for t in self.threads:
            t.start()

    def _run(self, n: int, stage: Callable) -> None:
        inbox, outbox = self.inboxes[n], self.inboxes[n + 1] if n + 1 < len(self.inboxes) else None
        while (item := inbox.get()) is not _END:
            if self.failed:
                continue  # keep draining, so no thread before this one blocks on a full queue
            try:
                stage(item)
            except BaseException as exc:  # raised in the caller's thread
                self.failed.append(exc)
                continue
            if outbox:
                outbox.put(item)
        if outbox:
            outbox.put(_END)

    def put(self, item) -> None:
        self.inboxes[0].put(item)
        if self.failed:
            raise self.failed[0]

    def close(self) -> None:
        """Let every queued item through (or drain it after an error) and end the threads."""
        self.inboxes[0].put(_END)
        for t in self.threads:
            t.join()
