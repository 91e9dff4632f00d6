"""The Llama 3 transformer, readable top to bottom.

Follows Meta's reference (`llama_models/llama3/model.py`) and the Llama 3 paper: RMSNorm, rotary
embeddings on interleaved pairs with the 3.1 frequency scaling, grouped-query attention, SwiGLU.
Parameter names equal Meta's checkpoint keys, so `consolidated.pth` files load without renaming.
Unlike the reference there are no model-parallel layers (parallelism is applied from outside),
attention goes through `scaled_dot_product_attention`, the KV cache is a separate module, and
masks handle packed documents and left-padded batches.

Shape legend: B=batch, T=query tokens, S=key tokens, D=dim, N=query heads, K=kv heads,
H=head_dim, F=ffn hidden, V=vocab.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from herd.model.args import ModelArgs, RopeScaling

# ---------------------------------------------------------------------------------------------
# Rotary position embedding


def rope_frequencies(args: ModelArgs) -> torch.Tensor:
    """Inverse frequencies (H/2,), float32, with the Llama 3.1 scaling when configured."""
    assert args.head_dim is not None  # derived in ModelArgs.__post_init__
    exponents = torch.arange(0, args.head_dim, 2, device="cpu")[: args.head_dim // 2].float() / args.head_dim
    freqs = 1.0 / (args.rope_theta**exponents)
    return freqs if args.rope_scaling is None else scale_rope_frequencies(freqs, args.rope_scaling)


def scale_rope_frequencies(freqs: torch.Tensor, s: RopeScaling) -> torch.Tensor:
    """Llama 3.1: keep high frequencies, divide low ones by `factor`, interpolate in between."""
    low_freq_wavelen = s.original_max_seq_len / s.low_freq_factor
    high_freq_wavelen = s.original_max_seq_len / s.high_freq_factor
    wavelen = 2 * math.pi / freqs
    scaled = torch.where(wavelen > low_freq_wavelen, freqs / s.factor, freqs)
    smooth = (s.original_max_seq_len / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor)
    in_band = (wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen)
    return torch.where(in_band, (1 - smooth) * scaled / s.factor + smooth * scaled, scaled)


def apply_rope(x_BTNH: torch.Tensor, cos_BTP: torch.Tensor, sin_BTP: torch.Tensor) -> torch.Tensor:
    """Rotate each adjacent pair (x[2i], x[2i+1]) by its angle; P = H/2 pairs. Computed in float32."""
    x = x_BTNH.float().unflatten(-1, (-1, 2))
    x0, x1 = x[..., 0], x[..., 1]
    cos, sin = cos_BTP.unsqueeze(2), sin_BTP.unsqueeze(2)
    out = torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1).flatten(-2)
    return out.type_as(x_BTNH)


# ---------------------------------------------------------------------------------------------
# Attention masks (True = may attend)


def causal_mask(q_len: int, kv_len: int, offset: int = 0, device: torch.device | None = None) -> torch.Tensor:
    """(q_len, kv_len): query i sits at absolute position offset + i and sees keys 0..offset + i."""
    q = torch.arange(q_len, device=device)[:, None] + offset
    return torch.arange(kv_len, device=device)[None, :] <= q


def document_mask(document_ids_BT: torch.Tensor) -> torch.Tensor:
    """(B, 1, T, T) causal mask that never crosses a document boundary in a packed sequence."""
    same_doc = document_ids_BT[:, :, None] == document_ids_BT[:, None, :]
    causal = causal_mask(document_ids_BT.shape[1], document_ids_BT.shape[1], device=document_ids_BT.device)
    return (same_doc & causal).unsqueeze(1)


def document_positions(document_ids_BT: torch.Tensor) -> torch.Tensor:
    """(B, T) RoPE positions that restart at 0 where a new document starts."""
    B, T = document_ids_BT.shape
    idx = torch.arange(T, device=document_ids_BT.device).expand(B, T)
    starts = torch.ones_like(document_ids_BT, dtype=torch.bool)
    starts[:, 1:] = document_ids_BT[:, 1:] != document_ids_BT[:, :-1]
    doc_start = torch.where(starts, idx, torch.zeros_like(idx)).cummax(dim=1).values
    return idx - doc_start


# ---------------------------------------------------------------------------------------------
# Layers


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalize in float32, then scale in the input dtype, as Meta's reference does.
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return normed.type_as(x) * self.weight


class KVCache(nn.Module):
    """Static key/value buffers for one attention layer: (B, K, max_seq_len, H)."""

    k: torch.Tensor
    v: torch.Tensor

    def __init__(self, batch: int, n_kv_heads: int, max_seq_len: int, head_dim: int, *, dtype, device) -> None:
        super().__init__()
        shape = (batch, n_kv_heads, max_seq_len, head_dim)
        self.register_buffer("k", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype, device=device), persistent=False)

    def update(self, pos: int, k_BKTH: torch.Tensor, v_BKTH: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write T new entries at slot `pos`; return keys/values of slots 0..pos+T."""
        B, _, T, _ = k_BKTH.shape
        end = pos + T
        if self.k.shape[0] < B or self.k.shape[2] < end:
            raise ValueError(f"KV cache holds batch {self.k.shape[0]} x {self.k.shape[2]} tokens; got {B} x {end}")
        self.k[:B, :, pos:end] = k_BKTH
        self.v[:B, :, pos:end] = v_BKTH
        return self.k[:B, :, :end], self.v[:B, :, :end]


class Attention(nn.Module):
    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        assert args.n_kv_heads is not None and args.head_dim is not None  # derived in ModelArgs.__post_init__
        self.n_heads, self.n_kv_heads, self.head_dim = args.n_heads, args.n_kv_heads, args.head_dim
        self.wq = nn.Linear(args.dim, args.n_heads * args.head_dim, bias=False)
        self.wk = nn.Linear(args.dim, args.n_kv_heads * args.head_dim, bias=False)
        self.wv = nn.Linear(args.dim, args.n_kv_heads * args.head_dim, bias=False)
        self.wo = nn.Linear(args.n_heads * args.head_dim, args.dim, bias=False)
        self.kv_cache: KVCache | None = None

    def forward(
        self,
        x_BTD: torch.Tensor,
        cos_BTP: torch.Tensor,
        sin_BTP: torch.Tensor,
        mask: torch.Tensor | None,
        cache_pos: int | None,
    ) -> torch.Tensor:
        B, T, _ = x_BTD.shape
        # Heads are inferred (-1): under tensor parallelism each rank holds n_heads / tp of them.
        q_BTNH = self.wq(x_BTD).view(B, T, -1, self.head_dim)
        k_BTKH = self.wk(x_BTD).view(B, T, -1, self.head_dim)
        v_BTKH = self.wv(x_BTD).view(B, T, -1, self.head_dim)
        q_BTNH, k_BTKH = apply_rope(q_BTNH, cos_BTP, sin_BTP), apply_rope(k_BTKH, cos_BTP, sin_BTP)

        q, k, v = q_BTNH.transpose(1, 2), k_BTKH.transpose(1, 2), v_BTKH.transpose(1, 2)
        if self.kv_cache is not None and cache_pos is not None:
            k, v = self.kv_cache.update(cache_pos, k, v)  # (B, K, S, H) with S = cache_pos + T
        # Without a mask: plain causal when queries and keys are the same tokens; a single new
        # token after the cache sees every cached key.
        is_causal = mask is None and T > 1
        out_BNTH = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=is_causal, enable_gqa=q.shape[1] != k.shape[1]
        )
        return self.wo(out_BNTH.transpose(1, 2).reshape(B, T, -1))


class FeedForward(nn.Module):
    """SwiGLU: w2(silu(w1 x) * w3 x)."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(dim, hidden_dim, bias=False)
        self.w2 = nn.Linear(hidden_dim, dim, bias=False)
        self.w3 = nn.Linear(dim, hidden_dim, bias=False)

    def forward(self, x_BTD: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x_BTD)) * self.w3(x_BTD))


class TransformerBlock(nn.Module):
    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.attention = Attention(args)
        assert args.ffn_hidden_dim is not None  # derived in ModelArgs.__post_init__
        self.feed_forward = FeedForward(args.dim, args.ffn_hidden_dim)
        self.attention_norm = RMSNorm(args.dim, args.norm_eps)
        self.ffn_norm = RMSNorm(args.dim, args.norm_eps)

    def forward(
        self,
        x_BTD: torch.Tensor,
        cos_BTP: torch.Tensor,
        sin_BTP: torch.Tensor,
        mask: torch.Tensor | None,
        cache_pos: int | None,
    ) -> torch.Tensor:
        h = x_BTD + self.attention(self.attention_norm(x_BTD), cos_BTP, sin_BTP, mask, cache_pos)
        return h + self.feed_forward(self.ffn_norm(h))


# ---------------------------------------------------------------------------------------------
# The model


class Transformer(nn.Module):
    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.args = args
        self.tok_embeddings = nn.Embedding(args.vocab_size, args.dim)
        # A ModuleDict keyed "0".."N-1" keeps checkpoint keys stable when pipeline stages drop layers.
        self.layers = nn.ModuleDict({str(i): TransformerBlock(args) for i in range(args.n_layers)})
        self.norm = RMSNorm(args.dim, args.norm_eps)
        self.output = nn.Linear(args.dim, args.vocab_size, bias=False)
        self.tie_weights()
        # Not a buffer: `model.to(bfloat16)` must not round the frequencies.
        self._rope_freqs = rope_frequencies(args)

    def tie_weights(self) -> None:
        if self.args.tie_embeddings:
            self.output.weight = self.tok_embeddings.weight

    def forward(
        self,
        tokens_BT: torch.Tensor,
        *,
        positions_BT: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        cache_pos: int | None = None,
        return_hidden: bool = False,
        output_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits (B, T, V) in float32, or the final normed hidden states (B, T, D) if `return_hidden`.

        positions_BT: RoPE positions; default 0..T-1 after `cache_pos`.
        mask: bool, broadcastable to (B, 1, T, S), True where a query may attend to a key; default causal.
        cache_pos: with caches set up (`setup_caches`), the cache slot of the first token.
        output_mask: bool (B, T); logits only where it is True, as (N, V) in row-major order. Post-training batches
            target a fraction of their tokens, and the projection to a large vocabulary at every position can
            cost more than the transformer.

        A pipeline stage (herd/parallel/pipeline.py) is this model with some parts set to None: without
        `tok_embeddings` the input is the previous stage's hidden states (B, T, D), and without `output` the
        hidden states after the last layer are returned, not normed.
        """
        B, T = tokens_BT.shape[:2]
        start = cache_pos or 0
        device = tokens_BT.device
        if positions_BT is None:
            positions_BT = torch.arange(start, start + T, device=device).expand(B, T)
        if mask is None and start > 0 and T > 1:
            mask = causal_mask(T, start + T, start, device=device)
        if self._rope_freqs.device != device:
            self._rope_freqs = self._rope_freqs.to(device)
        angles_BTP = positions_BT[..., None].float() * self._rope_freqs
        cos_BTP, sin_BTP = angles_BTP.cos(), angles_BTP.sin()

        h_BTD = self.tok_embeddings(tokens_BT) if self.tok_embeddings is not None else tokens_BT
        for layer in self.layers.values():
            h_BTD = layer(h_BTD, cos_BTP, sin_BTP, mask, cache_pos)
        if self.output is None:
            return h_BTD
        h_BTD = self.norm(h_BTD)
        if return_hidden:
            return h_BTD
        if output_mask is not None:
            return self.output(h_BTD[output_mask]).float()  # (N, V)
        return self.output(h_BTD).float()

    # -- KV cache -------------------------------------------------------------------------------

    def _blocks(self) -> Iterator[TransformerBlock]:
        # ModuleDict values are typed nn.Module. A block wrapped for activation checkpointing or by torch.compile
        # forwards attribute access to the block, so every value is used as a TransformerBlock.
        return (cast(TransformerBlock, layer) for layer in self.layers.values())

    def setup_caches(self, max_batch_size: int, max_seq_len: int) -> None:
        """Allocate a static KV cache per layer, in the dtype and on the device of the weights."""
        if max_seq_len > self.args.max_seq_len:
            raise ValueError(f"cache length {max_seq_len} exceeds the model's max_seq_len {self.args.max_seq_len}")
        weight = self.tok_embeddings.weight
        for layer in self._blocks():
            attn = layer.attention
            attn.kv_cache = KVCache(
                max_batch_size, attn.n_kv_heads, max_seq_len, attn.head_dim, dtype=weight.dtype, device=weight.device
            )

    def clear_caches(self) -> None:
        for layer in self._blocks():
            layer.attention.kv_cache = None

    # -- initialization -------------------------------------------------------------------------

    @torch.no_grad()
    def init_weights(self, std: float = 0.02) -> None:
        """GPT-2 style init: N(0, std) everywhere, residual-output projections scaled by 1/sqrt(2 * n_layers)."""
        nn.init.normal_(self.tok_embeddings.weight, std=std)
        residual_std = std / math.sqrt(2 * self.args.n_layers)
        for layer in self._blocks():
            for lin in (layer.attention.wq, layer.attention.wk, layer.attention.wv, layer.feed_forward.w1):
                nn.init.trunc_normal_(lin.weight, std=std, a=-3 * std, b=3 * std)
            nn.init.trunc_normal_(layer.feed_forward.w3.weight, std=std, a=-3 * std, b=3 * std)
            for lin in (layer.attention.wo, layer.feed_forward.w2):
                nn.init.trunc_normal_(lin.weight, std=residual_std, a=-3 * residual_std, b=3 * residual_std)
            layer.attention_norm.weight.fill_(1.0)
            layer.ffn_norm.weight.fill_(1.0)
        self.norm.weight.fill_(1.0)
        if not self.args.tie_embeddings:
            nn.init.trunc_normal_(self.output.weight, std=std, a=-3 * std, b=3 * std)


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype) -> Iterator[None]:
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def build_model(
    args: ModelArgs,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    init: bool = True,
) -> Transformer:
    """Build on the meta device, then allocate on `device` (no double allocation).

    With device="meta" nothing is allocated (size arithmetic for huge presets). With init=False the
    weights are left uninitialized, for callers that load a state dict next.
    """
    with torch.device("meta"), _default_dtype(dtype):
        model = Transformer(args)
    if torch.device(device).type == "meta":
        return model
    model.to_empty(device=device)
    model.tie_weights()
    if init:
        model.init_weights()
    return model
