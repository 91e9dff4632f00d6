import os

import pytest
import torch

# Tests never reach a model hub; transformers must fail fast instead of trying the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Slow tests first: under `-n 2` a long test collected late would otherwise run alone at the end of the suite.
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
