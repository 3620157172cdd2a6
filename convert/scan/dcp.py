"""scan's verdict for a torch.distributed.checkpoint folder: every global its pickles name, classified."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import UnsafeCheckpoint
from ..read.gadgets import EXEC
from ..read.vm import Finding
from ..sources.dcp_folder import SOURCE_FORMAT, DcpFolder
from .report import ScanFinding, ScanReport
from .verdicts import REASONS, SAFE, UNSAFE, classify_global, worst


def scan_dcp_folder(src: str | os.PathLike) -> tuple[dict[str, int], list[Finding]]:
    """The globals a DCP folder's pickles name (metadata and every saved item) and the gadgets among them."""
    try:
        with DcpFolder(src) as dcp:
            return dcp.globals_used, []
    except UnsafeCheckpoint as exc:
        return dict(getattr(exc, "globals_used", {})), exc.findings


def scan_dcp_report(src: str | os.PathLike) -> ScanReport:
    """scan's verdict for a DCP folder: every global its pickles name (`.metadata` and each saved item), classified."""
    globals_used, vm_findings = scan_dcp_folder(src)
    found = {f.name for f in vm_findings}
    report = ScanReport(Path(src), SOURCE_FORMAT, globals=sorted(globals_used))
    for qualname in sorted({*globals_used, *found}):
        module, _, name = qualname.rpartition(".")
        verdict, category = classify_global(module, name)
        if qualname in found and verdict != UNSAFE:  # the reader's own findings (a computed call, an ambiguity)
            verdict, category = UNSAFE, EXEC
        if verdict != SAFE:
            report.findings.append(ScanFinding(qualname, category, verdict, REASONS[category]))
    report.verdict = worst([f.verdict for f in report.findings])
    return report
