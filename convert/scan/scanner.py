"""Scan one file: what would it do to someone who loads it with pickle / torch.load?

Two passes over the same bytes, neither of which imports or calls anything the file names:
  1. the reader (`read_tree`: container checks + the pickle VM) says whether the file can be read
     through at all, in which format, and finds gadget chains only a VM sees (a call of a computed
     callable);
  2. the opcode walk (`opcodes.walk_stream`) over every pickle stream the file holds (zip members,
     concatenated pickles, pickles after a corruption, pickles embedded in an unknown container)
     records every global with its byte offset, even where the reader stops.
Every global is classified by `verdicts.classify_global`; the file's verdict is the worst finding.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from ..errors import ConvertError, UnsafeCheckpoint, UnsupportedValue
from ..primitives.source import Identity, SourceChanged, open_regular
from ..read import Input, read_tree
from ..read.gadgets import EXEC
from ..read.vm import JUDGED_AT_CALL, reading
from ..read.zipfile_strict import StrictZip
from .opcodes import GlobalUse, walk_stream
from .report import ScanFinding, ScanReport
from .sources import FileBytes, Sources, Stream, carve_candidates, open_sources
from .verdicts import (
    JUDGED_CATEGORIES,
    REASONS,
    SAFE,
    SUSPICIOUS,
    UNREADABLE,
    UNREADABLE_CATEGORY,
    UNSAFE,
    classify_global,
    worst,
)


def scan_file(path: str | os.PathLike) -> ScanReport:
    """Scan one file; never raises for anything about the file (an unreadable file gets verdict unreadable).

    Args:
        path: the file to scan.

    Returns:
        A ScanReport with verdict safe, suspicious, unsafe or unreadable.
    """
    path = Path(path)
    report = ScanReport(path, None)
    if path.is_dir():
        from ..sources.dcp_metadata import is_dcp_folder
        from .dcp import scan_dcp_report  # here: scan.dcp builds on this module

        if is_dcp_folder(path):
            try:
                return scan_dcp_report(path)
            except ConvertError as exc:
                return _unreadable(report, exc)
    try:  # the reader's own check: regular files only (a FIFO would block), errors naming the path
        fd, _ = open_regular(path)
        os.close(fd)
    except ConvertError as exc:
        return _unreadable(report, exc)
    if path.suffix == ".distcp" and path.parent.is_dir():
        from ..sources.dcp_metadata import is_dcp_folder
        from .dcp import scan_dcp_report

        if is_dcp_folder(path.parent):  # a DCP part: read by dcp.load at the ranges its .metadata names
            return _dcp_part(path, report, scan_dcp_report)
    saw = _ReaderSaw()
    with reading() as session:
        reader_error = _read(path, report, saw)
    if isinstance(reader_error, SourceChanged):  # the walk would judge another version of the file
        return _unreadable(report, reader_error)
    try:
        walked_ok = _walk(path, report, saw.identity, saw.archive)
    except ConvertError as exc:  # cut short, replaced or unreadable since the reader's pass
        return _unreadable(report, exc)
    if reader_error is None:
        _downgrade_judged(report, dict(session.accepted))
    if isinstance(reader_error, UnsafeCheckpoint):  # what only the VM sees: a call of a computed callable, ...
        known = {f.name for f in report.unsafe}
        for vm_finding in reader_error.findings:
            if vm_finding.name not in known:
                known.add(vm_finding.name)
                report.findings.append(ScanFinding(vm_finding.name, EXEC, UNSAFE, REASONS[EXEC], member=vm_finding.where))
    readable_anyway = isinstance(reader_error, UnsafeCheckpoint) or (isinstance(reader_error, UnsupportedValue) and walked_ok)
    if reader_error is not None and not readable_anyway:
        report.error, report.exception = str(reader_error), reader_error
        report.findings.append(ScanFinding("<unreadable>", UNREADABLE_CATEGORY, UNREADABLE, str(reader_error)))
    report.verdict = worst([f.verdict for f in report.findings])
    return report


def _downgrade_judged(report: ScanReport, accepted: dict[str, int]) -> None:
    """getattr / _load_from_bytes / partial calls the reader read through as inert (attribute references, checked
    torch.save blobs, stored partials) are not gadgets in this file: suspicious, when the reader accepted every
    use the walk saw."""
    for i, finding in enumerate(report.findings):
        uses = report.judged_uses.get(finding.name, 0)
        if finding.name in accepted and finding.verdict == UNSAFE and 0 < uses <= accepted[finding.name]:
            category = JUDGED_CATEGORIES[finding.name]
            report.findings[i] = dataclasses.replace(finding, verdict=SUSPICIOUS, category=category,
                                                     reason=REASONS[category])


def _dcp_part(path: Path, report: ScanReport, scan_dcp_report: Any) -> ScanReport:
    """A `.distcp` file is no archive of its own (saved items back to back): its folder's verdict, plus every
    global the opcode walk finds anywhere in the file."""
    try:
        folder = scan_dcp_report(path.parent)
    except ConvertError as exc:
        return _unreadable(report, exc)
    report.format, report.findings, report.globals = folder.format, list(folder.findings), list(folder.globals)
    try:
        _walk(path, report)
    except ConvertError as exc:
        return _unreadable(report, exc)
    report.globals = sorted({*report.globals, *folder.globals})
    report.verdict = worst([f.verdict for f in report.findings])
    return report


def _unreadable(report: ScanReport, exc: ConvertError) -> ScanReport:
    report.error, report.exception, report.verdict = str(exc), exc, UNREADABLE
    report.findings.append(ScanFinding("<unreadable>", UNREADABLE_CATEGORY, UNREADABLE, str(exc)))
    return report


@dataclasses.dataclass
class _ReaderSaw:
    """What the walk takes from the reader's pass: the identity of the file it read (the walk must read that
    same file) and the zip directory it parsed and checked there (parsed once, not once per pass)."""

    identity: Identity | None = None
    archive: StrictZip | None = None


def _read(path: Path, report: ScanReport, saw: _ReaderSaw) -> ConvertError | None:
    """Run the reader over the file; returns its error, None if it read the file through."""
    try:
        with Input(path) as inp:
            saw.identity = inp.identity
            try:
                report.format = read_tree(inp).format
            finally:
                saw.archive = inp.archive
            inp.check_unchanged()  # a file rewritten meanwhile: the verdict would be of neither version
            return None
    except ConvertError as exc:
        report.format = getattr(exc, "format", None)
        return exc


def _walk(path: Path, report: ScanReport, expected: Identity | None = None, archive: StrictZip | None = None) -> bool:
    """Walk every pickle stream in the file; True if the main stream was read through without error.

    SourceChanged if the file is not the `expected` one (what the reader read), or changes meanwhile: the
    two passes must judge the same bytes. `archive`: the zip directory the reader parsed from that file.
    """
    fd, st = open_regular(path)
    changed = SourceChanged(f"{path} changed while it was being scanned; scan it again once it is complete")
    with os.fdopen(fd, "rb") as file:
        if expected is not None and Identity.of(st) != expected:
            raise changed
        if st.st_size == 0:
            return False
        buf = FileBytes(file, path)  # pread, never a mapping: a file cut short meanwhile is no SIGBUS
        sources = open_sources(buf, archive)
        report.format = report.format or sources.container
        if sources.torchscript:
            report.findings.append(ScanFinding("TorchScript code", EXEC, UNSAFE,
                                               "torch.load hands the archive to torch.jit.load, which runs its code",
                                               member=sources.torchscript))
        ok = bool(sources.streams) and sources.error is None
        names: set[str] = set()
        for stream in sources.streams:
            uses, complete = _stream_uses(stream)
            ok = ok and complete
            _add_findings(report, stream, uses, names)
        report.globals = sorted(names)
        try:  # by descriptor and by path, as the reader checks: the findings would be of neither version
            unchanged = Identity.of(os.fstat(file.fileno())) == Identity.of(os.stat(path)) == Identity.of(st)
        except OSError:  # the path is gone
            unchanged = False
        if not unchanged:
            raise changed
        return ok


def _stream_uses(stream: Stream) -> tuple[list[GlobalUse], bool]:
    if not stream.carve:
        walk = walk_stream(stream.data)
        return walk.uses, walk.error is None and walk.pickles > 0
    uses: list[GlobalUse] = []
    resume = 0
    for at in carve_candidates(stream.data):
        if at < resume:
            continue
        walk = walk_stream(stream.data, start=at)
        if walk.pickles and walk.error is None:  # embedded pickles count only when they read through
            uses += walk.uses
            resume = walk.end
    return uses, False


def _add_findings(report: ScanReport, stream: Stream, uses: list[GlobalUse], names: set[str]) -> None:
    """One finding per distinct global per stream (at its first use); safe globals are only listed."""
    seen: set[str] = set()
    for use in uses:
        qual = use.qualname
        if use.module:
            names.add(qual)
        if qual in seen:
            continue
        seen.add(qual)
        if qual in JUDGED_AT_CALL:
            report.judged_uses[qual] = report.judged_uses.get(qual, 0) + sum(u.qualname == qual for u in uses)
        verdict, category = classify_global(use.module, use.name)
        if verdict == SAFE:
            continue
        file_offset = None if stream.base is None else stream.base + use.offset
        report.findings.append(ScanFinding(qual, category, verdict, REASONS[category], stream.member, use.offset,
                                           file_offset, use.opcode, _opcode_length(use)))


_FIXED_LENGTHS = {"STACK_GLOBAL": 1, "EXT1": 2, "EXT2": 3, "EXT4": 5}


def _opcode_length(use: GlobalUse) -> int:
    """GLOBAL/INST carry "module\\nname\\n" after the opcode byte; the others have fixed sizes."""
    if use.opcode in _FIXED_LENGTHS:
        return _FIXED_LENGTHS[use.opcode]
    module, name = use.as_written
    return 3 + len(module.encode("utf-8", "surrogatepass")) + len(name.encode("utf-8", "surrogatepass"))


__all__ = ["ScanFinding", "ScanReport", "Sources", "scan_file"]
