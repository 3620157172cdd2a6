"""Entry paths of the promise matrix (tests/test_promise_matrix.py), written against the public surface only.

Each path knows how to build a small source of its kind under a folder, how to run its write operation
(the CLI where there is one, so exit codes and stderr are what a user sees; the Python API otherwise),
and its verify operation. Every run gives back an `Outcome`: the exit code, the lines of the error, the
report where the path returns one, and the output folder. A path declares in `applies` the promises
that have a meaning for it; a new entry path is one class here plus one line in `ENTRY_PATHS`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tests.helpers import REPO_ROOT

PY = sys.executable
PREFIX = "ckpt-convert: error: "
SHARD = "10KB"  # the model state dict (two 8 KiB weights + a bias) needs at least two shards
HOOK_DIR = Path(__file__).resolve().parent / "matrix_hook"  # sitecustomize: the truncate-on-read fault

# ----------------------------------------------------------------------------------------------- promises

FIFO = "fifo-refused"                  # a FIFO in place of a source file: one line, exit 2, no hang, nothing written
TRUNCATED = "truncated-mid-read"       # the source shrinks while read: clean error (never SIGBUS), nothing written
CHANGED = "changed-mid-read"           # the source changes before the output is published: nothing written
VERIFY_TENSOR = "verify-changed-tensor"  # verify SRC OUT exits 3 when one source tensor changed
VERIFY_SHA = "verify-changed-sha256"   # verify SRC OUT exits 3 when the recorded sha256 is not the source's
VERIFY_FOLDER = "verify-folder-edits"  # verify OUT exits 3 on an edit of checkpoint.json, a data file, a copied file
USER_FILES = "user-files-kept"         # a destination holding user files is never replaced (with or without overwrite)
REPLACE_OWN = "own-output-replaced"    # the path's previous output is replaced (--overwrite, or a re-run)
SOURCE_FOLDER = "source-folder-refused"  # the source's own folder is never a valid destination
SHARDING = "sharding-honoured"         # max_shard_size gives shards + an index
MISSING_WORDING = "missing-source-wording"  # same one-line wording as the file path
NOT_OWNED_WORDING = "not-owned-wording"     # same one-line wording as the file path
COUNTS = "report-counts"               # the report's tensors/arrays/files/bytes equal the sidecar's

ALL_PROMISES = (FIFO, TRUNCATED, CHANGED, VERIFY_TENSOR, VERIFY_SHA, VERIFY_FOLDER, USER_FILES, REPLACE_OWN,
                SOURCE_FOLDER, SHARDING, MISSING_WORDING, NOT_OWNED_WORDING, COUNTS)


# ----------------------------------------------------------------------------------------------- states

def model_state(perturb: bool = False) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    state = {"w1": torch.randn(64, 32, generator=g), "w2": torch.randn(64, 32, generator=g),
             "b": torch.randn(32, generator=g)}
    if perturb:
        state["w2"][3, 5] += 1.0  # one element of one tensor
    return state


def optimizer_state() -> dict[str, Any]:
    g = torch.Generator().manual_seed(1)
    return {"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.randn(32, generator=g)}},
            "param_groups": [{"lr": 0.01, "params": [0]}]}


def training_state(perturb: bool = False) -> dict[str, Any]:
    return {"model": model_state(perturb), "optim": optimizer_state(), "epoch": 3,
            "arr": np.arange(10, dtype=np.float64)}


# ----------------------------------------------------------------------------------------------- outcomes

@dataclass
class Outcome:
    rc: int
    lines: list[str]  # the error output (stderr; for API calls "ckpt-convert: error: " + the exception)
    out: Path
    report: Any = None
    extra: dict = field(default_factory=dict)

    @property
    def line(self) -> str:
        assert len(self.lines) == 1, f"expected one line, got {self.lines!r}"
        assert not any("Traceback" in x or "internal error" in x for x in self.lines), self.lines
        return self.lines[0]


def cli(*args: str, timeout: float = 120, env: dict | None = None) -> subprocess.CompletedProcess:
    full = {**os.environ, "PYTHONPATH": f"{HOOK_DIR}{os.pathsep}{REPO_ROOT}", **(env or {})}
    return subprocess.run([PY, "-m", "convert", *args], capture_output=True, text=True, timeout=timeout, env=full)


def _cli_outcome(done: subprocess.CompletedProcess, out: Path) -> Outcome:
    return Outcome(done.returncode, done.stderr.strip().splitlines(), out, extra={"stdout": done.stdout})


def _api_outcome(call: Callable[[], Any], out: Path) -> Outcome:
    from convert import ConvertError

    try:
        return Outcome(0, [], out, report=call())
    except ConvertError as exc:
        return Outcome(2, [PREFIX + str(exc)], out)
    except Exception as exc:  # a non-ConvertError is the finding: keep it visible
        return Outcome(99, [f"{type(exc).__name__}: {exc}"], out)


# ------------------------------------------------------------------------- pausing a run (CKPT_CONVERT_FAULT)

def _stopped_descendant(root: int) -> int | None:
    """A process below `root` (any depth) that is stopped (state T), or None."""
    children: dict[int, list[int]] = {}
    states = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{name}/stat").read_text()
        except OSError:
            continue
        rest = stat.rsplit(")", 1)[1].split()
        states[int(name)] = rest[0]
        children.setdefault(int(rest[1]), []).append(int(name))
    todo = list(children.get(root, []))
    while todo:
        pid = todo.pop()
        if states.get(pid) == "T":
            return pid
        todo += children.get(pid, [])
    return None


class PauseAndChange:
    """While a run is stopped by `CKPT_CONVERT_FAULT=after-data:stop`, apply `change`, then let it go on.

    Watches this process's descendants (a CLI subprocess, a pool worker) until the `with` block ends.
    `fired` tells whether a stop was seen.
    """

    def __init__(self, change: Callable[[], None], timeout: float = 90) -> None:
        self.change, self.timeout, self.fired = change, timeout, False
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> PauseAndChange:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join(10)

    def _watch(self) -> None:
        # A unit may write several folders (one stop each): the change is made at the first stop, and
        # every stop is continued until the run ends.
        end = time.monotonic() + self.timeout
        while not self._done.is_set() and time.monotonic() < end:
            pid = _stopped_descendant(os.getpid())
            if pid is not None:
                try:
                    if not self.fired:
                        self.change()
                        self.fired = True
                finally:
                    os.kill(pid, signal.SIGCONT)
            time.sleep(0.02)


# ----------------------------------------------------------------------------------------------- paths

class EntryPath:
    """One way into the converter. Subclasses set `name`, `applies`, and implement build/write."""

    name = "?"
    applies: frozenset[str] = frozenset()
    writes = True
    copied_file: str | None = None  # a file the output holds as copied from the source (e.g. config.json)

    def __repr__(self) -> str:
        return self.name

    # --- the source
    def build(self, root: Path, perturb: bool = False) -> Path:
        """Create a source under `root` (a fresh folder); return what is passed to the operation."""
        raise NotImplementedError

    def data_file(self, src: Path) -> Path:
        """The source file a fault is applied to (FIFO, truncation, change)."""
        return src

    def output(self, dst: Path, sharded: bool = False) -> Path:
        """The output this path writes for destination `dst` (`sharded`: with a max_shard_size)."""
        return dst

    def outputs(self, dst: Path) -> list[tuple[dict, Path, bool]]:
        """Every kind of output this path writes for `dst`: (extra write arguments, the output, whether it
        is a file). The promises about what a write may replace are checked at each."""
        return [({}, self.output(dst), False)]

    def folders(self, out: Path) -> list[Path]:
        """The folders of weights in an output (where shards and their index are)."""
        return converted_folders(out)

    def intact(self, out: Path) -> bool:
        """Whether the output is complete and unedited (`verify FOLDER` passes on each converted folder)."""
        return all(self.verify_folder_rc(f) == 0 for f in converted_folders(out))

    def identity(self, out: Path) -> int:
        """An inode that changes when the output is replaced by a new one."""
        return os.stat(converted_folders(out)[0] / "checkpoint.json").st_ino

    def output_counts(self, out: Path) -> dict[str, int]:
        """What the output holds, in the terms of `report_counts`: summed over its converted folders."""
        per_folder = [sidecar_counts(f) for f in converted_folders(out)]
        return {k: sum(c[k] for c in per_folder) for k in per_folder[0]}

    def source_folder(self, src: Path) -> Path:
        """The source's own folder (never a valid destination)."""
        return src if src.is_dir() else src.parent

    # --- the operations
    def write(self, src: Path, dst: Path, *, overwrite: bool = False, max_shard_size: str | None = None,
              env: dict | None = None) -> Outcome:
        raise NotImplementedError

    def write_api(self, src: Path, dst: Path) -> Outcome:
        """The write through the Python API (its report is checked against the sidecar)."""
        raise NotImplementedError

    def verify(self, src: Path, out: Path) -> Outcome:
        return _cli_outcome(cli("verify", str(src), str(out)), out)

    def verify_folder_rc(self, out: Path, via_cli: bool = False) -> int:
        """`ckpt-convert verify FOLDER`'s exit code; without `via_cli`, what `verify_folder(out)` implies
        (0: no difference, 3: differences, 2: refused), to spare an interpreter start per check."""
        from convert import ConvertError, verify_folder

        if via_cli:
            return cli("verify", str(out)).returncode
        try:
            return 3 if list(verify_folder(out)) else 0  # iterating a FolderCheck gives its problems
        except ConvertError:
            return 2

    def report_counts(self, outcome: Outcome) -> dict[str, int]:
        """tensors/arrays/files/bytes as the path's report gives them."""
        report = outcome.report
        return {"tensors": report.tensors, "arrays": report.arrays, "files": len(report.files),
                "bytes": report.bytes}


def converted_folders(out: Path) -> list[Path]:
    """The converted folders of an output: itself, or (a unit's output) its sub-folders with a checkpoint.json."""
    if (out / "checkpoint.json").exists():
        return [out]
    found = sorted(p.parent for p in out.rglob("checkpoint.json"))
    assert found, f"no checkpoint.json in {out}"
    return found


def sidecar_counts(out: Path) -> dict[str, int]:
    sidecar = json.loads((out / "checkpoint.json").read_bytes())
    ids = {i for per_file in sidecar.get("entries", {}).values() for i in per_file}
    tensors = ids.union(sidecar.get("tensors", {})) - {i for i in ids if i.startswith("a")}
    arrays = {i for i in ids if i.startswith("a")}.union(sidecar.get("arrays", {}))
    return {"tensors": len(tensors), "arrays": len(arrays), "files": len(sidecar["files"]),
            "bytes": sum(f["bytes"] for f in sidecar["files"].values())}


class CliConvertPath(EntryPath):
    """Sources `ckpt-convert convert SRC DST` takes (a file, or a unit folder)."""

    def write(self, src, dst, *, overwrite=False, max_shard_size=None, env=None):
        args = ["convert", str(src), str(dst), "-q"]
        args += ["--overwrite"] if overwrite else []
        args += ["--max-shard-size", max_shard_size] if max_shard_size else []
        return _cli_outcome(cli(*args, env=env), dst)

    def write_api(self, src, dst):
        from convert import convert_checkpoint

        return _api_outcome(lambda: convert_checkpoint(src, dst), dst)


SOURCE_PROMISES = frozenset(ALL_PROMISES)


class FilePath(CliConvertPath):
    name = "file"
    applies = SOURCE_PROMISES

    def build(self, root, perturb=False):
        path = root / "ckpt.pt"
        torch.save(training_state(perturb), path)
        return path


class DcpPath(CliConvertPath):
    name = "dcp"
    applies = SOURCE_PROMISES

    def build(self, root, perturb=False):
        from tests.dcp_build import save_single

        state = training_state(perturb)
        state.pop("arr")  # DCP keeps tensors and bytes items; an ndarray would be a bytes item (pickled)
        return save_single(root / "dcp", state)

    def data_file(self, src):
        return src / "__0_0.distcp"


class HfPath(CliConvertPath):
    name = "hf"
    applies = SOURCE_PROMISES
    copied_file = "config.json"

    def build(self, root, perturb=False):
        folder = root / "hf-model"
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps({"model_type": "toy", "hidden_size": 32}))
        torch.save(model_state(perturb), folder / "pytorch_model.bin")
        return folder

    def data_file(self, src):
        return src / "pytorch_model.bin"


class TrainerPath(CliConvertPath):
    name = "trainer"
    applies = SOURCE_PROMISES

    def build(self, root, perturb=False):
        folder = root / "run" / "checkpoint-7"
        folder.mkdir(parents=True)
        (folder / "config.json").write_text(json.dumps({"model_type": "toy"}))
        (folder / "trainer_state.json").write_text(json.dumps({"global_step": 7, "epoch": 1.0, "log_history": []}))
        torch.save(model_state(perturb), folder / "pytorch_model.bin")
        torch.save(optimizer_state(), folder / "optimizer.pt")
        torch.save({"python": ("rng", 1), "cpu": torch.get_rng_state()}, folder / "rng_state.pth")
        return folder

    def data_file(self, src):
        return src / "pytorch_model.bin"


class AcceleratePath(CliConvertPath):
    name = "accelerate"
    applies = SOURCE_PROMISES

    def build(self, root, perturb=False):
        folder = root / "acc" / "checkpoint_0"
        folder.mkdir(parents=True)
        torch.save(model_state(perturb), folder / "pytorch_model.bin")
        torch.save(optimizer_state(), folder / "optimizer.bin")
        # as Accelerate writes it: torch.save (a plain pickle of a tensor would name torch.storage._load_from_bytes,
        # a nested deserialiser, and be refused as unsafe)
        torch.save({"step": 0, "random_state": ("rng", 2), "numpy_random_seed": np.random.get_state(),
                    "torch_manual_seed": torch.get_rng_state()}, folder / "random_states_0.pkl")
        return folder

    def data_file(self, src):
        return src / "pytorch_model.bin"


class LivePath(EntryPath):
    """`save_checkpoint(obj, folder)`: the source is objects in memory (no file to break)."""

    name = "live"
    applies = frozenset({VERIFY_FOLDER, USER_FILES, REPLACE_OWN, SHARDING, NOT_OWNED_WORDING, COUNTS})

    def build(self, root, perturb=False):
        return root  # nothing on disk: the objects are made by write()

    def write(self, src, dst, *, overwrite=False, max_shard_size=None, env=None):
        from convert import save_checkpoint

        return _api_outcome(lambda: save_checkpoint(training_state(), dst, overwrite=overwrite,
                                                    max_shard_size=max_shard_size), dst)

    def write_api(self, src, dst):
        return self.write(src, dst)


class LightningPath(EntryPath):
    """The Lightning plugin's save_checkpoint (it always replaces its own previous checkpoint)."""

    name = "lightning"
    applies = frozenset({VERIFY_FOLDER, USER_FILES, REPLACE_OWN, SHARDING, NOT_OWNED_WORDING})

    def build(self, root, perturb=False):
        return root

    def write(self, src, dst, *, overwrite=False, max_shard_size=None, env=None):
        from convert.lightning import SafetensorsCheckpointIO

        plugin = SafetensorsCheckpointIO(max_shard_size=max_shard_size)
        state = {"state_dict": model_state(), "optimizer_states": [optimizer_state()], "epoch": 3,
                 "global_step": 12, "pytorch-lightning_version": "2.6.6"}
        return _api_outcome(lambda: plugin.save_checkpoint(state, dst), dst)


class ScanPath(EntryPath):
    """`ckpt-convert scan FILE`: reads a source, writes nothing."""

    name = "scan"
    writes = False
    applies = frozenset({FIFO, TRUNCATED, MISSING_WORDING})

    def build(self, root, perturb=False):
        return FilePath().build(root, perturb)

    def write(self, src, dst, *, overwrite=False, max_shard_size=None, env=None):
        done = cli("scan", str(src), "-q", env=env)
        # scan reports an unreadable file on stdout (one line per file); an error of the run itself on stderr
        lines = [x for x in (done.stdout + done.stderr).strip().splitlines()
                 if x.strip() and not x.startswith("scanned ")]  # the summary line is not the error
        return Outcome(done.returncode, lines, dst)


class MigratePath(EntryPath):
    """`migrate(SRC_DIR, DST_DIR)`: a folder holding one checkpoint file; its output is DST/ckpt.pt/."""

    name = "migrate-pool"
    applies = frozenset({FIFO, TRUNCATED, CHANGED, VERIFY_FOLDER, USER_FILES, REPLACE_OWN, SOURCE_FOLDER,
                         SHARDING, NOT_OWNED_WORDING, COUNTS})

    def build(self, root, perturb=False):
        folder = root / "zoo"
        folder.mkdir()
        FilePath().build(folder, perturb)
        return folder

    def data_file(self, src):
        return src / "ckpt.pt"

    def output(self, dst, sharded=False):
        return dst / "ckpt.pt"

    def source_folder(self, src):
        return src

    def write(self, src, dst, *, overwrite=False, max_shard_size=None, env=None):
        # migrate has no --overwrite: a re-run replaces what this migration wrote (its journal says so).
        # The CLI, in its own process: fault hooks stop or break its worker, never the test's process.
        args = ["migrate", str(src), str(dst), "-q", "--json", "--jobs", "1"]
        args += ["--max-shard-size", max_shard_size] if max_shard_size else []
        done = cli(*args, env=env)
        outcome = _cli_outcome(done, self.output(dst))
        try:
            outcome.report = json.loads(done.stdout)
        except ValueError:
            return outcome  # a run-level error: its one line is on stderr
        return self._from_report(outcome, outcome.report["files"], outcome.report["exit_code"])

    @staticmethod
    def _from_report(outcome: Outcome, files: dict, exit_code: int) -> Outcome:
        outcome.rc = exit_code
        outcome.lines = [PREFIX + e["reason"] for e in files.values() if e.get("reason")]
        return outcome

    def write_api(self, src, dst):
        return self.write(src, dst)

    def report_counts(self, outcome):
        entry = outcome.report["files"]["ckpt.pt"]  # the one job's entry (its `bytes`: the source's size)
        return {"tensors": entry.get("tensors"), "arrays": entry.get("arrays"), "files": entry.get("files"),
                "bytes": entry.get("output_bytes")}

    def verify(self, src, out):
        return _cli_outcome(cli("verify", str(self.data_file(src)), str(out)), out)


class MigrateRayPath(MigratePath):
    """The same on Ray (`migrate --ray`): the test module starts one local Ray instance for all its tests."""

    name = "migrate-ray"
    applies = frozenset({VERIFY_FOLDER, USER_FILES, REPLACE_OWN, SHARDING, NOT_OWNED_WORDING, COUNTS})

    def write(self, src, dst, *, overwrite=False, max_shard_size=None, env=None):
        import ray

        from convert.migrate import migrate
        from convert.migrate.ray_runner import ray_submit

        if not ray.is_initialized():  # one local instance for all the row's tests (the test module stops it)
            ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
        outcome = _api_outcome(lambda: migrate(src, dst, max_shard_size=max_shard_size, submit=ray_submit(None)),
                               self.output(dst))
        if outcome.report is None:
            return outcome
        outcome.report = outcome.report.to_json()
        return self._from_report(outcome, outcome.report["files"], outcome.report["exit_code"])


class ExportPath(EntryPath):
    """`ckpt-convert export SRC OUT.safetensors` (or, with --max-shard-size, the folder OUT): plain weights.

    The source is a training checkpoint file; its model state dict (`model`, found by the default order) is
    exported. For destination `dst` the single file is `dst.safetensors` beside it, the sharded output `dst`.
    Source-folder-refused is checked on the sharded output (a folder); a single file is rightly written
    into the source's folder, beside the source (and never over it: `check_replaceable(file=True)`).
    Not declared: the verify promises. export has no verify: its output is plain safetensors, without a
    sidecar recording digests or the source's tree (`intact` checks the output here instead).
    """

    name = "export"
    applies = frozenset({FIFO, TRUNCATED, CHANGED, USER_FILES, REPLACE_OWN, SOURCE_FOLDER, SHARDING,
                         MISSING_WORDING, NOT_OWNED_WORDING, COUNTS})

    def build(self, root, perturb=False):
        return FilePath().build(root, perturb)

    def output(self, dst, sharded=False):
        return dst if sharded else dst.parent / f"{dst.name}.safetensors"

    def outputs(self, dst):
        return [({}, self.output(dst), True), ({"max_shard_size": SHARD}, self.output(dst, sharded=True), False)]

    def write(self, src, dst, *, overwrite=False, max_shard_size=None, env=None):
        out = self.output(dst, sharded=max_shard_size is not None)
        args = ["export", str(src), str(out), "-q"]
        args += ["--overwrite"] if overwrite else []
        args += ["--max-shard-size", max_shard_size] if max_shard_size else []
        return _cli_outcome(cli(*args, env=env), out)

    def write_api(self, src, dst):
        from convert import export_weights

        out = self.output(dst)
        return _api_outcome(lambda: export_weights(src, out), out)

    def folders(self, out):
        return [out]

    @staticmethod
    def _files(out: Path) -> list[Path]:
        return [out] if out.is_file() else sorted(out.glob("*.safetensors"))

    def _tensors(self, out: Path) -> dict[str, torch.Tensor]:
        from safetensors.torch import load_file

        found: dict[str, torch.Tensor] = {}
        for f in self._files(out):
            found.update(load_file(f))
        return found

    def intact(self, out):
        """The model state dict, bit for bit, in loadable safetensors; a sharded output's index maps each
        tensor to the shard that holds it."""
        expected, found = model_state(), self._tensors(out)
        index = out / "model.safetensors.index.json"
        if out.is_dir() and index.exists():
            held_by = {name: f.name for f in self._files(out) for name in self._tensors(f)}
            if json.loads(index.read_text())["weight_map"] != held_by:
                return False
        return sorted(found) == sorted(expected) and all(torch.equal(found[k], v) for k, v in expected.items())

    def identity(self, out):
        return os.stat(self._files(out)[0]).st_ino

    def output_counts(self, out):
        found = self._tensors(out)
        return {"tensors": len(found), "files": len(self._files(out)),
                "bytes": sum(t.numel() * t.element_size() for t in found.values())}

    def report_counts(self, outcome):
        report = outcome.report
        return {"tensors": report.tensors, "files": len(report.files), "bytes": report.bytes}


def ray_available() -> bool:
    try:
        import ray  # noqa: F401
    except ImportError:
        return False
    return True


def quiet_warnings() -> None:
    warnings.filterwarnings("ignore", category=FutureWarning)
