"""One measurement in a fresh process: `python -m benchmarks.dcp.measure METHOD SRC DST`.

METHOD is `ours` (ckpt-convert convert) or `torch` (PyTorch's dcp_to_torch_save, the baseline).
Prints one JSON line: seconds (the operation only), rss_after_imports and peak_rss (bytes, whole
process): peak_rss - rss_after_imports is what the conversion itself held at most.
"""

from __future__ import annotations

import json
import resource
import sys
import time
import warnings


def _rss_now() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def _peak_rss() -> int:
    """This process's own peak RSS (VmHWM). ru_maxrss would carry over the parent's peak from fork."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def main(method: str, src: str, dst: str) -> None:
    warnings.simplefilter("ignore")
    import torch  # noqa: F401 - imports outside the measured region, for both methods
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    from convert import api

    base = _rss_now()
    start = time.perf_counter()
    if method == "ours":
        api.convert_checkpoint(src, dst)
    elif method == "torch":
        dcp_to_torch_save(src, dst)
    elif method == "noop":  # what the measurement itself shows when nothing is converted
        pass
    else:
        raise SystemExit(f"unknown method {method}")
    seconds = time.perf_counter() - start
    peak = _peak_rss()
    print(json.dumps({"seconds": seconds, "rss_after_imports": base, "peak_rss": peak}))


if __name__ == "__main__":
    main(*sys.argv[1:4])
