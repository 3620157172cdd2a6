"""A conversion killed at each step, two conversions racing for one destination, and loads racing an
overwrite: the destination is always absent, the complete old folder or the complete new one, never
mixed; what a killed run leaves is one marked temporary folder that the next run removes."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys

import pytest
import torch

from convert import ConvertError, OutputExists, convert_checkpoint, load_checkpoint, verify_folder
from convert.errors import CorruptFolder, DestinationBusy, MalformedCheckpoint
from convert.primitives.lock import lock_path
from convert.primitives.temp import MARKER, is_temporary
from convert.write import folder as folder_mod
from convert.write.folder import FAULT_ENV, FAULT_POINTS
from tests.helpers import run_cli, save

TRIES = 10


def _checkpoint(src_dir, tag: int):
    obj = {"which": tag, "model": {"w": torch.full((128, 16), float(tag)), "b": torch.full((16,), float(tag))},
           "extra": torch.full((3,), tag)}
    return save(obj, src_dir / f"ckpt{tag}.pt", "zip")


def _tag_of(tree) -> int:
    """The tag a loaded tree was converted from; fails if its sidecar values and tensors disagree."""
    tag = tree["which"]
    assert bool((tree["model"]["w"] == tag).all()) and bool((tree["model"]["b"] == tag).all()), "mixed folder"
    assert bool((tree["extra"] == tag).all()), "mixed folder"
    return tag


def _temporaries(parent):
    return sorted(p for p in parent.iterdir() if is_temporary(p))


# ------------------------------------------------------------------------------ kill at each step


@pytest.mark.parametrize("point", FAULT_POINTS)
def test_overwrite_killed_at_each_step_leaves_a_complete_folder(tmp_path, src_dir, point):
    old, new = _checkpoint(src_dir, 1), _checkpoint(src_dir, 2)
    parent = tmp_path / "out"
    parent.mkdir()
    dst = parent / "ckpt"
    convert_checkpoint(old, dst)
    proc = run_cli("convert", new, dst, "--overwrite", env_extra={FAULT_ENV: point})
    assert proc.returncode == -signal.SIGKILL, (proc.returncode, proc.stderr)
    assert verify_folder(dst) == []  # complete, its digests and folder id all match
    expected = 2 if point == "after-exchange" else 1
    assert _tag_of(load_checkpoint(dst, verify=True)) == expected
    leftovers = _temporaries(parent)
    assert len(leftovers) == 1 and (leftovers[0] / MARKER).is_file(), os.listdir(parent)
    # and the lock file, no longer locked (flock ends with its process): the next run takes and removes it
    assert sorted(os.listdir(parent)) == sorted(["ckpt", leftovers[0].name, lock_path(dst).name])

    convert_checkpoint(new, dst, overwrite=True)  # the next run removes what the killed one left
    assert os.listdir(parent) == ["ckpt"]
    assert _tag_of(load_checkpoint(dst, verify=True)) == 2


FALLBACK_SCRIPT = """
import os, sys
from convert.primitives import durable
durable._renameat2_fn = None  # as on an OS or file system without renameat2
from convert.cli import main
sys.exit(main(["convert", sys.argv[1], sys.argv[2], "--overwrite"]))
"""


def test_overwrite_without_exchange_killed_between_its_renames_loses_nothing(tmp_path, src_dir):
    old, new = _checkpoint(src_dir, 1), _checkpoint(src_dir, 2)
    parent = tmp_path / "out"
    dst = parent / "ckpt"
    convert_checkpoint(old, dst)
    env = dict(os.environ, PYTHONPATH=os.getcwd(), PYTHONWARNINGS="ignore", **{FAULT_ENV: "after-move-aside"})
    proc = subprocess.run([sys.executable, "-c", FALLBACK_SCRIPT, str(new), str(dst)], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert not dst.exists()  # the one window the two-rename fallback has ...
    (leftover,) = _temporaries(parent)
    assert verify_folder(leftover / "old") == []  # ... where the old folder waits, whole
    with pytest.raises(OutputExists):  # the next run puts it back first (and so refuses to replace it)
        convert_checkpoint(new, dst)
    assert _tag_of(load_checkpoint(dst, verify=True)) == 1
    assert os.listdir(parent) == ["ckpt"]  # the killed run's lock file is gone too


def test_first_conversion_killed_before_the_rename_leaves_no_destination(tmp_path, src_dir):
    src = _checkpoint(src_dir, 1)
    parent = tmp_path / "out"
    parent.mkdir()
    proc = run_cli("convert", src, parent / "ckpt", env_extra={FAULT_ENV: "after-sidecar"})
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert not (parent / "ckpt").exists()
    assert len(_temporaries(parent)) == 1
    proc = run_cli("convert", src, parent / "ckpt")
    assert proc.returncode == 0, proc.stderr
    assert os.listdir(parent) == ["ckpt"]
    assert verify_folder(parent / "ckpt") == []


# ------------------------------------------------------------------------------ two conversions racing


def _race_worker(src, dsts, overwrite, start, at_install, results):
    """Convert `src` to each of `dsts` in turn, starting each together with the other worker; on even
    tries without overwrite, also wait for it right before the final rename (both passed every check)."""
    real_install = folder_mod._install

    def install_together(temp, dst, overwrite_):
        at_install.wait(timeout=120)
        real_install(temp, dst, overwrite_)

    for i, dst in enumerate(dsts):
        folder_mod._install = install_together if (not overwrite and i % 2 == 0) else real_install
        start.wait(timeout=120)
        try:
            convert_checkpoint(src, dst, overwrite=overwrite)
            results.put((i, str(src), "ok"))
        except OutputExists:
            results.put((i, str(src), "exists"))
        except DestinationBusy:
            results.put((i, str(src), "busy"))
        except BaseException as exc:  # reported to the test, which fails on it
            results.put((i, str(src), f"{type(exc).__name__}: {exc}"))


def _race(tmp_path, src_dir, overwrite: bool) -> tuple[list, dict]:
    ctx = multiprocessing.get_context("spawn")
    srcs = [_checkpoint(src_dir, 1), _checkpoint(src_dir, 2)]
    dsts = [tmp_path / "out" / f"try{i}" for i in range(TRIES)]
    if overwrite:
        (tmp_path / "out").mkdir()
        base = _checkpoint(src_dir, 0)
        for dst in dsts:
            convert_checkpoint(base, dst)
    start, at_install, results = ctx.Barrier(2), ctx.Barrier(2), ctx.Queue()
    workers = [ctx.Process(target=_race_worker, args=(src, dsts, overwrite, start, at_install, results))
               for src in srcs]
    for w in workers:
        w.start()
    outcomes: dict[int, dict[str, str]] = {}
    for _ in range(2 * TRIES):
        i, src, outcome = results.get(timeout=300)
        outcomes.setdefault(i, {})[src] = outcome
    for w in workers:
        w.join(timeout=60)
        assert w.exitcode == 0
    return dsts, {i: outcomes[i] for i in range(TRIES)}


def test_two_conversions_to_one_destination_exactly_one_wins(tmp_path, src_dir):
    dsts, outcomes = _race(tmp_path, src_dir, overwrite=False)
    for i, dst in enumerate(dsts):
        by_src = outcomes[i]
        assert sorted(by_src.values()) == ["exists", "ok"], by_src
        winner = next(src for src, outcome in by_src.items() if outcome == "ok")
        assert verify_folder(dst) == []
        assert _tag_of(load_checkpoint(dst)) == (1 if winner.endswith("ckpt1.pt") else 2)
    assert sorted(os.listdir(tmp_path / "out")) == sorted(d.name for d in dsts)


def test_two_overwrites_of_one_destination_leave_a_complete_folder_of_one(tmp_path, src_dir):
    dsts, outcomes = _race(tmp_path, src_dir, overwrite=True)
    for i, dst in enumerate(dsts):
        by_src = outcomes[i]
        assert set(by_src.values()) <= {"ok", "busy"} and "ok" in by_src.values(), by_src
        winners = {1 if src.endswith("ckpt1.pt") else 2 for src, outcome in by_src.items() if outcome == "ok"}
        assert verify_folder(dst) == []
        assert _tag_of(load_checkpoint(dst, verify=True)) in winners
    assert sorted(os.listdir(tmp_path / "out")) == sorted(d.name for d in dsts)


# ------------------------------------------------------------------------------ loads racing an overwrite


def test_load_between_reading_the_sidecar_and_the_data_of_a_replaced_folder_is_refused(tmp_path, src_dir,
                                                                                    monkeypatch):
    """The reported interleaving, made deterministic: the old sidecar, then the new data files."""
    import convert.load as load_mod

    old, new = _checkpoint(src_dir, 1), _checkpoint(src_dir, 2)
    dst = tmp_path / "ckpt"
    convert_checkpoint(old, dst)
    real_read = load_mod.read_sidecar

    def read_then_replaced(folder, **options):
        sidecar = real_read(folder, **options)
        convert_checkpoint(new, dst, overwrite=True)
        return sidecar

    monkeypatch.setattr(load_mod, "read_sidecar", read_then_replaced)
    with pytest.raises(CorruptFolder, match="another conversion"):
        _tag_of(load_checkpoint(dst))


def test_full_load_whose_files_are_replaced_before_they_are_read_is_refused(tmp_path, src_dir, monkeypatch):
    """mmap=False reopens each file to read it: it must be the very file whose header was checked."""
    import convert.load as load_mod

    old, new = _checkpoint(src_dir, 1), _checkpoint(src_dir, 2)
    dst = tmp_path / "ckpt"
    convert_checkpoint(old, dst)
    real_read = load_mod.read_to_host

    def replaced_then_read(jobs, *args):
        convert_checkpoint(new, dst, overwrite=True)
        return real_read(jobs, *args)

    monkeypatch.setattr(load_mod, "read_to_host", replaced_then_read)
    with pytest.raises(MalformedCheckpoint, match="replaced while it was being loaded"):
        _tag_of(load_checkpoint(dst, mmap=False))


def _overwrite_loop(srcs, dst, rounds, done):
    for i in range(rounds):
        convert_checkpoint(srcs[i % 2], dst, overwrite=True)
    done.set()


def test_loads_during_repeated_overwrites_are_never_mixed(tmp_path, src_dir):
    ctx = multiprocessing.get_context("spawn")
    srcs = [_checkpoint(src_dir, 1), _checkpoint(src_dir, 2)]
    dst = tmp_path / "ckpt"
    convert_checkpoint(srcs[0], dst)
    done = ctx.Event()
    writer = ctx.Process(target=_overwrite_loop, args=(srcs, dst, 30, done))
    writer.start()
    seen, refused, loads = set(), 0, 0
    while not done.is_set() or loads < 20:
        try:
            seen.add(_tag_of(load_checkpoint(dst, mmap=loads % 2 == 0)))
        except ConvertError:  # a file of the old folder already removed, or ids differing: clean refusals
            refused += 1
        loads += 1
    writer.join(timeout=120)
    assert writer.exitcode == 0
    assert seen <= {1, 2} and loads - refused > 0, (seen, refused, loads)
    assert _tag_of(load_checkpoint(dst, verify=True)) == 2  # 30 rounds: the last one converted srcs[1]
