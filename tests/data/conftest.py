import pytest

from herd.data.corpus import build_corpus


@pytest.fixture(scope="session")
def embedded_corpus(tmp_path_factory):
    """The embedded corpus, built once per test process."""
    return build_corpus(tmp_path_factory.mktemp("corpus") / "raw")
