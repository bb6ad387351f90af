"""Shared pieces of the training tests: a tiny config around a tiny real model."""

from __future__ import annotations

from pathlib import Path

from gatedelta.train.config import TrainConfig, build_config

# Small enough that a CPU step takes a few milliseconds; still a real gdn2 + sliding-window hybrid.
TINY_MODEL = {"hidden_size": 32, "num_layers": 2}


def tiny_config(run_dir: Path, *overrides: tuple[str, str], **sections: dict) -> TrainConfig:
    mapping = {
        "model": {"preset": "gdn2-hybrid", "size": "tiny", "overrides": dict(TINY_MODEL)},
        "data": {"seq_len": 32, "batch_size": 2},
        "schedule": {"steps": 8, "warmup_steps": 2},
        "checkpoint": {"dir": str(run_dir), "every": 0},
        "eval": {"every": 4, "batches": 2},
        "logging": {"every": 1, "progress": False, "tensorboard": False},
        "runtime": {"threads": 1},  # tests run beside others on 2 cores: no thread oversubscription
    }
    for name, fields in sections.items():
        mapping.setdefault(name, {}).update(fields)
    return build_config(mapping, list(overrides))


def tiny_yaml(path: Path, run_dir: Path, **sections: dict) -> Path:
    """The same tiny config as a YAML file, for CLI and torchrun tests."""
    from gatedelta.train.config import to_yaml

    path.write_text(to_yaml(tiny_config(run_dir, **sections)))
    return path
