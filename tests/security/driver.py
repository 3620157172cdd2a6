"""Convert many samples in one process, watching with an audit hook; print one JSON result per sample.

`python -m tests.security.driver JOBS.json` where JOBS.json is a list of {"name", "src", "dst"}.
Everything the converter needs is imported and exercised on a benign file first; then an audit
hook (`sys.addaudithook`) is installed, and from that moment any import of a new module, exec,
compile, process creation, socket, ctypes call, pickle.find_class or file opened for writing is
recorded against the sample being read. Each sample goes through the real CLI entry point
(`convert.cli.main`), with its stderr captured. The caller sets the memory limit (RLIMIT_AS) and
the timeout on this process.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import resource
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from convert.cli import main as cli_main

WATCHED_PREFIXES = ("exec", "compile", "subprocess.", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork",
                    "os.forkpty", "pty.", "socket.", "ctypes.", "pickle.find_class", "marshal.", "import", "os.rename",
                    "os.remove", "os.rmdir", "os.mkdir", "shutil.", "os.symlink", "os.link", "urllib.", "webbrowser.")
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

_events: list[str] | None = None  # the current sample's events; None while not watching


def _is_write(args: tuple) -> bool:
    mode, flags = (args[1] if len(args) > 1 else None), (args[2] if len(args) > 2 else 0)
    if isinstance(mode, str) and any(c in mode for c in "wax+"):
        return True
    return isinstance(flags, int) and bool(flags & _WRITE_FLAGS)


def _hook(event: str, args: tuple) -> None:
    if _events is None:
        return
    if event == "open":
        if _is_write(args):
            _events.append(f"open-for-write {args[0]!r:.100}")
    elif event.startswith(WATCHED_PREFIXES):
        _events.append(f"{event} {str(args)[:100]}")


def _warm_up() -> None:
    """Run every code path a benign conversion takes, so lazy imports and caches happen before watching."""
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "warm.pt"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.save({"w": torch.ones(2), "n": np.ones(2), "o": torch.nn.Linear(1, 1)}, src)
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            cli_main(["convert", str(src), str(Path(tmp) / "out")])
            import zipfile
            with zipfile.ZipFile(Path(tmp) / "py.zip", "w") as zf:  # names decoded as cp437: a lazy codec import
                zf.writestr("archive/data.pkl", b"\x80\x02}.")
            cli_main(["convert", str(Path(tmp) / "py.zip"), str(Path(tmp) / "out3")])
            for bad in (b"\x80\x04cos\nsystem\n)R.", b"\x80\x04]\x85\x85.", b"PK\x03\x04junk", b"\x1f\x8b", b"nonsense"):
                (Path(tmp) / "bad.pkl").write_bytes(bad)
                cli_main(["convert", str(Path(tmp) / "bad.pkl"), str(Path(tmp) / "out2")])


def run_one(src: str, dst: str) -> dict:
    global _events
    err = io.StringIO()
    events: list[str] = []
    start = time.perf_counter()
    _events = events
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
            code = cli_main(["convert", src, dst])
    except BaseException as exc:  # a crash is a result too, never a reason to stop the run
        code = f"crash: {type(exc).__name__}: {exc}"
    finally:
        _events = None
    elapsed = time.perf_counter() - start
    parent = Path(dst).parent
    leftovers = sorted(p.name for p in parent.iterdir()) if parent.exists() else []
    return {"exit": code, "stderr": err.getvalue(), "events": events, "seconds": round(elapsed, 3),
            "leftovers": leftovers, "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024}


def main(argv: list[str]) -> int:
    jobs = json.loads(Path(argv[0]).read_text())
    _warm_up()
    sys.addaudithook(_hook)
    for job in jobs:
        Path(job["dst"]).parent.mkdir(parents=True, exist_ok=True)
        result = {"name": job["name"], **run_one(job["src"], job["dst"])}
        print(json.dumps(result), flush=True)  # line by line: a killed run still reports what it finished
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
