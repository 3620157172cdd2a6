"""Output size vs input size over state dicts whose storages are shared or viewed:
`python -m benchmarks.perf.storage_corpus [--baseline-path /work/main]`.

Each file of the corpus is one layout that used to be written twice (a contiguous copy under the
state-dict key and the raw storage again): transposed weights, strided views, LSTM-style flat
weights, tied weights, many small numpy arrays, and a plain state dict as the control. The
target (issue 11): output ≤ 1.05× input over the corpus, no file above 1.25× except duplicates
that safetensors forces (one tensor object under two keys). Writes storage_corpus.json/.md to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _transposed() -> dict:
    import torch

    g = torch.Generator().manual_seed(1)
    return {f"layer{i}.weight": torch.randn(512, 256, generator=g).t() for i in range(8)}


def _strided() -> dict:
    import torch

    g = torch.Generator().manual_seed(2)
    base = [torch.randn(256, 512, generator=g) for _ in range(6)]
    return {**{f"even{i}": b[:, ::2] for i, b in enumerate(base)}, **{f"odd{i}": b[:, 1::2] for i, b in enumerate(base)}}


def _lstm() -> dict:
    import torch

    g = torch.Generator().manual_seed(3)
    hidden, inp, layers = 256, 128, 3
    sizes = []
    for layer in range(layers):
        width = inp if layer == 0 else hidden
        sizes += [(f"weight_ih_l{layer}", (4 * hidden, width)), (f"weight_hh_l{layer}", (4 * hidden, hidden)),
                  (f"bias_ih_l{layer}", (4 * hidden,)), (f"bias_hh_l{layer}", (4 * hidden,))]
    flat = torch.randn(sum(torch.Size(s).numel() for _, s in sizes), generator=g)  # cuDNN's flat weight buffer
    out, at = {}, 0
    for name, shape in sizes:
        n = torch.Size(shape).numel()
        out[name] = flat[at:at + n].view(shape)
        at += n
    return out


def _tied() -> dict:
    import torch

    g = torch.Generator().manual_seed(4)
    emb = torch.randn(2000, 256, generator=g)
    return {"embed.weight": emb, "norm.weight": torch.ones(256), "lm_head.weight": emb.t()}


def _small_arrays() -> dict:
    import numpy as np

    rng = np.random.default_rng(5)
    return {f"feature_{i}": rng.standard_normal(16).astype(np.float32) for i in range(4000)}


def _plain() -> dict:
    import torch

    g = torch.Generator().manual_seed(6)
    return {f"block{i}.{k}": torch.randn(256, 256 if k == "weight" else 1, generator=g).squeeze(-1)
            for i in range(8) for k in ("weight", "bias")}


def _views_with_uncovered_bytes() -> dict:
    import torch

    g = torch.Generator().manual_seed(7)
    big = torch.randn(1 << 18, generator=g)
    return {"head": big[: 1 << 17], "window": big[(1 << 17) + 1000:(1 << 17) + 3000]}  # torch.save keeps all of big


# One storage under two keys of one state dict: safetensors entries cannot overlap, so both copies stay.
UNAVOIDABLE_DUPLICATES = {"tied"}

CORPUS: dict[str, Callable[[], dict]] = {
    "transposed": _transposed, "strided": _strided, "lstm_flat": _lstm, "tied": _tied,
    "small_numpy_arrays": _small_arrays, "plain": _plain, "partial_views": _views_with_uncovered_bytes,
}


def generate(folder: Path) -> dict[str, Path]:
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, build in CORPUS.items():
        path = paths[name] = folder / f"{name}.pt"
        if not path.exists():
            torch.save(build(), path)
    return paths


def convert_with(pythonpath: Path, src: Path, dst: Path) -> None:
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from convert import convert_checkpoint; "
            "convert_checkpoint(sys.argv[2], sys.argv[3], overwrite=True)")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", code, str(pythonpath), str(src), str(dst)],
                          capture_output=True, text=True, cwd="/", env=env)
    if proc.returncode != 0:
        raise SystemExit(f"converting {src} failed:\n{proc.stderr[-2000:]}")


def folder_bytes(folder: Path) -> tuple[int, int]:
    """(all files, safetensors files only)."""
    files = [p for p in folder.iterdir() if p.is_file()]
    return sum(p.stat().st_size for p in files), sum(p.stat().st_size for p in files if p.suffix == ".safetensors")


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/ckpt-storage-corpus"))
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument("--baseline-path", type=Path, default=None, help="a checkout of the previous converter")
    args = parser.parse_args(argv)
    rows = []
    for name, src in generate(args.work).items():
        row = {"file": name, "input_bytes": src.stat().st_size}
        for label, path in [("ours", REPO), ("baseline", args.baseline_path)]:
            if path is None:
                continue
            dst = args.work / f"{name}.{label}"
            convert_with(path, src, dst)
            row[f"{label}_bytes"], row[f"{label}_safetensors_bytes"] = folder_bytes(dst)
            shutil.rmtree(dst)
        rows.append(row)
        print(json.dumps(row), flush=True)
    total_in = sum(r["input_bytes"] for r in rows)
    lines = ["| file | input KB | output KB (×) | previous output KB (×) |", "|---|---:|---:|---:|"]
    for r in [*rows, {"file": "**total**", **{k: sum(x.get(k, 0) for x in rows) for k in rows[0] if k != "file"}}]:
        base = (f"{r['baseline_bytes'] / 1e3:,.0f} ({r['baseline_bytes'] / r['input_bytes']:.2f})"
                if "baseline_bytes" in r else "–")
        lines.append(f"| {r['file']} | {r['input_bytes'] / 1e3:,.0f} | "
                     f"{r['ours_bytes'] / 1e3:,.0f} ({r['ours_bytes'] / r['input_bytes']:.3f}) | {base} |")
    summary = {"rows": rows, "total_input_bytes": total_in,
               "total_ratio": sum(r["ours_bytes"] for r in rows) / total_in,
               "max_ratio": max(r["ours_bytes"] / r["input_bytes"] for r in rows)}
    rest = [r for r in rows if r["file"] not in UNAVOIDABLE_DUPLICATES]
    summary["total_ratio_without_unavoidable_duplicates"] = (sum(r["ours_bytes"] for r in rest)
                                                             / sum(r["input_bytes"] for r in rest))
    summary["max_ratio_without_unavoidable_duplicates"] = max(r["ours_bytes"] / r["input_bytes"] for r in rest)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "storage_corpus.json").write_text(json.dumps(summary, indent=1) + "\n")
    lines.append(f"\nTotal {summary['total_ratio']:.3f}×, worst {summary['max_ratio']:.3f}×; without the unavoidable "
                 f"duplicates ({', '.join(sorted(UNAVOIDABLE_DUPLICATES))}): total "
                 f"{summary['total_ratio_without_unavoidable_duplicates']:.3f}×, worst "
                 f"{summary['max_ratio_without_unavoidable_duplicates']:.3f}×.")
    (args.out / "storage_corpus.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main(sys.argv[1:])
