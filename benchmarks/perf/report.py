"""results.json → results.md (tables with ratios against the baselines of the same run) and PNG plots."""

from __future__ import annotations

import json
import sys
from pathlib import Path

LABELS = {
    "cp": "cp (copy of the file)", "convert_naive": "naive: torch.load + save_file(clone) (model only)",
    "convert_ours": "ckpt-convert", "load_torch": "torch.load(weights_only=True)", "load_torch_mmap": "torch.load(mmap=True)",
    "load_safetensors": "safetensors load_file", "load_ours_lazy": "ckpt-convert lazy (mmap)",
    "load_ours_full": "ckpt-convert full (mmap=False)", "load_torch_cuda": "torch.load(map_location=cuda)",
    "load_safetensors_cuda": "safetensors load_file(device=cuda)", "load_ours_cuda": "ckpt-convert (cuda)",
}
BASELINE = {"convert": "cp", "load-cpu": "load_torch", "load-cuda": "load_safetensors_cuda"}


def _group(r: dict) -> str:
    return "convert" if r["op"] == "convert" else ("load-cuda" if r["method"].endswith("cuda") else "load-cpu")


def _mib(n: float) -> str:
    return f"{n / 2**20:,.0f}"


def markdown(doc: dict) -> str:
    m = doc["machine"]
    lines = [f"Machine: {m['cpu']}, {m['cores']} cores, {m['ram_bytes'] / 2**30:.0f} GiB RAM"
             + (f", {m['gpu']}" if m.get("gpu") else ", no GPU")
             + f"; Linux {m['kernel']}, Python {m['python']}, torch {m['torch']}, safetensors {m['safetensors']}. "
             f"Median of {doc['reps']} fresh-process runs; times exclude interpreter and `import torch`; "
             "peak RSS is the whole process. Loads touch every page of every storage.", ""]
    results = doc["results"]
    for group, title in (("convert", "Conversion (page cache warm)"), ("load-cpu", "Load to CPU"), ("load-cuda", "Load to CUDA")):
        rows = [r for r in results if _group(r) == group]
        if not rows:
            continue
        base = BASELINE[group]
        lines += [f"### {title}", "", "| checkpoint | cache | method | median s | GB/s | × vs " + LABELS[base].split(" (")[0]
                  + " | peak RSS MiB" + (" | output GB |" if group == "convert" else " |"),
                  "|---|---|---|---:|---:|---:|---:|" + ("---:|" if group == "convert" else "")]
        for r in rows:
            ref = next(x for x in rows if x["case"] == r["case"] and x["cache"] == r["cache"] and x["method"] == base)
            ratio = ref["median_s"] / r["median_s"]
            lines.append(f"| {r['case']} ({r['size_bytes'] / 1e9:.3f} GB) | {r['cache']} | {LABELS[r['method']]} | "
                         f"{r['median_s']:.3f} | {r['gb_per_s']:.2f} | {ratio:.2f} | {_mib(r['peak_rss_median'])} |"
                         + (f" {r.get('output_bytes', 0) / 1e9:.3f} |" if group == "convert" else ""))
        lines.append("")
    lines.append("× = baseline time / method time (above 1: faster than the baseline).")
    return "\n".join(lines) + "\n"


def plots(doc: dict, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    results = doc["results"]
    for group, name in (("convert", "convert"), ("load-cpu", "load_cpu"), ("load-cuda", "load_cuda")):
        rows = [r for r in results if _group(r) == group]
        if not rows:
            continue
        caches = sorted({r["cache"] for r in rows}, reverse=True)
        fig, axes = plt.subplots(1, len(caches), figsize=(6.5 * len(caches), 4.6), squeeze=False)
        for ax, cache in zip(axes[0], caches):
            for method in dict.fromkeys(r["method"] for r in rows):
                pts = sorted((r["size_bytes"] / 1e9, r["median_s"]) for r in rows
                             if r["method"] == method and r["cache"] == cache)
                if pts:
                    ax.plot(*zip(*pts), marker="o", label=LABELS[method])
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("checkpoint size (GB)")
            ax.set_ylabel("seconds (median)")
            ax.set_title(f"{group}, page cache {cache}")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7)
        fig.tight_layout()
        path = out / f"{name}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def write_report(doc: dict, out: Path) -> None:
    (out / "results.md").write_text(markdown(doc))
    plots(doc, out)


if __name__ == "__main__":  # re-render from an existing results.json
    folder = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[1] / "results"
    write_report(json.loads((folder / "results.json").read_text()), folder)
