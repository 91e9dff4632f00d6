"""A bounded fuzz run over every reader (issue 22): each corrupted file is read or refused with a one-line error that
names it; `python tests/fuzz/long.py` is the long run."""

import pytest
from cases import CASES
from fuzzing import fuzz

RUNS_PER_FILE = 500
SECONDS_PER_FILE = 3.0  # about a minute in all


@pytest.mark.timeout(300)
@pytest.mark.parametrize("name", sorted(CASES))
def test_corrupt_files_are_read_or_refused_in_one_line(name, tmp_path) -> None:
    case = CASES[name](tmp_path)
    case.read()  # the seed files themselves read
    for i, target in enumerate(case.targets):
        out = fuzz(case.read, target, count=RUNS_PER_FILE, seconds=SECONDS_PER_FILE, seed=i, names=case.names)
        assert not out.failures, "\n".join(out.failures[:10])
        assert out.runs >= 20 and out.refused > 0, out  # the mutations do reach the reader's checks
