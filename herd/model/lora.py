"""LoRA (Hu et al. 2021, arXiv:2106.09685): low-rank adapters on a herd Transformer's linear layers.

`apply_lora` swaps each targeted `nn.Linear` inside `model.layers` for a `LoRALinear` and freezes everything
else; `merge_lora` folds the adapters into the base weights and swaps plain `nn.Linear`s back, so the model
exports like any other. A LoRA layer computes `W x + (alpha / rank) * B A dropout(x)`, with A (rank, in)
Kaiming-uniform and B (out, rank) zero as in the paper and peft, so a fresh adapter leaves the model unchanged;
the alpha / rank scale keeps the update's size roughly independent of the rank.

`LoRALinear` subclasses `nn.Linear` and reuses the base module's weight Parameter: the base keys stay
`...wq.weight`, so checkpoint loaders, writers and code that checks `isinstance(m, nn.Linear)` keep working, and
the adapter adds only `...wq.lora_a` / `...wq.lora_b`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from herd.errors import ModelError
from herd.model.llama import Transformer

DEFAULT_TARGETS = ("wq", "wk", "wv", "wo", "w1", "w2", "w3")


class LoRALinear(nn.Linear):
    """`base(x) + (alpha / rank) * B A dropout(x)`; the adapter is kept in float32 and cast to the input dtype."""

    def __init__(self, base: nn.Linear, *, rank: int, alpha: float, dropout: float) -> None:
        # Built on meta, then handed the base's own Parameters, so the base weight is neither copied nor reallocated.
        super().__init__(base.in_features, base.out_features, bias=base.bias is not None, device="meta")
        self.weight, self.bias = base.weight, base.bias
        self.rank, self.alpha, self.scale = rank, alpha, alpha / rank
        device = base.weight.device
        self.lora_a = nn.Parameter(torch.empty(rank, base.in_features, device=device, dtype=torch.float32))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank, device=device, dtype=torch.float32))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))  # nn.Linear's own init, as in the paper's code
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.train(base.training)  # a new module defaults to training mode; in an eval model, dropout must stay off

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.lora_a.to(x.dtype), self.lora_b.to(x.dtype)
        return F.linear(x, self.weight, self.bias) + F.linear(F.linear(self.dropout(x), a), b) * self.scale

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rank={self.rank}, alpha={self.alpha}"


def has_lora(model: nn.Module) -> bool:
    return any(isinstance(m, LoRALinear) for m in model.modules())


def apply_lora(
    model: Transformer,
    *,
    rank: int,
    alpha: float,
    dropout: float = 0.0,
    targets: Sequence[str] = DEFAULT_TARGETS,
    last_layers: int = 0,
) -> int:
    """Add adapters to the linears in `model.layers` whose attribute name is in `targets`; freeze the rest.
    `last_layers` > 0 adapts only the last that many blocks: the backward pass then stops at the first of them.

    Returns the number of trainable parameters (the adapters'). Raises ModelError on a bad rank, alpha or
    dropout, a target that names no linear layer, or a model that already has LoRA.
    """
    if rank < 1:
        raise ModelError(f"lora: rank must be >= 1, got {rank}")
    if alpha <= 0:
        raise ModelError(f"lora: alpha must be > 0, got {alpha}")
    if not 0 <= dropout < 1:
        raise ModelError(f"lora: dropout must be in [0, 1), got {dropout}")
    if not targets:
        raise ModelError("lora: targets is empty")
    if not 0 <= last_layers <= len(model.layers):
        raise ModelError(f"lora: last_layers must be in [0, {len(model.layers)}], got {last_layers}")
    if has_lora(model):
        raise ModelError("lora: the model already has LoRA layers; merge_lora them first")
    found = [
        (name, m)
        for name, m in model.layers.named_modules()
        if isinstance(m, nn.Linear)
        and name.rpartition(".")[2] in targets
        and (not last_layers or int(name.partition(".")[0]) >= len(model.layers) - last_layers)
    ]
    missing = sorted(set(targets) - {name.rpartition(".")[2] for name, _ in found})
    if missing:
        raise ModelError(f"lora: target {missing[0]!r} matches no linear layer in model.layers")

    for p in model.parameters():
        p.requires_grad_(False)
    for name, m in found:
        parent, _, attr = name.rpartition(".")
        setattr(model.layers.get_submodule(parent), attr, LoRALinear(m, rank=rank, alpha=alpha, dropout=dropout))
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@torch.no_grad()
def merge_lora(model: nn.Module) -> None:
    """In place: W += (alpha / rank) * B @ A (in float32), plain `nn.Linear`s back, every parameter trainable."""
    lora = [(name, m) for name, m in model.named_modules() if isinstance(m, LoRALinear)]
    if not lora:
        raise ModelError("lora: the model has no LoRA layers to merge")
    for name, m in lora:
        delta = (m.lora_b.float() @ m.lora_a.float()) * m.scale
        m.weight.copy_((m.weight.float() + delta).to(m.weight.dtype))
        plain = nn.Linear(m.in_features, m.out_features, bias=m.bias is not None, device="meta")
        plain.weight, plain.bias = m.weight, m.bias
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent), attr, plain)
    for p in model.parameters():
        p.requires_grad_(True)


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Only the adapter tensors (`...lora_a`, `...lora_b`), keyed as in `model.state_dict()`."""
    return {k: v for k, v in model.state_dict().items() if k.endswith((".lora_a", ".lora_b"))}
