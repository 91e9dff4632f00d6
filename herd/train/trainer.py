"""Pretraining: the Llama 3 recipe as a loop that reads top to bottom.

`Trainer.__init__` builds, in order: process group and mesh (under torchrun) -> schedule (ramp, learning rate,
anneal) -> data loader (token shards, mix weights) -> model (preset + overrides, vocabulary from the shards) ->
parallelism and transforms (pipeline stage, tensor parallel, activation checkpointing, compile, FSDP2; see
herd/parallel) -> AdamW -> checkpoints (resume from the latest) -> metrics.
`train()` runs `train_step()` until the last step; each step draws one global batch, keeps this rank's rows,
accumulates gradients over micro-batches (`forward_backward`, or the pipeline schedule), checks them, and either
applies the update or skips it.

Recovery (see `_check`): a non-finite loss or gradient norm skips the update; `recovery.max_bad_steps` of them in
a row roll back to the last checkpoint and leave the offending batches out from then on. A loss above
`recovery.spike_factor` times its running mean is skipped or rolled back likewise. Every such event goes to
events.jsonl and the console with its step and reason, and the run carries on by itself.

The loss is a sum over target tokens divided by the batch's count of target tokens (not a mean of micro-batch
means), so gradient accumulation and data-parallel sharding give the same update as one big batch.
"""

from __future__ import annotations

import json
import math
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.distributed.tensor import DTensor

from herd.config import to_toml
from herd.data.loader import IGNORE_INDEX, Batch, MixLoader
from herd.data.pack import sha256_file
from herd.errors import TrainError
from herd.fileio import atomic_file
from herd.model import ModelArgs, build_model, document_mask, document_positions, flops_per_token, get_preset
from herd.parallel import ParallelDims, apply_activation_checkpointing, apply_compile, apply_fsdp, apply_tp
from herd.parallel.distributed import Watchdog, all_reduce_sum, build_mesh, init_distributed, restart_count, world
from herd.parallel.pipeline import build_schedule, prune_to_stage
from herd.train.checkpoint import CheckpointManager
from herd.train.config import ModelSection, TrainJobConfig
from herd.train.metrics import MetricsLogger, measure_peak_flops, peak_memory_gb
from herd.train.schedule import Schedule, StepPlan

# Running mean of the loss for spike detection: an exponential average over roughly the last 10 good steps.
_SPIKE_EMA = 0.9


class Trainer:
    # core config
    cfg: TrainJobConfig
    run_dir: Path
    device: torch.device
    # components
    loader: MixLoader
    schedule: Schedule
    model_args: ModelArgs
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    lr_scheduler: torch.optim.lr_scheduler.LambdaLR
    checkpointer: CheckpointManager
    metrics: MetricsLogger
    # runtime state (saved in every checkpoint)
    step: int
    skip_batches: set[int]
    loss_mean: float | None
    good_steps: int

    def __init__(
        self, cfg: TrainJobConfig, *, loader: MixLoader | None = None, initial=None,
        adapt: Callable[[torch.nn.Module], None] | None = None,
    ) -> None:  # fmt: skip
        """`loader` replaces the shard loader (post-training stages pass their dialog loaders; anything with
        MixLoader's interface works). `initial` = (ModelArgs, state dict) starts from those weights instead of a
        fresh initialization. `adapt(model)` transforms the plain model before parallelism is applied (LoRA)."""
        self.cfg = cfg
        self.device = _device(cfg.training.device)
        self.rank, self.world_size = world()
        p = cfg.parallel
        self.dims = ParallelDims(dp_replicate=p.dp_replicate, dp_shard=p.dp_shard, tp=p.tp, pp=p.pp,
                                 world_size=self.world_size)  # fmt: skip
        cfg.check(world_size=self.dims.dp, tp=self.dims.tp)
        init_distributed(self.device)
        self.mesh = build_mesh(self.dims, self.device) if self.world_size > 1 else None
        # Every rank draws the same global batch and keeps the rows of its data-parallel coordinate.
        self.dp_rank = self.mesh["dp"].get_local_rank() if self.mesh is not None else 0
        self.pp_stage = self.mesh["pp"].get_local_rank() if self.dims.pp > 1 else 0
        if cfg.job.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)

        self.schedule = Schedule(cfg)
        seq_lens = [s["seq_len"] for s in self.schedule.stages()]
        chunk = cfg.data.chunk_tokens or max(seq_lens) + 1
        self.loader = loader or MixLoader(cfg.data.shards, weights=cfg.data.weights, seed=cfg.job.seed,
                                          chunk_tokens=chunk)  # fmt: skip
        self.tokenizer_files = _tokenizer_files(self.loader.tokenizer, self.loader.tokenizer_dir)
        self.run_dir = Path(cfg.job.dump_folder)
        self.run_dir.mkdir(parents=True, exist_ok=True)

        if initial is None:
            self.model_args = model_args(cfg.model, vocab_size=self.loader.vocab_size, seq_len=max(seq_lens))
        else:
            self.model_args = initial[0]
            if self.model_args.vocab_size < self.loader.vocab_size or self.model_args.max_seq_len < max(seq_lens):
                raise TrainError(f"the initial model (vocab {self.model_args.vocab_size}, context "
                                 f"{self.model_args.max_seq_len}) is too small for this data (vocab "
                                 f"{self.loader.vocab_size}, seq_len {max(seq_lens)})")  # fmt: skip
        # Every rank initializes the whole model from the seed (or loads the initial weights), then keeps its
        # shards: the weights are the same under any layout, so a parallel run starts where one process would.
        self.model = build_model(self.model_args, device=self.device, init=False)
        torch.manual_seed(cfg.job.seed)
        if initial is None:
            self.model.init_weights(std=cfg.model.init_std)
        else:
            self.model.load_state_dict({k: v.float() for k, v in initial[1].items()}, strict=True)
            self.model.tie_weights()
        if adapt is not None:
            adapt(self.model)
        bf16 = cfg.training.dtype == "bfloat16"
        _check_layout(self.model_args, self.dims)
        if self.dims.pp > 1:
            prune_to_stage(self.model, self.pp_stage, self.dims.pp)
        if self.dims.tp > 1:
            apply_tp(self.model, self.mesh["tp"])
        if cfg.training.activation_checkpoint:
            apply_activation_checkpointing(self.model)
        if cfg.training.compile:
            apply_compile(self.model)
        self.fsdp = self.dims.dp > 1
        if self.fsdp:
            dp_mesh = self.mesh[("dp_replicate", "dp_shard")] if self.dims.dp_replicate > 1 else self.mesh["dp_shard"]
            apply_fsdp(self.model, dp_mesh, param_dtype=torch.bfloat16 if bf16 else None,
                       reshard_after_forward=p.reshard_after_forward)  # fmt: skip
        # With FSDP the mixed-precision policy casts parameters for the forward; otherwise autocast does.
        self.autocast = bf16 and not self.fsdp
        self.pipeline = None
        if self.dims.pp > 1:
            self.pipeline = build_schedule(
                self.model, self.mesh["pp"], schedule=p.pp_schedule, microbatches=p.pp_microbatches or p.pp,
                loss_fn=self._pipeline_loss, device=self.device, autocast=self.autocast,
            )  # fmt: skip
            self._pp_targets, self._pp_scale = 1, 1.0

        o = cfg.optim
        self.optimizer = torch.optim.AdamW(
            param_groups(self.model, o.weight_decay, decay_norms=o.decay_norms, decay_embeddings=o.decay_embeddings),
            lr=o.lr, betas=tuple(o.betas), eps=o.eps,
        )  # fmt: skip
        # LambdaLR's epoch e is the number of updates so far; the next update is step e + 1.
        self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda e: self.schedule.lr(min(e + 1, cfg.training.steps)) / o.lr
        )
        self.checkpointer = CheckpointManager(
            self.run_dir / "checkpoints", keep_last=cfg.checkpoint.keep_last, rank=self.rank,
            distributed=self.world_size > 1, async_save=cfg.checkpoint.async_save,
        )  # fmt: skip

        self.step, self.skip_batches, self.loss_mean, self.good_steps = 0, set(), None, 0
        self.bad_batches: list[int] = []  # the current run of bad steps
        self._pending_reason = ""
        self._corrupted = restart_count() > 0  # injected corruption (faults.corrupt_at_step) happens once
        self.rollbacks = self.skipped_steps = 0
        self.elapsed = 0.0  # seconds of steps that count, over every launch (restored from checkpoints)
        self.started_at = time.time()  # the first launch's start, for the effective-training-time figure
        resumed_from = self.checkpointer.latest()
        if resumed_from is not None and not cfg.checkpoint.resume:
            raise TrainError(f"{self.run_dir} holds checkpoints of an earlier run and checkpoint.resume is false; "
                             "choose a new job.dump_folder")  # fmt: skip
        if resumed_from is not None:
            self._restore(resumed_from)

        if self.rank == 0:
            with atomic_file(self.run_dir / "config.toml", "w") as f:
                f.write(to_toml(cfg))
        self.peak_flops = cfg.metrics.peak_tflops * 1e12 or measure_peak_flops(
            torch.bfloat16 if bf16 else torch.float32, self.device
        )
        self.metrics = (
            MetricsLogger(self.run_dir, total_steps=cfg.training.steps, start_step=self.step,
                          tensorboard=cfg.metrics.tensorboard, log_interval=cfg.metrics.log_interval,
                          progress=cfg.metrics.progress)
            if self.rank == 0 else NullLogger()
        )  # fmt: skip
        self.watchdog = Watchdog(p.watchdog_timeout, self.run_dir, self.rank) if p.watchdog_timeout else None
        if resumed_from is not None:
            self._event("resume", f"from {resumed_from}")

    # -- the loop --------------------------------------------------------------------------------

    def train(self) -> dict[str, Any]:
        start, start_step = time.perf_counter(), self.step
        last_saved = self.step if self.checkpointer.latest() is not None else -1
        try:
            while self.step < self.cfg.training.steps:
                if self.train_step() is None:  # rolled back to a checkpoint
                    last_saved = self.step
                    continue
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
        tokens = self.schedule.total_tokens - self.schedule.tokens_before(start_step + 1)
        recent = []
        if self.rank == 0:
            lines = (self.run_dir / "metrics.jsonl").read_text().splitlines()
            recent = [r["loss"] for r in map(json.loads, lines) if not r.get("skipped")][-10:]
        return {
            "run_dir": str(self.run_dir),
            "steps": self.step,
            "tokens": self.schedule.total_tokens,
            "final_loss": recent[-1] if recent else float("nan"),
            "final_loss_mean10": sum(recent) / len(recent) if recent else float("nan"),
            "seconds": round(wall, 1),
            "tokens_per_s": round(tokens / wall) if wall else 0,
            "skipped_steps": self.skipped_steps,
            "rollbacks": self.rollbacks,
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
        self._drill(plan.step)
        self.checkpointer.poll()
        if plan.phase == "anneal" and self.cfg.anneal.weights and self.loader.weights != self._anneal_weights():
            self.loader.set_weights(self.cfg.anneal.weights)
            self._event("anneal", f"learning rate to 0 over the last {self.cfg.anneal.tokens} tokens; mix "
                        + ", ".join(f"{k}={v:.2f}" for k, v in self.loader.weights.items()))  # fmt: skip
        batch = self._next_batch(plan)
        num_targets = batch.num_targets
        scale = self.cfg.faults.spike_scale if batch.index in self.cfg.faults.spike_batches else 1.0
        local = batch.shard(self.dp_rank, self.dims.dp)
        micro_tokens = self.cfg.training.micro_batch_tokens or plan.batch_tokens // self.dims.dp
        if self.pipeline is not None:
            loss_sum = self.pipeline_step(local, num_targets, scale)
        else:
            loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
            for micro in local.split(micro_tokens // plan.seq_len):
                loss_sum += self.forward_backward(micro, num_targets, scale)
        if batch.index in self.cfg.faults.nan_grad_batches:
            grad = next(p for p in self.model.parameters() if p.grad is not None).grad
            (grad.to_local() if isinstance(grad, DTensor) else grad).fill_(float("nan"))

        loss_sum = all_reduce_sum(loss_sum, self.mesh["dp"] if self.mesh is not None else None)
        loss = loss_sum.item() / max(num_targets, 1)
        grad_norm = self._clip_gradients()
        verdict = self._check(loss, grad_norm, batch)
        if verdict is None:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if verdict == "rollback":
            self._rollback()
            return None
        self.lr_scheduler.step()
        self.step += 1
        if self._sdc_check():
            return None
        dt = time.perf_counter() - t0
        self.elapsed += dt
        flops = flops_per_token(self.model_args, plan.seq_len)["train"] * plan.batch_tokens
        record = {
            "step": self.step,
            "loss": loss,
            "lr": plan.lr,
            "grad_norm": grad_norm,
            "tokens": plan.tokens_before + plan.batch_tokens,
            "tokens_per_s": plan.batch_tokens / dt,
            "mfu": flops / dt / self.world_size / self.peak_flops,
            "mem_gb": round(peak_memory_gb(self.device), 3),
            "seq_len": plan.seq_len,
            "batch_tokens": plan.batch_tokens,
            "phase": plan.phase,
            "step_s": dt,
        }
        if verdict is not None:
            record["skipped"] = verdict
        self.metrics.log(record)
        return record

    def forward_backward(self, micro: Batch, num_targets: int, scale: float = 1.0) -> torch.Tensor:
        """Forward and backward of one micro-batch; returns its summed loss (detached).

        The gradient is of sum(loss) / targets in the whole global batch; FSDP averages gradients over the
        data-parallel ranks, so each rank scales its part by their number to make that average a sum.
        """
        # Post-training batches target a fraction of their tokens (assistant turns): the output projection and
        # the cross-entropy then run on those positions only. One process only: FSDP and TP own the output layer.
        # Decided on the loader's host tensor, so an accelerator is never synchronized for it.
        keep = micro.targets != IGNORE_INDEX
        sparse = self.mesh is None and float(keep.float().mean()) < 0.5
        tokens = micro.tokens.to(self.device)
        targets = micro.targets.to(self.device)
        doc_ids = micro.doc_ids.to(self.device)
        keep = keep.to(self.device)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            out = self.model(tokens, positions_BT=document_positions(doc_ids), mask=document_mask(doc_ids),
                             return_hidden=sparse)  # fmt: skip
            if sparse:
                out = self.model.output(out[keep]).float()[None]
        loss_sum = summed_cross_entropy(out, targets[keep][None] if sparse else targets)
        if scale != 1.0:  # an injected loss spike
            loss_sum = loss_sum * scale
        (loss_sum * self.dims.dp / max(num_targets, 1)).backward()
        return loss_sum.detach().double()

    def pipeline_step(self, rows: Batch, num_targets: int, scale: float) -> torch.Tensor:
        """This rank's stage over the schedule's micro-batches; the summed loss (non-zero on the last stage)."""
        first, last = self.pp_stage == 0, self.pp_stage == self.dims.pp - 1
        self._pp_targets, self._pp_scale = max(num_targets, 1), scale
        tokens, doc_ids = rows.tokens.to(self.device), rows.doc_ids.to(self.device)
        targets = rows.targets.to(self.device) if last else None
        losses: list[torch.Tensor] = []
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
        norm = torch.nn.utils.get_total_norm([p.grad for p in params], foreach=True)
        norm = norm.full_tensor() if isinstance(norm, DTensor) else norm
        if self.dims.pp > 1:  # stages hold different parameters: add up the squares
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

    def _check(self, loss: float, grad_norm: float, batch: Batch) -> str | None:
        """None to apply the update, else why it is skipped ("rollback" to roll back instead)."""
        r = self.cfg.recovery
        if not (math.isfinite(loss) and math.isfinite(grad_norm)):
            self.bad_batches.append(batch.index)
            self.skipped_steps += 1
            reason = f"non-finite loss {loss} or gradient norm {grad_norm} on batch {batch.index}"
            if len(self.bad_batches) >= r.max_bad_steps:
                return self._rollback_or_skip(f"{len(self.bad_batches)} bad steps in a row ({reason})")
            self._event("skip", f"{reason}: update skipped")
            return "non-finite"
        warm = self.loss_mean is not None and self.good_steps >= r.spike_warmup
        if r.spike_factor and warm and loss > r.spike_factor * self.loss_mean:
            reason = f"loss {loss:.4f} > {r.spike_factor} x running mean {self.loss_mean:.4f} on batch {batch.index}"
            self.skipped_steps += 1
            if r.spike_action == "rollback":
                self.bad_batches.append(batch.index)
                return self._rollback_or_skip(f"loss spike ({reason})")
            self._event("skip", f"loss spike: {reason}: update skipped")
            return "spike"
        self.bad_batches = []
        self.good_steps += 1
        self.loss_mean = loss if self.loss_mean is None else _SPIKE_EMA * self.loss_mean + (1 - _SPIKE_EMA) * loss
        return None

    def _rollback_or_skip(self, reason: str) -> str:
        if self.checkpointer.latest() is None:
            # Nothing to go back to; the bad updates were skipped, so the weights are still the last good ones.
            self._event("skip", f"{reason}: no checkpoint to roll back to yet, update skipped")
            return "no-checkpoint"
        self._pending_reason = reason
        return "rollback"

    def _rollback(self) -> None:
        """Back to the latest checkpoint; the batches of the bad run of steps are left out from now on."""
        reason, bad = self._pending_reason, sorted(self.bad_batches)
        self.rollbacks += 1
        if self.rollbacks > self.cfg.recovery.max_rollbacks:
            raise TrainError(f"step {self.step + 1}: {reason}; gave up after {self.cfg.recovery.max_rollbacks} "
                             "rollbacks (recovery.max_rollbacks)")  # fmt: skip
        self.skip_batches.update(bad)
        self.bad_batches = []
        failed_at, skipped = self.step + 1, self.skipped_steps
        self._restore(self.checkpointer.latest())
        self.skipped_steps = skipped  # a count of events, not part of the trajectory
        self.metrics.reopen_at(self.step)
        self._event("rollback", f"{reason} at step {failed_at}; back to step {self.step}, leaving out batches {bad}")

    def _sdc_check(self) -> bool:
        """Every parallel.sdc_check_interval steps, replicas compare checksums of the shards they should hold
        identically; a mismatch names the ranks that differ from the replica group's majority (the lowest rank
        on a tie) and rolls every rank back. True if it rolled back."""
        interval = self.cfg.parallel.sdc_check_interval
        if self.mesh is None or self.dims.dp_replicate < 2 or not interval or self.step % interval:
            return False
        fault = self.cfg.faults
        if self.step == fault.corrupt_at_step and self.rank == fault.corrupt_rank and not self._corrupted:
            self._corrupted = True  # once: the replay after the rollback must come out clean
            param = next(iter(self.model.parameters()))
            with torch.no_grad():
                (param.to_local() if isinstance(param, DTensor) else param).add_(1e-3)
        checksum = 0
        for param in self.model.parameters():
            local = (param.to_local() if isinstance(param, DTensor) else param).detach().float().contiguous()
            checksum = (checksum * 1_000_003 + int(local.view(torch.int32).sum(dtype=torch.int64))) % (1 << 61)
        group = self.mesh["dp_replicate"].get_group()
        sums = [0] * self.dims.dp_replicate
        dist.all_gather_object(sums, checksum, group=group)
        majority = max(sums, key=lambda c: (sums.count(c), -sums.index(c)))
        ranks = dist.get_process_group_ranks(group)
        bad = torch.zeros(self.world_size, dtype=torch.int32)
        for r, c in zip(ranks, sums, strict=True):
            bad[r] = int(c != majority)
        dist.all_reduce(bad, op=dist.ReduceOp.MAX)
        if not bad.any():
            return False
        named = [r for r in range(self.world_size) if bad[r]]
        reason = f"silent data corruption: parameters of rank(s) {named} differ from their replicas after step "
        self.bad_batches = []
        self._pending_reason = reason + str(self.step)
        self._rollback()
        return True

    def _drill(self, step: int) -> None:
        """Injected process faults, on the first launch only (a restarted job must be able to finish)."""
        f = self.cfg.faults
        if self.rank != f.kill_rank or restart_count() > 0:
            return
        if step == f.kill_at_step:
            os.kill(os.getpid(), signal.SIGKILL)
        if step == f.hang_at_step:
            time.sleep(10**6)

    def _next_batch(self, plan: StepPlan) -> Batch:
        while True:
            batch = self.loader.next_batch(plan.batch_tokens // plan.seq_len, plan.seq_len)
            if batch.index not in self.skip_batches:
                return batch

    def _anneal_weights(self) -> dict[str, float]:
        total = sum(self.cfg.anneal.weights.values())
        return {n: self.cfg.anneal.weights.get(n, 0.0) / total for n in self.loader.names}

    def _event(self, event: str, reason: str) -> None:
        self.metrics.event({"step": self.step, "event": event, "reason": reason, "time": time.time()})

    # -- checkpoints ----------------------------------------------------------------------------

    def train_state(self) -> dict[str, Any]:
        return {
            "tokens": self.schedule.tokens_before(self.step + 1),
            "loader": self.loader.state_dict(),
            "lr_scheduler": self.lr_scheduler.state_dict(),
            "skip_batches": sorted(self.skip_batches),
            "loss_mean": self.loss_mean,
            "good_steps": self.good_steps,
            "skipped_steps": self.skipped_steps,
            "elapsed": self.elapsed,
            "started_at": self.started_at,
            "tokenizer": self.loader.tokenizer,
        }

    def save(self) -> Path:
        return self.checkpointer.save(
            self.step, model=self.model, optimizer=self.optimizer, train_state=self.train_state(),
            args=self.model_args, assets=self.tokenizer_files,
        )  # fmt: skip

    def _restore(self, path: Path) -> None:
        state = self.checkpointer.load(path, model=self.model, optimizer=self.optimizer)
        self.step = int(state["step"])
        self.loader.load_state_dict(state["loader"])
        self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        self.skip_batches |= set(state["skip_batches"])
        self.loss_mean, self.good_steps = state["loss_mean"], state["good_steps"]
        self.skipped_steps, self.elapsed = state["skipped_steps"], state["elapsed"]
        self.started_at = state.get("started_at", self.started_at)


class NullLogger:
    """What ranks other than 0 log to: nothing (rank 0 reports the reduced metrics)."""

    def log(self, record: dict[str, Any]) -> None: ...
    def event(self, record: dict[str, Any]) -> None: ...
    def reopen_at(self, step: int) -> None: ...
    def close(self) -> None: ...


# ---------------------------------------------------------------------------------------------
# building blocks


def summed_cross_entropy(logits_BTV: torch.Tensor, targets_BT: torch.Tensor) -> torch.Tensor:
    """Cross-entropy summed over the targets (IGNORE_INDEX left out), in float32; callers divide by the count."""
    return F.cross_entropy(
        logits_BTV.flatten(0, 1).float(), targets_BT.flatten(), ignore_index=IGNORE_INDEX, reduction="sum"
    )


def model_args(section: ModelSection, *, vocab_size: int, seq_len: int) -> ModelArgs:
    """The preset with the section's overrides; the vocabulary comes from the shards' tokenizer."""
    changes = {
        k: getattr(section, k)
        for k in ("dim", "n_layers", "n_heads", "n_kv_heads", "ffn_dim_multiplier", "multiple_of", "rope_theta",
                  "tie_embeddings", "max_seq_len")
        if getattr(section, k) is not None
    }  # fmt: skip
    changes.setdefault("max_seq_len", seq_len)
    if changes["max_seq_len"] < seq_len:
        raise TrainError(f"model.max_seq_len={changes['max_seq_len']} is shorter than the schedule's seq_len {seq_len}")
    return get_preset(section.preset).replace(vocab_size=vocab_size, **changes)


def param_groups(
    model: torch.nn.Module, weight_decay: float, *, decay_norms: bool, decay_embeddings: bool
) -> list[dict[str, Any]]:
    """Weight decay on matrices; norms and embeddings only when asked (a tied output counts as the embedding)."""
    embedding = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    decay, no_decay, seen = [], [], set()
    for p in model.parameters():  # parameters() yields a tied weight once
        if id(p) in seen:
            continue
        seen.add(id(p))
        is_norm = p.ndim < 2
        skip = (is_norm and not decay_norms) or (id(p) in embedding and not decay_embeddings)
        (no_decay if skip else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _check_layout(args: ModelArgs, dims: ParallelDims) -> None:
    if args.n_heads % dims.tp or args.n_kv_heads % dims.tp:
        raise TrainError(f"parallel.tp={dims.tp} must divide the model's n_heads={args.n_heads} and "
                         f"n_kv_heads={args.n_kv_heads}")  # fmt: skip
    if dims.pp > args.n_layers:
        raise TrainError(f"parallel.pp={dims.pp} is more than the model's {args.n_layers} layers")


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise TrainError("training.device=cuda but torch sees no CUDA device")
    return torch.device(name)


def _tokenizer_files(identity: dict[str, Any], packed_copy: Path) -> list[Path]:
    """The tokenizer files the shards were packed with (the copy beside the shards, else where the manifest says
    they came from), checked against the hashes in the pack manifest."""
    spec = identity.get("spec", "llama3")
    if packed_copy.is_dir():
        base = packed_copy
    elif spec == "llama3":
        from herd.tokenizer.llama3 import packaged_model_path

        base = packaged_model_path().parent
    else:
        base = Path(spec) if Path(spec).is_dir() else Path(spec).parent
    files = []
    for name, digest in identity.get("files_sha256", {}).items():
        path = base / name
        if not path.is_file():
            raise TrainError(f"{path}: the tokenizer the shards were packed with is gone (pack manifest: {spec})")
        if sha256_file(path) != digest:
            raise TrainError(f"{path}: changed since the shards were packed with it; re-pack or restore the file")
        files.append(path)
    return files
