"""Fuzz targets for the two untrusted-input paths, usable with atheris or with plain random mutation.

* `pickle_reader(data)`: `data` is a checkpoint file (any container). It is read, planned and
  materialised (`plan_in_memory` + `read_checkpoint`) exactly as `convert` would, minus the write.
* `load_path(data)`: `data` is split into a sidecar and one safetensors file, laid out as a
  converted folder, and loaded with `load_checkpoint` (lazy and eager) and every tensor touched.

The only acceptable failure is a `ConvertError` (one clear line for the user). Anything else — an
unexpected exception type, a hang, a crash of the interpreter, or a forbidden audit event (import,
exec, compile, process, socket, write outside the scratch folder) — is a bug.

Long fuzz (atheris, coverage-guided):
    pip install atheris
    python -m tests.fuzz.fuzz_pickle_reader -atheris_runs=0 -max_len=65536 -timeout=10 fuzz-corpus/pickle/
    python -m tests.fuzz.fuzz_load_path     -atheris_runs=0 -max_len=65536 -timeout=10 fuzz-corpus/load/
  (`-atheris_runs=0` runs until stopped; a crash writes `crash-<sha1>` with the input; replay it by passing
  the file as the only argument.) Seeds are written into the corpus folder on the first run.
Plain random mutation (no atheris, e.g. in CI):
    python -m tests.fuzz.fuzz_pickle_reader --plain --seconds 60
"""

from __future__ import annotations

import atexit
import hashlib
import io
import json
import os
import random
import shutil
import struct
import sys
import tempfile
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from convert import ConvertError, load_checkpoint, read_checkpoint
from convert.ops.checkpoint import convert_checkpoint, plan_in_memory

SCRATCH = Path(tempfile.mkdtemp(prefix="ckpt-fuzz-"))
atexit.register(shutil.rmtree, SCRATCH, True)
FORBIDDEN = ("exec", "compile", "subprocess.", "os.system", "os.exec", "os.posix_spawn", "os.fork", "socket.",
             "ctypes.", "pickle.find_class", "marshal.loads", "import")
# The one module allowed to use ctypes while reading: the descriptor-less mmap (its calls are fixed,
# nothing from the input picks them). Any other ctypes event is still a finding.
_CTYPES_ALLOWED_IN = os.path.join("convert", "primitives", "mapping.py")
_watching = False


def _audit(event: str, args: tuple) -> None:
    if not _watching:
        return
    if event.startswith("ctypes.") and sys._getframe(1).f_code.co_filename.endswith(_CTYPES_ALLOWED_IN):
        return
    if event.startswith(FORBIDDEN):
        raise SystemExit(f"forbidden audit event while reading untrusted input: {event} {str(args)[:200]}")
    if event == "open" and len(args) > 1 and isinstance(args[1], str) and any(c in args[1] for c in "wax+"):
        path = os.path.realpath(os.fsdecode(args[0]))
        if not path.startswith(str(SCRATCH.resolve())):
            raise SystemExit(f"write outside the scratch folder: {path}")


# ------------------------------------------------------------------------------------------ seeds

def pickle_seeds() -> list[bytes]:
    """Small but varied checkpoints: every container, numpy, modules, legacy, plain protocols."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(3, 2)
    objs = [
        {"w": torch.arange(6.0).reshape(2, 3), "b": torch.zeros(2, dtype=torch.bfloat16)},
        {"epoch": 3, "model": lin.state_dict(), "opt": torch.optim.SGD(lin.parameters(), lr=0.1).state_dict(),
         "loss": 0.5, "tied": (lin.weight, lin.weight[0])},
        {"arr": np.arange(4, dtype=np.int16), "s": np.float32(2.0), "set": {1, 2}, "bytes": b"\x00\xff"},
        lin,
    ]
    seeds = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i, obj in enumerate(objs):
            for kind in ("zip", "legacy", 2, 4):
                buf = io.BytesIO()
                if kind == "zip":
                    torch.save(obj, buf)
                elif kind == "legacy":
                    torch.save(obj, buf, _use_new_zipfile_serialization=False)
                elif i != 3:
                    import pickle

                    pickle.dump(obj, buf, protocol=kind)
                if buf.getvalue():
                    seeds.append(buf.getvalue())
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:  # written by Python's zipfile: names decoded as cp437
        zf.writestr("archive/data.pkl", b"\x80\x02}q\x00X\x01\x00\x00\x00aK\x01s.")
        zf.writestr("archive/version", b"3\n")
    seeds.append(buf.getvalue())
    seeds.append(_deflated(seeds[0]))  # compressed members: mutations reach zlib (its errors were a bug)
    return seeds


def _deflated(torch_zip: bytes) -> bytes:
    """The same torch zip checkpoint with every member deflate-compressed (as some tools re-save them)."""
    src = zipfile.ZipFile(io.BytesIO(torch_zip))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info.filename))
    return out.getvalue()


def load_seeds() -> list[bytes]:
    """Converted folders, each packed as one fuzz input (see `pack_folder`)."""
    seeds = []
    for i, raw in enumerate(pickle_seeds()[:8]):
        src = SCRATCH / f"seed{i}.pt"
        src.write_bytes(raw)
        folder = SCRATCH / f"seed{i}"
        try:
            convert_checkpoint(src, folder, overwrite=True)
        except ConvertError:
            continue
        seeds.append(pack_folder(folder))
    return seeds


def pack_folder(folder: Path) -> bytes:
    """sidecar length (4 bytes) + sidecar + the largest safetensors file (the others are dropped from the sidecar)."""
    sidecar = json.loads((folder / "checkpoint.json").read_text())
    files = sorted(folder.glob("*.safetensors"), key=lambda p: -p.stat().st_size)
    data = files[0].read_bytes() if files else b""
    text = json.dumps(sidecar).encode()
    return struct.pack("<I", len(text)) + text + data


def unpack_folder(data: bytes, folder: Path) -> None:
    n = int.from_bytes(data[:4], "little") if len(data) >= 4 else 0
    sidecar, rest = data[4:4 + n], data[4 + n:]
    folder.mkdir(parents=True, exist_ok=True)
    for p in folder.iterdir():
        p.unlink()
    (folder / "checkpoint.json").write_bytes(sidecar)
    try:
        names = list(json.loads(sidecar).get("files", {}))
    except (ValueError, AttributeError, UnicodeDecodeError, RecursionError):
        names = []
    name = next((n for n in names if isinstance(n, str) and "/" not in n and n not in ("", ".", "..")),
                "model.safetensors")
    (folder / name).write_bytes(rest)


# ---------------------------------------------------------------------------------------- targets

def _touch(value: object) -> None:
    if isinstance(value, torch.Tensor):
        value.float().sum() if value.is_floating_point() or value.is_complex() else value.sum()
    elif isinstance(value, dict):
        for v in value.values():
            _touch(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            _touch(v)


def pickle_reader(data: bytes) -> None:
    path = SCRATCH / "input.pt"
    path.write_bytes(data)
    global _watching
    _watching = True
    try:
        plan_in_memory(path)
        read_checkpoint(path)
    except ConvertError:
        pass
    finally:
        _watching = False


def load_path(data: bytes) -> None:
    folder = SCRATCH / "folder"
    unpack_folder(data, folder)
    global _watching
    _watching = True
    try:
        for mmap in (True, False):
            _touch(load_checkpoint(folder, mmap=mmap))
    except ConvertError:
        pass
    finally:
        _watching = False


def differential_seeds() -> list[bytes]:
    """torch.save zip and legacy files that torch.load(weights_only=True) reads (no modules, no numpy)."""
    return [seed for i, seed in enumerate(pickle_seeds()[:8]) if i % 4 < 2]


class Disagreement(AssertionError):
    """torch.load and read_checkpoint both accepted an input but built different trees."""


def differential(data: bytes) -> str:
    """Where read_checkpoint and torch.load(weights_only=True) both accept `data`, they must agree.

    Returns "agree", "ours refused" or "torch refused"; raises Disagreement.

    Ours runs first (watched, like `pickle_reader`); torch only on what ours accepted, so it never
    sees a declared size our reader has not matched to real bytes (it would allocate it).
    """
    from convert.ops.compare import compare_trees

    path = SCRATCH / "input.pt"
    path.write_bytes(data)
    global _watching
    _watching = True
    try:
        ours = read_checkpoint(path)
    except ConvertError:
        return "ours refused"
    finally:
        _watching = False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            theirs = torch.load(path, weights_only=True, map_location="cpu")
    except Exception:  # torch refuses what we accept: no disagreement about contents
        return "torch refused"
    diffs = compare_trees(ours, theirs)
    if diffs:
        raise Disagreement(f"read_checkpoint and torch.load read different trees: {diffs[:3]}")
    return "agree"


def warm_up(target: Callable[[bytes], None], seeds: list[bytes]) -> None:
    """Run the seeds once (lazy imports happen here), then start watching audit events."""
    for seed in seeds:
        target(seed)
    for sidecar in (b'{"format": 1}', b"[]", b"\xff"):  # error paths import their helpers lazily
        seeds = [*seeds, struct.pack("<I", len(sidecar)) + sidecar + b"\0" * 8]
    for bad in (b"", b"\x80\x04]\x85.", b"PK\x03\x04", b"{}", *seeds[-3:]):
        target(bad)
    sys.addaudithook(_audit)


# -------------------------------------------------------------------------------- plain mutation

def mutate(data: bytes, rng: random.Random, seeds: list[bytes]) -> bytes:
    """A few random edits: flips, interesting bytes, inserts, deletes, duplicated slices, splices."""
    buf = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        choice = rng.randrange(7)
        at = rng.randrange(len(buf) + 1)
        if choice == 0 and buf:
            buf[min(at, len(buf) - 1)] ^= 1 << rng.randrange(8)
        elif choice == 1 and buf:
            buf[min(at, len(buf) - 1)] = rng.choice([0, 1, 0x7F, 0x80, 0xFF, ord("."), ord("("), ord("R"), ord("c")])
        elif choice == 2:
            buf[at:at] = rng.randbytes(rng.randint(1, 8))
        elif choice == 3 and buf:
            del buf[at:at + rng.randint(1, 16)]
        elif choice == 4 and buf:
            start = rng.randrange(len(buf))
            buf[at:at] = buf[start:start + rng.randint(1, 64)]
        elif choice == 5 and len(buf) >= 8:  # a hostile size field
            at = min(at, len(buf) - 8)
            buf[at:at + 8] = struct.pack("<Q", rng.choice([0, 1, 2**31 - 1, 2**32, 2**40, 2**63 - 1, 2**64 - 1]))
        elif choice == 6:
            other = rng.choice(seeds)
            cut = rng.randrange(len(other) + 1)
            buf = buf[:at] + bytearray(other[cut:cut + rng.randint(1, 256)]) + buf[at:]
    return bytes(buf)


class Hang(BaseException):  # not an Exception: code under test that catches those must not swallow it
    """One input took longer than the per-input timeout."""


def _on_alarm(signum: int, frame: object) -> None:
    raise Hang("one input ran past the per-input timeout (a hang?)")


def run_plain(target: Callable[[bytes], None], seeds: list[bytes], seconds: float, seed: int = 0,
              per_input_timeout: float = 20.0) -> int:
    """Random mutation of the seeds for `seconds`; returns the number of inputs tried. Raises on a bug.

    The sequence of inputs depends only on `seed` (how many are tried depends on the machine's speed).
    An input running past `per_input_timeout` seconds counts as a bug (a hang), on the main thread.
    """
    import signal
    import threading
    import time

    rng = random.Random(seed)
    deadline = time.monotonic() + seconds
    count = 0
    alarm = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGALRM, _on_alarm) if alarm else None
    try:
        while time.monotonic() < deadline:
            data = mutate(rng.choice(seeds), rng, seeds)
            _run_one(target, data, per_input_timeout if alarm else 0)
            count += 1
    finally:
        if alarm:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
    return count


def _run_one(target: Callable[[bytes], None], data: bytes, timeout: float) -> None:
    import signal

    try:
        if timeout:
            signal.setitimer(signal.ITIMER_REAL, timeout)
        try:
            target(data)
        finally:
            if timeout:
                signal.setitimer(signal.ITIMER_REAL, 0)
    except BaseException as exc:
        crash = SCRATCH.parent / f"ckpt-fuzz-crash-{hashlib.sha1(data).hexdigest()}"
        crash.write_bytes(data)
        raise AssertionError(f"{type(exc).__name__}: {exc} (input saved to {crash})") from exc


def plain_mode(argv: list[str]) -> bool:
    return "--plain" in argv or (len(argv) == 1 and Path(argv[0]).is_file())


def main(target: Callable[[bytes], None], seeds: Callable[[], list[bytes]], argv: list[str]) -> int:
    """Entry point of the fuzz scripts: plain random mutation, replay of one input, or atheris."""
    import argparse

    if plain_mode(argv):
        parser = argparse.ArgumentParser()
        parser.add_argument("--plain", action="store_true")
        parser.add_argument("--seconds", type=float, default=10.0)
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("replay", nargs="?")
        args = parser.parse_args(argv)
        all_seeds = seeds()
        warm_up(target, all_seeds)
        if args.replay:
            target(Path(args.replay).read_bytes())
            print("no failure")
            return 0
        n = run_plain(target, all_seeds, args.seconds, args.seed)
        print(f"{n} inputs, no failure")
        return 0
    import atheris  # only needed for coverage-guided fuzzing

    corpus_dirs = [a for a in argv if not a.startswith("-")]
    all_seeds = seeds()
    for d in corpus_dirs:  # seed an empty corpus folder
        Path(d).mkdir(parents=True, exist_ok=True)
        if not any(Path(d).iterdir()):
            for i, s in enumerate(all_seeds):
                (Path(d) / f"seed-{i}").write_bytes(s)
    warm_up(target, all_seeds)
    atheris.Setup([sys.argv[0], *argv], target)
    atheris.Fuzz()
    return 0
