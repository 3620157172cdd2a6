"""load_checkpoint's arguments, and inspect on a checkpoint file."""

from __future__ import annotations

import pytest
import torch

from convert import ConvertError, convert_checkpoint, load_checkpoint
from tests.helpers import run_cli


@pytest.fixture
def converted(tmp_path):
    torch.save({"w": torch.arange(4.0)}, tmp_path / "a.pt")
    convert_checkpoint(tmp_path / "a.pt", tmp_path / "out")
    return tmp_path / "out"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on machines without CUDA")
def test_cuda_map_location_without_cuda_is_a_clear_error(converted):
    with pytest.raises(ConvertError, match="CUDA is not available"):
        load_checkpoint(converted, map_location="cuda")


@pytest.mark.parametrize("bad", ["gpu", "cuda:x", 3.5])
def test_bad_map_location_is_a_clear_error(converted, bad):
    with pytest.raises(ConvertError, match="map_location"):
        load_checkpoint(converted, map_location=bad)


def test_map_location_cpu_forms_agree(converted):
    for where in (None, "cpu", torch.device("cpu")):
        assert torch.equal(load_checkpoint(converted, map_location=where)["w"], torch.arange(4.0))


def test_inspect_a_checkpoint_file_reads_it_safely(tmp_path):
    torch.save({"epoch": 3, "model_state_dict": {"fc.weight": torch.zeros(2, 3, dtype=torch.bfloat16)}}, tmp_path / "c.pth")
    proc = run_cli("inspect", tmp_path / "c.pth")
    assert proc.returncode == 0, proc.stderr
    assert "fc.weight" in proc.stdout and "bfloat16" in proc.stdout and "[2, 3]" in proc.stdout and "epoch: 3" in proc.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pth"]  # nothing written (glob("c*/") matches files before 3.11)
