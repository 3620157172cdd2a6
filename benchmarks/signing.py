"""What signing costs: sign and verify a converted folder (OpenSSF model-signing, model.sig) against converting it.

    PYTHONPATH=. python -m benchmarks.signing [--size-mb 1536] [--repeat 2] [--out benchmarks/results/signing.md]

Measured in one run on one checkpoint of SIZE MiB (float32 in 8 tensors):
- convert (unsigned) vs convert --sign-key (the signature made inside the atomic write);
- sign_folder alone, verify_signature alone (model-signing hashes every file: sha256), and the
  folder's own integrity check (verify_folder) for comparison;
- load_checkpoint (lazy) with and without trust=TrustPolicy(...): the trust check reads every byte.

Page cache: every step runs with the folder's files in the page cache (each was just written or read),
so the hashing steps measure sha256 and the library's overhead, not the disk. On a shared machine
take the ratios, not the seconds.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import torch
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from benchmarks.durability import _best
from convert import convert_checkpoint, load_checkpoint
from convert.ops.verify import verify_folder
from convert.sign import TrustPolicy, sign_folder, verify_signature


def _keys(folder: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    private, public = folder / "key.pem", folder / "key.pub"
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo))
    return private, public


def _checkpoint(folder: Path, mib: int) -> Path:
    n = mib * (1 << 20) // 4
    path = folder / f"ckpt-{mib}MiB.pt"
    torch.save({"model": {f"layer{i}.weight": torch.randn(n // 8) for i in range(8)}, "epoch": 3}, path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=1536, help="checkpoint size in MiB (default 1536)")
    parser.add_argument("--repeat", type=int, default=2, help="best of N per step (default 2)")
    parser.add_argument("--out", type=Path, help="write the markdown table here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        tmp = Path(tmp)
        private, public = _keys(tmp)
        policy = TrustPolicy(public_keys=(public,))
        src = _checkpoint(tmp, args.size_mb)
        dst = tmp / "out"
        rows = {}
        start = time.perf_counter()
        from convert.sign.library import model_signing

        model_signing()  # once per process (a CLI run pays it each time): not in the steps below
        rows["import model-signing (once per process)"] = time.perf_counter() - start
        rows["convert (unsigned)"] = _best(lambda: convert_checkpoint(src, dst, overwrite=True), args.repeat)
        rows["convert --sign-key (signed as it writes)"] = _best(
            lambda: convert_checkpoint(src, dst, overwrite=True, sign=private), args.repeat)
        rows["sign_folder / ckpt-convert sign"] = _best(lambda: sign_folder(dst, private_key=private), args.repeat)
        rows["verify_signature (model-signing, sha256 of every file)"] = _best(
            lambda: verify_signature(dst, policy), args.repeat)
        rows["verify_folder (integrity record, sha256 of data files)"] = _best(lambda: verify_folder(dst), args.repeat)
        rows["load_checkpoint (lazy)"] = _best(lambda: load_checkpoint(dst), args.repeat)
        rows["load_checkpoint(trust=...) (lazy)"] = _best(lambda: load_checkpoint(dst, trust=policy), args.repeat)
        size = sum(p.stat().st_size for p in dst.iterdir())
        shutil.rmtree(dst)
    base = rows["convert (unsigned)"]
    lines = [f"Signing cost: a {args.size_mb} MiB checkpoint (folder {size / 2**20:.0f} MiB), best of {args.repeat}, "
             f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, files in the page cache.", "",
             "| step | seconds | vs convert (unsigned) | MiB/s |", "|---|---:|---:|---:|"]
    for name, seconds in rows.items():
        rate = "—" if name.startswith("import") else f"{size / 2**20 / seconds:.0f}"
        lines.append(f"| {name} | {seconds:.2f} | {seconds / base:.2f}x | {rate} |")
    lines += ["", "Command: `PYTHONPATH=. python -m benchmarks.signing --size-mb "
              f"{args.size_mb} --repeat {args.repeat} --out benchmarks/results/signing.md`"]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
