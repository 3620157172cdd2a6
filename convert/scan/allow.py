"""The user's own classes, allowed: `scan --allow 'mylab.models.*'` and `[tool.ckpt-convert] allow = [...]`
in ./pyproject.toml. A custom class that matches is no longer suspicious, so `--fail-on suspicious` can
gate a repository whose checkpoints pickle its own models. Gadgets (unsafe findings) are never allowed,
and a pattern must name a package of the user's: not a wildcard first part, not a standard-library module.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import re
import sys
from pathlib import Path

from ..errors import ConvertError
from .report import ScanReport
from .verdicts import CUSTOM_CLASS, SAFE, SUSPICIOUS

PYPROJECT = "pyproject.toml"
SECTION = "ckpt-convert"
_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_*?\[\]!]+)*")


def check_pattern(pattern: str, where: str) -> str:
    """`pattern` if it names classes of a package of the user's; ConvertError (one line) otherwise."""
    if not isinstance(pattern, str) or not _PATTERN.fullmatch(pattern):
        raise ConvertError(f"{where}: allow pattern {pattern!r:.80} is not a dotted name pattern "
                           "such as 'mylab.models.*'")
    top = pattern.split(".", 1)[0]
    if top in sys.stdlib_module_names or top in ("torch", "numpy"):
        raise ConvertError(f"{where}: allow pattern {pattern!r} names the {top} module; allow is for your own "
                           "classes (e.g. 'mylab.models.*')")
    return pattern


def patterns(given: list[str] | None, folder: Path) -> list[str]:
    """The patterns from --allow and from `folder`/pyproject.toml's [tool.ckpt-convert] allow."""
    found = [check_pattern(p, "--allow") for p in given or ()]
    pyproject = folder / PYPROJECT
    if pyproject.is_file():
        found += [check_pattern(p, str(pyproject)) for p in _from_pyproject(pyproject)]
    return found


def _from_pyproject(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8", errors="replace")
    if f"[tool.{SECTION}]" not in text and f'[tool."{SECTION}"]' not in text:
        return []
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        raise ConvertError(f"{path}: reading [tool.{SECTION}] needs Python 3.11 or later; pass --allow "
                           "instead") from None
    try:
        section = tomllib.loads(text).get("tool", {}).get(SECTION, {})
    except tomllib.TOMLDecodeError as exc:
        raise ConvertError(f"{path}: not valid TOML ({exc})") from None
    allow = section.get("allow", [])
    if not (isinstance(allow, list) and all(isinstance(p, str) for p in allow)):
        raise ConvertError(f"{path}: [tool.{SECTION}] allow must be a list of strings")
    return allow


def apply(report: ScanReport, allowed: list[str]) -> ScanReport:
    """The report with the custom classes `allowed` matches taken out of its findings (never a gadget)."""
    if not allowed or report.verdict not in (SUSPICIOUS, SAFE):
        return report  # unsafe and unreadable files keep every finding
    kept, passed = [], []
    for f in report.findings:
        mine = f.verdict == SUSPICIOUS and f.category == CUSTOM_CLASS and any(
            fnmatch.fnmatchcase(f.name, p) for p in allowed)
        (passed if mine else kept).append(f)
    if not passed:
        return report
    verdict = SUSPICIOUS if any(f.verdict == SUSPICIOUS for f in kept) else SAFE  # (no unsafe finding here)
    return dataclasses.replace(report, findings=kept, verdict=verdict, allowed=[f.name for f in passed])
