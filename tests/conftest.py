import os

import pytest
import torch

from herd.formats import Checkpoint, resolve_model_path, write_checkpoint
from herd.model import ModelArgs, build_model
from herd.posttrain.loader import save_tokenizer
from herd.tokenizer import HFTokenizer

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


# A tiny random model with the embedded SmolLM2's tokenizer and chat template, exported as an HF directory:
# post-training stages run on it in seconds, with the real chat format.


@pytest.fixture(scope="session")
def smol_tokenizer() -> HFTokenizer:
    return HFTokenizer.from_gguf(resolve_model_path(None))


@pytest.fixture(scope="session")
def tiny_chat_model(tmp_path_factory, smol_tokenizer) -> str:
    path = tmp_path_factory.mktemp("tiny_chat") / "model"
    args = ModelArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=smol_tokenizer.vocab_size,
                     multiple_of=32, tie_embeddings=True, max_seq_len=512)  # fmt: skip
    torch.manual_seed(0)
    model = build_model(args, device="cpu", init=False)
    model.init_weights(std=0.02)
    sd = {k: v.detach() for k, v in model.state_dict().items()}
    write_checkpoint(path, Checkpoint(args=args, state_dict=sd, format="hf", path=path), "hf",
                     assets=lambda tmp: save_tokenizer(smol_tokenizer, tmp))  # fmt: skip
    return str(path)
