"""The pinned host-to-device ceiling: GB/s of copies from one pinned buffer to the GPU.

    python -m benchmarks.cuda.h2d [--dry-run]

Prints one JSON line like benchmarks.perf.measure: {"seconds", "bytes", "gb_per_s", "peak_rss"}.
With --dry-run (no GPU) the same copies go to a second host buffer, so the code path is exercised.
"""

from __future__ import annotations

import json
import resource
import sys
import time

import torch

BUFFER = 1 << 30  # 1 GiB: large enough that launch overheads vanish
REPEATS = 8


def main(argv: list[str]) -> None:
    dry = "--dry-run" in argv
    size = BUFFER >> 6 if dry else BUFFER
    src = torch.empty(size, dtype=torch.uint8, pin_memory=not dry)
    src.fill_(1)
    dst = torch.empty(size, dtype=torch.uint8, device="cpu" if dry else "cuda")
    sync = (lambda: None) if dry else torch.cuda.synchronize
    dst.copy_(src, non_blocking=True)  # warm-up: first touch, context creation
    sync()
    t0 = time.perf_counter()
    for _ in range(REPEATS):
        dst.copy_(src, non_blocking=True)
    sync()
    seconds = time.perf_counter() - t0
    moved = size * REPEATS
    print(json.dumps({"seconds": seconds, "bytes": moved, "gb_per_s": moved / seconds / 1e9,
                      "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))


if __name__ == "__main__":
    main(sys.argv[1:])
