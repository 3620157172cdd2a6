"""The migration journal: what each source file became, so a re-run can skip or retry it.

DST/.ckpt-convert-journal.jsonl, one JSON object per line, append-only:

    {"ckpt_convert_journal": 2, "source": "/abs/SRC"}                     ← header (first line)
    {"rel": "a/b.pt", "status": "converted", "output": "a/b", "size": 1234, "mtime_ns": ..., ...}
    {"rel": "c.pt", "status": "failed", "reason": "malformed: ...", ...}

A finished file costs one `write` of one line and one `fsync`, whatever the number of entries (the
manifest it replaces rewrote every entry after every file). A later line for the same `rel` replaces
an earlier one. A crash can only tear the last line (it has no newline): it is ignored when read and
cut off before the next append. Any other line that does not parse is dropped and counted, never
the whole journal. At the end of a run the journal is compacted (one line per file, written to a
unique temp file, fsync'd, renamed over, folder fsync'd). The version-1 manifest
`.ckpt-convert-manifest.json` of earlier releases is read once and folded in (see `legacy.py`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConvertError
from ..primitives import faults
from ..primitives.durable import fsync_fd, write_atomic
from ..primitives.source import open_own_file

JOURNAL_NAME = ".ckpt-convert-journal.jsonl"
JOURNAL_VERSION = 2
HEADER_KEY = "ckpt_convert_journal"
DONE_STATUSES = ("converted", "skipped")
PENDING_STATUSES = ("started", "interrupted")  # in flight when a run was killed / stopped: converted again
KILL_ENV = faults.KILL_ENV  # test-only: "journal:K" / "compact" SIGKILLs the driver at that point


def _line(obj: dict[str, Any]) -> bytes:
    # ASCII with \\u escapes: a file name that is not UTF-8 is kept as Python's surrogateescape string
    # (b"caf\\xe9.pt" is "caf\\udce9.pt") and round-trips exactly; UTF-8 could not encode it.
    return (json.dumps(obj, ensure_ascii=True, separators=(",", ":"), allow_nan=False) + "\n").encode("ascii")


@dataclass
class JournalState:
    """What a journal file holds: the latest entry per source path, and what could not be read."""

    entries: dict[str, dict[str, Any]] = field(default_factory=dict)
    source: str | None = None
    lines: int = 0  # complete lines read, header included
    dropped: int = 0  # complete lines that did not parse (dropped, counted, reported)
    torn_bytes: int = 0  # bytes after the last newline: a write a crash cut short
    good_bytes: int = 0  # length of the prefix that ends with the last newline

    def is_done(self, rel: str, size: int, mtime_ns: int, dst: Path, output: str | None = None) -> dict[str, Any] | None:
        """The entry if `rel` was converted and verified from a file of this size and mtime into `output`
        (default: whatever the entry names), and that output is there."""
        entry = self.entries.get(rel)
        if not entry or entry.get("status") not in DONE_STATUSES or not entry.get("verified"):
            return None
        if entry.get("size") != size or entry.get("mtime_ns") != mtime_ns:
            return None
        recorded = entry.get("output")
        if not isinstance(recorded, str) or (output is not None and recorded != output):
            return None  # e.g. the previous release's name for it: converted again under the stable name
        return entry if output_present(dst, recorded, entry.get("kind")) else None

    def owns(self, rel: str, output: str) -> bool:
        """Whether this migration wrote (or was writing, when killed) `output` for `rel`: only then may it be replaced."""
        entry = self.entries.get(rel)
        return bool(entry) and entry.get("output") == output and \
            (entry.get("status") in DONE_STATUSES or entry.get("owner") is True)


def output_present(dst: Path, output: str, kind: Any) -> bool:
    """A unit's output is renamed into place whole (it exists: it is complete); a file's has its checkpoint.json."""
    path = os.path.join(dst, output)
    if kind in ("hf", "dcp", "framework"):
        return os.path.isdir(path) and not os.path.islink(path)
    return os.path.isfile(os.path.join(path, "checkpoint.json"))


def parse_journal(data: bytes) -> JournalState:
    """Read a journal's bytes in one pass; never raises for bad content."""
    state = JournalState()
    end = data.rfind(b"\n") + 1
    state.good_bytes, state.torn_bytes = end, len(data) - end
    lines = [raw for raw in data[:end].split(b"\n") if raw.strip()]
    try:  # fast path: every line parses, so all of them parse as one array in one call
        objects = json.loads(b"[" + b",".join(lines) + b"]")
        if len(objects) != len(lines):  # a line held two values ("1,2"): parse line by line instead
            raise ValueError
    except ValueError:
        objects = []
        for raw in lines:
            try:
                objects.append(json.loads(raw))
            except ValueError:  # UnicodeDecodeError is a ValueError too
                objects.append(None)
    state.lines = len(lines)
    for obj in objects:
        if not isinstance(obj, dict):
            state.dropped += 1
        elif HEADER_KEY in obj:
            if isinstance(obj.get("source"), str):
                state.source = obj["source"]
        elif isinstance(obj.get("rel"), str) and isinstance(obj.get("status"), str):
            rel = obj.pop("rel")
            state.entries[rel] = obj
        else:
            state.dropped += 1
    return state


def read_journal(dst: Path) -> JournalState:
    """The journal in `dst` (empty if there is none), read-only: safe while a migrate is running."""
    path = dst / JOURNAL_NAME
    try:
        fd = open_own_file(path)  # a FIFO planted there must not hang migrate
    except FileNotFoundError:
        return JournalState()
    except OSError as exc:
        raise ConvertError(f"{path}: cannot read the migration journal: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        return parse_journal(f.read())


class Journal:
    """The journal of one run, open for appending (the caller holds the DST lock)."""

    def __init__(self, dst: Path, source: str, state: JournalState) -> None:
        self.dst = dst
        self.path = dst / JOURNAL_NAME
        self.source = source
        self.state = state
        self.appended = 0
        self.started_lines = 0  # not counted in `appended`: the fault points count finished files
        try:
            self._fd = open_own_file(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
            if state.torn_bytes or os.fstat(self._fd).st_size != state.good_bytes:
                os.ftruncate(self._fd, state.good_bytes)  # cut a torn last line: the next append starts clean
            if state.good_bytes == 0:
                self._write(_line({HEADER_KEY: JOURNAL_VERSION, "source": source}))
        except OSError as exc:
            raise ConvertError(f"{self.path}: cannot write the migration journal: {exc.strerror}") from None

    @classmethod
    def open(cls, dst: Path, source: str) -> Journal:
        """Read the journal of `dst` in one pass and open it for appending."""
        return cls(dst, source, read_journal(dst))

    @property
    def entries(self) -> dict[str, dict[str, Any]]:
        return self.state.entries

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view):]
        fsync_fd(self._fd)

    def record(self, rel: str, entry: dict[str, Any]) -> None:
        """Append one finished file durably (one write, one fsync): constant cost per file."""
        try:
            self._write(_line({"rel": rel, **entry}))
        except OSError as exc:
            raise ConvertError(f"{self.path}: cannot write the migration journal: {exc.strerror}") from None
        self.state.entries[rel] = entry
        self.appended += 1
        faults.point("journal", self.appended)

    def started(self, rel: str, output: str, owner: bool = True) -> None:
        """Note that `rel` is being converted into `output`, which was free or ours (`owner`; no fsync: a kill
        of the process keeps it, and it only lets a re-run replace an output a killed run installed)."""
        entry = {"status": "started", "output": output, "owner": owner}
        try:
            view = memoryview(_line({"rel": rel, **entry}))
            while view:
                view = view[os.write(self._fd, view):]
        except OSError as exc:
            raise ConvertError(f"{self.path}: cannot write the migration journal: {exc.strerror}") from None
        self.state.entries[rel] = entry
        self.started_lines += 1

    def interrupted(self, jobs: Iterable[tuple[str, str, bool]], reason: str) -> None:
        """Record the jobs `(rel, output, owner)` a stopped run was converting as not done (one write, one
        fsync): a re-run converts them, and may replace what they installed if `owner`."""
        lines = []
        for rel, output, owner in jobs:
            entry = {"status": "interrupted", "output": output, "owner": owner, "reason": reason}
            lines.append(_line({"rel": rel, **entry}))
            self.state.entries[rel] = entry
        if lines:
            try:
                self._write(b"".join(lines))
            except OSError as exc:
                raise ConvertError(f"{self.path}: cannot write the migration journal: {exc.strerror}") from None

    def add_many(self, entries: Iterable[tuple[str, dict[str, Any]]]) -> None:
        """Append many entries with one fsync (folding in a legacy manifest)."""
        lines = []
        for rel, entry in entries:
            lines.append(_line({"rel": rel, **entry}))
            self.state.entries[rel] = entry
            self.appended += 1
        if lines:
            self._write(b"".join(lines))

    def needs_compaction(self) -> bool:
        """Whether the file holds more lines than files (appends, repeats, dropped lines)."""
        return (self.appended > 0 or self.started_lines > 0 or self.state.dropped > 0
                or self.state.lines - 1 != len(self.state.entries))

    def compact(self) -> None:
        """Rewrite the journal as one line per file (atomic: unique temp file, fsync, rename, folder fsync).

        Closes the journal: this is the end of a run.
        """
        self.close()
        lines = [_line({HEADER_KEY: JOURNAL_VERSION, "source": self.source}),
                 *(_line({"rel": rel, **entry}) for rel, entry in self.state.entries.items())]
        try:
            write_atomic(self.path, lines, before_rename=lambda: faults.point("compact"))
        except OSError as exc:
            raise ConvertError(f"{self.path}: cannot compact the migration journal: {exc.strerror}") from None

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
