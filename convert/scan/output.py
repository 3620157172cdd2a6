"""Scan reports as text (people), JSON (scripts) and SARIF 2.1.0 (code-scanning dashboards).

SARIF: one rule per category (exec, file, network, process, nested-loader for unsafe globals;
custom-class for suspicious ones; unreadable), one result per finding with level error (unsafe),
warning (suspicious) or note (unreadable), and a physical location naming the file and, where the
pickle is stored uncompressed, the byte region of the opcode (`byteOffset`/`byteLength`). Binary
files have no lines; `startLine: 1` is given as well because GitHub code scanning requires a line.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from pathlib import Path
from typing import Any

from .._version import __version__
from ..read.gadgets import CATEGORY_REASONS
from .report import ScanFinding, ScanReport
from .verdicts import (
    ATTRIBUTE_REFERENCE,
    CUSTOM_CLASS,
    NESTED_BLOB,
    REASONS,
    STORED_PARTIAL,
    SUSPICIOUS,
    UNREADABLE,
    UNREADABLE_CATEGORY,
    UNSAFE,
    VERDICTS,
)

TOOL_NAME = "ckpt-convert"
SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"
_JUDGED = (ATTRIBUTE_REFERENCE, NESTED_BLOB, STORED_PARTIAL)  # suspicious: uses the reader accepted as inert
RULE_CATEGORIES = (*CATEGORY_REASONS, CUSTOM_CLASS, *_JUDGED, UNREADABLE_CATEGORY)
_LEVELS = {UNSAFE: "error", SUSPICIOUS: "warning", UNREADABLE: "note"}
# GitHub orders alerts by this CVSS-like score (0-10) when a rule is tagged "security"
_SEVERITY = {"exec": "9.8", "nested-loader": "9.8", "file": "8.1", "network": "8.1", "process": "7.5",
             CUSTOM_CLASS: "5.0", **dict.fromkeys(_JUDGED, "5.0"), UNREADABLE_CATEGORY: "3.0"}
_TITLES = {"exec": "Code execution on load", "file": "File system access on load", "network": "Network access on load",
           "process": "Process or interpreter control on load", "nested-loader": "Nested deserialiser on load",
           CUSTOM_CLASS: "Class outside the allowlist (runs its own code on load)",
           ATTRIBUTE_REFERENCE: "Attribute of a class looked up on load (stored, never called)",
           NESTED_BLOB: "torch.save blob unpickled on load (read and checked)",
           STORED_PARTIAL: "functools.partial built on load (stored, never called)",
           UNREADABLE_CATEGORY: "Checkpoint could not be read through"}


def summary(reports: list[ScanReport], skipped: int = 0) -> dict[str, int]:
    """How many files got each verdict (and how many were skipped as not checkpoints)."""
    counts = Counter(r.verdict for r in reports)
    return {"files": len(reports), **{v: counts.get(v, 0) for v in VERDICTS}, "skipped": skipped}


def exit_code(reports: list[ScanReport], fail_on: str = UNSAFE) -> int:
    """1 if any file is unsafe (or suspicious, with fail_on="suspicious"), else 2 if any is unreadable, else 0."""
    verdicts = {r.verdict for r in reports}
    if UNSAFE in verdicts or (fail_on == SUSPICIOUS and SUSPICIOUS in verdicts):
        return 1
    return 2 if UNREADABLE in verdicts else 0


# ------------------------------------------------------------------------------------------ text

def render_text(report: ScanReport, verbose: bool = False) -> str:
    """One line for the file, one indented line per finding (and per global with `verbose`)."""
    fmt = report.format or "unknown format"
    if report.verdict == UNREADABLE:
        lines = [f"{report.path}: UNREADABLE: {report.error}"]
    else:
        counted = f"{len(report.globals)} globals"
        lines = [f"{report.path}: {report.verdict.upper()} ({fmt}, {counted})"]
    shown = [f for f in report.findings if f.verdict in (UNSAFE, SUSPICIOUS)]
    lines += [f"  {f.verdict} [{f.category}] {f.name} ({f.where})" for f in shown]
    for category in dict.fromkeys(f.category for f in shown):  # each reason once, in order of appearance
        lines.append(f"  why {category}: {REASONS[category]}")
    if report.verdict == UNSAFE and report.error:
        lines.append(f"  (also unreadable past that point: {report.error})")
    lines += [f"  allowed {name} (--allow / pyproject.toml)" for name in report.allowed]
    if verbose:
        lines += [f"    global {name}" for name in report.globals]
    return "\n".join(lines)


def render_summary(reports: list[ScanReport], skipped: int = 0) -> str:
    s = summary(reports, skipped)
    tail = f", {s['skipped']} skipped (not checkpoints)" if s["skipped"] else ""
    files = "1 file" if s["files"] == 1 else f"{s['files']} files"
    return (f"scanned {files}: {s['safe']} safe, {s['suspicious']} suspicious, {s['unsafe']} unsafe, "
            f"{s['unreadable']} unreadable{tail}")


# ------------------------------------------------------------------------------------------ JSON

def to_json(reports: list[ScanReport], *, skipped: int = 0, fail_on: str = UNSAFE) -> dict[str, Any]:
    """{"tool", "version", "files": [one object per file, with its findings], "summary", "exit_code"}."""
    return {"tool": TOOL_NAME, "version": __version__, "files": [r.to_json() for r in reports],
            "summary": summary(reports, skipped), "exit_code": exit_code(reports, fail_on)}


# ----------------------------------------------------------------------------------------- SARIF

def _rule(category: str) -> dict[str, Any]:
    default = "error" if category in CATEGORY_REASONS else "warning" if category in (CUSTOM_CLASS, *_JUDGED) else "note"
    return {
        "id": f"ckpt-scan/{category}",
        "name": "".join(part.capitalize() for part in category.split("-")),
        "shortDescription": {"text": _TITLES[category]},
        "fullDescription": {"text": f"A global in a pickled checkpoint that {REASONS[category]}."
                                    if category != UNREADABLE_CATEGORY else REASONS[category]},
        "help": {"text": "Convert the checkpoint with `ckpt-convert convert` (nothing in it is executed) and load the "
                         "result with load_checkpoint, or load it with torch.load(weights_only=True)."},
        "defaultConfiguration": {"level": default},
        "properties": {"tags": ["security", "pickle", category], "security-severity": _SEVERITY[category]},
    }


def _uri(path: Path) -> str:
    try:
        rel = os.path.relpath(path)
    except ValueError:  # another drive (Windows)
        rel = ""
    if rel and not rel.startswith(".."):
        return Path(rel).as_posix()
    return path.resolve().as_uri()


def _result(report: ScanReport, finding: ScanFinding, rule_index: dict[str, int]) -> dict[str, Any]:
    region: dict[str, Any] = {"startLine": 1}
    if finding.file_offset is not None:
        region.update(byteOffset=finding.file_offset, byteLength=finding.length or 1)
    uri = _uri(report.path)
    where = f" in {finding.member}" if finding.member else ""
    at = f" at byte {finding.offset}" if finding.offset is not None else ""
    text = (f"{report.path.name}: {finding.name}{where}{at} ({finding.category}): {finding.reason}"
            if finding.verdict != UNREADABLE else f"{report.path.name} could not be read: {finding.reason}")
    fingerprint = hashlib.sha256(f"{uri}\0{finding.category}\0{finding.name}\0{finding.member}".encode()).hexdigest()
    return {
        "ruleId": f"ckpt-scan/{finding.category}",
        "ruleIndex": rule_index[finding.category],
        "level": _LEVELS[finding.verdict],
        "message": {"text": text},
        "locations": [{"physicalLocation": {"artifactLocation": {"uri": uri}, "region": region}}],
        "partialFingerprints": {"ckptScanFinding/v1": fingerprint},
        "properties": {"verdict": finding.verdict, "global": finding.name, "member": finding.member,
                       "streamOffset": finding.offset, "opcode": finding.opcode},
    }


def to_sarif(reports: list[ScanReport]) -> dict[str, Any]:
    """A SARIF 2.1.0 log with one run: rules for every category, a result for every finding."""
    rules = [_rule(c) for c in RULE_CATEGORIES]
    rule_index = {c: i for i, c in enumerate(RULE_CATEGORIES)}
    results = [_result(r, f, rule_index) for r in reports for f in r.findings]
    artifacts = sorted({_uri(r.path) for r in reports})
    return {
        "$schema": SARIF_SCHEMA,
        "version": "2.1.0",
        "runs": [{
            "tool": {"driver": {"name": TOOL_NAME, "version": __version__, "semanticVersion": __version__,
                                "rules": rules}},
            "artifacts": [{"location": {"uri": uri}} for uri in artifacts],
            "results": results,
            "columnKind": "unicodeCodePoints",
        }],
    }
