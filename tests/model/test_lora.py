"""LoRA adapters on a tiny Transformer: identity at init, only adapters train, merging is exact."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from herd.errors import ModelError
from herd.model import ModelArgs, build_model
from herd.model.lora import DEFAULT_TARGETS, LoRALinear, apply_lora, has_lora, lora_state_dict, merge_lora

ARGS = ModelArgs(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=64, ffn_hidden_dim=48, max_seq_len=32)


@pytest.fixture
def model() -> nn.Module:
    return build_model(ARGS).eval()


def tokens(batch: int = 2, seq: int = 16) -> torch.Tensor:
    return torch.randint(0, ARGS.vocab_size, (batch, seq))


def randomize_adapters(model: nn.Module) -> None:
    """Non-zero B, so that the adapters change the output and merge mistakes show."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, LoRALinear):
                m.lora_b.normal_(std=0.05)


def test_fresh_adapters_leave_logits_unchanged_and_keep_base_keys(model) -> None:
    x = tokens()
    with torch.no_grad():
        before = model(x)
    base_keys = set(model.state_dict())
    apply_lora(model, rank=4, alpha=8)
    assert has_lora(model) and isinstance(model.layers["0"].attention.wq, nn.Linear)
    with torch.no_grad():
        torch.testing.assert_close(model(x), before, rtol=0, atol=0)
    lora_keys = set(lora_state_dict(model))
    assert "layers.0.attention.wq.lora_a" in lora_keys and "layers.1.feed_forward.w2.lora_b" in lora_keys
    assert set(model.state_dict()) == base_keys | lora_keys
    assert len(lora_keys) == 2 * len(DEFAULT_TARGETS) * ARGS.n_layers


def test_trainable_count_matches_formula_and_everything_else_is_frozen(model) -> None:
    linears = [(n, m) for n, m in model.layers.named_modules() if n.rpartition(".")[2] in ("wq", "wv", "w2")]
    expected = sum(4 * (m.in_features + m.out_features) for _, m in linears)
    assert len(linears) == 3 * ARGS.n_layers
    assert apply_lora(model, rank=4, alpha=4, targets=("wq", "wv", "w2")) == expected
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f"layers.{n}.{ab}" for n, _ in linears for ab in ("lora_a", "lora_b")}
    assert not model.tok_embeddings.weight.requires_grad and not model.output.weight.requires_grad


def test_training_changes_only_adapters_and_lowers_loss(model) -> None:
    apply_lora(model, rank=4, alpha=8)
    model.train()
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    adapters = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    x = tokens(4, 16)
    losses = []
    for _ in range(8):
        logits = model(x[:, :-1])
        loss = F.cross_entropy(logits.flatten(0, 1), x[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.05, losses
    params = dict(model.named_parameters())
    assert all(torch.equal(params[n], v) for n, v in frozen.items())
    assert all(not torch.equal(params[n], v) for n, v in adapters.items())


@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_merged_model_equals_adapted_model_and_has_original_keys(model, dropout) -> None:
    original_keys = list(model.state_dict())
    apply_lora(model, rank=4, alpha=16, dropout=dropout)
    randomize_adapters(model)
    x = tokens()
    with torch.no_grad():
        adapted = model(x)
    merge_lora(model)
    assert not has_lora(model) and type(model.layers["0"].attention.wq) is nn.Linear
    assert list(model.state_dict()) == original_keys
    assert all(p.requires_grad for p in model.parameters())
    with torch.no_grad():
        torch.testing.assert_close(model(x), adapted, rtol=0, atol=1e-5)
    fresh = build_model(ARGS, init=False)
    fresh.load_state_dict(model.state_dict())  # strict: the merged model exports like a plain one


def test_merged_weight_is_base_plus_scaled_low_rank_product(model) -> None:
    apply_lora(model, rank=3, alpha=6)
    randomize_adapters(model)
    wo = model.layers["1"].attention.wo
    w, a, b = (t.detach().double().clone() for t in (wo.weight, wo.lora_a, wo.lora_b))
    expected = w + (6 / 3) * (b @ a)
    merge_lora(model)
    torch.testing.assert_close(model.layers["1"].attention.wo.weight.double(), expected, rtol=0, atol=1e-6)


def test_bf16_weights_and_autocast(model) -> None:
    x = tokens()
    # fp32 weights under autocast, and bf16 weights without it; the adapters stay float32 in both.
    for dtype, m in ((torch.float32, model), (torch.bfloat16, build_model(ARGS, dtype=torch.bfloat16))):
        apply_lora(m, rank=4, alpha=8)
        randomize_adapters(m)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.float32):
            loss = m(x).logsumexp(-1).mean()
        loss.backward()
        wq = m.layers["0"].attention.wq
        assert wq.lora_a.dtype == torch.float32 and wq.lora_a.grad is not None and wq.lora_a.grad.isfinite().all()
        assert wq.weight.grad is None
        merge_lora(m)
        assert m.layers["0"].attention.wq.weight.dtype == dtype


def test_bad_arguments_raise_model_error_naming_the_value(model) -> None:
    with pytest.raises(ModelError, match="rank must be >= 1, got 0"):
        apply_lora(model, rank=0, alpha=8)
    with pytest.raises(ModelError, match="alpha must be > 0, got -1"):
        apply_lora(model, rank=4, alpha=-1)
    with pytest.raises(ModelError, match=r"dropout must be in \[0, 1\), got 1.5"):
        apply_lora(model, rank=4, alpha=8, dropout=1.5)
    with pytest.raises(ModelError, match="target 'wqq' matches no linear"):
        apply_lora(model, rank=4, alpha=8, targets=("wq", "wqq"))
    with pytest.raises(ModelError, match="target 'output' matches no linear"):
        apply_lora(model, rank=4, alpha=8, targets=("output",))
    assert not has_lora(model) and all(p.requires_grad for p in model.parameters())  # failed calls change nothing
    with pytest.raises(ModelError, match="no LoRA layers"):
        merge_lora(model)
    apply_lora(model, rank=4, alpha=8)
    with pytest.raises(ModelError, match="already has LoRA"):
        apply_lora(model, rank=2, alpha=8)


def test_last_layers_adapts_only_the_last_blocks_and_stops_the_backward_there(model) -> None:
    apply_lora(model, rank=4, alpha=8, last_layers=1)
    assert not any(isinstance(m, LoRALinear) for m in model.layers["0"].modules())
    assert all(isinstance(getattr(model.layers["1"].attention, t), LoRALinear) for t in ("wq", "wk", "wv", "wo"))
    randomize_adapters(model)
    needs_grad: dict[str, bool] = {}
    for name in ("0", "1"):
        model.layers[name].register_forward_hook(
            lambda _m, _i, out, name=name: needs_grad.update({name: out.requires_grad})
        )
    F.cross_entropy(model(tokens()).flatten(0, 1), tokens().flatten()).backward()
    assert needs_grad == {"0": False, "1": True}  # autograd records nothing below the first adapted block
    with pytest.raises(ModelError, match="last_layers must be in"):
        apply_lora(build_model(ARGS), rank=4, alpha=8, last_layers=3)
