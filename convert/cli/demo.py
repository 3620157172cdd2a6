"""`ckpt-convert demo`: the PyTorch tutorial's checkpoint patterns, converted, loaded and verified.

The checkpoints are written here with torch.save (zip and legacy formats) and pickle, exactly as
the tutorials do; the converter then reads them without unpickling, and the loaded folders are
checked against the originals and loaded into fresh models with `load_state_dict(strict=True)`.
"""

from __future__ import annotations

import pickle
import random
import shutil
import tempfile
import time
from pathlib import Path
from typing import TextIO

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 - the tutorial's spelling
from torch import nn, optim

from ..api import convert_checkpoint, verify_checkpoint
from ..load import load_checkpoint
from .render import human_bytes


class TheModelClass(nn.Module):
    """The CNN of the PyTorch 'Saving and Loading Models' tutorial."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 5)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        x = x.view(-1, 16 * 5 * 5)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


def _trained(steps: int = 2) -> tuple[nn.Module, optim.Optimizer, torch.Tensor]:
    model = TheModelClass()
    optimizer = optim.SGD(model.parameters(), lr=0.001, momentum=0.9)
    loss = torch.tensor(0.0)
    for _ in range(steps):
        optimizer.zero_grad()
        loss = nn.CrossEntropyLoss()(model(torch.randn(4, 3, 32, 32)), torch.randint(0, 10, (4,)))
        loss.backward()
        optimizer.step()
    return model, optimizer, loss.detach()


def write_tutorial_checkpoints(folder: Path) -> list[tuple[Path, str]]:
    """The seeds' patterns, each as the file a user would have on disk, with a description."""
    torch.manual_seed(0)
    model, optimizer, loss = _trained()
    model_b, optimizer_b, _ = _trained()
    legacy = {"_use_new_zipfile_serialization": False}
    files = []

    def save(obj: object, name: str, what: str, **kw: object) -> None:
        torch.save(obj, folder / name, **kw)
        files.append((folder / name, what))

    save(model.state_dict(), "model_state_dict.pth", "bare state_dict")
    save({"epoch": 5, "model_state_dict": model.state_dict(), "optimizer_state_dict": optimizer.state_dict(),
          "loss": loss}, "checkpoint.tar", "general checkpoint")
    save({"epoch": 5, "model_state_dict": model.state_dict(), "optimizer_state_dict": optimizer.state_dict(),
          "loss": nn.CrossEntropyLoss()}, "checkpoint_loss_module.pth", "checkpoint, loss as module")
    save({"modelA_state_dict": model.state_dict(), "modelB_state_dict": model_b.state_dict(),
          "optimizerA_state_dict": optimizer.state_dict(), "optimizerB_state_dict": optimizer_b.state_dict()},
         "multiple_models.tar", "several models in one file")
    save(model, "entire_model.pth", "whole model (torch.save(model))")
    save(model, "net.pkl", "whole model, legacy format", **legacy)
    save({"epoch": 5, "model_state_dict": model.state_dict(), "optimizer_state_dict": optimizer.state_dict(),
          "loss": loss}, "legacy_checkpoint.pth", "general checkpoint, legacy format", **legacy)
    save({"model": TheModelClass(), "model_state_dict": model.state_dict(),
          "optimizer_state_dict": optimizer.state_dict(), "epoch": 5}, "custom_checkpoint.pkl",
         "custom checkpoint with a model object")
    save({"model_state_dict": model.state_dict(), "torch_rng": torch.get_rng_state(),
          "numpy_rng": np.random.get_state(), "python_rng": random.getstate()}, "resume_state.ckpt",
         "resume state with RNG states")
    with open(folder / "numpy_weights.pkl", "wb") as f:
        pickle.dump({"w": np.random.rand(3, 4).astype(np.float32), "b": np.zeros(4), "step": np.int64(7)}, f, protocol=2)
    files.append((folder / "numpy_weights.pkl", "plain pickle of numpy arrays"))
    return files


def run_demo(keep: str | None, out: TextIO) -> int:
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        return _run(Path(keep), out, kept=True)
    with tempfile.TemporaryDirectory(prefix="ckpt-convert-demo-") as tmp:
        return _run(Path(tmp), out, kept=False)


DROPPED_FIRST = ("what", "output files", "format", "load")  # columns left out, in this order, to fit the terminal


def fit_columns(rows: list[tuple[str, ...]], width: int) -> list[list[str]]:
    """The table without the columns of DROPPED_FIRST, one by one, until each line fits in `width`."""
    keep = list(range(len(rows[0])))
    for name in (None, *DROPPED_FIRST):
        if name is not None and name in rows[0]:
            keep.remove(rows[0].index(name))
        widths = [max(len(r[i]) for r in rows) for i in keep]
        if sum(widths) + 2 * (len(widths) - 1) <= width:
            break
    return [[row[i] for i in keep] for row in rows]


def _run(folder: Path, out: TextIO, *, kept: bool) -> int:
    import warnings

    with warnings.catch_warnings():  # torch warns that it cannot save the demo class's source: harmless
        warnings.simplefilter("ignore")
        (folder / "legacy").mkdir(exist_ok=True)
        files = write_tutorial_checkpoints(folder / "legacy")
    rows = [("file", "what", "format", "tensors", "size", "output files", "load", "verify", "load_state_dict")]
    failures = 0
    for path, what in files:
        dst = folder / "converted" / path.stem
        report = convert_checkpoint(path, dst, overwrite=True)
        start = time.perf_counter()
        loaded = load_checkpoint(dst)
        load_ms = (time.perf_counter() - start) * 1000
        diffs = verify_checkpoint(path, dst)
        strict = _load_into_model(loaded)
        failures += bool(diffs) + (strict == "FAILED")
        rows.append((path.name, what, report.source_format, str(report.tensors + report.arrays), human_bytes(report.bytes),
                     ", ".join(report.files) or "-", f"{load_ms:.1f} ms", "equivalent" if not diffs else "DIFFERENT",
                     strict))
    table = fit_columns(rows, shutil.get_terminal_size().columns - 1)  # COLUMNS, else the terminal, else 80
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    for i, row in enumerate(table):
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip(), file=out)
        if i == 0:
            print("  ".join("-" * w for w in widths), file=out)
    print(f"\nchecked {len(files)} tutorial checkpoints: {'all equivalent' if not failures else f'{failures} FAILED'}",
          file=out)
    print(f"the files are in {folder}" if kept else "(written to a temporary folder, now removed: "
          "demo --keep DIR keeps them)", file=out)
    return 1 if failures else 0


def _load_into_model(loaded: object) -> str:
    """Load the converted state dict into a fresh TheModelClass, as a user would."""
    candidates = [loaded] if isinstance(loaded, dict) else []
    if isinstance(loaded, dict):
        candidates += [v for k, v in loaded.items() if isinstance(k, str) and "model" in k.lower()]
    for sd in candidates:
        if isinstance(sd, dict) and sd and all(isinstance(v, torch.Tensor) for v in sd.values()):
            try:
                TheModelClass().load_state_dict(sd, strict=True)
                return "ok"
            except RuntimeError:
                return "FAILED"
    return "-"
