"""Crash drills in `make test` (issue 22): each command killed with SIGKILL at 3 random points of one fixed seed,
then run to the end, gives the uninterrupted run's bytes; every file it writes is renamed into place (drill.py).
`python tests/drills/long.py` runs more seeds and writes tests/drills/results.json."""

from pathlib import Path

import pytest
from commands import build_inputs, drills
from drill import kill_loop, reference

NAMES = sorted(drills(Path()))
SEED, KILLS = 0, 3


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return build_inputs(tmp_path_factory.mktemp("drill-inputs"))


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("name", NAMES)
def test_killed_three_times_then_finished_gives_the_uninterrupted_output(name, inputs, tmp_path) -> None:
    drill = drills(inputs)[name]
    expected, seconds = reference(drill, tmp_path / "reference")
    outcome = kill_loop(drill, tmp_path / "killed", expected, seconds, seed=SEED, kills=KILLS)
    assert outcome.finished_early < KILLS, outcome  # at least one kill landed while it ran
