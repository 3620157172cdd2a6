"""The shared entry point of the fuzz scripts: plain random mutation, or atheris with our code instrumented."""

from __future__ import annotations

import sys


def launch(target: str, seeds: str) -> int:
    """Run `targets.<target>` on `targets.<seeds>()`; atheris unless `--plain` or replaying one input."""
    argv = sys.argv[1:]
    if "--plain" in argv or (len(argv) == 1 and not argv[0].startswith("-")):
        from tests.fuzz import targets
    else:
        import atheris

        with atheris.instrument_imports(include=["convert"]):  # coverage of our code only, not torch's
            from tests.fuzz import targets
    return targets.main(getattr(targets, target), getattr(targets, seeds), argv)
