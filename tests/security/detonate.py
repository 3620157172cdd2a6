"""Prove the corpus is live: load each sample the naive way, in a throw-away child, and see the canary.

Run as `python -m tests.security.detonate SAMPLES.json` (a list of {name, path, trigger, payload_hex,
canary, exits}); prints a JSON object {name: "fired" | "silent" | "timeout" | ...}. Each sample is
loaded in its own forked child of a process that has already imported torch and numpy, with
stdin/stdout/stderr on /dev/null and its own scratch working directory, so one payload can neither
hurt the run nor see another's canary. Only our own payloads run here, and they only create files
in the canary folder (or exit).
"""

from __future__ import annotations

import gzip
import json
import os
import pickle
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy  # noqa: F401 - preloaded so the children fork with it
import torch  # noqa: F401

TIMEOUT_S = 60.0
EXIT_CODE_OF_SYS_EXIT = 77


def _load(trigger: str, path: str, payload: bytes | None) -> None:
    warnings.simplefilter("ignore")
    if trigger == "pickle":
        with open(path, "rb") as f:
            pickle.load(f)
    elif trigger == "pickle_all":  # what a loader reading several pickles in a row does (legacy torch format)
        with open(path, "rb") as f:
            while f.peek(1):
                pickle.load(f)
    elif trigger == "embedded":  # the container really carries this pickle; unpickling it is what a loader does
        assert payload is not None
        assert payload in Path(path).read_bytes() or _decompressed_contains(path, payload)
        pickle.loads(payload)
    elif trigger == "gzip":
        with gzip.open(path, "rb") as f:
            pickle.load(f)
    else:
        raise ValueError(trigger)


def _decompressed_contains(path: str, payload: bytes | None) -> bool:
    import zipfile

    with zipfile.ZipFile(path) as zf:
        return any(zf.read(n) == payload for n in zf.namelist())


def detonate(sample: dict) -> str:
    canary = Path(sample["canary"])
    scratch = tempfile.mkdtemp(prefix="detonate-")
    pid = os.fork()
    if pid == 0:  # child
        try:
            os.chdir(scratch)
            for var in ("HOME", "XDG_CACHE_HOME", "TORCHINDUCTOR_CACHE_DIR", "TORCH_HOME", "TMPDIR"):
                os.environ[var] = scratch  # whatever a payload leaves behind stays in the scratch folder
            null = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(null, fd)
            payload = bytes.fromhex(sample["payload_hex"]) if sample.get("payload_hex") else None
            _load(sample["trigger"], sample["path"], payload)
        except SystemExit as exc:
            os._exit(exc.code if isinstance(exc.code, int) else 1)
        except BaseException:
            pass
        os._exit(0)
    deadline = time.monotonic() + TIMEOUT_S
    status = None
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        time.sleep(0.02)
    else:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
    try:
        for _ in range(100):  # Popen and pipepager finish in a grandchild: give them a moment
            if canary.exists():
                return "fired"
            time.sleep(0.05)
        if sample.get("exits") and status is not None and os.WIFEXITED(status) \
                and os.WEXITSTATUS(status) == EXIT_CODE_OF_SYS_EXIT:
            return "fired"
        return "silent" if status is not None else "timeout"
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def main(argv: list[str]) -> int:
    samples = json.loads(Path(argv[0]).read_text())
    print(json.dumps({s["name"]: detonate(s) for s in samples}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
