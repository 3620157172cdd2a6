"""The benchmark checkpoints: real training checkpoints (model + optimizer state), small to large.

Every case is what `torch.save({"epoch", "model_state_dict", "optimizer_state_dict", "loss"})`
writes in a training loop; the GPT-2 shapes are those of the Hugging Face models (tied lm_head),
with AdamW state, so the optimizer holds two more copies of every parameter.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from convert.cli.demo import TheModelClass as TutorialNet  # the tutorial CNN, shared with the demo


class Block(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(d)
        self.attn = nn.ModuleDict({"c_attn": nn.Linear(d, 3 * d), "c_proj": nn.Linear(d, d)})
        self.ln_2 = nn.LayerNorm(d)
        self.mlp = nn.ModuleDict({"c_fc": nn.Linear(d, 4 * d), "c_proj": nn.Linear(4 * d, d)})


class GPT2(nn.Module):
    """GPT-2's parameter layout (HF names up to the Conv1D/Linear difference), lm_head tied to wte."""

    def __init__(self, n_layer: int, d: int, vocab: int = 50257, n_ctx: int = 1024) -> None:
        super().__init__()
        self.wte = nn.Embedding(vocab, d)
        self.wpe = nn.Embedding(n_ctx, d)
        self.h = nn.ModuleList(Block(d) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(d)
        self.lm_head = nn.Linear(d, vocab, bias=False)
        self.lm_head.weight = self.wte.weight


def _training_checkpoint(model: nn.Module, optimizer_cls: Callable, **opt_kwargs) -> dict:
    """One optimizer step with a gradient everywhere, so the optimizer state is fully populated."""
    optimizer = optimizer_cls(model.parameters(), **opt_kwargs)
    for p in model.parameters():
        p.grad = torch.full_like(p, 1e-3)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return {"epoch": 3, "model_state_dict": model.state_dict(), "optimizer_state_dict": optimizer.state_dict(),
            "loss": 0.4213}


@dataclass(frozen=True)
class Case:
    name: str
    description: str
    approx_bytes: int  # on disk, for --max-size before anything is built
    build: Callable[[], dict]


def _gpt2(n_layer: int, d: int) -> Callable[[], dict]:
    def build() -> dict:
        with torch.no_grad():
            model = GPT2(n_layer, d)
        return _training_checkpoint(model, torch.optim.AdamW, lr=3e-4)
    return build


CASES: list[Case] = [
    Case("cnn", "tutorial CNN + SGD momentum", 500_000,
         lambda: _training_checkpoint(TutorialNet(), torch.optim.SGD, lr=1e-3, momentum=0.9)),
    Case("gpt2-2l-256", "GPT-2 vocab, 2 layers, d=256 + AdamW", 175_000_000, _gpt2(2, 256)),
    Case("gpt2-6l-512", "GPT-2 vocab, 6 layers, d=512 + AdamW", 540_000_000, _gpt2(6, 512)),
    Case("gpt2-small", "GPT-2 small (124M) + AdamW", 1_494_000_000, _gpt2(12, 768)),
    Case("gpt2-medium", "GPT-2 medium (355M) + AdamW", 4_260_000_000, _gpt2(24, 1024)),
]


def generate(case: Case, folder: Path, seed: int = 0) -> Path:
    """Write the case's checkpoint once (kept between runs: the file is deterministic)."""
    path = folder / f"{case.name}.pt"
    if not path.exists():
        torch.manual_seed(seed)
        tmp = path.with_suffix(".tmp")
        torch.save(case.build(), tmp)
        tmp.rename(path)
    return path
