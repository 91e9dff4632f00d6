"""The Llama 3 forward pass laid out for generation.

Same mathematics and call interface as `herd.model.Transformer` (the Engine runs either), with the
choices that make decoding fast where the training model must stay general:

- q, k, v are one matrix and so are the gate and up projections: two weight reads per block
  instead of five, and fewer kernel launches per token;
- weights are float32, bfloat16 or weight-only int8/int4 (`quantize.py`), multiplied by herd's
  streaming kernels at small batch; activations, norms, RoPE and the KV cache stay float32;
- a decode step (up to 16 new tokens per sequence, with a KV cache) runs each transformer block as one
  C++ call (`decode_block`: norms, projections, RoPE, cache write, attention, SwiGLU): at batch 1 the
  dispatch cost of a dozen torch ops per block is comparable to the block's arithmetic;
- the static KV cache is preallocated and written in place; prefill can ask for the logits of the
  last position only (`output_mask`), which skips the vocabulary projection for the rest.

It runs on the CPU (the kernels are CPU code); on a GPU the Engine runs herd's Transformer.
"""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from herd.formats.packed import PackedWeight
from herd.inference import kernels
from herd.inference.quantize import InferenceLinear, TiledWeight, check_quant, concat_rows, prepare_weight
from herd.model import ModelArgs, Transformer, causal_mask
from herd.model.llama import rope_frequencies

Weights = dict[str, "torch.Tensor | PackedWeight"]


class _Block(nn.Module):
    def __init__(self, args: ModelArgs, sd: Weights, prefix: str, dtype: torch.dtype, quant: str) -> None:
        super().__init__()
        assert args.n_kv_heads is not None and args.head_dim is not None
        self.n_heads, self.n_kv_heads, self.head_dim = args.n_heads, args.n_kv_heads, args.head_dim
        self.eps = args.norm_eps

        def weight(name: str) -> torch.Tensor | PackedWeight:
            return prepare_weight(prefix + name, sd.pop(prefix + name), dtype, quant)

        qkv = [weight(f"attention.{w}.weight") for w in ("wq", "wk", "wv")]
        self.wqkv = InferenceLinear(concat_rows(qkv))
        self.wo = InferenceLinear(weight("attention.wo.weight"))
        self.w13 = InferenceLinear(concat_rows([weight("feed_forward.w1.weight"), weight("feed_forward.w3.weight")]))
        self.w2 = InferenceLinear(weight("feed_forward.w2.weight"))
        self.attention_norm = _float(sd.pop(prefix + "attention_norm.weight"))
        self.ffn_norm = _float(sd.pop(prefix + "ffn_norm.weight"))
        self.k_cache: torch.Tensor | None = None
        self.v_cache: torch.Tensor | None = None
        self._weights: list[list[torch.Tensor]] | None = None

    def forward(
        self,
        h: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor | None,
        cache_pos: int | torch.Tensor | None,
        cache_row: int | None = None,
    ) -> torch.Tensor:
        B, T, N, K = *h.shape[:2], self.n_heads, self.n_kv_heads
        k_cache, v_cache = self.k_cache, self.v_cache
        if k_cache is not None and v_cache is not None and cache_row is not None:  # rows of a larger batch
            k_cache, v_cache = k_cache[cache_row : cache_row + B], v_cache[cache_row : cache_row + B]
        row_pos = cache_pos if isinstance(cache_pos, torch.Tensor) else None
        if T <= _SMALL_T and k_cache is not None and cache_pos is not None and kernels.available():
            if self._weights is None:
                self._weights = [m.tensors() for m in (self.wqkv, self.wo, self.w13, self.w2)]
            pos = 0 if row_pos is not None else cast(int, cache_pos)
            if mask is not None:
                mask = mask.expand(B, 1, T, pos + T)
            return torch.ops.herd.decode_block(
                h, self.attention_norm, self.ffn_norm, self.eps, *self._weights,
                cos, sin, k_cache, v_cache, pos, mask, N, K, row_pos,
            )  # fmt: skip
        qkv = self.wqkv(kernels.rms_norm(h, self.attention_norm, self.eps))
        kernels.rope_(qkv, cos, sin, N + K)
        if row_pos is None:
            out = self._attention(qkv, mask, cast("int | None", cache_pos), k_cache, v_cache)
        else:  # rows at their own positions: one row at a time (the kernels do this in one call)
            assert k_cache is not None and v_cache is not None  # DecodeModel.forward checks row positions need caches
            out = torch.cat([
                self._attention(qkv[b : b + 1], None, int(row_pos[b]), k_cache[b : b + 1], v_cache[b : b + 1])
                for b in range(B)
            ])  # fmt: skip
        h = h + self.wo(out)
        return h + self.w2(kernels.silu_mul(self.w13(kernels.rms_norm(h, self.ffn_norm, self.eps))))

    def _attention(
        self,
        qkv: torch.Tensor,
        mask: torch.Tensor | None,
        cache_pos: int | None,
        k_cache: torch.Tensor | None,
        v_cache: torch.Tensor | None,
    ) -> torch.Tensor:
        """Prefill, or any step where the kernels did not build: torch's SDPA; returns (B, T, N H)."""
        B, T, _ = qkv.shape
        N, K, H = self.n_heads, self.n_kv_heads, self.head_dim
        q = qkv[..., : N * H].view(B, T, N, H).transpose(1, 2)
        k = qkv[..., N * H : (N + K) * H].view(B, T, K, H).transpose(1, 2)
        v = qkv[..., (N + K) * H :].view(B, T, K, H).transpose(1, 2)
        if k_cache is not None and v_cache is not None and cache_pos is not None:
            end = cache_pos + T
            if k_cache.shape[0] < B or k_cache.shape[2] < end:
                held = f"{k_cache.shape[0]} x {k_cache.shape[2]}"
                raise ValueError(f"KV cache holds batch {held} tokens; got {B} x {end}")
            k_cache[:B, :, cache_pos:end] = k
            v_cache[:B, :, cache_pos:end] = v
            k, v = k_cache[:B, :, :end], v_cache[:B, :, :end]
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=mask is None and T > 1, enable_gqa=N != K
        )
        return out.transpose(1, 2).reshape(B, T, N * H)


# Up to this many queries (a decode step, a speculative verification) a block runs in herd's decode_block kernel:
# at T=1 torch's CPU flash-attention kernel costs far more than the arithmetic, and the op-by-op version is a
# dozen dispatches.
_SMALL_T = 16


def _float(t: torch.Tensor | PackedWeight) -> torch.Tensor:
    return t.dequantize(torch.float32) if isinstance(t, PackedWeight) else t.float().contiguous()


class DecodeModel(nn.Module):
    """A Llama model for generation only (no autograd, no parallelism). Build from a state dict with
    herd's names (tensors or PackedWeights; the dict is emptied as layers take their weights, so a
    loader's float copies can be freed one layer at a time) or `from_transformer`."""

    def __init__(
        self, args: ModelArgs, sd: Weights, *, dtype: torch.dtype = torch.float32, quant: str = "none"
    ) -> None:
        super().__init__()
        check_quant(quant, dtype)
        self.args, self.dtype, self.quant = args, dtype, quant
        self.layers = nn.ModuleList(_Block(args, sd, f"layers.{i}.", dtype, quant) for i in range(args.n_layers))
        tied = args.tie_embeddings or sd.get("output.weight") is sd["tok_embeddings.weight"]
        self.norm = _float(sd.pop("norm.weight"))
        # At int4 the vocabulary matrices are kept at int8, as llama.cpp's Q4 presets keep them at 6-8 bits:
        # 4-bit embeddings and output projection cost far more accuracy than 4-bit layers do.
        vocab_quant = "int8" if quant == "int4" else quant
        embedding = prepare_weight("tok_embeddings.weight", sd.pop("tok_embeddings.weight"), dtype, vocab_quant)
        self.embedding: torch.Tensor | PackedWeight | TiledWeight = embedding
        if tied:
            sd.pop("output.weight", None)
            self.output = InferenceLinear(embedding)
            # One copy serves both lookups and logits: the output's, in the layout its kernel runs.
            self.embedding = self.output.packed or embedding
        else:
            self.output = InferenceLinear(prepare_weight("output.weight", sd.pop("output.weight"), dtype, vocab_quant))
        self._rope_freqs = rope_frequencies(args)

    @classmethod
    @torch.no_grad()
    def from_transformer(
        cls, model: Transformer, *, dtype: torch.dtype | None = None, quant: str = "none"
    ) -> DecodeModel:
        sd: Weights = {k: v.detach() for k, v in model.state_dict().items()}
        if model.args.tie_embeddings:
            sd["output.weight"] = sd["tok_embeddings.weight"]
        return cls(model.args, sd, dtype=dtype or model.tok_embeddings.weight.dtype, quant=quant)

    @property
    def device(self) -> torch.device:
        return self.norm.device

    @property
    def nbytes(self) -> int:
        """Bytes of weights (the embedding once when tied)."""
        emb = self.embedding.nbytes
        tied = self.output.packed is self.embedding or self.output.weight is self.embedding
        linears = [m for m in self.modules() if isinstance(m, InferenceLinear)]
        return emb + sum(m.nbytes for m in linears) - (self.output.nbytes if tied else 0)

    def blocks(self) -> list[_Block]:
        return [cast(_Block, b) for b in self.layers]

    def setup_caches(self, max_batch_size: int, max_seq_len: int) -> None:
        if max_seq_len > self.args.max_seq_len:
            raise ValueError(f"cache length {max_seq_len} exceeds the model's max_seq_len {self.args.max_seq_len}")
        for block in self.blocks():
            shape = (max_batch_size, block.n_kv_heads, max_seq_len, block.head_dim)
            block.k_cache = torch.zeros(shape, device=self.device)
            block.v_cache = torch.zeros(shape, device=self.device)

    def clear_caches(self) -> None:
        for block in self.blocks():
            block.k_cache = block.v_cache = None

    @torch.inference_mode()
    def forward(
        self,
        tokens_BT: torch.Tensor,
        *,
        positions_BT: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        cache_pos: int | torch.Tensor | None = None,
        output_mask: torch.Tensor | None = None,
        cache_row: int | None = None,
    ) -> torch.Tensor:
        """float32 logits (B, T, V), or (N, V) for the positions where `output_mask` is True
        (arguments as in `Transformer.forward`), with two additions for a server whose requests start at
        different times: `cache_pos` may be an int64 tensor (B,), each row's own first cache slot (and
        RoPE position; causal, no mask), and `cache_row` makes the batch use cache rows
        cache_row..cache_row+B instead of 0..B (one request's prompt fills its row while others wait)."""
        B, T = tokens_BT.shape
        if isinstance(cache_pos, torch.Tensor):
            if mask is not None or self.layers[0].k_cache is None or cache_pos.shape != (B,):
                raise ValueError("per-row cache positions need set-up caches, shape (B,) and no mask")
            if positions_BT is None:
                positions_BT = cache_pos[:, None] + torch.arange(T, device=tokens_BT.device)
        else:
            start = cache_pos or 0
            if positions_BT is None:
                positions_BT = torch.arange(start, start + T, device=tokens_BT.device).expand(B, T)
            if mask is None and start > 0 and T > 1:
                mask = causal_mask(T, start + T, start, device=tokens_BT.device)
        angles = positions_BT[..., None].float() * self._rope_freqs
        cos, sin = angles.cos(), angles.sin()  # (B, T, H/2)

        if isinstance(self.embedding, PackedWeight | TiledWeight):
            h = self.embedding.rows(tokens_BT)
        else:
            h = F.embedding(tokens_BT, self.embedding).float()
        for block in self.blocks():
            h = block(h, cos, sin, mask, cache_pos, cache_row)
        if output_mask is not None:
            h = h[output_mask]
        return self.output(kernels.rms_norm(h, self.norm, self.args.norm_eps))


GenerationModel = Transformer | DecodeModel
"""What the Engine runs: the training model or the decode model (same call interface)."""


def model_device(model: GenerationModel) -> torch.device:
    """Where a Transformer or a DecodeModel keeps its weights."""
    return model.device if isinstance(model, DecodeModel) else model.tok_embeddings.weight.device
