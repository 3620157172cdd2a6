"""ckpt-convert side by side with torch.load(weights_only=True), picklescan, modelscan and fickling.

    python -m benchmarks.security.compare            # prints the markdown tables (README "Security comparison")
    python -m benchmarks.security.compare --json out.json   # also every verdict, per tool and sample
    python -m benchmarks.security.compare --verdicts benchmarks/security/verdicts.md   # the per-sample table

Both corpora come from tests/security/corpus.py (generated, nothing downloaded): the malicious one
(every live sample runs a canary when loaded naively) and a legitimate one (bare, general,
whole-model, legacy, Lightning-style, numpy, RNG state, HF .bin, plain pickles).

Every tool looks at every sample in its own throw-away child process (forked from a parent that
has imported all the tools, so start-up is paid once), with stdout/stderr on /dev/null, a scratch
working directory and a timeout. A verdict is one of
  refused  the tool flags the file as unsafe or refuses to load it
  accepted the tool says it is fine (for a scanner) or loads it (for a loader)
  crashed  the tool raised an unexpected error, died, or timed out without a verdict
and separately, for malicious samples, whether the canary appeared (the payload ran). `ckpt-convert scan`
gives the three-level verdict instead: safe, suspicious, unsafe (or unreadable); it "catches" a sample
when it says unsafe or unreadable (both exit non-zero) and wrongly refuses a legitimate file only then.
Malicious samples are also grouped by what their payload does (`Sample.attack`: exec, file, network,
process, nested-loader, resource), one row per group.
Needs: pip install picklescan modelscan fickling (any tool not installed is left out of the table).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import io
import json
import os
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy  # noqa: F401 - preloaded before forking
import torch

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from tests.security.corpus import build_legit, build_malicious  # noqa: E402

REFUSED, ACCEPTED, CRASHED = "refused", "accepted", "crashed"
SAFE, SUSPICIOUS, UNSAFE, UNREADABLE = "safe", "suspicious", "unsafe", "unreadable"  # ckpt-convert scan's verdicts
CAUGHT = {REFUSED, UNSAFE, UNREADABLE}  # verdicts that stop a file (non-zero exit)
PASSED = {ACCEPTED, SAFE, SUSPICIOUS}
_CODES = {REFUSED: 10, ACCEPTED: 11, SAFE: 12, SUSPICIOUS: 13, UNSAFE: 14, UNREADABLE: 15}
TIMEOUT_S = 60.0


# ------------------------------------------------------------------------------------- the tools

def ckpt_convert(path: Path, scratch: Path) -> str:
    from convert.cli import main

    code = main(["convert", str(path), str(scratch / "out"), "--quiet"])
    return ACCEPTED if code == 0 else REFUSED if code in (1, 2) else CRASHED


def ckpt_convert_scan(path: Path, scratch: Path) -> str:
    from convert.scan import scan_file

    return scan_file(path).verdict


def torch_weights_only(path: Path, scratch: Path) -> str:
    try:
        torch.load(path, weights_only=True, map_location="cpu")
    except Exception:  # weights_only refuses by raising (UnpicklingError, RuntimeError, ...)
        return REFUSED
    return ACCEPTED


def picklescan(path: Path, scratch: Path) -> str:
    from picklescan.scanner import scan_file_path

    result = scan_file_path(str(path))
    if result.issues_count or result.infected_files:
        return REFUSED
    return CRASHED if result.scan_err else ACCEPTED


def modelscan(path: Path, scratch: Path) -> str:
    from modelscan.modelscan import ModelScan

    result = ModelScan().scan(str(path))
    if result["summary"]["total_issues"]:
        return REFUSED
    return CRASHED if result.get("errors") else ACCEPTED  # "not supported" / nothing scanned = no objection


def fickling(path: Path, scratch: Path) -> str:
    import zipfile

    import fickling as fk

    if zipfile.is_zipfile(path):  # torch.save archives: fickling scans the pickle members
        results = list(fk.scan_zip_archive(str(path), graceful=True).values())
    else:
        results = [fk.scan_file(str(path), graceful=True)]
    if any(not r.is_safe for r in results):
        return REFUSED
    return CRASHED if any(r.errors for r in results) else ACCEPTED


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return ""


def available_tools() -> dict[str, Callable[[Path, Path], str]]:
    tools: dict[str, Callable[[Path, Path], str]] = {
        f"ckpt-convert {_version('ckpt-convert') or '(source tree)'} convert": ckpt_convert,
        f"ckpt-convert {_version('ckpt-convert') or '(source tree)'} scan": ckpt_convert_scan,
        f"torch.load(weights_only=True), torch {torch.__version__}": torch_weights_only,
    }
    for dist, func in (("picklescan", picklescan), ("modelscan", modelscan), ("fickling", fickling)):
        if _version(dist):
            with contextlib.suppress(Exception), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                __import__(func.__name__ if dist != "modelscan" else "modelscan.modelscan")
                tools[f"{dist} {_version(dist)}"] = func
    return tools


# ------------------------------------------------------------------------------------ isolation

def verdict_in_child(tool: Callable[[Path, Path], str], path: Path) -> str:
    """Run one tool on one file in a forked child; CRASHED if it dies, hangs or raises."""
    scratch = Path(tempfile.mkdtemp(prefix="peer-"))
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.chdir(scratch)
            for var in ("HOME", "XDG_CACHE_HOME", "TORCHINDUCTOR_CACHE_DIR", "TORCH_HOME", "TMPDIR"):
                os.environ[var] = str(scratch)  # a payload that does run leaves its files in the scratch folder
            null = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(null, fd)
            warnings.simplefilter("ignore")
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                code = _CODES.get(tool(path, scratch), 1)
        except BaseException:
            code = 1
        os._exit(code)
    deadline = time.monotonic() + TIMEOUT_S
    try:
        while time.monotonic() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else -1
                return {v: k for k, v in _CODES.items()}.get(code, CRASHED)
            time.sleep(0.01)
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        return CRASHED
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _fired(canary_dir: Path) -> set[str]:
    return {p.name for p in canary_dir.iterdir()} if canary_dir.exists() else set()


def run(work: Path) -> dict:
    malicious = build_malicious(work / "malicious", work / "canaries")
    legit = build_legit(work / "legit")
    tools = available_tools()
    report: dict = {"tools": {}, "malicious": [s.name for s in malicious], "legit": [s.name for s in legit],
                    "live": [s.name for s in malicious if s.trigger],
                    "attack": {s.name: s.attack for s in malicious}, "technique": {s.name: s.category for s in malicious},
                    "legit_kind": {s.name: s.kind for s in legit}}
    for name, tool in tools.items():
        row: dict = {"malicious": {}, "legit": {}, "executed": []}
        for s in malicious:
            before = _fired(work / "canaries")
            row["malicious"][s.name] = verdict_in_child(tool, s.path)
            time.sleep(0.01)
            if _fired(work / "canaries") - before:
                row["executed"].append(s.name)
        for ls in legit:
            row["legit"][ls.name] = verdict_in_child(tool, ls.path)
        report["tools"][name] = row
        for p in (work / "canaries").iterdir():  # each tool starts from a clean canary folder
            p.unlink() if p.is_file() else shutil.rmtree(p, ignore_errors=True)
        print(f"  {name}: done", file=sys.stderr)
    return report


def table(report: dict) -> str:
    """One row per tool: caught / missed / crashed over the malicious corpus, refusals of legitimate files."""
    n_mal, n_leg, live = len(report["malicious"]), len(report["legit"]), set(report["live"])
    lines = [f"| tool | malicious caught (of {n_mal}) | missed | crashed | of which live payloads caught (of {len(live)}) "
             f"| payload executed | legitimate wrongly refused (of {n_leg}) |", "|---|---|---|---|---|---|---|"]
    for name, row in report["tools"].items():
        verdicts = list(row["malicious"].values())
        caught = sum(v in CAUGHT for v in verdicts)
        missed = sum(v in PASSED for v in verdicts)
        live_caught = sum(v in CAUGHT for k, v in row["malicious"].items() if k in live)
        legit_bad = sum(v not in PASSED for v in row["legit"].values())
        lines.append(f"| {name} | {caught} | {missed} | {verdicts.count(CRASHED)} | "
                     f"{live_caught} | {len(row['executed'])} | {legit_bad} |")
    return "\n".join(lines)


def category_table(report: dict) -> str:
    """One row per attack category (what the payload does): how many of its samples each tool catches."""
    attacks = report["attack"]
    groups = list(dict.fromkeys(attacks.values()))
    tools = list(report["tools"])
    lines = ["| payload does | samples | " + " | ".join(tools) + " |", "|---|---:|" + "---:|" * len(tools)]
    for group in groups:
        names = [k for k, v in attacks.items() if v == group]
        cells = [f"{sum(report['tools'][t]['malicious'][k] in CAUGHT for k in names)}" for t in tools]
        lines.append(f"| {group} | {len(names)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def verdict_table(report: dict) -> str:
    """Every sample, every tool's verdict: ckpt-convert scan's three levels, the others' refused/accepted."""
    tools = list(report["tools"])
    lines = ["| sample | corpus | technique / kind | payload does | " + " | ".join(tools) + " |",
             "|---|---|---|---|" + "---|" * len(tools)]
    for name in report["malicious"]:
        cells = [report["tools"][t]["malicious"][name] for t in tools]
        lines.append(f"| {name} | malicious | {report['technique'][name]} | {report['attack'][name]} | "
                     + " | ".join(cells) + " |")
    for name in report["legit"]:
        cells = [report["tools"][t]["legit"][name] for t in tools]
        lines.append(f"| {name} | legitimate | {report['legit_kind'][name]} | - | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def scan_verdict_counts(report: dict) -> str:
    """ckpt-convert scan's three-level verdicts, counted per corpus."""
    name = next((t for t in report["tools"] if t.endswith(" scan")), None)
    if name is None:
        return ""
    row = report["tools"][name]
    out = []
    for corpus_name in ("malicious", "legit"):
        counts = {v: list(row[corpus_name].values()).count(v) for v in (SAFE, SUSPICIOUS, UNSAFE, UNREADABLE, CRASHED)}
        out.append(f"{corpus_name}: " + ", ".join(f"{n} {v}" for v, n in counts.items() if n))
    return "; ".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", help="write every verdict to this file")
    parser.add_argument("--keep", help="build the corpora in this folder and keep them")
    parser.add_argument("--verdicts", help="write the per-sample verdict table (markdown) to this file")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="security-bench-") as tmp:
        work = Path(args.keep) if args.keep else Path(tmp)
        report = run(work)
    print(table(report))
    print()
    print(category_table(report))
    print()
    print(f"ckpt-convert scan verdicts: {scan_verdict_counts(report)}")
    if args.verdicts:
        Path(args.verdicts).write_text("# Every sample, every tool\n\nWritten by `python -m benchmarks.security.compare "
                                       "--verdicts FILE`.\n\n" + verdict_table(report) + "\n")
    for name, row in report["tools"].items():
        missed = [k for k, v in row["malicious"].items() if v in PASSED]
        wrong = [k for k, v in row["legit"].items() if v not in PASSED]
        print(f"\n{name}\n  missed: {', '.join(missed) or '-'}\n  executed: {', '.join(row['executed']) or '-'}"
              f"\n  legitimate refused: {', '.join(wrong) or '-'}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
