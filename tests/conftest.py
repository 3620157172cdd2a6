"""Fixtures for the ckpt-convert tests; helpers live in tests/helpers.py."""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

import pytest
import torch
from hypothesis import settings

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from tests.helpers import Net, make_net, save, trained  # noqa: E402

warnings.filterwarnings("ignore", category=FutureWarning)
warnings.filterwarnings("ignore", category=UserWarning)

# Hypothesis profiles: "ci" (default, fast) and "thorough" (20x the examples). Pick one with
# `pytest --hypothesis-profile=thorough` or CKPT_HYPOTHESIS_PROFILE=thorough (the flag wins).
settings.register_profile("ci", max_examples=100, print_blob=True)
settings.register_profile("thorough", max_examples=2000, print_blob=True)
settings.load_profile(os.environ.get("CKPT_HYPOTHESIS_PROFILE", "ci"))


_DETERMINISTIC_AT_START = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())


@pytest.fixture(autouse=True)
def _torch_global_state_restored():
    """Tests that train (Lightning's `deterministic=True`) switch torch's process-wide deterministic mode on;
    left on, it makes later tests' torch.empty of float4/bits dtypes fail. Put it back after every test."""
    yield  # (module-scoped fixtures may train before a test starts: restore the session's state, not the test's)
    torch.use_deterministic_algorithms(*_DETERMINISTIC_AT_START[:1], warn_only=_DETERMINISTIC_AT_START[1])


@pytest.fixture
def src_dir(tmp_path: Path) -> Path:
    """A folder for source checkpoints, separate from where outputs go."""
    d = tmp_path / "src"
    d.mkdir()
    return d


@pytest.fixture
def out_parent(tmp_path: Path) -> Path:
    """An empty folder that only ever holds conversion outputs (to spot leftovers)."""
    d = tmp_path / "outputs"
    d.mkdir()
    return d


@pytest.fixture
def small_state_dict():
    torch.manual_seed(1)
    m = torch.nn.Sequential(torch.nn.Linear(7, 11), torch.nn.ReLU(), torch.nn.Linear(11, 3))
    return m.state_dict()


@pytest.fixture
def net() -> Net:
    return make_net()


@pytest.fixture
def general_checkpoint():
    """The tutorial's general checkpoint after two real SGD-with-momentum steps."""
    model = make_net()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss = trained(model, opt)
    return {
        "epoch": 5,
        "model_state_dict": model.state_dict(),
        "optimizer_state_dict": opt.state_dict(),
        "loss": loss.item(),
    }


@pytest.fixture
def general_checkpoint_file(src_dir, general_checkpoint) -> Path:
    return save(general_checkpoint, src_dir / "general.tar", "zip")
