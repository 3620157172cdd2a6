"""Export benchmark (issue 27): `python -m benchmarks.export [--size-mb 1500] [--reps 3] [--dtype bf16]`.

A training checkpoint with GPT-2 small's parameter layout (tied lm_head; layers and vocabulary scaled
so the file is about --size-mb) plus AdamW state is exported to one model.safetensors by
- ours:  `export_weights(SRC, OUT)` (no torch needed; fsync'd, atomic);
- sha256: only the sha256 of SRC (what `export` records as provenance): the floor under ours, as
         export's copy runs beside that hash and waits for it;
- usual: the script users paste: `torch.load(SRC, map_location="cpu")`, pop the tied `lm_head.weight`,
         `safetensors.torch.save_file(sd, OUT, metadata={"format": "pt"})` (no fsync).
Each run is a fresh process (time of the operation, imports excluded; peak RSS of the whole process,
imports included), methods interleaved; medians. Writes benchmarks/results/export.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, resource, sys, time, warnings
warnings.simplefilter("ignore")
method, src, out, dtype = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
if method == "ours":
    from convert import export_weights
elif method == "sha256":
    import os
    from convert.primitives.hashing import sha256_fd
else:
    import torch
    from safetensors.torch import save_file
t0 = time.perf_counter()
if method == "ours":
    export_weights(src, out, dtype=None if dtype == "-" else dtype)
elif method == "sha256":
    fd = os.open(src, os.O_RDONLY)
    sha256_fd(fd, os.fstat(fd).st_size)
    open(out, "wb").close()
else:
    sd = torch.load(src, map_location="cpu")["model_state_dict"]
    sd.pop("lm_head.weight")  # shares wte's storage: save_file refuses shared tensors
    if dtype != "-":
        sd = {k: v.to({"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype])
              if v.is_floating_point() else v for k, v in sd.items()}
    save_file(sd, out, metadata={"format": "pt"})
seconds = time.perf_counter() - t0
print(json.dumps({"seconds": seconds, "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
"""

MAKE = r"""
import sys, torch
size_mb = float(sys.argv[2])
scale = size_mb / 1494.0
n_layer, d = max(1, round(12 * scale)), 768  # GPT-2 small at --size-mb 1494: 12 layers, vocab 50257
vocab = max(1024, int(50257 * min(scale, 1.0)))
torch.manual_seed(0)
sd = {"transformer.wte.weight": torch.randn(vocab, d) * 0.02, "transformer.wpe.weight": torch.randn(1024, d) * 0.02}
for i in range(n_layer):
    p = f"transformer.h.{i}."
    for name, shape in (("ln_1.weight", (d,)), ("ln_1.bias", (d,)), ("attn.c_attn.weight", (d, 3 * d)),
                        ("attn.c_attn.bias", (3 * d,)), ("attn.c_proj.weight", (d, d)), ("attn.c_proj.bias", (d,)),
                        ("ln_2.weight", (d,)), ("ln_2.bias", (d,)), ("mlp.c_fc.weight", (d, 4 * d)),
                        ("mlp.c_fc.bias", (4 * d,)), ("mlp.c_proj.weight", (4 * d, d)), ("mlp.c_proj.bias", (d,))):
        sd[p + name] = torch.randn(shape) * 0.02
sd["transformer.ln_f.weight"], sd["transformer.ln_f.bias"] = torch.ones(d), torch.zeros(d)
sd["lm_head.weight"] = sd["transformer.wte.weight"]  # tied, as in the HF model
params = [k for k in sd if k != "lm_head.weight"]
state = {i: {"step": torch.tensor(1000.0), "exp_avg": torch.randn_like(sd[k]) * 1e-3,
             "exp_avg_sq": torch.rand_like(sd[k]) * 1e-6} for i, k in enumerate(params)}
torch.save({"epoch": 3, "global_step": 1000, "model_state_dict": sd,
            "optimizer_state_dict": {"state": state, "param_groups": [{"lr": 3e-4, "params": list(range(len(params)))}]}},
           sys.argv[1])
"""


def _run(method: str, src: Path, out: Path, dtype: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, "-c", CHILD, method, str(src), str(out), dtype], env=env, check=True,
                          capture_output=True, text=True)
    out.unlink()
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.export", description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-mb", type=float, default=1500.0, help="checkpoint size (default: GPT-2 small + AdamW)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--dtype", default="-", help="also cast (fp16, bf16, fp32); default: no cast")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="ckpt-export-bench-"))
    src = work / "train.pt"
    subprocess.run([sys.executable, "-c", MAKE, str(src), str(args.size_mb)], check=True)
    results: dict[str, list[dict]] = {"ours": [], "usual": [], "sha256": []}
    for _ in range(args.reps):  # interleaved: both see the same page-cache state
        for method in results:
            results[method].append(_run(method, src, work / "model.safetensors", args.dtype))
            print(method, results[method][-1], flush=True)
    summary = {m: {"seconds": statistics.median(r["seconds"] for r in rs),
                   "peak_rss_mib": statistics.median(r["peak_rss"] for r in rs) / 2**20} for m, rs in results.items()}
    doc = {"source_mb": src.stat().st_size / 1e6, "dtype": args.dtype, "reps": args.reps,
           "machine": f"{platform.machine()}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the end",
           "when": time.strftime("%Y-%m-%d"), **summary,
           "time_ratio": summary["ours"]["seconds"] / summary["usual"]["seconds"],
           "rss_ratio": summary["ours"]["peak_rss_mib"] / summary["usual"]["peak_rss_mib"]}
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "export" if args.dtype == "-" else f"export_{args.dtype}"
    (args.out / f"{stem}.json").write_text(json.dumps(doc, indent=2) + "\n")
    md = [f"Export of a {doc['source_mb']:.0f} MB training checkpoint (GPT-2 small layout + AdamW) to model.safetensors"
          f"{'' if args.dtype == '-' else ' cast to ' + args.dtype}; median of {args.reps} fresh processes "
          f"({doc['machine']}, {doc['when']}). Command: `python -m benchmarks.export --size-mb {args.size_mb:g}"
          f"{'' if args.dtype == '-' else ' --dtype ' + args.dtype}`.", "",
          "| method | time | peak RSS |", "|---|---:|---:|"]
    for method, label in (("ours", "ckpt-convert export"), ("usual", "torch.load + save_file"),
                          ("sha256", "sha256 of SRC alone (ours waits for it)")):
        md.append(f"| {label} | {summary[method]['seconds']:.2f} s | {summary[method]['peak_rss_mib']:.0f} MiB |")
    md.append(f"| ratio (ours ÷ usual) | {doc['time_ratio']:.2f}× | {doc['rss_ratio']:.2f}× |")
    (args.out / f"{stem}.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    for p in work.iterdir():
        p.unlink()
    work.rmdir()


if __name__ == "__main__":
    main()
