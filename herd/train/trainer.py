"""The one training loop: pretraining, SFT, the reward model, DPO and the PPO update all run here.

`Trainer.__init__` builds, in order: process group and mesh (under torchrun) -> the objective (what is trained:
herd/train/objective.py; language modeling on token shards by default) -> schedule (ramp, learning rate,
anneal) -> model (a preset and shape, or the starting weights; LoRA from [lora]; the objective's head) ->
parallelism and transforms (pipeline stage, tensor parallel, activation checkpointing, compile, FSDP2; see
herd/parallel) -> AdamW -> checkpoints (resume from the latest) -> metrics.
`train()` runs `train_step()` until the last step; each step draws one global batch, keeps this rank's share,
accumulates gradients over micro-batches (`forward_backward`, or the pipeline schedule), checks them
(herd/train/recovery.py), and either applies the update, skips it or rolls back to the last checkpoint.

The loss is the objective's sum over units (target tokens, pairs...) divided by the global batch's count of
units (not a mean of micro-batch means), so gradient accumulation and data-parallel sharding give the same
update as one big batch.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.tensor import DTensor

from herd.config import JobConfig, check, check_layout, save
from herd.data.loader import MixLoader
from herd.errors import TrainError
from herd.model import PRESETS, ModelArgs, Transformer, build_model, flops_per_token, get_preset
from herd.model.lora import apply_lora
from herd.parallel import ParallelDims, apply_activation_checkpointing, apply_compile, apply_fsdp, apply_tp
from herd.parallel.distributed import Watchdog, all_reduce_sum, build_mesh, init_distributed, world
from herd.parallel.pipeline import build_schedule, prune_to_stage
from herd.train.checkpoint import CheckpointManager, tokenizer_files
from herd.train.drills import Drills
from herd.train.metrics import MetricsLogger, NullLogger, WandbSink, measure_peak_flops, native_bf16, peak_memory_gb
from herd.train.objective import LanguageModeling, Objective, summed_cross_entropy
from herd.train.recovery import Recovery, replicas_that_differ
from herd.train.schedule import Schedule

STEP_HOOKS: list[Callable[[Trainer, dict[str, Any]], None]] = []
"""Called on rank 0 after every optimizer step with the step's metrics record: how a driver such as `herd run`
follows every training stage, the ones a command starts for it (the round's SFT, reward model, DPO) included."""


class Trainer:
    cfg: JobConfig
    command: str
    objective: Objective
    schedule: Schedule
    model_args: ModelArgs
    transformer: Transformer
    model: nn.Module
    """What trains: the transformer, or the objective's module around it (with a reward or value head)."""
    optimizer: torch.optim.Optimizer
    lr_scheduler: torch.optim.lr_scheduler.LambdaLR
    checkpointer: CheckpointManager
    recovery: Recovery
    step: int

    def __init__(
        self, cfg: JobConfig, objective: Objective | None = None, *, command: str = "train",
        initial: Transformer | None = None,
    ) -> None:  # fmt: skip
        """`objective` defaults to language modeling on cfg.data.shards. `initial` is the model whose weights
        training starts from (post-training stages pass the model they loaded; `herd train` loads
        model.init_from itself); without one, a new model is built from model.preset and seeded."""
        self.cfg, self.command = cfg, command
        self.device = resolve_device(cfg.training.device)
        self.rank, self.world_size = world()
        p = cfg.parallel
        self.dims = ParallelDims(dp_replicate=p.dp_replicate, dp_shard=p.dp_shard, tp=p.tp, pp=p.pp,
                                 world_size=self.world_size)  # fmt: skip
        check(cfg, command, inputs=objective is None)  # again: a config composed in Python skipped `load`
        check_layout(cfg, command, world_size=self.dims.dp, tp=self.dims.tp, pp=self.dims.pp)
        init_distributed(self.device)
        self.mesh = build_mesh(self.dims, self.device) if self.world_size > 1 else None
        # Every rank draws the same global batch and keeps the rows of its data-parallel coordinate.
        self.dp_rank = self.mesh["dp"].get_local_rank() if self.mesh is not None else 0
        self.pp_stage = self.mesh["pp"].get_local_rank() if self.mesh is not None and self.dims.pp > 1 else 0
        if cfg.job.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        self.run_dir = Path(cfg.job.dump_folder)
        if initial is None and not cfg.model.init_from and cfg.model.preset not in PRESETS:
            raise TrainError(f"model.preset={cfg.model.preset!r}: unknown; presets are {', '.join(PRESETS)}")
        if objective is None:
            objective = _pretraining(cfg)  # bad shards fail here, before anything is written
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if (self.dims.tp > 1 or self.dims.pp > 1) and not isinstance(objective, LanguageModeling):
            raise TrainError(f"herd {command} shards over data-parallel ranks only; set parallel.tp and parallel.pp "
                             "to 1")  # fmt: skip
        self.objective = objective
        # Steps counted from epochs over the examples depend on the data: they may not leave room for the warmup.
        self.schedule = Schedule(cfg, steps=objective.total_steps(cfg) if cfg.training.epochs else None)
        self.steps = self.schedule.steps
        seq_len = objective.longest(cfg)

        # Every rank builds the whole model from the seed (or the initial weights), then keeps its shards: the
        # weights are the same under any layout, so a parallel run starts where one process would.
        if initial is None and cfg.model.init_from:
            from herd.formats import load_pretrained

            initial = load_pretrained(cfg.model.init_from).model
        self.model_args = _model_args(cfg, initial, vocab_size=objective.vocab_size, seq_len=seq_len)
        transformer = build_model(self.model_args, device=self.device, init=False)
        torch.manual_seed(cfg.job.seed)
        if initial is None:
            transformer.init_weights(std=cfg.model.init_std)
        else:
            transformer.load_state_dict({k: v.float() for k, v in initial.state_dict().items()}, strict=True)
            transformer.tie_weights()
        if cfg.lora.rank:
            if self.world_size > 1:
                raise TrainError("lora.rank > 0 trains in one process; launch without torchrun or set lora.rank=0")
            lo = cfg.lora
            apply_lora(transformer, rank=lo.rank, alpha=lo.alpha, dropout=lo.dropout, targets=lo.targets,
                       last_layers=lo.last_layers)  # fmt: skip
        self.transformer = transformer
        self.model = objective.wrap(transformer).to(self.device)
        objective.sparse_logits = self.dims.tp == 1 and self.dims.pp == 1
        objective.prepare(self.model)
        self._parallelize()

        o = cfg.optim
        self.optimizer = torch.optim.AdamW(
            param_groups(self.model, o.weight_decay, decay_norms=o.decay_norms, decay_embeddings=o.decay_embeddings),
            lr=o.lr, betas=(o.betas[0], o.betas[1]), eps=o.eps, fused=o.fused or None,
        )  # fmt: skip
        # LambdaLR's epoch e is the number of updates so far; the next update is step e + 1.
        self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda e: self.schedule.lr(min(e + 1, self.steps)) / o.lr
        )
        self.checkpointer = CheckpointManager(
            self.run_dir / "checkpoints", keep_last=cfg.checkpoint.keep_last, rank=self.rank,
            distributed=self.world_size > 1, async_save=cfg.checkpoint.async_save,
        )  # fmt: skip
        self.recovery = Recovery(cfg.recovery)
        self.drills = Drills(cfg.faults, self.rank)
        self.step, self.tokens_seen = 0, 0
        self.elapsed = 0.0  # seconds of steps that count, over every launch (restored from checkpoints)
        self.started_at = time.time()  # the first launch's start, for the effective-training-time figure
        resumed_from = self.checkpointer.latest()
        if resumed_from is not None and not cfg.checkpoint.resume:
            raise TrainError(f"{self.run_dir} holds checkpoints of an earlier run and checkpoint.resume is false; "
                             "choose a new job.dump_folder")  # fmt: skip
        if resumed_from is not None:
            self._restore(resumed_from)

        if self.rank == 0:
            save(cfg, command, self.run_dir / "config.toml")
        bf16 = cfg.model.dtype == "bfloat16"
        self.peak_flops = cfg.metrics.peak_tflops * 1e12 or measure_peak_flops(
            torch.bfloat16 if bf16 else torch.float32, self.device
        )
        self.metrics: MetricsLogger | NullLogger = (
            MetricsLogger(self.run_dir, total_steps=self.steps, start_step=self.step,
                          tensorboard=cfg.metrics.tensorboard, log_interval=cfg.metrics.log_interval,
                          progress=cfg.metrics.progress, name=command,
                          wandb=WandbSink.open(self.run_dir, cfg, command))
            if self.rank == 0 else NullLogger()
        )  # fmt: skip
        self.watchdog = Watchdog(p.watchdog_timeout, self.run_dir, self.rank) if p.watchdog_timeout else None
        if resumed_from is not None:
            self._event("resume", f"from {resumed_from}")
        if bf16 and not native_bf16(self.device):
            self._event("precision", "model.dtype=bfloat16 on a CPU without native bf16 matmul (AVX512-BF16 or AMX): "
                        "torch falls back to a kernel hundreds of times slower than float32; set "
                        "model.dtype='float32' here")  # fmt: skip
        if self.schedule.warmup_cut and self.step == 0:
            self._event("warmup", f"lr_schedule.warmup_steps={cfg.lr_schedule.warmup_steps} is not shorter than "
                        f"the {self.steps} steps of training.epochs={cfg.training.epochs}: warmup cut to "
                        f"{self.schedule.warmup}")  # fmt: skip

    def _parallelize(self) -> None:
        cfg, dims, model, mesh = self.cfg, self.dims, self.transformer, self.mesh
        bf16 = cfg.model.dtype == "bfloat16"
        # Below, every branch that uses the mesh has a parallel size > 1, hence world_size > 1 and a mesh.
        _check_layout(self.model_args, dims)
        if dims.pp > 1:
            prune_to_stage(model, self.pp_stage, dims.pp)
        if dims.tp > 1:
            assert mesh is not None
            apply_tp(model, mesh["tp"])
        if cfg.training.activation_checkpoint:
            apply_activation_checkpointing(model)
        if cfg.training.compile:
            apply_compile(model)
        self.fsdp = dims.dp > 1
        if self.fsdp:
            assert mesh is not None
            dp_mesh = mesh[("dp_replicate", "dp_shard")] if dims.dp_replicate > 1 else mesh["dp_shard"]
            apply_fsdp(model, dp_mesh, param_dtype=torch.bfloat16 if bf16 else None,
                       reshard_after_forward=cfg.parallel.reshard_after_forward,
                       wrapper=self.model if self.model is not model else None)  # fmt: skip
        # With FSDP the mixed-precision policy casts parameters for the forward; otherwise autocast does.
        self.autocast = bf16 and not self.fsdp
        self.pipeline = None
        if dims.pp > 1:
            assert mesh is not None
            self.pipeline = build_schedule(
                model, mesh["pp"], schedule=cfg.parallel.pp_schedule,
                microbatches=cfg.parallel.pp_microbatches or dims.pp, loss_fn=self._pipeline_loss,
                device=self.device, autocast=self.autocast,
            )  # fmt: skip
            self._pp_targets, self._pp_scale = 1, 1.0

    # -- the loop --------------------------------------------------------------------------------

    def train(self) -> dict[str, Any]:
        start, start_tokens = time.perf_counter(), self.tokens_seen
        last_saved = self.step if self.checkpointer.latest() is not None else -1
        try:
            while self.step < self.steps:
                record = self.train_step()
                if record is None:  # rolled back to a checkpoint
                    last_saved = self.step
                    continue
                if self.rank == 0:
                    for hook in STEP_HOOKS:
                        hook(self, record)
                interval = self.cfg.checkpoint.interval
                if interval and self.step % interval == 0:
                    self.save()
                    last_saved = self.step
            if last_saved != self.step:
                self.save()
            self.checkpointer.wait()
        finally:
            self.close()
        if self.rank == 0 and self.checkpointer.timings:
            with open(self.run_dir / "checkpoints.jsonl", "a", encoding="utf-8") as f:
                f.writelines(json.dumps(t) + "\n" for t in self.checkpointer.timings)
        wall = time.perf_counter() - start
        recent = []
        if self.rank == 0:
            lines = (self.run_dir / "metrics.jsonl").read_text().splitlines()
            recent = [r["loss"] for r in map(json.loads, lines) if not r.get("skipped")][-10:]
        return {
            "run_dir": str(self.run_dir),
            "steps": self.step,
            "tokens": self.tokens_seen,
            "final_loss": recent[-1] if recent else float("nan"),
            "final_loss_mean10": sum(recent) / len(recent) if recent else float("nan"),
            "seconds": round(wall, 1),
            "tokens_per_s": round((self.tokens_seen - start_tokens) / wall) if wall else 0,
            "skipped_steps": self.recovery.skipped_steps,
            "rollbacks": self.recovery.rollbacks,
            # Steps that count over wall time since the first launch: restarts, rollbacks, checkpoint saves and
            # start-up are what it loses (Llama 3 405B kept over 90%).
            "effective_training_time": round(self.elapsed / max(time.time() - self.started_at, 1e-9), 4),
            "layout": self.dims.describe(),
            "checkpoint": str(self.checkpointer.latest()),
        }

    def train_step(self) -> dict[str, Any] | None:
        """One optimizer step; the metrics record, or None when it rolled back instead."""
        plan = self.schedule.at(self.step + 1)
        t0 = time.perf_counter()
        if self.watchdog is not None:
            self.watchdog.heartbeat(self.step)
        self.drills.at_step_start(plan.step)
        self.checkpointer.poll()
        for name, reason in self.objective.begin_step(plan):
            self._event(name, reason)
        batch = self._next_batch(plan)
        count, scale = batch.count, self.drills.loss_scale(batch.index)
        local = batch.shard(self.dp_rank, self.dims.dp)
        sums: dict[str, torch.Tensor] = {}
        if self.pipeline is not None:
            loss_sum = self.pipeline_step(local, count, scale)
        else:
            loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
            for micro in self.objective.split(local, plan):
                part, metrics = self.forward_backward(micro, count, scale)
                loss_sum += part
                for k, v in metrics.items():
                    sums[k] = sums.get(k, 0.0) + v.detach().double()
        self.drills.poison_gradients(self.model, batch.index)

        dp_mesh = self.mesh["dp"] if self.mesh is not None else None
        reduced = all_reduce_sum(torch.stack([loss_sum, *sums.values()]), dp_mesh) / max(count, 1)
        loss, extra = reduced[0].item(), dict(zip(sums, reduced[1:].tolist(), strict=True))
        grad_norm = self._clip_gradients()
        verdict, reason = self.recovery.check(loss, grad_norm, batch.index,
                                              can_roll_back=lambda: self.checkpointer.latest() is not None)  # fmt: skip
        if verdict is None:
            self.optimizer.step()
        elif verdict != "rollback":
            self._event("skip", reason)
        self.optimizer.zero_grad(set_to_none=True)
        if verdict == "rollback":
            self._rollback()
            return None
        self.lr_scheduler.step()
        self.step += 1
        self.tokens_seen += batch.num_tokens
        if self._sdc_check():
            return None
        dt = time.perf_counter() - t0
        self.elapsed += dt
        flops = flops_per_token(self.model_args, batch.seq_len)["train"] * batch.num_tokens
        record = {
            "step": self.step,
            "loss": loss,
            **{k: round(v, 6) for k, v in extra.items()},
            **self.objective.record(),
            "lr": plan.lr,
            "grad_norm": grad_norm,
            "tokens": self.tokens_seen,
            "tokens_per_s": batch.num_tokens / dt,
            "mfu": flops / dt / self.world_size / self.peak_flops,
            "mem_gb": round(peak_memory_gb(self.device), 3),
            "seq_len": batch.seq_len,
            "batch_tokens": batch.num_tokens,
            "phase": plan.phase,
            "step_s": dt,
        }
        if verdict is not None:
            record["skipped"] = verdict
        self.metrics.log(record)
        return record

    def forward_backward(self, micro: Any, count: int, scale: float = 1.0) -> tuple[torch.Tensor, dict]:
        """Forward and backward of one micro-batch; its summed loss (detached) and metric sums.

        The gradient is of sum(loss) / count over the whole global batch; FSDP averages gradients over the
        data-parallel ranks, so each rank scales its part by their number to make that average a sum.
        """
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            loss_sum, metrics = self.objective.loss(self.model, micro)
        if scale != 1.0:  # an injected loss spike
            loss_sum = loss_sum * scale
        (loss_sum * self.dims.dp / max(count, 1)).backward()
        return loss_sum.detach().double(), metrics

    def pipeline_step(self, rows: Any, num_targets: int, scale: float) -> torch.Tensor:
        """This rank's stage over the schedule's micro-batches; the summed loss (non-zero on the last stage)."""
        first, last = self.pp_stage == 0, self.pp_stage == self.dims.pp - 1
        self._pp_targets, self._pp_scale = max(num_targets, 1), scale
        tokens, doc_ids = rows.tokens.to(self.device), rows.doc_ids.to(self.device)
        targets = rows.targets.to(self.device) if last else None
        losses: list[torch.Tensor] = []
        assert self.pipeline is not None and self.mesh is not None
        if first:
            self.pipeline.step(tokens, doc_ids, target=targets, losses=losses if last else None)
        else:
            self.pipeline.step(target=targets, losses=losses if last else None)
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        for loss in losses:  # each is sum / num_targets x dp (see _pipeline_loss): undo that for the report
            loss_sum += loss.detach().double() * self._pp_targets / self.dims.dp
        return all_reduce_sum(loss_sum, self.mesh["pp"])

    def _pipeline_loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        loss_sum = summed_cross_entropy(logits, targets)
        return loss_sum * self._pp_scale * self.dims.dp / self._pp_targets

    def _clip_gradients(self) -> float:
        """Clip to optim.grad_clip by the global norm over every rank's gradients; returns that norm."""
        params = [p for p in self.model.parameters() if p.grad is not None]
        norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None], foreach=True)
        norm = norm.full_tensor() if isinstance(norm, DTensor) else norm
        if self.dims.pp > 1:  # stages hold different parameters: add up the squares
            assert self.mesh is not None
            squared = norm.double() ** 2
            norm = all_reduce_sum(squared, self.mesh["pp"]).sqrt().to(norm.dtype)
        if self.cfg.optim.grad_clip:
            torch.nn.utils.clip_grads_with_norm_(params, self.cfg.optim.grad_clip, norm, foreach=True)
        return norm.item()

    def close(self) -> None:
        self.metrics.close()
        if self.watchdog is not None:
            self.watchdog.stop()

    def shutdown(self) -> None:
        """Leave the process group (after `train`), so torchrun sees a clean exit."""
        if dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()

    # -- recovery -------------------------------------------------------------------------------

    def _rollback(self) -> None:
        """Back to the latest checkpoint; the batches of the bad run of steps are left out from now on."""
        failed_at = self.step + 1
        try:
            reason, bad = self.recovery.start_rollback()
        except TrainError as e:
            raise TrainError(f"step {failed_at}: {e}") from None
        latest = self.checkpointer.latest()
        assert latest is not None
        self._restore(latest, rollback=True)
        self.metrics.reopen_at(self.step)
        self._event("rollback", f"{reason} at step {failed_at}; back to step {self.step}, leaving out batches {bad}")

    def _sdc_check(self) -> bool:
        """Every parallel.sdc_check_interval steps, replicas compare checksums of the shards they should hold
        identically; a mismatch names the ranks that differ and rolls every rank back. True if it rolled back."""
        interval = self.cfg.parallel.sdc_check_interval
        if self.mesh is None or self.dims.dp_replicate < 2 or not interval or self.step % interval:
            return False
        self.drills.corrupt_parameters(self.model, self.step)
        named = replicas_that_differ(self.model, self.mesh["dp_replicate"], self.world_size)
        if not named:
            return False
        self.recovery.bad_batches = []
        self.recovery.pending_reason = (f"silent data corruption: parameters of rank(s) {named} differ from their "
                                        f"replicas after step {self.step}")  # fmt: skip
        self._rollback()
        return True

    def _next_batch(self, plan):
        while True:
            batch = self.objective.next_batch(plan)
            if batch.index not in self.recovery.skip_batches:
                return batch

    def _event(self, event: str, reason: str) -> None:
        self.metrics.event({"step": self.step, "event": event, "reason": reason, "time": time.time()})

    # -- checkpoints ----------------------------------------------------------------------------

    def train_state(self) -> dict[str, Any]:
        return {
            "tokens": self.tokens_seen,
            "loader": self.objective.state_dict(),
            "lr_scheduler": self.lr_scheduler.state_dict(),
            **self.recovery.state_dict(),
            "elapsed": self.elapsed,
            "started_at": self.started_at,
            "tokenizer": self.objective.tokenizer,
        }

    def save(self) -> Path:
        return self.checkpointer.save(
            self.step, model=self.model, optimizer=self.optimizer, train_state=self.train_state(),
            args=self.model_args, assets=self.objective.tokenizer_files,
        )  # fmt: skip

    def _restore(self, path: Path, *, rollback: bool = False) -> None:
        state = self.checkpointer.load(path, model=self.model, optimizer=self.optimizer)
        self.step, self.tokens_seen = int(state["step"]), int(state["tokens"])
        self.objective.load_state_dict(state["loader"])
        self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        self.recovery.load_state_dict(state, keep_counts=rollback)
        self.elapsed = state["elapsed"]
        self.started_at = state.get("started_at", self.started_at)

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """The whole model's weights on rank 0's CPU (empty on other ranks); every rank must call it."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        if self.world_size == 1:
            return {k: v.detach() for k, v in self.model.state_dict().items()}
        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        # Full, CPU-offloaded state dicts hold plain tensors (no DTensor or nested entries).
        return cast(dict[str, torch.Tensor], get_model_state_dict(self.model, options=options))


# ---------------------------------------------------------------------------------------------
# building blocks


def _pretraining(cfg: JobConfig) -> LanguageModeling:
    seq_lens = [cfg.training.seq_len, *(r.seq_len for r in cfg.training.ramp)]
    chunk = cfg.data.chunk_tokens or max(seq_lens) + 1
    loader = MixLoader(cfg.data.shards, weights=cfg.data.weights, seed=cfg.job.seed, chunk_tokens=chunk)
    return LanguageModeling(loader, cfg, tokenizer_files=tokenizer_files(loader.tokenizer, loader.tokenizer_dir))


def _model_args(cfg: JobConfig, initial: Transformer | None, *, vocab_size: int, seq_len: int) -> ModelArgs:
    """The initial model's shape, or the preset with the config's overrides (the vocabulary from the data)."""
    if initial is not None:
        args = initial.args
        if args.vocab_size < vocab_size or args.max_seq_len < seq_len:
            raise TrainError(f"the initial model (vocab {args.vocab_size}, context {args.max_seq_len}) is too small "
                             f"for this data (vocab {vocab_size}, seq_len {seq_len})")  # fmt: skip
        return args
    changes = cfg.model.shape()
    changes.setdefault("max_seq_len", seq_len)
    if changes["max_seq_len"] < seq_len:
        raise TrainError(f"model.max_seq_len={changes['max_seq_len']} is shorter than the schedule's seq_len {seq_len}")
    return get_preset(cfg.model.preset).replace(vocab_size=vocab_size, **changes)


def param_groups(
    model: nn.Module, weight_decay: float, *, decay_norms: bool, decay_embeddings: bool
) -> list[dict[str, Any]]:
    """Weight decay on matrices; norms and embeddings only when asked (a tied output counts as the embedding).
    Frozen parameters (LoRA's base weights) are left out."""
    embedding = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    seen: set[int] = set()
    for p in model.parameters():  # parameters() yields a tied weight once
        if id(p) in seen or not p.requires_grad:
            continue
        seen.add(id(p))
        is_norm = p.ndim < 2
        skip = (is_norm and not decay_norms) or (id(p) in embedding and not decay_embeddings)
        (no_decay if skip else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _check_layout(args: ModelArgs, dims: ParallelDims) -> None:
    assert args.n_kv_heads is not None  # derived in ModelArgs.__post_init__
    if args.n_heads % dims.tp or args.n_kv_heads % dims.tp:
        raise TrainError(f"parallel.tp={dims.tp} must divide the model's n_heads={args.n_heads} and "
                         f"n_kv_heads={args.n_kv_heads}")  # fmt: skip
    if dims.pp > args.n_layers:
        raise TrainError(f"parallel.pp={dims.pp} is more than the model's {args.n_layers} layers")


def resolve_device(name: str) -> torch.device:
    """cpu or cuda; auto is cuda when torch sees one."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise TrainError("training.device=cuda but torch sees no CUDA device")
    return torch.device(name)
