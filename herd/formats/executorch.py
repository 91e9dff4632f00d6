"""ExecuTorch `.pte` export, for on-device inference with ExecuTorch's runtime (XNNPACK kernels, float32).

    export_pte("runs/tiny/pretrain/model", "model.pte", max_seq_len=512)

The program has one method, with the calling convention of ExecuTorch's own Llama export (its runners are untried):

    forward(tokens (1, T) int64, input_pos (1,) int64) -> logits (1, T, V) float32

T is dynamic, from 1 to max_seq_len - 1: one call prefills a prompt at input_pos 0, later calls decode one token each
at the next position. The KV cache is the program's own mutable buffers, so it persists between calls to a loaded
method. Constant methods (get_max_seq_len, get_vocab_size, use_kv_cache...) describe the program to a runner.

Needs the executorch extra: pip install 'herd[executorch]'.

Shape legend: B=batch (1), T=new tokens, S=cache slots (max_seq_len), D=dim, K=kv heads, H=head_dim, P=H/2, V=vocab.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from herd.errors import CheckpointError
from herd.fileio import atomic_file
from herd.formats import load_model, read_checkpoint
from herd.model import Transformer
from herd.model.llama import apply_rope


class CachedLlama(nn.Module):
    """A herd Transformer with a static KV cache indexed by a position tensor.

    herd's own KVCache takes the position as a Python int, which torch.export would freeze into the graph; here the
    position is an input, the new keys and values are written with index_copy_, and every query attends over all S
    cache slots under a mask that hides the slots after its own position."""

    rope_freqs: torch.Tensor

    def __init__(self, model: Transformer, max_seq_len: int) -> None:
        super().__init__()
        args = model.args
        assert args.n_kv_heads is not None and args.head_dim is not None  # derived in ModelArgs.__post_init__
        self.model, self.max_seq_len = model, max_seq_len
        for i in range(args.n_layers):
            shape = (1, args.n_kv_heads, max_seq_len, args.head_dim)
            self.register_buffer(f"k_cache_{i}", torch.zeros(shape), persistent=False)
            self.register_buffer(f"v_cache_{i}", torch.zeros(shape), persistent=False)
        self.register_buffer("rope_freqs", model._rope_freqs.clone(), persistent=False)

    def forward(self, tokens_BT: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
        m = self.model
        B, T = tokens_BT.shape
        positions_T = input_pos + torch.arange(T)
        angles_BTP = positions_T[None, :, None].float() * self.rope_freqs
        cos_BTP, sin_BTP = angles_BTP.cos(), angles_BTP.sin()
        slots_S = torch.arange(self.max_seq_len)
        mask_TS = slots_S[None, :] <= positions_T[:, None]
        # ExecuTorch gives mutable buffers no initial value: slots not written yet may hold NaN bit patterns, which
        # a zero attention weight would still spread (0 * NaN), so they are read as zeros.
        written_11S1 = (slots_S < input_pos + T)[None, None, :, None]
        h_BTD = m.tok_embeddings(tokens_BT)
        for i, layer in enumerate(m._blocks()):
            a = layer.attention
            x_BTD = layer.attention_norm(h_BTD)
            q_BTNH = apply_rope(a.wq(x_BTD).view(B, T, -1, a.head_dim), cos_BTP, sin_BTP)
            k_BTKH = apply_rope(a.wk(x_BTD).view(B, T, -1, a.head_dim), cos_BTP, sin_BTP)
            v_BTKH = a.wv(x_BTD).view(B, T, -1, a.head_dim)
            k_BKSH, v_BKSH = getattr(self, f"k_cache_{i}"), getattr(self, f"v_cache_{i}")
            k_BKSH.index_copy_(2, positions_T, k_BTKH.transpose(1, 2))
            v_BKSH.index_copy_(2, positions_T, v_BTKH.transpose(1, 2))
            k_BKSH, v_BKSH = torch.where(written_11S1, k_BKSH, 0.0), torch.where(written_11S1, v_BKSH, 0.0)
            out_BNTH = F.scaled_dot_product_attention(
                q_BTNH.transpose(1, 2), k_BKSH, v_BKSH, attn_mask=mask_TS, enable_gqa=True
            )
            h_BTD = h_BTD + a.wo(out_BNTH.transpose(1, 2).reshape(B, T, -1))
            h_BTD = h_BTD + layer.feed_forward(layer.ffn_norm(h_BTD))
        return m.output(m.norm(h_BTD)).float()


def export_pte(model_dir: str | Path, out_path: str | Path, *, max_seq_len: int = 2048) -> Path:
    """Write the checkpoint at `model_dir` (HF or Meta directory, or .gguf) as an ExecuTorch program at `out_path`.

    `max_seq_len` sizes the KV cache (prompt plus generated tokens), capped at the model's own."""
    try:
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
        from executorch.exir import to_edge_transform_and_lower
    except ImportError:
        raise CheckpointError(
            "ExecuTorch export needs the executorch package: pip install 'herd[executorch]'"
        ) from None
    # Inference only: parameters that require grad make ExecuTorch's passes refuse the in-place cache writes.
    model = load_model(read_checkpoint(model_dir, dtype=torch.float32)).eval().requires_grad_(False)
    args = model.args
    max_seq_len = min(max_seq_len, args.max_seq_len)
    if max_seq_len < 2:
        raise CheckpointError(f"max_seq_len={max_seq_len}: the KV cache needs at least 2 slots")
    cached = CachedLlama(model, max_seq_len)
    # ExecuTorch's Llama export bounds T at max_seq_len - 1 too (an export limitation at the bound itself).
    example = (torch.zeros(1, 2, dtype=torch.long), torch.zeros(1, dtype=torch.long))
    t_dim = torch.export.Dim("T", min=1, max=max_seq_len - 1)
    metadata = {
        "get_max_seq_len": max_seq_len, "get_max_context_len": max_seq_len, "get_n_layers": args.n_layers,
        "get_vocab_size": args.vocab_size, "use_kv_cache": True, "use_sdpa_with_kv_cache": False,
        "enable_dynamic_shape": True,
    }  # fmt: skip
    with torch.no_grad(), warnings.catch_warnings():
        # The warning that mutable buffers start undefined: CachedLlama reads unwritten slots as zeros.
        warnings.filterwarnings("ignore", message="Mutation on a buffer")
        # torch 2.13 deprecates LeafSpec, which ExecuTorch 1.5.1's passes still use: one line per pickled tree spec.
        warnings.filterwarnings("ignore", category=FutureWarning, message=".*LeafSpec")
        exported = torch.export.export(cached, example, dynamic_shapes=({1: t_dim}, None), strict=False)
        edge = to_edge_transform_and_lower(exported, partitioner=[XnnpackPartitioner()], constant_methods=metadata)
        program = edge.to_executorch()
    out_path = Path(out_path)
    with atomic_file(out_path, "wb") as f:
        f.write(program.buffer)
    return out_path
