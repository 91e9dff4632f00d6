"""herd's Transformer against transformers' LlamaForCausalLM with the same random weights (fp32)."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from herd.formats.hf import args_from_hf_config, from_hf_state_dict
from herd.model import build_model

BASE = dict(
    hidden_size=64,
    intermediate_size=160,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=256,
    rms_norm_eps=1e-5,
    rope_theta=10000.0,
    max_position_embeddings=256,
    initializer_range=0.2,
)
CASES = {
    "plain": {},
    # A short original context puts the 16-dim heads' frequencies in all three bands of the scaling.
    "rope_llama3": {
        "rope_scaling": {
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64,
        }
    },
    "tied": {"tie_word_embeddings": True},
    "mha_explicit_head_dim": {"num_key_value_heads": 4, "head_dim": 32},
}


def _pair(case: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    config = LlamaConfig(**(BASE | CASES[case]))
    ref = LlamaForCausalLM(config).eval()
    raw = config.to_dict()
    args = args_from_hf_config(raw, source="test")
    model = build_model(args, init=False)
    sd = from_hf_state_dict(args, {k: v for k, v in ref.state_dict().items()}, source="test")
    model.load_state_dict(sd, strict=True)
    return model.eval(), ref


@pytest.mark.parametrize("case", CASES)
def test_logits_match_transformers(case: str) -> None:
    model, ref = _pair(case)
    tokens = torch.randint(0, 256, (2, 150))
    with torch.no_grad():
        ours = model(tokens)
        theirs = ref(tokens).logits
    assert ours.abs().max() > 1.0, "logits too small for the tolerance to mean anything"
    assert (ours - theirs).abs().max().item() <= 1e-4


def test_rope_scaling_changes_logits_beyond_original_context() -> None:
    """Guards the test above: the scaled case must actually differ from unscaled RoPE."""
    model, _ = _pair("rope_llama3")
    plain = build_model(model.args.replace(rope_scaling=None), init=False)
    plain.load_state_dict(model.state_dict())
    tokens = torch.randint(0, 256, (1, 150))
    with torch.no_grad():
        assert (model(tokens) - plain(tokens)).abs().max() > 1e-2
