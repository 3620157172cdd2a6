"""A short hypothesis-driven mutation run over both untrusted-input paths (the long run is tests/fuzz/).

Mutated checkpoints and mutated converted folders must either work or fail with a ConvertError —
never another exception, never a hang — and a mutated malicious file must never run its payload.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fuzz import targets
from tests.security import pk

SETTINGS = settings(max_examples=150, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.fixture(scope="module")
def seeds() -> dict[str, list[bytes]]:
    canary = Path(tempfile.mkdtemp(prefix="mutation-canary-")) / "fired"
    evil = [pk.proto(pk.call(pk.glob("os", "system"), pk.text(f"touch {canary}")), v) for v in (2, 4)]
    return {"pickle": targets.pickle_seeds() + evil, "load": targets.load_seeds(), "canary": [str(canary).encode()]}


RANDOMS = st.randoms(use_true_random=False)  # hypothesis drives (and shrinks) the mutation choices


@SETTINGS
@given(which=st.integers(0, 1 << 16), rng=RANDOMS)
def test_mutated_checkpoints_fail_cleanly(seeds, which, rng):
    pool = seeds["pickle"]
    data = targets.mutate(pool[which % len(pool)], rng, pool)
    targets.pickle_reader(data)  # raises on anything but success or ConvertError
    assert not os.path.exists(seeds["canary"][0].decode())


@SETTINGS
@given(which=st.integers(0, 1 << 16), rng=RANDOMS)
def test_mutated_folders_fail_cleanly(seeds, which, rng):
    pool = seeds["load"]
    targets.load_path(targets.mutate(pool[which % len(pool)], rng, pool))


@settings(max_examples=100, deadline=None, derandomize=True)
@given(st.binary(max_size=512))
def test_arbitrary_bytes_fail_cleanly(data):
    targets.pickle_reader(data)
    targets.load_path(data)


@pytest.mark.parametrize("name", ["pickle_reader", "load_path"])
def test_plain_fuzz_mode_runs(seeds, name):
    """The fuzz targets' own random-mutation mode (used when atheris is not installed) works."""
    pool = seeds["pickle"] if name == "pickle_reader" else seeds["load"]
    assert targets.run_plain(getattr(targets, name), pool, seconds=2.0, seed=7) > 10
