"""Test hooks, all in one registry: every environment variable the package reads for testing is read here.

The namespace is `CKPT_CONVERT_FAULT*` (plus `CKPT_CONVERT_NO_FSYNC`, a measuring switch). None is set in
normal use; each exists so that a test can kill, stop or hang a process at a named point and check what
a crash leaves behind. Production code names its points (`faults.point("after-data")`); a name that is not
in the registry, or a variable naming no registered point, is a ValueError (a typo must not make a crash
test pass by never crashing).

| variable | value | effect |
| --- | --- | --- |
| CKPT_CONVERT_FAULT | a write step, or STEP:stop | SIGKILL (or SIGSTOP) at that step of writing a folder |
| CKPT_CONVERT_FAULT_KILL | journal, journal:K, compact | SIGKILL migrate's driver at its K-th journal line / before compacting |
| CKPT_CONVERT_FAULT_INJECT | REL:MARKER | migrate's first attempt on REL writes its pid to MARKER and hangs |
| CKPT_CONVERT_NO_FSYNC | 1 | skip every fsync (for benchmarks/durability.py only) |
"""

from __future__ import annotations

import os
import signal
import time

WRITE_ENV = "CKPT_CONVERT_FAULT"
KILL_ENV = "CKPT_CONVERT_FAULT_KILL"
HANG_ENV = "CKPT_CONVERT_FAULT_INJECT"
NO_FSYNC_ENV = "CKPT_CONVERT_NO_FSYNC"

# point name -> the variable that arms it
WRITE_POINTS = ("after-data", "after-sidecar", "after-fsync", "before-rename", "after-exchange")
FALLBACK_WRITE_POINTS = ("after-move-aside",)  # only where the OS cannot exchange two paths
KILL_POINTS = ("journal", "compact")
POINTS: dict[str, str] = {**{p: WRITE_ENV for p in (*WRITE_POINTS, *FALLBACK_WRITE_POINTS)},
                          **{p: KILL_ENV for p in KILL_POINTS}}


def _armed(env: str) -> tuple[str, str] | None:
    """(point, suffix) named by `env`, None if unset; ValueError if it names no registered point."""
    spec = os.environ.get(env)
    if not spec:
        return None
    name, _, suffix = spec.partition(":")
    valid = POINTS.get(name) == env and (
        suffix == "" or (env == WRITE_ENV and suffix == "stop") or (env == KILL_ENV and suffix.isdigit()))
    if not valid:
        known = ", ".join(p for p, e in POINTS.items() if e == env)
        raise ValueError(f"{env}={spec!r} names no fault point (known: {known})")
    return name, suffix


def point(name: str, count: int | None = None) -> None:
    """A fault point: if its variable names it, SIGKILL this process here (no cleanup); with ":stop",
    SIGSTOP it; with ":K", kill only when `count` equals K.

    Raises:
        ValueError: `name` is not registered, or the variable names no registered point.
    """
    env = POINTS.get(name)
    if env is None:
        raise ValueError(f"{name!r} is not a registered fault point")
    armed = _armed(env)
    if armed is None or armed[0] != name:
        return
    suffix = armed[1]
    if suffix == "stop":
        os.kill(os.getpid(), signal.SIGSTOP)
    elif suffix == "" or (count is not None and suffix == str(count)):
        os.kill(os.getpid(), signal.SIGKILL)


def hang(rel: str) -> None:
    """If CKPT_CONVERT_FAULT_INJECT is "REL:MARKER" for this `rel` and MARKER does not exist yet (a first
    attempt), write this pid to MARKER and hang (a test kills the process)."""
    spec = os.environ.get(HANG_ENV, "")
    if not spec:
        return
    if ":" not in spec:
        raise ValueError(f"{HANG_ENV}={spec!r} is not REL:MARKER")
    if spec.startswith(rel + ":"):
        marker = spec[len(rel) + 1:]
        if not os.path.exists(marker):
            with open(marker, "w") as f:
                f.write(str(os.getpid()))
            time.sleep(600)


def fsync_enabled() -> bool:
    """False only while CKPT_CONVERT_NO_FSYNC is set to something other than "" or "0"."""
    return os.environ.get(NO_FSYNC_ENV, "") in ("", "0")


def inherited_env() -> dict[str, str]:
    """The test-hook variables set now, to hand to worker processes started elsewhere (Ray)."""
    return {k: v for k, v in os.environ.items() if k.startswith("CKPT_CONVERT_")}
