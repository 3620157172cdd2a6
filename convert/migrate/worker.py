"""One migration job, run in a worker process: convert, then verify against the source."""

from __future__ import annotations

import os
import time
import warnings
from pathlib import Path
from typing import Any

from ..api import convert_checkpoint, scan_checkpoint, verify_checkpoint
from ..errors import ConvertError, UnsafeCheckpoint
from ..sign.context import signing
from .frameworks import convert_framework_folder, folder_files, verify_framework_folder
from .hf import convert_hf_folder, hf_checkpoint_files, verify_hf_folder
from .walker import Job

FAULT_ENV = "CKPT_CONVERT_FAULT_INJECT"  # test-only: "REL:MARKER" makes the first attempt on REL hang


def hang_if_injected(job: Job) -> None:
    """Fault injection for tests: the first attempt on the named job writes its pid to MARKER and hangs."""
    fault = os.environ.get(FAULT_ENV, "")
    if fault.startswith(job.rel + ":"):
        marker = fault.split(":", 1)[1]
        if not os.path.exists(marker):  # first attempt: announce our pid and wait to be killed
            with open(marker, "w") as f:
                f.write(str(os.getpid()))
            time.sleep(600)


def pool_job(job: Job, dst_root: str, max_shard_size: str | None = None, sign_key: str | None = None) -> dict[str, Any]:
    """`run_job` as a pool or Ray task runs it (with the tests' fault injection)."""
    hang_if_injected(job)
    with signing(sign_key):  # each folder written is signed before it appears (convert.sign)
        return run_job(job, dst_root, max_shard_size)


def run_job(job: Job, dst_root: str, max_shard_size: str | None = None) -> dict[str, Any]:
    """Convert and verify `job`; never raises for bad input: the outcome is in the returned entry."""
    warnings.simplefilter("ignore")
    start = time.perf_counter()
    out = Path(dst_root) / job.output_rel
    entry: dict[str, Any] = {"kind": job.kind, "output": job.output_rel, "bytes": job.size}
    try:
        if job.kind == "framework":
            entry["sha256"] = convert_framework_folder(job.source, out, overwrite=True)["sha256"]
            diffs = verify_framework_folder(job.source, out)
        elif job.kind == "hf":
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
    paths = ([job.source] if job.kind in ("file", "dcp") else folder_files(job.source)[0] if job.kind == "framework"
             else hf_checkpoint_files(job.source))
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
