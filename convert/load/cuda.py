"""Loading straight to a CUDA device: file → pinned staging buffer → device, overlapped, one sync.

`Stager` keeps a pinned host buffer split in slots (allocated once per device, reused by every
load). Reader threads `preadv` file chunks into free slots while the main thread queues each full
slot's host-to-device copy on a side stream and records an event; a reader reuses a slot only
after that slot's event has completed. Reads, copies and the next reads therefore overlap, and
the host waits for the device once, at the end. Each storage gets its own device allocation.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import torch

from .materialize import Job, open_checked, pread_exact, read_threads

SLOT = 32 << 20
SLOTS = 8


class Stager:
    """A reusable pinned staging buffer and side stream for one CUDA device."""

    def __init__(self, device: torch.device, slot_bytes: int = SLOT, slots: int = SLOTS) -> None:
        self.device, self.slot_bytes, self.slots = device, slot_bytes, slots
        self.host = torch.empty(slots * slot_bytes, dtype=torch.uint8, pin_memory=True)
        self.views = [memoryview(self.host[i * slot_bytes:(i + 1) * slot_bytes].numpy()) for i in range(slots)]
        self.stream = torch.cuda.Stream(device)
        self.events = [torch.cuda.Event() for _ in range(slots)]
        self.lock = threading.Lock()  # one load at a time per stager

    def load(self, jobs: list[Job], threads: int | None = None) -> dict[tuple[int, str], torch.Tensor]:
        """(id(file), key) → a uint8 tensor on the device holding the entry's bytes."""
        out: dict[tuple[int, str], torch.Tensor] = {}
        if not jobs:
            return out
        with self.lock, torch.cuda.device(self.device):
            fds: dict[int, int] = {}
            try:
                pieces = []
                for job in jobs:
                    if id(job.file) not in fds:
                        fds[id(job.file)] = open_checked(job.file)
                    dst = torch.empty(job.nbytes, dtype=torch.uint8, device=self.device)
                    out[(id(job.file), job.key)] = dst
                    for start in range(0, job.nbytes, self.slot_bytes):
                        n = min(self.slot_bytes, job.nbytes - start)
                        pieces.append((fds[id(job.file)], job.offset + start, n, dst, start, job.file.path.name))
                # the allocations above are ordered on the current stream; the copies run on ours
                self.stream.wait_stream(torch.cuda.current_stream(self.device))
                self._pipeline(pieces, threads or read_threads())
                self.stream.synchronize()  # the one host-device synchronisation
            finally:
                for fd in fds.values():
                    os.close(fd)
        return out

    def _pipeline(self, pieces: list, threads: int) -> None:
        def read(i: int) -> None:
            fd, offset, n, _, _, name = pieces[i]
            slot = i % self.slots
            self.events[slot].synchronize()  # the copy that last used this slot has finished
            pread_exact(fd, self.views[slot][:n], offset, name)

        ahead = min(self.slots, len(pieces))
        with ThreadPoolExecutor(min(threads, self.slots), thread_name_prefix="ckpt-cuda") as pool:
            pending = {i: pool.submit(read, i) for i in range(ahead)}
            for i, (_, _, n, dst, start, _) in enumerate(pieces):
                pending.pop(i).result()
                slot = i % self.slots
                with torch.cuda.stream(self.stream):
                    dst[start:start + n].copy_(self.host[slot * self.slot_bytes:slot * self.slot_bytes + n], non_blocking=True)
                    self.events[slot].record(self.stream)
                if i + self.slots < len(pieces):
                    pending[i + self.slots] = pool.submit(read, i + self.slots)


_stagers: dict[torch.device, Stager] = {}
_stagers_lock = threading.Lock()


def stager(device: torch.device) -> Stager:
    """The device's stager, created on first use (the pinned buffer is then reused by every load)."""
    if device.index is None:
        device = torch.device(device.type, torch.cuda.current_device())
    with _stagers_lock:
        if device not in _stagers:
            _stagers[device] = Stager(device, SLOT, SLOTS)
        return _stagers[device]


def load_to_cuda(jobs: list[Job], device: torch.device) -> dict[tuple[int, str], torch.Tensor]:
    return stager(device).load(jobs)
