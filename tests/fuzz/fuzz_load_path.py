"""Fuzz the load path (sidecar + safetensors reader + decoder). How to run it: see tests/fuzz/targets.py."""

import sys

from tests.fuzz.launch import launch

if __name__ == "__main__":
    sys.exit(launch("load_path", "load_seeds"))
