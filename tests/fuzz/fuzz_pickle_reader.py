"""Fuzz the pickle reader (containers + VM + planner). How to run it: see tests/fuzz/targets.py."""

from __future__ import annotations

import sys


def _targets():  # imported inside atheris' instrumentation when fuzzing for real
    from tests.fuzz import targets

    return targets


if __name__ == "__main__":
    argv = sys.argv[1:]
    if "--plain" in argv or (len(argv) == 1 and not argv[0].startswith("-")):
        targets = _targets()
    else:
        import atheris

        with atheris.instrument_imports(include=["convert"]):  # coverage of our code only, not torch's
            targets = _targets()
    sys.exit(targets.main(targets.pickle_reader, targets.pickle_seeds, argv))
