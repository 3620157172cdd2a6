"""Differential fuzz: read_checkpoint vs torch.load(weights_only=True). How to run it: see tests/fuzz/targets.py."""

import sys

from tests.fuzz.launch import launch

if __name__ == "__main__":
    sys.exit(launch("differential", "differential_seeds"))
