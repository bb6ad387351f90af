"""Checkpoints that survive a kill at any moment and resume a run exactly, on any number of ranks.

Layout of a run directory (``checkpoint.dir``)::

    runs/tiny/
      config.yaml                the resolved config of the run
      log.jsonl, tb/             logs (rank 0)
      step_000100/               one complete checkpoint
        config.json, model.safetensors     save_pretrained: GatedDeltaForCausalLM.from_pretrained(here)
        trainer_state.pt         optimizer, scheduler, data position, RNG states (every rank), step
        gatedelta_tokenizer.json (+ tokenizer/ for a Hugging Face tokenizer)
        train_config.yaml
        meta.json                written last: its presence marks the checkpoint complete
      .tmp-step_000200-1234/     a checkpoint being written (or one whose writer was killed)

Atomicity: rank 0 writes everything into a ``.tmp-*`` directory, flushes it to disk, then renames
it to ``step_NNNNNN`` — one ``rename`` system call, so a reader sees either no checkpoint or a
whole one, and a kill mid-write only leaves a ``.tmp-*`` directory that is ignored and swept on
the next start. Only then are checkpoints beyond ``keep_last`` deleted, so the last good one is
never removed before its successor exists.

State dicts are *full* (gathered from all ranks with ``torch.distributed.checkpoint.state_dict``,
offloaded to the CPU) and keyed by parameter name, so DDP, FSDP2 and single-process runs read
each other's checkpoints.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..data.tokenizer import read_tokenizer, save_tokenizer
from .config import UserError
from .distributed import Dist, all_gather_object, barrier, unwrap

CKPT_RE = re.compile(r"^step_(\d{6,})$")
TRAINER_STATE = "trainer_state.pt"
META = "meta.json"


# ---------------------------------------------------------------------------------------------
# Finding checkpoints


def is_checkpoint(path: Path) -> bool:
    return path.is_dir() and (path / META).is_file() and CKPT_RE.match(path.name) is not None


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    ckpts = [p for p in run_dir.iterdir() if is_checkpoint(p)]
    return sorted(ckpts, key=lambda p: int(CKPT_RE.match(p.name).group(1)))


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    ckpts = list_checkpoints(run_dir)
    return ckpts[-1] if ckpts else None


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory, or the latest complete checkpoint of a run directory."""
    path = Path(path)
    if (path / META).is_file():
        return path
    latest = latest_checkpoint(path)
    if latest is None:
        if not path.exists():
            raise UserError(f"checkpoint not found: {path}")
        raise UserError(f"no complete checkpoint in {path} (expected step_NNNNNN/ directories with {META})")
    return latest


# ---------------------------------------------------------------------------------------------
# RNG


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------------------------------------
# Saving


def _full_state_dicts(model: nn.Module, optimizer: torch.optim.Optimizer | None):
    """Model and optimizer state as full, CPU, name-keyed dicts (a collective: every rank calls it)."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    inner = unwrap(model)
    model_sd = get_model_state_dict(inner, options=opts)
    optim_sd = get_optimizer_state_dict(inner, optimizer, options=opts) if optimizer is not None else None
    return model_sd, optim_sd


def _fsync_tree(directory: Path) -> None:
    """Flush every file, then the directory entries, so the rename publishes data already on disk."""
    for root, _, files in os.walk(directory):
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_model(model: nn.Module, directory: Path, state_dict: dict[str, torch.Tensor] | None = None) -> None:
    """``save_pretrained`` (config.json + safetensors) of the unwrapped model."""
    from transformers.utils import logging as hf_logging

    inner = unwrap(model)
    hf_logging.disable_progress_bar()  # its "Writing model shards" bar would break our progress bar
    try:
        inner.save_pretrained(str(directory), state_dict=state_dict)
    finally:
        hf_logging.enable_progress_bar()


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    data_state: dict[str, Any],
    tokenizer: Any,
    config_yaml: str,
    keep_last: int,
    d: Dist,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``step_NNNNNN`` atomically (see the module docstring). Every rank must call it."""
    run_dir = Path(run_dir)
    model_sd, optim_sd = _full_state_dicts(model, optimizer)  # collective
    rngs = all_gather_object(rng_state(), d)  # collective: one RNG state per rank
    final = run_dir / f"step_{step:06d}"
    if d.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        tmp = run_dir / f".tmp-{final.name}-{os.getpid()}"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        write_model(model, tmp, model_sd)
        trainer_state = {
            "step": step, "optimizer": optim_sd, "scheduler": scheduler.state_dict(),
            "data": data_state, "rng": rngs, "world_size": d.world_size, **(extra or {}),
        }
        torch.save(trainer_state, tmp / TRAINER_STATE)
        save_tokenizer(tokenizer, tmp)
        (tmp / "train_config.yaml").write_text(config_yaml)
        (tmp / META).write_text(json.dumps({"step": step, "time": time.time(),
                                            "world_size": d.world_size}) + "\n")
        _fsync_tree(tmp)
        if final.exists():  # the same step saved again (e.g. at the end after a periodic save)
            old = run_dir / f".old-{final.name}-{os.getpid()}"
            os.rename(final, old)
            os.rename(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, final)
        for stale in list_checkpoints(run_dir)[:-keep_last] if keep_last > 0 else []:
            shutil.rmtree(stale, ignore_errors=True)
    barrier(d)
    return final


def sweep_partial(run_dir: str | Path) -> list[Path]:
    """Remove ``.tmp-*`` / ``.old-*`` leftovers of killed writers (call before training starts, rank 0)."""
    run_dir = Path(run_dir)
    removed = []
    if run_dir.is_dir():
        for p in run_dir.iterdir():
            if p.is_dir() and (p.name.startswith(".tmp-step_") or p.name.startswith(".old-step_")):
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p)
    return removed


# ---------------------------------------------------------------------------------------------
# Loading


def read_model_state(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of the (possibly sharded) safetensors files in a checkpoint."""
    from safetensors.torch import load_file

    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise UserError(f"{path}: no *.safetensors model file")
    state: dict[str, torch.Tensor] = {}
    for f in files:
        state.update(load_file(str(f)))
    return state


def load_model_weights(model: nn.Module, path: Path) -> None:
    """Load a checkpoint's weights into a (possibly DDP/FSDP2-wrapped) model in place.

    ``save_pretrained`` drops tied copies (e.g. an LM head tied to the embedding); a key may be
    missing only if its parameter is shared with one that is present.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    inner = unwrap(model)
    state = read_model_state(path)
    names_by_tensor: dict[int, set[str]] = {}
    for name, p in inner.named_parameters(remove_duplicate=False):
        names_by_tensor.setdefault(id(p), set()).add(name)
    missing = set(inner.state_dict().keys()) - set(state)
    for name in sorted(missing):
        aliases = next((s for s in names_by_tensor.values() if name in s), {name})
        if not aliases & set(state):
            raise UserError(f"{path}: the checkpoint has no weights for {name!r}; "
                            "was it written by a different model?")
    unexpected = set(state) - set(inner.state_dict().keys())
    if unexpected:
        hint = ""
        if any(k.endswith(("q_proj.weight", "qkv_proj.weight", "b_proj.weight")) for k in unexpected):
            # the optimizer moments of the separate weights cannot be carried onto the fused ones
            hint = (" (a checkpoint from before the input projections were fused into one in_proj: "
                    "its weights load with GatedDeltaForCausalLM.from_pretrained, but the run "
                    "cannot be resumed exactly; start a new run from those weights)")
        raise UserError(f"{path}: weights the model does not have: {', '.join(sorted(unexpected)[:5])}{hint}")
    set_model_state_dict(inner, state, options=StateDictOptions(full_state_dict=True, strict=False))


def load_checkpoint(path: str | Path, *, model: nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: Any, d: Dist) -> dict[str, Any]:
    """Restore model, optimizer, scheduler and this rank's RNG; return the trainer state (step, data).

    Every rank reads the files (one host, or a shared filesystem) and keeps its own shard.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    path = resolve_checkpoint(path)
    load_model_weights(model, path)
    state = torch.load(path / TRAINER_STATE, map_location="cpu", weights_only=False)
    set_optimizer_state_dict(unwrap(model), optimizer, optim_state_dict=state["optimizer"],
                             options=StateDictOptions(full_state_dict=True))
    scheduler.load_state_dict(state["scheduler"])
    rngs = state["rng"]
    # Same world size: each rank continues its own RNG stream. Otherwise rank 0's (all ranks share
    # the seed at start, so this matches how a fresh run of that size begins).
    set_rng_state(rngs[d.rank] if len(rngs) == d.world_size else rngs[0])
    state["path"] = path
    return state


def load_model_for_inference(path: str | Path, *, device: str | torch.device = "cpu",
                             dtype: torch.dtype | None = None):
    """``(model, tokenizer)`` from a checkpoint directory or a run directory (its latest checkpoint).

    The model is a ``GatedDeltaForCausalLM`` in eval mode; the tokenizer is the one the run trained
    with (``None`` for synthetic-task runs, whose ids are the task's own).
    """
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    import gatedelta  # noqa: F401  (registers the model with the transformers Auto classes)

    ckpt = resolve_checkpoint(path)
    kwargs = {"dtype": dtype} if dtype is not None else {}
    hf_logging.disable_progress_bar()  # "Loading weights" would interleave with streamed output
    try:
        model = AutoModelForCausalLM.from_pretrained(str(ckpt), local_files_only=True, **kwargs)
    finally:
        hf_logging.enable_progress_bar()
    model.to(device).eval()
    return model, read_tokenizer(ckpt)
