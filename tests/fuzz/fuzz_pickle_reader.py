"""Fuzz the pickle reader (containers + VM + planner). How to run it: see tests/fuzz/targets.py."""

import sys

from tests.fuzz.launch import launch

if __name__ == "__main__":
    sys.exit(launch("pickle_reader", "pickle_seeds"))
