"""`scan`: what a checkpoint would do if loaded with pickle / torch.load, as a verdict per file.

`scan_file` gives one file's verdict (safe, suspicious, unsafe, unreadable) with its findings;
`scan_paths` scans files and folders in parallel; `output` renders reports as text, JSON or SARIF.
"""

from __future__ import annotations

from .scanner import ScanFinding, ScanReport, scan_file
from .verdicts import EXIT_CODES, KNOWN_DATA_CLASSES, SAFE, SUSPICIOUS, UNREADABLE, UNSAFE, VERDICTS, classify_global

__all__ = ["EXIT_CODES", "KNOWN_DATA_CLASSES", "SAFE", "SUSPICIOUS", "UNREADABLE", "UNSAFE", "VERDICTS", "ScanFinding",
           "ScanReport", "classify_global", "scan_file"]
