"""`scan`: what a checkpoint would do if loaded with pickle / torch.load, as a verdict per file.

`scan_file` gives one file's verdict (safe, suspicious, unsafe, unreadable) with its findings;
`scan_paths` scans files and folders in parallel; `output` renders reports as text, JSON or SARIF.
"""

from __future__ import annotations

import os

from .report import ScanFinding, ScanReport
from .scanner import scan_file
from .verdicts import EXIT_CODES, KNOWN_DATA_CLASSES, SAFE, SUSPICIOUS, UNREADABLE, UNSAFE, VERDICTS, classify_global

__all__ = ["EXIT_CODES", "KNOWN_DATA_CLASSES", "SAFE", "SUSPICIOUS", "UNREADABLE", "UNSAFE", "VERDICTS", "ScanFinding",
           "ScanReport", "classify_global", "scan_checkpoint", "scan_file"]


def scan_checkpoint(path: str | os.PathLike) -> ScanReport:
    """What a checkpoint (a file or a DCP folder) would do if unpickled: verdict, globals and findings.

    Each finding names the global, its category (exec, file, network, process, nested-loader for gadgets;
    custom-class for suspicious globals), the byte offset and zip member, and why it matters.
    Raises the reader's MalformedCheckpoint/UnsupportedValue/ConvertError for a file that cannot be read
    and holds no gadget (`scan_file` returns verdict "unreadable" instead).

    Example:
        >>> scan_checkpoint("model.pt").verdict   # doctest: +SKIP
        'safe'
    """
    report = scan_file(path)
    if report.verdict == UNREADABLE and report.exception is not None:
        raise report.exception
    return report
