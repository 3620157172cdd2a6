"""Every `ckpt-convert ...` command in the README's shell blocks runs, on tiny files generated here (issue 24).

The commands are taken from the README itself (```bash and plain ``` blocks, lines that start with
`ckpt-convert `), in order, in one scratch folder holding the files they name. Exempt, and why:
  --ray      needs a Ray cluster (tests/test_migrate_ray.py runs it where Ray starts)
  demo       ~10 s of tutorial training; run by tests/test_cli.py::test_demo and tests/test_newcomer.py
  sign, --sign-key   need a key pair (and certificates); tests/test_signing.py runs them
A `convert` or `export` line writes into a fresh destination: the README shows alternatives one after another.
Plus: the top-level `schemas/` is a link to the packaged schema folder, not a second copy.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest
import torch

from tests.dcp_build import save_single
from tests.helpers import REPO_ROOT

README = REPO_ROOT / "README.md"
EXEMPT = {"--ray": "needs a Ray cluster", " demo": "slow; run by test_cli.py and test_newcomer.py",
          " sign ": "needs a key pair and certificates; tests/test_signing.py signs and verifies (API, CLI, upstream)",
          "--sign-key": "needs a key pair; tests/test_signing.py runs convert/migrate --sign-key"}
SHELL_FENCES = ("```bash", "```sh", "```")


def readme_commands() -> list[str]:
    commands, fence = [], None  # fence: the opening line of the block we are in, None outside blocks
    for line in README.read_text().splitlines():
        if line.startswith("```"):
            fence = line.strip() if fence is None else None
        elif fence in SHELL_FENCES and line.startswith("ckpt-convert "):
            commands.append(re.sub(r"\s+#.*$", "", line).strip())  # drop the trailing comment
    return commands


def test_the_readme_shows_commands():
    commands = readme_commands()
    assert len(commands) >= 20, commands
    assert {c.split()[1] for c in commands} >= {"convert", "verify", "inspect", "scan", "migrate", "demo"}


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    """The files the README's commands name, tiny."""
    root = tmp_path_factory.mktemp("readme")
    small = {"model_state_dict": {"fc.weight": torch.randn(4, 3), "fc.bias": torch.zeros(4)}, "epoch": 3}
    for rel in ("old/checkpoint.pth", "old_models/a.pt", "old_models/sub/b.pth", "model.pt", "checkpoints/x.pt"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        torch.save(small, root / rel)
    weights = {"fc.weight": torch.randn(4, 3), "fc.bias": torch.zeros(4)}
    torch.save({"state_dict": {f"model.{k}": v for k, v in weights.items()},  # export's Lightning examples
                "callbacks": {"EMA": {"ema_state_dict": weights}}}, root / "last.ckpt")
    torch.save(weights, root / "pytorch_model.bin")
    (root / "checkpoint-500").mkdir()  # a Trainer checkpoint folder
    torch.save(weights, root / "checkpoint-500" / "pytorch_model.bin")
    torch.save({"state": {}, "param_groups": []}, root / "checkpoint-500" / "optimizer.pt")
    (root / "checkpoint-500" / "trainer_state.json").write_text("{}")
    save_single(root / "run" / "step-1000")
    save_single(root / "runs" / "exp1" / "step-10")
    return root


def test_every_readme_command_runs(scratch):
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "PYTHONWARNINGS": "ignore", "COLUMNS": "100"}
    ran = 0
    for command in readme_commands():
        if any(marker in f" {command}" for marker in EXEMPT):
            continue
        words = command.split()
        if words[1] in ("convert", "export"):  # the README shows alternatives one after another: each fresh
            target = scratch / words[3]
            shutil.rmtree(target, ignore_errors=True) if target.is_dir() else target.unlink(missing_ok=True)
        shell = f'ckpt-convert() {{ "{sys.executable}" -m convert "$@"; }}\n{command}'
        proc = subprocess.run(["bash", "-c", shell], cwd=scratch, env=env, capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 0, (command, proc.stdout[-2000:], proc.stderr[-2000:])
        assert "Traceback" not in proc.stderr, (command, proc.stderr)
        ran += 1
    assert ran >= 18
    assert (scratch / "new" / "checkpoint" / "checkpoint.json").is_file()
    assert (scratch / "scan.json").stat().st_size > 0 and (scratch / "scan.sarif").stat().st_size > 0


def test_top_level_schemas_is_a_link_to_the_packaged_schema():
    link = REPO_ROOT / "schemas"
    assert link.is_symlink(), "schemas/ must be a link to convert/schemas/, not a second copy"
    assert link.resolve() == (REPO_ROOT / "convert" / "schemas").resolve()
    assert (link / "checkpoint.schema.json").read_bytes() == \
        (REPO_ROOT / "convert" / "schemas" / "checkpoint.schema.json").read_bytes()
