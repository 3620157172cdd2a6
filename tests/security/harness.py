"""Running untrusted-input work in a child process under a memory limit and a timeout."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
# `import torch` alone maps ~0.7 GiB of address space; 3 GiB leaves room for real work but not for
# anything that tries to allocate what a hostile length field claims.
MEMORY_LIMIT = 3 << 30


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def env() -> dict[str, str]:
    out = dict(os.environ)
    out["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT)] + ([out["PYTHONPATH"]] if out.get("PYTHONPATH") else []))
    out["PYTHONWARNINGS"] = "ignore"
    return out


def run_limited(args: list[str], *, timeout: float, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """`python ARGS` with RLIMIT_AS set in the child (never in the test process itself)."""
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env(), capture_output=True, text=True,
                          timeout=timeout, preexec_fn=_limit_memory, stdin=subprocess.DEVNULL)


def run_driver(jobs: list[dict], work: Path, *, timeout: float = 300) -> dict[str, dict]:
    """Convert every job in one limited child (tests/security/driver.py); results by name."""
    jobs_file = work / "jobs.json"
    jobs_file.write_text(json.dumps(jobs))
    proc = run_limited(["-m", "tests.security.driver", str(jobs_file)], timeout=timeout, cwd=work)
    results = {}
    for line in proc.stdout.splitlines():
        if line.startswith("{"):
            row = json.loads(line)
            results[row["name"]] = row
    assert proc.returncode == 0 and len(results) == len(jobs), (proc.returncode, proc.stderr[-3000:])
    return results
