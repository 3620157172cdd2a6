"""One migration job, run in a worker process: convert, then verify against the source."""

from __future__ import annotations

import os
import time
import warnings
from pathlib import Path
from typing import Any

from ..errors import (
    ConvertError,
    DestinationNotOwned,
    MissingDependency,
    OutputExists,
    UnsafeCheckpoint,
    failure_reason,
    require_torch,
)
from ..ops.checkpoint import convert_checkpoint, verify_checkpoint
from ..ops.convert import report_of, sidecars_under
from ..ops.verify import verify_folder
from ..primitives import faults
from ..primitives.hashing import sha256_path
from ..scan import scan_checkpoint
from ..sign.context import signing
from ..sources.discover import unit_sources
from ..write.ownership import check_replaceable
from .walker import Job

FAULT_ENV = faults.HANG_ENV  # test-only: "REL:MARKER" makes the first attempt on REL hang (primitives/faults.py)


def converted_from(out: Path, source: Path) -> bool:
    """Whether the folder `out` is a ckpt-convert output of exactly the file `source` (name and sha256):
    one this migration installed before a kill, or whose journal line was lost."""
    from ..sidecar.schema import read_sidecar  # not ..load: no torch needed
    try:
        recorded = read_sidecar(out)["source"]
        if recorded.get("name") != source.name or recorded.get("size") != source.stat().st_size:
            return False
        return recorded.get("sha256") == sha256_path(source)  # opened as a source: a FIFO cannot block the worker
    except (ConvertError, OSError, KeyError, TypeError, AttributeError):
        return False


UNVERIFIED = "not verified: verification loads the output, which needs torch"


def _can_verify() -> bool:
    """Whether torch is installed: verifying against the source loads the output with it."""
    try:
        require_torch("verification")
    except MissingDependency:
        return False
    return True


def pool_job(job: Job, dst_root: str, max_shard_size: str | None = None, sign_key: str | None = None) -> dict[str, Any]:
    """`run_job` as a pool or Ray task runs it (with the tests' fault injection)."""
    faults.hang(job.rel)
    if sign_key is None:
        return run_job(job, dst_root, max_shard_size)
    from .signatures import ensure_signed, key_id, sign_earlier_output, signature_record

    if job.sign_only:  # converted by an earlier run: signed now unless the key's signature is there
        return sign_earlier_output(job, dst_root, sign_key)
    with signing(sign_key):  # each folder written is signed before it appears (convert.sign)
        entry = run_job(job, dst_root, max_shard_size)
    if entry["status"] == "converted":
        out = Path(dst_root) / job.output_rel
        try:
            if entry.get("adopted"):  # installed by an earlier attempt, which may have been unsigned
                entry["signed_now"] = ensure_signed(out, sign_key)
            entry["signature"] = signature_record(out, key_id(sign_key))
        except ConvertError as exc:
            entry.update(status="failed", reason=f"{exc.label}: {exc}")
    return entry


def run_job(job: Job, dst_root: str, max_shard_size: str | None = None) -> dict[str, Any]:
    """Convert and verify `job`; never raises for bad input: the outcome is in the returned entry.

    An existing output is replaced only when the driver says this migration wrote it (`job.replace`);
    anything else in the way fails the job with one line, and nothing is touched. An output that is an
    intact conversion of this very source (a retried task whose earlier attempt installed it before it
    died) is adopted as done (`adopted`), not converted again.
    """
    warnings.simplefilter("ignore")
    start = time.perf_counter()
    out = Path(dst_root) / job.output_rel
    entry: dict[str, Any] = {"kind": job.kind, "output": job.output_rel, "bytes": job.size}
    root = None if job.kind == "file" else job.root or job.source
    try:
        exists = os.path.lexists(out)
        ours = exists and job.kind == "file" and converted_from(out, job.source)  # a file's own output, whole or not
        diffs = _installed_by_an_earlier_attempt(job, out, root, ours) if exists else None
        if diffs is not None:  # verified against the source already: nothing converted, nothing replaced
            report = report_of(job.source, out, sidecars_under(out), kind=job.kind)
            report.sha256 = report_sha256(out) if job.kind == "file" else None
            entry["adopted"] = ADOPTED
        else:
            if exists and not (job.replace or ours):
                check_replaceable(out, [job.source])  # user files in the way: the writer's one wording, untouched
                raise OutputExists(f"{out} already exists and was not written by this migration for {job.rel}; "
                                   "nothing was changed: move it away (or choose another destination) and re-run")
            # every kind the walk found (file, DCP, HF, Trainer/Accelerate unit): the same two operations
            report = convert_checkpoint(job.source, out, overwrite=job.replace or ours, max_shard_size=max_shard_size,
                                        kind=job.kind, root=root)
        entry["sha256"] = report.sha256
        # what was written, as in the sidecar(s): `bytes` stays the source's size (what the progress counts)
        entry.update(tensors=report.tensors, arrays=report.arrays, files=len(report.files), output_bytes=report.bytes)
        if report.skipped:
            entry["skipped_inside"] = report.skipped
        if diffs is None:
            diffs = verify_checkpoint(job.source, out, kind=job.kind, root=root) if _can_verify() else None
        if diffs is None:  # lean install: converted, not verified; the journal keeps it to verify on a re-run
            entry.update(status="converted", verified=False, unverified=UNVERIFIED)
            diffs = []
        entry.setdefault("verified", not diffs)
        entry["status"] = "converted" if not diffs else "failed"
        if diffs:
            entry["reason"] = "verification failed: " + "; ".join(diffs[:3])
    except UnsafeCheckpoint as exc:
        entry.update(status="unsafe", reason=str(exc), findings=[f.name for f in exc.findings])
    except (OutputExists, DestinationNotOwned) as exc:  # something not ours is (or appeared) at the output path
        entry.update(status="failed", reason=f"{exc.label}: {exc}", owner=False)
    except ConvertError as exc:
        entry.update(status="failed", reason=f"{exc.label}: {exc}")
    except Exception as exc:  # memory, the environment, or a converter bug: must not stop the whole migration
        entry.update(status="failed", reason=failure_reason(exc))
    entry["seconds"] = round(time.perf_counter() - start, 3)
    return entry


ADOPTED = "installed by an earlier attempt of this job (an intact conversion of this very source): kept, not converted again"


def _installed_by_an_earlier_attempt(job: Job, out: Path, root: Path | None, ours: bool) -> list[str] | None:
    """`[]` if `out` is an intact ckpt-convert output of exactly this source, verified against it (what a retried
    task finds when its earlier attempt installed the output and died before reporting); None otherwise.

    Only where the driver did not find this migration's output there when it dispatched the job (with
    `job.replace`, a re-run converts again what it wrote before, as it always has). A file's output records
    its source (name, size, sha256): `ours` says whether it matches. A unit's output is checked whole against
    the unit (each converted file's recorded provenance, copies byte for byte). Both need torch to verify.
    """
    if job.replace or not out.is_dir() or out.is_symlink() or not _can_verify():
        return None
    if job.kind == "file" and not ours:
        return None
    try:
        sidecars = sidecars_under(out)
        if not sidecars or any(not verify_folder(out / rel).ok for rel, _ in sidecars):
            return None  # damaged, or a folder without any conversion in it: not adopted
        diffs = verify_checkpoint(job.source, out, kind=job.kind, root=root)
    except (ConvertError, OSError):
        return None
    return [] if not diffs else None


def report_sha256(out: Path) -> str | None:
    """The source sha256 a file's output records (what a conversion's report gives)."""
    from ..sidecar.schema import read_sidecar

    return read_sidecar(out)["source"].get("sha256")


def scan_job(job: Job) -> dict[str, Any]:
    """The scan counterpart: what the file (or every pickle of the unit) would import or call, nothing written."""
    warnings.simplefilter("ignore")
    entry: dict[str, Any] = {"kind": job.kind, "bytes": job.size}
    findings: list[str] = []
    try:
        paths = [job.source] if job.kind == "file" else unit_sources(job.kind, job.source, job.root or job.source)
        for path in paths:
            report = scan_checkpoint(path)
            findings += [f.name for f in report.unsafe]
        entry.update(status="unsafe" if findings else "clean")
        if findings:
            entry.update(findings=findings, reason="uses " + ", ".join(findings[:10]))
    except ConvertError as exc:
        entry.update(status="failed", reason=f"{exc.label}: {exc}")
    except Exception as exc:
        entry.update(status="failed", reason=failure_reason(exc))
    return entry
