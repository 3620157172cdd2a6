"""A few hundred seeded mutations of torch zip and legacy files through the differential fuzz target:
wherever torch.load(weights_only=True) and read_checkpoint both accept an input, the trees agree."""

from __future__ import annotations

import random

from tests.fuzz import targets


def test_seeds_read_the_same_by_both():
    seeds = targets.differential_seeds()
    assert len(seeds) >= 4
    assert [targets.differential(seed) for seed in seeds] == ["agree"] * len(seeds)


def test_mutations_never_disagree():
    seeds = targets.differential_seeds()
    rng = random.Random(21)
    outcomes = [targets.differential(targets.mutate(rng.choice(seeds), rng, seeds)) for _ in range(300)]
    assert outcomes.count("agree") >= 3, {o: outcomes.count(o) for o in set(outcomes)}  # the check was reached
