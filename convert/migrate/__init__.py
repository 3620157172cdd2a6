"""`migrate` and folder `scan`: every checkpoint under a folder, in parallel, resumable, verified.

Modules: walker (streams jobs), pool / ray_runner (run them), worker (one job: convert and verify, or adopt
what an earlier attempt installed), journal (what is done), lock, overlap (never touch anything but DST's own
temp folders), signatures (--sign-key over earlier outputs), report, progress.

    >>> report = migrate("old_models/", "new_models/", jobs=4)   # doctest: +SKIP
    >>> report.exit_code                                        # doctest: +SKIP
    0
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from ..errors import ConvertError, MissingDependency
from ..primitives.lock import remove_stale_lock
from ..primitives.signals import Terminated, sigterm_raises
from ..primitives.temp import remove_stale_temporaries
from ..sign.context import check_signer
from ..write.ownership import check_replaceable
from .journal import DONE_STATUSES, JOURNAL_NAME, PENDING_STATUSES, Journal, JournalState, output_present, read_journal
from .lock import LOCK_NAME, holder_pid, migrate_lock
from .manifest import MANIFEST_NAME, MIGRATED_SUFFIX, read_legacy_manifest, retire_legacy_manifest
from .overlap import check_overlap
from .pool import run_bounded
from .progress import MigrateProgress
from .report import REPORT_NAME, Report
from .signatures import PARTIAL_NAME, key_id, signature_current
from .walker import Job, WalkStats, iter_jobs
from .worker import converted_from, pool_job, scan_job

__all__ = ["Report", "migrate", "migrate_status", "scan_folder"]

Submit = Callable[[Iterable[Job], str, "str | None"], Iterable[tuple[Job, dict]]]


def _open_journal(dst: Path, src: Path, report: Report) -> Journal:
    """Read the journal in one pass (folding in a version-1 manifest once) and open it for appending."""
    for leftover in [*dst.glob(f"{JOURNAL_NAME}.tmp-*"), *dst.glob(f"{REPORT_NAME}.tmp-*")]:
        leftover.unlink(missing_ok=True)  # a killed run's compaction or report: only a lock holder writes these
    journal = Journal.open(dst, str(Path(src).resolve()))
    if journal.state.dropped:
        report.notes.append(f"{dst / JOURNAL_NAME}: {journal.state.dropped} unreadable line(s) dropped; "
                            "the files they recorded are converted again")
    legacy, note = read_legacy_manifest(dst)
    if note:
        report.notes.append(note)
    if legacy is not None:
        # entries already in the journal are newer than the manifest's (a crash after folding it in)
        journal.add_many((rel, e) for rel, e in legacy.items() if rel not in journal.entries)
        retire_legacy_manifest(dst)
        report.notes.append(f"{dst / MANIFEST_NAME}: {len(legacy)} entries of the version-1 manifest moved into "
                            f"{JOURNAL_NAME}; the old file is kept as {MANIFEST_NAME}{MIGRATED_SUFFIX}")
    return journal


RESERVED = frozenset({JOURNAL_NAME, REPORT_NAME, LOCK_NAME, MANIFEST_NAME, MANIFEST_NAME + MIGRATED_SUFFIX})


def _placement(job: Job, dst: Path, journal: Journal) -> tuple[str | None, bool | None]:
    """`(why the job must not run, None)`, or `(None, owned)`: whether its output path holds an output this
    migration wrote (True: it may be replaced), nothing (None), or a unit's ckpt-convert output with nothing
    foreign in it that the journal does not record (False: its line was lost; the worker adopts it if it is an
    intact conversion of this very unit, `worker.run_job`, and otherwise fails the job, touching nothing)."""
    if job.output_rel in RESERVED:
        return f"{job.rel}: its output name is one of migrate's own files in {dst}; rename the source", None
    out = dst / job.output_rel
    if not os.path.lexists(out):
        return None, None
    if journal.state.owns(job.rel, job.output_rel) or (job.kind == "file" and converted_from(out, job.source)):
        return None, True
    try:
        check_replaceable(out, [job.source])  # user files in the way: the writer's one wording
    except ConvertError as exc:
        return str(exc), None
    if job.kind != "file":  # a file's output records its source: converted_from said it is another's
        return None, False
    return (f"{out} already exists and was not written by this migration for {job.rel}; nothing was changed: "
            "move it away (or choose another destination) and re-run"), None


STOPPED = "the migrate was stopped ({}) before this job finished; a re-run converts it"


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """SIGINT and SIGTERM ignored for the block (a second Ctrl-C must not cut the cleanup short); main thread only."""
    try:
        previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    except ValueError:  # not the main thread: signals are not ours to change
        yield
        return
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _stop(results: Iterable[tuple[Job, dict]] | None, in_flight: Iterable[Job], not_ours: set[str], journal: Journal,
          dst: Path, exc: BaseException) -> None:
    """End a run that was stopped: kill the busy workers (closing the runner does: `pool.run_bounded`), remove
    what the killed ones were building (their marked temp folders, writer locks), and record the jobs they
    had as not done, so that a re-run converts them. Installed outputs are whole (renamed in complete)."""
    close = getattr(results, "close", None)
    if close is not None:
        close()
    jobs = list(in_flight)
    for job in jobs:
        out = dst / job.output_rel
        if job.sign_only:  # a killed signing's partial signature (the output itself stays as it was: done)
            (out / PARTIAL_NAME).unlink(missing_ok=True)
            continue
        remove_stale_temporaries(out.parent)  # folders whose owner is gone (killed above), marked or cut short
        remove_stale_lock(out)
    why = "SIGTERM" if isinstance(exc, Terminated) else "SIGINT" if isinstance(exc, KeyboardInterrupt) else \
        f"{type(exc).__name__}"
    with contextlib.suppress(ConvertError):  # the journal cannot be written: its "started" lines say the same
        journal.interrupted([(job.rel, job.output_rel, job.rel not in not_ours) for job in jobs if not job.sign_only],
                            STOPPED.format(why))


def _signed_earlier(job: Job, entry: dict[str, Any], previous: dict[str, Any], journal: Journal,
                    report: Report) -> None:
    """Record a sign-only job: the output stays done, now with its signature's record; a failure (a damaged
    output, a key that cannot sign) fails the file, and the next run converts it again (it is ours)."""
    if entry["status"] == "skipped":
        done = {**previous, "signature": entry["signature"]}
        journal.record(job.rel, done)
        report.add(job.rel, {**done, "status": "skipped", "signed_now": entry["signed_now"]})
        report.signed_earlier += bool(entry["signed_now"])
        return
    failed = {**entry, "owner": True, "size": job.size, "mtime_ns": job.mtime_ns}
    journal.record(job.rel, failed)
    report.add(job.rel, failed)


def migrate(src: str | os.PathLike, dst: str | os.PathLike, *, jobs: int | None = None, quiet: bool = True,
            max_shard_size: str | None = None, submit: Submit | None = None,
            select: Callable[[Job], str | None] | None = None, sign_key: str | os.PathLike | None = None) -> Report:
    """Convert every checkpoint under `src` into the mirrored folder `dst`, verify each, and report.

    Resumable: the journal in `dst` records each finished file (source size, mtime, sha256, status,
    output); a re-run skips what was converted and verified, retries what failed. `src` is never
    written to; `dst` must not be `src` nor contain it (it may lie inside it: the walker skips it).
    One migrate per `dst` at a time (a lock file). Per file, the driver's cost is constant: the walk
    streams into a bounded queue, the journal appends one line.

    Args:
        src: folder to convert. dst: the mirrored output folder (created if missing).
        jobs: worker processes (default: the number of cores). quiet: no progress bar.
        max_shard_size: shard state dicts larger than this (e.g. "5GB").
        submit: replaces the local process pool (e.g. Ray): receives an iterable of pending jobs, the
            destination and the shard size (and the signing key, if any), and yields `(job, entry)` as jobs finish.
        sign_key: a private key's path: every converted folder is signed (`model.sig`) before it appears,
            and every up-to-date output of an earlier run without a valid signature by this key is signed.

    A SIGTERM or SIGINT stops it at once: busy workers are killed, what they were building removed,
    their jobs journaled as `interrupted` (converted by a re-run); it raises Terminated / KeyboardInterrupt.

    Returns:
        The report (also written to `dst/ckpt-convert-report.json`).
    """
    src, dst = Path(src), Path(dst)
    if not src.is_dir():
        raise ConvertError(f"{src}: not a folder")
    dst_inside_src = check_overlap(src, dst)
    sign_key = sign_key and os.path.abspath(check_signer(sign_key).private_key)  # workers may run elsewhere
    try:
        dst.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConvertError(f"cannot create {dst}: {exc.strerror}") from None
    with migrate_lock(dst), sigterm_raises(Terminated):  # unwinds as Ctrl-C does; the CLI exits 143
        report = Report("migrate", str(src), str(dst))
        journal = _open_journal(dst, src, report)
        if dst_inside_src:
            report.notes.append(f"{dst} lies inside the source {src}: it is not walked, so nothing in it is converted")
        stats = WalkStats()
        progress = MigrateProgress(not quiet)
        in_flight: dict[str, Job] = {}  # dispatched, no result yet: what a stop interrupts
        not_ours: set[str] = set()  # dispatched over an output the journal does not record (adopted, or failed)
        earlier: dict[str, dict] = {}  # the journal entries of the sign-only jobs in flight
        signer_id = key_id(sign_key) if sign_key else None

        def pending() -> Iterator[Job]:
            walk = iter_jobs(src, stats, skip=dst if dst_inside_src else None,
                             on_folder=lambda rel: remove_stale_temporaries(dst / rel))
            for job in walk:
                why_not = select(job) if select is not None else None
                if why_not:  # --include/--exclude (migrate/select.py): listed as not followed, with the reason
                    report.skip_paths([(job.rel, why_not)])
                    continue
                previous = journal.state.is_done(job.rel, job.size, job.mtime_ns, dst, job.output_rel)
                if previous and signer_id and not signature_current(dst / job.output_rel, previous.get("signature"),
                                                                    signer_id):
                    earlier[job.rel] = previous  # up to date, not (known to be) signed by this key: sign it
                    job = dataclasses.replace(job, sign_only=True)
                    in_flight[job.rel] = job
                    progress.found_job(job)
                    yield job
                    continue
                if previous:
                    report.add(job.rel, {**previous, "status": "skipped"})
                    continue
                if journal.entries.get(job.rel, {}).get("status") in PENDING_STATUSES:  # a killed run's job
                    out = dst / job.output_rel  # what its killed worker left, marked or cut short
                    remove_stale_temporaries(out.parent, out.name)
                refused, owned = _placement(job, dst, journal)
                if refused:
                    entry = {"kind": job.kind, "output": job.output_rel, "bytes": job.size, "status": "failed",
                             "reason": refused, "size": job.size, "mtime_ns": job.mtime_ns}
                    journal.record(job.rel, entry)
                    report.add(job.rel, entry)
                    continue
                if owned:
                    job = dataclasses.replace(job, replace=True)
                elif owned is False:
                    not_ours.add(job.rel)
                in_flight[job.rel] = job  # first: a signal may come between any two lines
                journal.started(job.rel, job.output_rel, owner=owned is not False)
                progress.found_job(job)
                yield job
            progress.walk_finished()

        args = (str(dst), max_shard_size) + ((sign_key,) if sign_key else ())
        results: Iterable[tuple[Job, dict]] | None = None
        try:
            try:
                results = submit(pending(), *args) if submit is not None else \
                    run_bounded(pool_job, pending(), args, jobs or os.cpu_count() or 1)
                for job, entry in results:
                    in_flight.pop(job.rel, None)
                    if job.sign_only:
                        _signed_earlier(job, entry, earlier.pop(job.rel), journal, report)
                        progress.finished_job(job)
                        continue
                    entry.update(size=job.size, mtime_ns=job.mtime_ns)
                    # dispatched with its output path free or ours: whatever is there now, this run put there
                    # (or adopted as this very source's conversion)
                    if job.rel in not_ours and entry["status"] != "converted":
                        entry["owner"] = False
                    entry.setdefault("owner", os.path.lexists(dst / job.output_rel))
                    report.skip_paths([(job.rel if p == "." else p if job.rel == "." else f"{job.rel}/{p}", why)
                                       for p, why in entry.get("skipped_inside", ())])
                    journal.record(job.rel, entry)
                    report.add(job.rel, entry)
                    progress.finished_job(job)
            except BaseException as exc:  # SIGINT, SIGTERM (or a journal that cannot be written): stop now
                with _signals_held():
                    _stop(results, in_flight.values(), not_ours, journal, dst, exc)
                raise
            finally:
                progress.stop()
            unverified = sum(1 for e in report.files.values() if e.get("unverified"))
            if unverified:  # said once, not per file
                report.notes.append(f"{unverified} converted output(s) not verified against their sources: "
                                    f"{MissingDependency('verification')}; re-run this migrate with torch "
                                    "installed to verify them")
            report.other_files, report.special_files = stats.others, stats.special
            report.skip_paths(stats.skipped)
            if journal.needs_compaction():
                journal.compact()
        finally:
            journal.close()
        report.write(dst / REPORT_NAME)
    return report


def migrate_status(dst: str | os.PathLike, src: str | os.PathLike | None = None) -> dict[str, Any]:
    """What a migration into `dst` has done, what failed, and what is still pending; writes nothing.

    Args:
        dst: the migration's destination (holds the journal).
        src: the source folder; default: the one the journal records. Without a source that
            exists, `pending` is None (unknown).

    Returns:
        {"destination", "source", "done", "failed", "unsafe", "pending", "dropped_lines",
        "running_pid", "failed_files"}: counts, the pid of a migrate running now (or None), and
        the first failed and unsafe files with their reasons.
    """
    dst = Path(dst)
    state = read_journal(dst)
    if not state.entries and not state.lines:
        legacy, note = read_legacy_manifest(dst)
        if legacy is None and not (dst / JOURNAL_NAME).exists():
            raise ConvertError(f"{dst}: no migration journal here ({note or 'nothing migrated yet'})")
        state = JournalState(entries=legacy or {}, source=None)
    source = Path(src) if src is not None else Path(state.source) if state.source else None
    source_ok = source is not None and source.is_dir()
    counts = {"done": 0, "failed": 0, "unsafe": 0}
    problems = []
    for rel, entry in state.entries.items():
        if source_ok and rel != "." and not os.path.lexists(os.path.join(source, rel)):
            continue  # the file is gone from the source: its old failure (or output) is no longer the migration's
        status = entry.get("status")
        if status in DONE_STATUSES:
            if _done_on_disk(dst, rel, entry):
                counts["done"] += 1
        elif status in ("failed", "unsafe"):
            counts[status] += 1
            if len(problems) < 50:
                problems.append({"file": rel, "status": status, "reason": str(entry.get("reason", ""))[:300]})
        elif status not in PENDING_STATUSES:  # in flight when a run was killed or stopped: pending
            counts["failed"] += 1
    pending = None
    if source_ok:
        pending = 0
        inside = Path(os.path.realpath(dst)).is_relative_to(os.path.realpath(source))
        for job in iter_jobs(source, WalkStats(), skip=dst if inside else None):
            entry = state.entries.get(job.rel)
            recorded = entry is not None and entry.get("size") == job.size and entry.get("mtime_ns") == job.mtime_ns
            if not recorded or not (entry.get("status") in ("failed", "unsafe")
                                    or state.is_done(job.rel, job.size, job.mtime_ns, dst, job.output_rel)):
                pending += 1
    return {"destination": str(dst), "source": str(source) if source is not None else None, **counts,
            "pending": pending, "dropped_lines": state.dropped, "running_pid": holder_pid(dst),
            "failed_files": problems}


def _done_on_disk(dst: Path, rel: str, entry: dict[str, Any]) -> bool:
    """A done line counts only if it is verified, names the stable output of `rel`, and that output is there
    (a file's with a checkpoint.json that parses and validates)."""
    output = entry.get("output")
    if not entry.get("verified") or not isinstance(output, str) or (rel != "." and output != rel):
        return False
    if not output_present(dst, output, entry.get("kind")):
        return False
    if entry.get("kind") in ("hf", "dcp", "framework"):
        return True
    from ..load import read_sidecar

    try:
        read_sidecar(dst / output)
    except ConvertError:
        return False
    return True


def scan_folder(src: str | os.PathLike, *, jobs: int | None = None) -> Report:
    """Scan every checkpoint under `src` with the same walker; nothing is written."""
    src = Path(src)
    if not src.is_dir():
        raise ConvertError(f"{src}: not a folder")
    report = Report("scan", str(src), None)
    stats = WalkStats()
    # a pool's start-up costs more than a few small scans
    for job, entry in run_bounded(scan_job, iter_jobs(src, stats), (), jobs or os.cpu_count() or 1, min_for_pool=8):
        report.add(job.rel, entry)
    report.other_files, report.special_files = stats.others, stats.special
    report.skip_paths(stats.skipped)
    return report
