"""An operator's hostile-but-realistic uses of the CLI and the API, each a break found by probing.

Every outcome must be a correct result, or the documented exit code with one line on stderr (no
traceback, no exit 70 for the user's own environment, no hang), nothing partial left, the source untouched.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from convert import ConvertError, convert_checkpoint
from tests.helpers import REPO_ROOT, assert_one_line_error, folder_snapshot, run_cli, save


def _hf_folder(root: Path) -> Path:
    hf = root / "bert"
    hf.mkdir()
    save({"w": torch.randn(4, 4), "b": torch.randn(4)}, hf / "pytorch_model.bin", "zip")
    (hf / "config.json").write_text('{"model_type": "bert"}')
    return hf


def _trainer_folder(root: Path) -> Path:
    ck = root / "checkpoint-500"
    ck.mkdir()
    save({"w": torch.randn(4, 4)}, ck / "optimizer.pt", "zip")
    (ck / "trainer_state.json").write_text("{}")
    return ck


@pytest.mark.parametrize("make", [_hf_folder, _trainer_folder])
@pytest.mark.parametrize("inside", ["out", "sub/out"])
def test_output_inside_a_source_folder_is_refused_at_once(tmp_path, make, inside):
    """`convert bert bert/out` used to copy its own temporary folder into itself, level after level (each
    level a copy of the whole model), until the path overflowed: 'File name too long'. Now one line, nothing written."""
    src = make(tmp_path)
    before = folder_snapshot(src)
    proc = run_cli("convert", src, src / inside, cwd=tmp_path)
    assert_one_line_error(proc, 2)
    assert "inside the source folder" in proc.stderr and "too long" not in proc.stderr, proc.stderr
    assert folder_snapshot(src) == before  # nothing created under the source, not even a parent folder
    with pytest.raises(ConvertError, match="inside the source folder"):
        convert_checkpoint(src, src / inside)
    assert folder_snapshot(src) == before


def test_migrate_of_a_unit_into_itself_says_why(tmp_path):
    """`migrate bert bert/out` (bert an HF folder): the one unit job writes under its own source; it failed with
    'File name too long' after copying the model over and over. The job now fails at once, saying why."""
    src = _hf_folder(tmp_path)
    proc = run_cli("migrate", src, src / "out", "--json", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert "inside the source folder" in proc.stdout and "too long" not in proc.stdout, proc.stdout
    assert not [p for p in (src / "out").rglob("*") if p.is_dir()]  # no output folder, no level of copies


def _cli_with_closed_stdout(*args, cwd) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), PYTHONWARNINGS="ignore")
    return subprocess.run([sys.executable, "-m", "convert", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120,
                          preexec_fn=lambda: os.close(1))


def test_closed_stdout_is_not_a_traceback(tmp_path, src_dir):
    """`ckpt-convert convert a.pt out >&-` (stdout closed, as cron or a daemon may run it): Python then has no
    sys.stdout, and the run ended in an AttributeError traceback, exit 1 (which reads as 'unsafe')."""
    src = save({"w": torch.randn(3)}, src_dir / "a.pt", "zip")
    proc = _cli_with_closed_stdout("convert", src, tmp_path / "out", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert (tmp_path / "out" / "checkpoint.json").is_file()
    proc = _cli_with_closed_stdout("verify", tmp_path / "out", cwd=tmp_path)
    assert (proc.returncode, proc.stderr) == (0, "")
    proc = _cli_with_closed_stdout("convert", src_dir / "missing.pt", tmp_path / "out2", cwd=tmp_path)
    assert_one_line_error(proc, 2)
