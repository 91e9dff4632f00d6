"""Checkpoints herd writes in Meta's format run in Meta's own reference model (llama_models +
fairscale model parallelism) with the same logits as herd, on 1 rank and split over 2 ranks."""

import json
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from herd.formats import Checkpoint, load_model, read_checkpoint, write_checkpoint
from herd.model import RopeScaling, build_model, get_preset

pytest.importorskip("fairscale")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _meta_reference_logits(rank: int, world: int, ckpt_dir: str, tokens: torch.Tensor, port: int, out: str) -> None:
    import fairscale.nn.model_parallel.initialize as fs_init
    from llama_models.llama3.args import ModelArgs as MetaArgs
    from llama_models.llama3.model import Transformer as MetaTransformer

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    fs_init.initialize_model_parallel(world)
    torch.manual_seed(0)
    with open(os.path.join(ckpt_dir, "params.json")) as f:
        params = json.load(f)
    model = MetaTransformer(MetaArgs(max_batch_size=tokens.shape[0], **params))
    shard = torch.load(os.path.join(ckpt_dir, f"consolidated.{rank:02d}.pth"), weights_only=True)
    model.load_state_dict(shard, strict=True)
    logits = model(tokens, 0)
    if rank == 0:
        torch.save(logits, out)
    dist.destroy_process_group()


@pytest.mark.parametrize("num_shards", [1, 2])
def test_meta_reference_model_gives_herd_logits(tmp_path, num_shards) -> None:
    # Meta's reference hard-codes the 3.1 scaling (factor 8, low 1, high 4, 8192), so use exactly that.
    args = get_preset("tiny").replace(vocab_size=256, rope_scaling=RopeScaling(), max_seq_len=64)
    model = build_model(args)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(4)
    sd = {k: v.detach() for k, v in model.state_dict().items()}
    write_checkpoint(tmp_path / "meta", Checkpoint(args=args, state_dict=sd, format="meta", path=None), "meta",
                     num_shards=num_shards)  # fmt: skip
    tokens = torch.randint(0, 256, (2, 48))
    out = tmp_path / "logits.pt"
    mp.spawn(
        _meta_reference_logits,
        args=(num_shards, str(tmp_path / "meta"), tokens, _free_port(), str(out)),
        nprocs=num_shards,
    )
    reference = torch.load(out, weights_only=True)
    with torch.no_grad():
        ours = load_model(read_checkpoint(tmp_path / "meta"))(tokens)
    assert reference.abs().max() > 1.0
    assert (ours - reference).abs().max().item() <= 1e-4
