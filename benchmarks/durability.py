"""What durability and self-verification cost: convert with and without fsync, the digest's share,
and load with and without the integrity checks. Ratios against a baseline measured in the same run.

    PYTHONPATH=. python -m benchmarks.durability [--sizes 1,200] [--repeat 3] [--out FILE]

- convert (fsync on, the default) vs convert with CKPT_CONVERT_NO_FSYNC=1, per checkpoint size (MiB);
- sha256 vs blake2b throughput over the same bytes (the digest choice), and the share the sha256
  of the written files takes of a conversion;
- load_checkpoint (lazy: it reads headers and checks folder ids and sizes; data pages come in on first
  touch, alike for both) of a folder with an integrity record vs the same folder with the record
  stripped (nothing to check), and load_checkpoint(verify=True), which reads every byte.

The machine's load matters: on a shared machine take the ratios, not the seconds.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from convert import convert_checkpoint, load_checkpoint


def _best(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def _checkpoint(folder: Path, mib: int) -> Path:
    """A state dict of `mib` MiB of float32 in a handful of tensors (a general checkpoint's shape)."""
    n = mib * (1 << 20) // 4
    sd = {f"layer{i}.weight": torch.randn(n // 8) for i in range(8)}
    path = folder / f"ckpt-{mib}MiB.pt"
    torch.save({"model": sd, "epoch": 3}, path)
    return path


def _convert(src: Path, dst: Path, fsync: bool) -> None:
    os.environ["CKPT_CONVERT_NO_FSYNC"] = "0" if fsync else "1"
    try:
        convert_checkpoint(src, dst, overwrite=True)
    finally:
        os.environ.pop("CKPT_CONVERT_NO_FSYNC", None)


def _hash_rate(data: bytes, name: str, repeat: int) -> float:
    """GB/s of hashlib `name` over `data`."""
    return len(data) / _best(lambda: hashlib.new(name, data).digest(), repeat) / 1e9


def _strip_record(src: Path, dst: Path) -> None:
    """A copy of `src` as written before integrity records (no folder id, no digests)."""
    shutil.copytree(src, dst)
    doc = json.loads((dst / "checkpoint.json").read_text())
    folder_id = doc.pop("folder_id")
    for name, info in doc["files"].items():
        info.pop("sha256")
        blob = (dst / name).read_bytes()
        field = f',"folder_id":"{folder_id}"'.encode()
        (dst / name).write_bytes(blob.replace(field, b" " * len(field)))
    (dst / "checkpoint.json").write_text(json.dumps(doc))


def run(sizes: list[int], repeat: int, work: Path) -> dict:
    results: dict = {"sizes_mib": sizes, "repeat": repeat, "convert": [], "load": []}
    sample = os.urandom(64 << 20)
    results["hash_gb_per_s"] = {name: round(_hash_rate(sample, name, repeat), 3) for name in ("sha256", "blake2b")}
    for mib in sizes:
        src = _checkpoint(work, mib)
        dst = work / f"out-{mib}"
        _convert(src, dst, fsync=True)  # warm the page cache and the code paths
        on = _best(lambda: _convert(src, dst, fsync=True), repeat)  # noqa: B023
        off = _best(lambda: _convert(src, dst, fsync=False), repeat)  # noqa: B023
        data = b"".join((dst / n).read_bytes() for n in json.loads((dst / "checkpoint.json").read_text())["files"])
        digest = _best(lambda: hashlib.sha256(data).digest(), repeat)  # noqa: B023
        results["convert"].append({"mib": mib, "fsync_s": round(on, 4), "no_fsync_s": round(off, 4),
                                   "fsync_ratio": round(on / off, 3), "sha256_s": round(digest, 4),
                                   "sha256_share_of_no_fsync": round(digest / off, 3)})
        bare = work / f"bare-{mib}"
        _strip_record(dst, bare)
        # load itself (headers, checks, tensor views; data pages come in on first touch, the same for both)
        checked, unchecked = [], []
        for _ in range(5):  # interleaved rounds: a busy machine slows both alike
            checked.append(_best(lambda: load_checkpoint(dst), repeat * 3))  # noqa: B023
            unchecked.append(_best(lambda: load_checkpoint(bare), repeat * 3))  # noqa: B023
        verified = _best(lambda: load_checkpoint(dst, verify=True), repeat)  # noqa: B023
        base = statistics.median(unchecked)
        results["load"].append({"mib": mib, "no_record_s": round(base, 5),
                                "default_check_s": round(statistics.median(checked), 5),
                                "default_check_ratio": round(statistics.median(checked) / base, 3),
                                "verify_s": round(verified, 4), "verify_ratio": round(verified / base, 1)})
        for path in (src, dst, bare):
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1,200", help="checkpoint sizes in MiB, comma-separated")
    parser.add_argument("--repeat", type=int, default=3, help="best of N per measurement")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    parser.add_argument("--work", type=Path, default=None, help="folder for the checkpoints (default: a temp folder)")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory(dir=args.work) as work:
        results = run(sizes, args.repeat, Path(work))
    text = json.dumps(results, indent=1)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
