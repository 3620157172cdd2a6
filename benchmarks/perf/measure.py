"""One measurement in a fresh process: `python -m benchmarks.perf.measure METHOD SRC [DST]`.

Prints one JSON line: seconds (the operation only, imports excluded), peak_rss (bytes, whole
process, imports included) and rss_after_imports. Loads touch every page of every storage
(the lazy methods would otherwise read nothing) and, on CUDA, synchronise before the clock stops.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
import warnings
from pathlib import Path


def _rss_now() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def _peak() -> int:
    return max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) * 1024


def _touch(tree) -> int:
    """Read one byte of every page of every distinct storage; returns the bytes covered."""
    import torch

    seen, total, sink = set(), 0, 0
    stack = [tree]
    while stack:
        x = stack.pop()
        if isinstance(x, dict):
            stack.extend(x.values())
        elif isinstance(x, (list, tuple)):
            stack.extend(x)
        elif isinstance(x, torch.Tensor):
            s = x.untyped_storage()
            if s.data_ptr() in seen or s.nbytes() == 0:
                continue
            seen.add(s.data_ptr())
            flat = torch.empty(0, dtype=torch.uint8, device=x.device).set_(s)
            sink += int(flat[::4096].sum().item()) if x.device.type == "cpu" else 0
            total += s.nbytes()
    return total


def main(argv: list[str]) -> None:
    method, src = argv[0], Path(argv[1])
    dst = Path(argv[2]) if len(argv) > 2 else None
    warnings.simplefilter("ignore")
    import safetensors.torch  # imports are outside the timed region, for every method
    import torch

    # `import convert` is lazy: import the loader and the converter here, not in the timed region
    import convert.load
    import convert.ops.checkpoint  # noqa: F401

    rss0 = _rss_now()
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    t0 = time.perf_counter()
    if method == "cp":
        # via GNU time: a child forked from this process would report this process's RSS as its peak
        timed = subprocess.run(["/usr/bin/time", "-f", "%M", "cp", str(src), str(dst)], check=True,
                               capture_output=True, text=True)
        cp_peak = int(timed.stderr.strip().splitlines()[-1]) * 1024
    elif method == "convert_ours":
        from convert import convert_checkpoint

        convert_checkpoint(src, dst)
    elif method == "convert_naive":
        import safetensors.torch

        ck = torch.load(src, weights_only=True, map_location="cpu")
        dst.mkdir(parents=True)
        safetensors.torch.save_file({k: v.clone() for k, v in ck["model_state_dict"].items()},
                                    dst / "model.safetensors", metadata={"format": "pt"})
    elif method.startswith("load_"):
        tree = _load(method, src, torch)
        _touch(tree)
        sync()
    else:
        raise SystemExit(f"unknown method {method}")
    seconds = time.perf_counter() - t0
    peak = cp_peak if method == "cp" else _peak()
    print(json.dumps({"seconds": seconds, "peak_rss": peak, "rss_after_imports": rss0}))


def _load(method: str, src: Path, torch):
    if method == "load_torch":
        return torch.load(src, weights_only=True, map_location="cpu")
    if method == "load_torch_mmap":
        return torch.load(src, weights_only=True, map_location="cpu", mmap=True)
    if method == "load_torch_cuda":
        return torch.load(src, weights_only=True, map_location="cuda")
    if method in ("load_safetensors", "load_safetensors_cuda"):
        import safetensors.torch

        device = "cuda" if method.endswith("cuda") else "cpu"
        return {p.name: safetensors.torch.load_file(p, device=device) for p in sorted(src.glob("*.safetensors"))}
    from convert import load_checkpoint

    if method == "load_ours_lazy":
        return load_checkpoint(src)
    if method == "load_ours_full":
        return load_checkpoint(src, mmap=False)
    if method == "load_ours_cuda":
        return load_checkpoint(src, map_location="cuda")
    raise SystemExit(f"unknown method {method}")


if __name__ == "__main__":
    main(sys.argv[1:])
