"""The `.pre-commit-hooks.yaml` hooks, run by pre-commit itself on real `git commit`s in a scratch repository.

The scratch repository's `.pre-commit-config.yaml` is a `repo: local` copy of our hooks with their own
`files`/`types`/`args`, but `language: system` and `python -m convert` as the entry: pre-commit would otherwise
build a virtualenv and pip-install this project, which needs the network.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import torch
import yaml

from tests.security import harness, pk

REPO_ROOT = Path(__file__).resolve().parents[2]
HOOKS = yaml.safe_load((REPO_ROOT / ".pre-commit-hooks.yaml").read_text())


def _pre_commit() -> str:
    found = shutil.which("pre-commit", path=str(Path(sys.executable).parent)) or shutil.which("pre-commit")
    assert found, "pre-commit is a test dependency (pyproject's test extra)"
    return found


def _local_config() -> str:
    hooks = []
    for hook in HOOKS:
        assert hook["entry"].startswith("ckpt-convert ")
        local = {k: v for k, v in hook.items() if k not in ("language", "entry", "description")}
        local.update(language="system", entry=f"{sys.executable} -m convert {hook['entry'].removeprefix('ckpt-convert ')}")
        hooks.append(local)
    return yaml.safe_dump({"repos": [{"repo": "local", "hooks": hooks}]}, sort_keys=False)


def _git(repo: Path, *args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=repo, env=env, capture_output=True, text=True, timeout=300,
                          stdin=subprocess.DEVNULL)


def test_hook_definitions():
    by_id = {h["id"]: h for h in HOOKS}
    assert set(by_id) == {"ckpt-convert-scan", "ckpt-convert-scan-content"}
    import re

    pattern = re.compile(by_id["ckpt-convert-scan"]["files"])
    assert all(pattern.search(n) for n in ("a.pt", "b.pth", "pytorch_model.bin", "x.ckpt", "y.pkl", "z.pickle", "W.PT"))
    assert not any(pattern.search(n) for n in ("model.safetensors", "notes.txt", "pt.py"))
    assert by_id["ckpt-convert-scan-content"]["types"] == ["binary"]
    assert "--skip-non-checkpoints" in by_id["ckpt-convert-scan-content"]["entry"]


def test_hook_refuses_a_malicious_pickle_and_lets_a_state_dict_through(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    env = {**harness.env(), "PRE_COMMIT_HOME": str(tmp_path / "pre-commit-home"), "HOME": str(tmp_path),
           "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.invalid", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@example.invalid", "GIT_CONFIG_NOSYSTEM": "1"}
    env.pop("GIT_DIR", None)
    assert _git(repo, "init", "-q", env=env).returncode == 0
    (repo / ".pre-commit-config.yaml").write_text(_local_config())
    install = subprocess.run([_pre_commit(), "install"], cwd=repo, env=env, capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stdout + install.stderr

    # a state dict (by extension and by content) and another binary file (by content, passed over): committed
    torch.save({"w": torch.ones(3), "b": torch.zeros(2)}, repo / "model.pt")
    (repo / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))
    _git(repo, "add", ".pre-commit-config.yaml", "model.pt", "logo.png", env=env)
    ok = _git(repo, "commit", "-q", "-m", "a state dict", env=env)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "Passed" in ok.stdout + ok.stderr or ok.stdout == ""

    # a malicious pickle (by extension) and one hidden under another name (by content): refused
    canary = tmp_path / "CANARY"
    (repo / "evil.pkl").write_bytes(pk.proto(pk.call(pk.glob("os", "system"), pk.text(f"touch '{canary}'"))))
    (repo / "weights.data").write_bytes(pk.proto(pk.call(pk.glob("socket", "create_connection"),
                                                         pk.tup(pk.text("127.0.0.1"), pk.integer(9)))))
    _git(repo, "add", "evil.pkl", "weights.data", env=env)
    refused = _git(repo, "commit", "-q", "-m", "evil", env=env)
    assert refused.returncode != 0
    out = refused.stdout + refused.stderr
    assert "ckpt-convert scan (checkpoints by extension)" in out and "Failed" in out, out
    assert "ckpt-convert scan (checkpoints by content)" in out, out
    assert "unsafe [exec] os.system" in out, out
    assert "unsafe [network] socket.create_connection" in out, out  # only the content hook sees weights.data
    assert not canary.exists()
    assert _git(repo, "log", "--format=%s", env=env).stdout.split("\n")[0] == "a state dict"
