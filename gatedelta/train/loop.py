"""The training loop: read :func:`train` top to bottom.

    1. processes and devices        5. resume
    2. data                         6. logging
    3. model                        7. the loop: accumulate -> clip -> guard -> step -> log/eval/save
    4. optimizer and schedule       8. the end: final eval and checkpoint

Loss normalisation. A packed micro-batch has a varying number of scored tokens (the first token
of every document piece is not scored). To make N ranks x A micro-batches compute *exactly* the
gradient of one big batch — the mean loss over all scored tokens of the optimizer step — each
micro-batch's mean loss is weighted by ``its tokens / all tokens of the step`` (times the world
size, because DDP and FSDP2 average gradients over ranks). The step's token count is summed over
ranks once per step, before the first backward.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..data import corpus
from ..data.tokenizer import load_tokenizer
from . import checkpoint as ckpt
from . import distributed
from .config import ConfigError, TrainConfig, UserError, to_yaml

ModelFactory = Callable[[TrainConfig, int], nn.Module]  # (config, vocab_size or 0 = preset's) -> model


@dataclass
class TrainResult:
    step: int = 0  # last completed optimizer step
    losses: dict[int, float] = field(default_factory=dict)  # step -> training loss
    evals: dict[int, float] = field(default_factory=dict)  # step -> held-out loss
    skipped: list[int] = field(default_factory=list)  # steps skipped for a non-finite loss
    tokens_per_s: float = 0.0
    seconds: float = 0.0
    interrupted: bool = False
    checkpoint: Path | None = None


# ---------------------------------------------------------------------------------------------
# Pieces used by train()


def build_model(cfg: TrainConfig, vocab_size: int) -> nn.Module:
    """A ``GatedDeltaForCausalLM`` from ``model.preset`` / ``model.size`` / ``model.overrides``."""
    from ..models import GatedDeltaForCausalLM, preset_config

    overrides = dict(cfg.model.overrides)
    if vocab_size:  # 0: the preset's own (synthetic tasks)
        overrides.setdefault("vocab_size", vocab_size)
    try:
        config = preset_config(cfg.model.preset, cfg.model.size, **overrides)
    except (ValueError, TypeError, KeyError) as e:
        raise ConfigError(f"model: {e}") from None
    return GatedDeltaForCausalLM(config)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on matrices only: not on norms, biases (ndim < 2) or ``_no_weight_decay`` params
    (A_log, dt_bias), because decaying them pulls gates and scales toward zero for no benefit."""
    decay, no_decay = [], []
    for p in model.parameters():
        if not p.requires_grad:
            continue
        if p.ndim < 2 or getattr(p, "_no_weight_decay", False):
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def lr_lambda(cfg: TrainConfig) -> Callable[[int], float]:
    """Multiplier of ``optim.lr`` at step s: linear warmup, then cosine down to ``min_lr_ratio``."""
    warmup, total, floor = cfg.schedule.warmup_steps, cfg.schedule.steps, cfg.schedule.min_lr_ratio

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if not cfg.schedule.cosine or total <= warmup:
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return f


def enable_activation_checkpointing(model: nn.Module) -> None:
    """Recompute each block in backward: the model's own switch if it has one, else wrap the blocks."""
    if getattr(model, "supports_gradient_checkpointing", False):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        return
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import apply_activation_checkpointing

    blocks = {id(b) for b in distributed._blocks(model)}
    apply_activation_checkpointing(model, check_fn=lambda m: id(m) in blocks)


def make_data(cfg: TrainConfig, d: distributed.Dist, vocab_size: int | None):
    """``(train_loader, heldout_batches, tokenizer)`` for the configured source, this rank's share."""
    dc = cfg.data
    shard = {"rank": d.rank, "world_size": d.world_size}
    if dc.source == "task":
        from ..data.tasks import make_task

        try:
            task = make_task(dc.task, vocab_size=vocab_size, seq_len=dc.seq_len, **dc.task_params)
        except (ValueError, TypeError) as e:
            raise ConfigError(f"data.task: {e}") from None
        loader = corpus.TaskLoader(task, batch_size=dc.batch_size, accum_steps=cfg.optim.accum_steps,
                                   seed=cfg.runtime.seed, **shard)
        return loader, loader.heldout(cfg.eval.batches), None
    tokenizer = load_tokenizer(dc.tokenizer)
    texts = corpus.read_documents(dc.source, dc.paths, text_field=dc.text_field, extensions=dc.extensions,
                                  corpus_dir=dc.corpus_dir)
    train_texts, held_texts = corpus.split_documents(texts, dc.heldout_fraction)
    train_rows = corpus.PackedRows(corpus.tokenize_documents(train_texts, tokenizer), dc.seq_len)
    loader = corpus.PackedLoader(train_rows, batch_size=dc.batch_size, accum_steps=cfg.optim.accum_steps,
                                 seed=cfg.runtime.seed, **shard)
    held = []
    if held_texts:
        held_rows = corpus.PackedRows(corpus.tokenize_documents(held_texts, tokenizer), dc.seq_len)
        held = corpus.heldout_batches(held_rows, batches=cfg.eval.batches, batch_size=dc.batch_size, **shard)
    return loader, held, tokenizer


def count_targets(batch: dict[str, torch.Tensor]) -> int:
    """Scored positions after the model's internal shift (labels[:, 1:] != -100)."""
    return int((batch["labels"][:, 1:] != -100).sum())


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


@torch.no_grad()
def evaluate(model: nn.Module, batches: list[dict[str, torch.Tensor]], d: distributed.Dist,
             autocast: Any) -> float | None:
    """Mean held-out loss over every scored token of every rank's batches (``None`` if no batches)."""
    model.eval()
    totals = torch.zeros(2, dtype=torch.float64, device=d.device)  # (loss sum, tokens)
    for batch in batches:
        n = count_targets(batch)
        with autocast():
            out = model(**to_device(batch, d.device), use_cache=False)
        totals += torch.tensor([out.loss.double().item() * n, n], dtype=torch.float64, device=d.device)
    distributed.all_reduce_sum(totals, d)
    model.train()
    return None if totals[1] == 0 else float(totals[0] / totals[1])


class Logger:
    """Rank 0 writes JSONL records, TensorBoard scalars and the progress bar; other ranks write nothing."""

    def __init__(self, cfg: TrainConfig, run_dir: Path, d: distributed.Dist, start: int):
        self.on = d.is_main
        self.jsonl = self.tb = self.bar = None
        if not self.on:
            return
        if cfg.logging.jsonl:
            self.jsonl = open(run_dir / "log.jsonl", "a")
        if cfg.logging.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(run_dir / "tb"), purge_step=start + 1)
            except ImportError:
                self.print("tensorboard is not installed (pip install tensorboard); logging to JSONL only")
        if cfg.logging.progress:
            from tqdm import tqdm

            self.bar = tqdm(total=cfg.schedule.steps, initial=start, unit="step", dynamic_ncols=True,
                            file=sys.stderr)

    def print(self, msg: str) -> None:
        if not self.on:
            return
        if self.bar is not None:
            self.bar.write(msg)
        else:
            print(msg, flush=True)

    def record(self, step: int, **values: Any) -> None:
        if not self.on:
            return
        if self.jsonl is not None:
            self.jsonl.write(json.dumps({"step": step, **values}) + "\n")
            self.jsonl.flush()
        if self.tb is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)) and math.isfinite(v):
                    self.tb.add_scalar(k, v, step)

    def progress(self, loss: float, tok_s: float) -> None:
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{tok_s:,.0f}", refresh=False)
            self.bar.update(1)

    def close(self) -> None:
        for h in (self.bar, self.tb, self.jsonl):
            if h is not None:
                h.close()


class StopFlag:
    """Ctrl-C (SIGINT) or SIGTERM asks for a checkpoint and a clean exit after the current step.

    Another Ctrl-C at least a second later aborts at once. (A single Ctrl-C under torchrun reaches
    each worker twice — from the terminal and forwarded by the launcher — and must not abort.)
    """

    def __init__(self) -> None:
        self.requested = False
        self._first = 0.0
        self._old = {}

    def __enter__(self) -> StopFlag:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested and signum == signal.SIGINT and time.monotonic() - self._first > 1.0:
            raise KeyboardInterrupt
        if not self.requested:
            self.requested, self._first = True, time.monotonic()

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


# ---------------------------------------------------------------------------------------------
# The loop


def train(cfg: TrainConfig, *, model_factory: ModelFactory | None = None) -> TrainResult:
    """Train as ``cfg`` says; returns per-step losses and evals (rank 0 has the full picture).

    ``model_factory(cfg, vocab_size)`` replaces :func:`build_model` (e.g. to wrap or hook the model).
    """
    # 1. Processes and devices ------------------------------------------------------------------
    d = distributed.setup(cfg.runtime.distributed, cfg.runtime.device)
    threads = torch.get_num_threads()
    if cfg.runtime.threads:
        torch.set_num_threads(cfg.runtime.threads)
    try:
        return _train(cfg, d, model_factory or build_model)
    finally:
        torch.set_num_threads(threads)  # train() may be one call in a longer program
        distributed.teardown(d)


def _train(cfg: TrainConfig, d: distributed.Dist, model_factory: ModelFactory) -> TrainResult:
    rc = cfg.runtime
    use_bf16 = rc.dtype == "bfloat16" or (rc.dtype == "auto" and d.device.type == "cuda")
    autocast = lambda: torch.autocast(d.device.type, dtype=torch.bfloat16, enabled=use_bf16)  # noqa: E731
    # The same seed on every rank: identical initial weights (FSDP2 shards each rank's copy).
    random.seed(rc.seed)
    np.random.seed(rc.seed)
    torch.manual_seed(rc.seed)
    if d.device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    run_dir = Path(cfg.checkpoint.dir)

    # 2. Data: this rank's share of every optimizer step, plus a fixed held-out set --------------
    # The tokenizer fixes the vocabulary; a synthetic task takes the model's.
    if cfg.data.source == "task":
        vocab_size = int(cfg.model.overrides.get("vocab_size") or cfg.data.task_params.get("vocab_size") or 0)
    else:
        tok_vocab = load_tokenizer(cfg.data.tokenizer).vocab_size
        m = max(1, cfg.model.pad_vocab_to)
        vocab_size = int(cfg.model.overrides.get("vocab_size") or -(-tok_vocab // m) * m)
        if vocab_size < tok_vocab:
            raise ConfigError(f"model vocab_size {vocab_size} is smaller than the tokenizer's {tok_vocab}")

    # 3. Model: build (same init on every rank), then wrap it for many ranks ------------------------
    model = model_factory(cfg, vocab_size)
    vocab_size = model.config.vocab_size
    loader, heldout, tokenizer = make_data(cfg, d, vocab_size)
    if rc.activation_checkpointing:
        enable_activation_checkpointing(model)
    model.to(d.device)
    model.train()
    n_params = sum(p.numel() for p in model.parameters())
    model = distributed.wrap(model, d)
    # Regional compilation (each block; the same helper as `gatedelta bench models --compile`).
    # dynamic=None: packed batches change cu_seqlens' length every step, which Dynamo then makes a
    # dynamic dimension instead of recompiling for each length. Evaluation stays eager.
    train_model = model
    if rc.compile:
        from ..models.compile import compile_for_training

        train_model = compile_for_training(model, dynamic=None)

    # 4. Optimizer and schedule: AdamW without decay on norms/biases/gates; warmup + cosine ------
    fused = d.device.type == "cuda"  # one kernel for all parameters on GPU
    optimizer = torch.optim.AdamW(
        param_groups(distributed.unwrap(model), cfg.optim.weight_decay), lr=cfg.optim.lr,
        betas=tuple(cfg.optim.betas), eps=cfg.optim.eps, fused=fused)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg))

    # 5. Resume: weights, optimizer, schedule, RNG and data position of a complete checkpoint ----
    start = 0
    if d.is_main:
        ckpt.sweep_partial(run_dir)  # leftovers of a writer that was killed mid-save
    if cfg.checkpoint.resume:
        # "auto" tolerates a run with no checkpoint yet (start fresh); an explicit path must exist.
        if cfg.checkpoint.resume == "auto":
            found = ckpt.latest_checkpoint(run_dir)
        else:
            found = ckpt.resolve_checkpoint(cfg.checkpoint.resume)
        if found is not None:
            state = ckpt.load_checkpoint(found, model=model, optimizer=optimizer, scheduler=scheduler, d=d)
            loader.load_state_dict(state["data"])
            start = int(state["step"])

    # 6. Logging (rank 0 only) --------------------------------------------------------------------
    if d.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(to_yaml(cfg))
    log = Logger(cfg, run_dir, d, start)
    tokens_per_step = cfg.data.batch_size * cfg.data.seq_len * cfg.optim.accum_steps * d.world_size
    existing = ckpt.latest_checkpoint(run_dir) if not start else None
    if existing is not None:
        log.print(f"note: {run_dir} already has checkpoints up to {existing.name}; starting fresh will "
                  "overwrite them as it goes (use --resume to continue that run)")
    log.print(f"model {cfg.model.preset}/{cfg.model.size}: {n_params / 1e6:.2f}M parameters, vocab "
              f"{vocab_size}; {d.world_size} rank(s) on {d.device.type}, "
              f"{'bf16 autocast' if use_bf16 else 'fp32'}; {tokens_per_step:,} tokens per step; "
              + (f"resumed from step {start}" if start else "starting at step 0"))

    # 7. The loop ---------------------------------------------------------------------------------
    result = TrainResult(step=start)
    params = [p for p in model.parameters() if p.requires_grad]
    clip = cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else float("inf")
    last_saved = start if start else None
    t_start, t_window, tokens_window = time.perf_counter(), time.perf_counter(), 0
    consecutive_skips = 0

    def save(step: int) -> Path:
        return ckpt.save_checkpoint(run_dir, step, model=model, optimizer=optimizer, scheduler=scheduler,
                                    data_state=loader.state_dict(), tokenizer=tokenizer,
                                    config_yaml=to_yaml(cfg), keep_last=cfg.checkpoint.keep_last, d=d)

    with StopFlag() as stop:
        for step in range(start + 1, cfg.schedule.steps + 1):
            # 7a. This rank's micro-batches; the step's scored-token count over all ranks (see top).
            micro = loader.next_step()
            counts = [count_targets(b) for b in micro]
            n_step = float(sum(counts))
            if d.enabled:  # a small collective (and a sync point) once per step
                n_step = distributed.all_reduce_sum(torch.tensor(n_step, device=d.device), d).item()

            # 7b. Forward/backward each micro-batch; gradients are synchronised on the last one only.
            loss_sum = torch.zeros((), dtype=torch.float64, device=d.device)
            for i, (batch, n) in enumerate(zip(micro, counts)):
                last = i == len(micro) - 1
                sync = contextlib.nullcontext()
                if d.kind == "ddp" and d.enabled and not last:
                    sync = model.no_sync()
                elif d.kind == "fsdp2" and d.enabled:
                    model.set_requires_gradient_sync(last)
                with sync:
                    with autocast():
                        out = train_model(**to_device(batch, d.device))
                    (out.loss * (n * d.world_size / n_step)).backward()
                loss_sum += out.loss.detach().double() * n

            # 7c. Clip; the grad norm is the same on every rank (gradients are already reduced).
            grad_norm = torch.nn.utils.clip_grad_norm_(params, clip)
            if hasattr(grad_norm, "full_tensor"):  # FSDP2: a DTensor
                grad_norm = grad_norm.full_tensor()
            # One reduction carries the loss and whether any rank got Ctrl-C, so all ranks agree.
            flags = torch.stack([loss_sum, torch.tensor(float(stop.requested), dtype=torch.float64,
                                                        device=d.device)])
            distributed.all_reduce_sum(flags, d)
            loss = float(flags[0]) / n_step  # a CPU-GPU sync point, once per step
            gnorm = float(grad_norm)

            # 7d. Guard: a non-finite loss or gradient skips the update instead of poisoning weights
            # and Adam's moments; the step still counts (its data is consumed, the lr moves on).
            if math.isfinite(loss) and math.isfinite(gnorm):
                optimizer.step()
                consecutive_skips = 0
            else:
                result.skipped.append(step)
                consecutive_skips += 1
                log.print(f"step {step}: non-finite loss {loss} / grad norm {gnorm}; update skipped")
                log.record(step, event="skipped_nonfinite", loss=str(loss), grad_norm=str(gnorm))
                if consecutive_skips >= 10:
                    raise UserError(f"10 consecutive non-finite steps (last: {step}); lower optim.lr, "
                                    "check the data, or resume from an earlier checkpoint")
            optimizer.zero_grad(set_to_none=True)
            lr = scheduler.get_last_lr()[0]
            scheduler.step()
            result.losses[step] = loss
            result.step = step

            # 7e. Log: tokens/s over the window since the last log line.
            tokens_window += tokens_per_step
            log.progress(loss, tokens_window / max(1e-9, time.perf_counter() - t_window))
            if step % cfg.logging.every == 0 or step == cfg.schedule.steps:
                dt = time.perf_counter() - t_window
                tok_s = tokens_window / max(dt, 1e-9)
                log.record(step, loss=loss, lr=lr, grad_norm=gnorm, tok_per_s=tok_s,
                           elapsed_s=time.perf_counter() - t_start)
                if log.bar is None:
                    log.print(f"step {step:>6}/{cfg.schedule.steps}  loss {loss:.4f}  lr {lr:.2e}  "
                              f"grad {gnorm:.2f}  {tok_s:,.0f} tok/s")
                t_window, tokens_window = time.perf_counter(), 0

            # 7f. Held-out evaluation.
            if heldout and cfg.eval.every and step % cfg.eval.every == 0:
                ev = evaluate(model, heldout, d, autocast)  # eager: no recompiles for eval mode
                if ev is not None:
                    result.evals[step] = ev
                    log.record(step, eval_loss=ev, eval_ppl=math.exp(min(ev, 50.0)))
                    log.print(f"step {step}: held-out loss {ev:.4f}, ppl {math.exp(min(ev, 50.0)):.2f}")

            # 7g. Checkpoint at intervals, and before leaving on Ctrl-C or at schedule.stop_at.
            interrupted = flags[1].item() > 0
            stopping = interrupted or step == cfg.schedule.stop_at
            if (cfg.checkpoint.every and step % cfg.checkpoint.every == 0) or stopping:
                result.checkpoint = save(step)
                last_saved = step
                log.print(f"step {step}: checkpoint {result.checkpoint}")
            if stopping:
                log.print(f"{'interrupted' if interrupted else 'stop_at'}: stopped after step {step}; "
                          "continue with --resume")
                result.interrupted = interrupted
                break

    # 8. The end: final evaluation and checkpoint --------------------------------------------------
    result.seconds = time.perf_counter() - t_start
    done = result.step - start
    result.tokens_per_s = done * tokens_per_step / max(result.seconds, 1e-9)
    if result.step == cfg.schedule.steps:
        if heldout and result.step not in result.evals and result.step > start:
            ev = evaluate(model, heldout, d, autocast)  # eager: no recompiles for eval mode
            if ev is not None:
                result.evals[result.step] = ev
                log.record(result.step, eval_loss=ev, eval_ppl=math.exp(min(ev, 50.0)))
        if last_saved != result.step and cfg.checkpoint.at_end:
            result.checkpoint = save(result.step)
    log.record(result.step, event="end", seconds=result.seconds, tok_per_s=result.tokens_per_s,
               skipped=len(result.skipped))
    final_eval = result.evals.get(result.step)
    log.print(f"done: {done} steps in {result.seconds:.1f} s ({result.tokens_per_s:,.0f} tok/s)"
              + (f", held-out loss {final_eval:.4f}" if final_eval is not None else "")
              + (f", checkpoint {result.checkpoint}" if result.checkpoint else ""))
    log.close()
    return result
