"""Resume-equivalence: training resumed from the converted folder is bitwise the run resumed from the
original checkpoint (and the run that was never interrupted).

A small model is trained k steps with an optimizer, an LR scheduler and a GradScaler, drawing data
from the torch, numpy (legacy and Generator) and python RNGs. The full training checkpoint is
torch.saved and converted; training then resumes for m more steps once from
`torch.load(weights_only=False)` of the file and once from `load_checkpoint` of the folder, each
into freshly built (differently initialised) objects. Parameters, optimizer, scheduler and scaler
state and the loss sequence must be bitwise identical.
"""

from __future__ import annotations

import random
import struct
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from hypothesis import given
from hypothesis import strategies as st

from convert import compare_trees, convert_checkpoint, load_checkpoint
from tests.helpers import TORCH_FORMATS, save
from tests.strategies import budget

TOTAL_STEPS = 16  # OneCycleLR's horizon; k + m stays below it

OPTIMIZERS = {
    "sgd-nesterov": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-4),
    "adam": lambda p: torch.optim.Adam(p, lr=1e-2),
    "adamw-amsgrad": lambda p: torch.optim.AdamW(p, lr=1e-2, amsgrad=True, weight_decay=0.05),
    "rmsprop": lambda p: torch.optim.RMSprop(p, lr=1e-2, momentum=0.5, centered=True),
    "adagrad": lambda p: torch.optim.Adagrad(p, lr=0.1, lr_decay=0.01),
}
SCHEDULERS = {
    "steplr": lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5),
    "onecycle": lambda opt: torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=0.05, total_steps=TOTAL_STEPS,
        cycle_momentum="momentum" in opt.defaults or "betas" in opt.defaults),
    "plateau": lambda opt: torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=0),
}


@dataclass
class Run:
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object
    scaler: torch.amp.GradScaler
    generator: np.random.Generator
    losses: list


def build(opt_name: str, sched_name: str, init_seed: int) -> Run:
    torch.manual_seed(init_seed)
    model = nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.25), nn.Linear(16, 3))
    optimizer = OPTIMIZERS[opt_name](model.parameters())
    scheduler = SCHEDULERS[sched_name](optimizer)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12, growth_interval=2)
    return Run(model, optimizer, scheduler, scaler, np.random.default_rng(init_seed), [])


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def train(run: Run, steps: int) -> None:
    loss_fn = nn.CrossEntropyLoss()
    run.model.train()
    for _ in range(steps):
        x = torch.randn(8, 6) + torch.from_numpy(np.random.standard_normal((8, 1)).astype(np.float32))
        x = x * torch.from_numpy(run.generator.uniform(0.5, 1.5, size=(1, 6)).astype(np.float32))
        y = torch.tensor([random.randrange(3) for _ in range(8)])
        loss = loss_fn(run.model(x), y)
        run.optimizer.zero_grad()
        run.scaler.scale(loss).backward()
        run.scaler.step(run.optimizer)
        run.scaler.update()
        if isinstance(run.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            run.scheduler.step(loss.item())
        else:
            run.scheduler.step()
        run.losses.append(loss.item())


def checkpoint(run: Run, epoch: int) -> dict:
    return {
        "epoch": epoch,
        "model_state_dict": run.model.state_dict(),
        "optimizer_state_dict": run.optimizer.state_dict(),
        "scheduler_state_dict": run.scheduler.state_dict(),
        "scaler_state_dict": run.scaler.state_dict(),
        "rng": {
            "torch": torch.get_rng_state(),
            "numpy": np.random.get_state(),
            "python": random.getstate(),
            "numpy_generator": run.generator.bit_generator.state,  # PCG64: 128-bit ints
        },
        "losses": list(run.losses),
    }


def resume(ck: dict, opt_name: str, sched_name: str) -> Run:
    run = build(opt_name, sched_name, init_seed=12345)  # different init: everything must come from ck
    run.model.load_state_dict(ck["model_state_dict"])
    run.optimizer.load_state_dict(ck["optimizer_state_dict"])
    run.scheduler.load_state_dict(ck["scheduler_state_dict"])
    run.scaler.load_state_dict(ck["scaler_state_dict"])
    torch.set_rng_state(ck["rng"]["torch"])
    np.random.set_state(ck["rng"]["numpy"])
    random.setstate(ck["rng"]["python"])
    run.generator.bit_generator.state = ck["rng"]["numpy_generator"]
    run.losses = list(ck["losses"])
    return run


def state(run: Run) -> dict:
    return {"model": run.model.state_dict(), "optimizer": run.optimizer.state_dict(),
            "scheduler": run.scheduler.state_dict(), "scaler": run.scaler.state_dict(),
            "torch_rng": torch.get_rng_state(), "losses": run.losses}


def loss_bits(losses: list) -> list[str]:
    return [struct.pack(">d", x).hex() for x in losses]


def check_resume(opt_name: str, sched_name: str, fmt: str, k: int, m: int, seed: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        seed_everything(seed)
        straight = build(opt_name, sched_name, init_seed=seed)
        train(straight, k + m)
        reference_state = state(straight)

        seed_everything(seed)
        first = build(opt_name, sched_name, init_seed=seed)
        train(first, k)
        src = save(checkpoint(first, epoch=k), Path(tmp) / "train.tar", fmt)
        dst = Path(tmp) / "converted"
        convert_checkpoint(src, dst)

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            original = torch.load(src, weights_only=False)
        converted = load_checkpoint(dst)
        assert compare_trees(original, converted) == []

        runs = {}
        for name, ck in (("original", original), ("converted", converted)):
            seed_everything(seed + 1000)  # the RNG states must come from the checkpoint, not from here
            run = resume(ck, opt_name, sched_name)
            train(run, m)
            runs[name] = state(run)

        assert loss_bits(runs["converted"]["losses"]) == loss_bits(runs["original"]["losses"])
        assert compare_trees(runs["original"], runs["converted"]) == []
        # the harness restores everything: resuming equals never stopping
        assert loss_bits(runs["original"]["losses"]) == loss_bits(reference_state["losses"])
        assert compare_trees(reference_state, runs["original"]) == []
        assert len(runs["converted"]["losses"]) == k + m


@pytest.mark.parametrize("sched_name", sorted(SCHEDULERS))
@pytest.mark.parametrize("opt_name", sorted(OPTIMIZERS))
def test_resume_from_converted_is_bitwise_identical(opt_name, sched_name):
    check_resume(opt_name, sched_name, "zip", k=3, m=3, seed=0)


@budget(10)
@given(opt_name=st.sampled_from(sorted(OPTIMIZERS)), sched_name=st.sampled_from(sorted(SCHEDULERS)),
       fmt=st.sampled_from(TORCH_FORMATS), k=st.integers(1, 6), m=st.integers(1, 6), seed=st.integers(0, 2**31 - 1))
def test_resume_property(opt_name, sched_name, fmt, k, m, seed):
    check_resume(opt_name, sched_name, fmt, k, m, seed)
