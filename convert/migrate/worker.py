"""One migration job, run in a worker process: convert, then verify against the source."""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any

from ..api import convert_checkpoint, scan_checkpoint, verify_checkpoint
from ..errors import ConvertError, UnsafeCheckpoint
from .hf import convert_hf_folder, hf_checkpoint_files, verify_hf_folder
from .walker import Job


def run_job(job: Job, dst_root: str, max_shard_size: str | None = None) -> dict[str, Any]:
    """Convert and verify `job`; never raises for bad input: the outcome is in the returned entry."""
    warnings.simplefilter("ignore")
    start = time.perf_counter()
    out = Path(dst_root) / job.output_rel
    entry: dict[str, Any] = {"kind": job.kind, "output": job.output_rel, "bytes": job.size}
    try:
        if job.kind == "hf":
            sidecar = convert_hf_folder(job.source, out, overwrite=True)
            entry["sha256"] = sidecar["source"]["sha256"]
            diffs = verify_hf_folder(job.source, out)
        else:
            convert_checkpoint(job.source, out, overwrite=True, max_shard_size=max_shard_size)
            from ..load import read_sidecar

            entry["sha256"] = read_sidecar(out)["source"]["sha256"]
            diffs = verify_checkpoint(job.source, out)
        entry["verified"] = not diffs
        entry["status"] = "converted" if not diffs else "failed"
        if diffs:
            entry["reason"] = "verification failed: " + "; ".join(diffs[:3])
    except UnsafeCheckpoint as exc:
        entry.update(status="unsafe", reason=str(exc), findings=[f.name for f in exc.findings])
    except ConvertError as exc:
        entry.update(status="failed", reason=f"{exc.label}: {exc}")
    except Exception as exc:  # a converter bug must not stop the whole migration
        entry.update(status="failed", reason=f"internal error: {type(exc).__name__}: {exc}")
    entry["seconds"] = round(time.perf_counter() - start, 3)
    return entry


def scan_job(job: Job) -> dict[str, Any]:
    """The scan counterpart: what the file would import or call, nothing written."""
    warnings.simplefilter("ignore")
    entry: dict[str, Any] = {"kind": job.kind, "bytes": job.size}
    paths = [job.source] if job.kind in ("file", "dcp") else hf_checkpoint_files(job.source)
    findings: list[str] = []
    try:
        for path in paths:
            report = scan_checkpoint(path)
            findings += [f.name for f in report.unsafe]
        entry.update(status="unsafe" if findings else "clean")
        if findings:
            entry.update(findings=findings, reason="uses " + ", ".join(findings[:10]))
    except ConvertError as exc:
        entry.update(status="failed", reason=f"{exc.label}: {exc}")
    except Exception as exc:
        entry.update(status="failed", reason=f"internal error: {type(exc).__name__}: {exc}")
    return entry
