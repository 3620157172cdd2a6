"""Build the CUDA benchmark's checkpoint: a GPT-2-XL-width training state, nothing downloaded.

bf16 parameters plus fp32 AdamW moments (exp_avg, exp_avg_sq) is 10 bytes per parameter; 30 layers
of width 1600 with GPT-2's vocabulary is about 1.0 B parameters, so about 10 GB on disk. The values
are random (filled in place, no optimizer step: a step over 1 B parameters would only cost time).

    python -m benchmarks.cuda.build OUT.pt --layers 30 --width 1600
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

VOCAB, CONTEXT = 50257, 1024


def _shapes(layers: int, d: int) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {"wte.weight": (VOCAB, d), "wpe.weight": (CONTEXT, d)}
    for i in range(layers):
        p = f"h.{i}."
        shapes |= {p + "ln_1.weight": (d,), p + "ln_1.bias": (d,),
                   p + "attn.c_attn.weight": (3 * d, d), p + "attn.c_attn.bias": (3 * d,),
                   p + "attn.c_proj.weight": (d, d), p + "attn.c_proj.bias": (d,),
                   p + "ln_2.weight": (d,), p + "ln_2.bias": (d,),
                   p + "mlp.c_fc.weight": (4 * d, d), p + "mlp.c_fc.bias": (4 * d,),
                   p + "mlp.c_proj.weight": (d, 4 * d), p + "mlp.c_proj.bias": (d,)}
    return shapes | {"ln_f.weight": (d,), "ln_f.bias": (d,)}


def training_state(layers: int, d: int, seed: int = 0) -> dict:
    """{"epoch", "model_state_dict" (bf16), "optimizer_state_dict" (AdamW, fp32 moments), "loss"}."""
    gen = torch.Generator().manual_seed(seed)
    model = {k: torch.empty(s, dtype=torch.bfloat16).normal_(0, 0.02, generator=gen) for k, s in _shapes(layers, d).items()}
    model["lm_head.weight"] = model["wte.weight"]  # tied, as in GPT-2
    state = {i: {"step": torch.tensor(100.0),
                 "exp_avg": torch.empty(t.shape, dtype=torch.float32).normal_(0, 1e-3, generator=gen),
                 "exp_avg_sq": torch.empty(t.shape, dtype=torch.float32).uniform_(0, 1e-6, generator=gen)}
             for i, t in enumerate(v for k, v in model.items() if k != "lm_head.weight")}
    group = {"lr": 3e-4, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.01, "amsgrad": False,
             "params": list(state)}
    return {"epoch": 3, "model_state_dict": model, "optimizer_state_dict": {"state": state, "param_groups": [group]},
            "loss": 2.913}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--layers", type=int, default=30)
    ap.add_argument("--width", type=int, default=1600)
    args = ap.parse_args()
    tmp = args.out.with_suffix(".tmp")
    torch.save(training_state(args.layers, args.width), tmp)
    tmp.rename(args.out)
    print(f"wrote {args.out}: {args.out.stat().st_size / 1e9:.2f} GB")


if __name__ == "__main__":
    main()
