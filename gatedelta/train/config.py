"""Training configuration: typed nested dataclasses, filled from YAML/TOML and ``--section.field`` flags.

A config file has one mapping per section (``model``, ``data``, ``optim``, ``schedule``,
``checkpoint``, ``eval``, ``runtime``, ``logging``). Every field of every section can be overridden on
the command line as ``--section.field value`` (or ``--section.field=value``); values are parsed to
the field's declared type, so ``--optim.lr 3e-4`` is a float and ``--runtime.compile true`` a bool.
``model.overrides`` and ``data.task_params`` are free-form mappings handed to the model preset and
the synthetic task: ``--model.overrides.num_layers 4`` sets one key in them.

Unknown sections or fields raise :class:`ConfigError` listing the valid names, because a silently
ignored typo (``optim.weight_decy``) costs a whole run.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class UserError(ValueError):
    """A mistake the user can fix (bad config, missing data, ...). The CLI prints it without a traceback."""


class ConfigError(UserError):
    """The config file or a command-line override is invalid."""


@dataclass
class ModelConfig:
    preset: str = "gdn2-hybrid"  # a name from gatedelta.models.PRESETS
    size: str = "tiny"  # tiny | 125m | 350m | 1.3b
    overrides: dict[str, Any] = field(default_factory=dict)  # any GatedDeltaConfig field
    # The embedding is padded to a multiple of this (GPU matmuls like round shapes); the tokenizer's
    # ids stay below its own vocab size and generation never samples the padding ids.
    pad_vocab_to: int = 64


@dataclass
class DataConfig:
    source: str = "builtin"  # builtin | text | jsonl | parquet | task
    paths: list[str] = field(default_factory=list)  # files or directories (text/jsonl/parquet)
    text_field: str = "text"  # jsonl / parquet column holding the document text
    extensions: list[str] = field(default_factory=lambda: [".txt", ".md", ".rst", ".py"])  # for dirs
    tokenizer: str = "byte"  # "byte" or a local Hugging Face tokenizer directory
    seq_len: int = 256  # tokens per packed row
    batch_size: int = 8  # rows per micro-batch per rank
    heldout_fraction: float = 0.01  # documents kept out of training for evaluation
    task: str = "mqar"  # source=task: a name for gatedelta.data.tasks.make_task
    task_params: dict[str, Any] = field(default_factory=dict)  # extra keywords for make_task
    corpus_dir: str = ""  # source=builtin: where the corpus lives ("" = the default cache dir)


@dataclass
class OptimConfig:
    lr: float = 1e-3
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    weight_decay: float = 0.1
    grad_clip: float = 1.0  # max global grad norm; 0 disables clipping
    accum_steps: int = 1  # micro-batches per optimizer step


@dataclass
class ScheduleConfig:
    steps: int = 200  # optimizer steps in the whole run
    warmup_steps: int = 20  # linear warmup from 0
    cosine: bool = True  # cosine decay after warmup (else constant)
    min_lr_ratio: float = 0.1  # the cosine ends at lr * min_lr_ratio
    stop_at: int = 0  # stop after this step (with a checkpoint) though the schedule goes on; 0: never


@dataclass
class CheckpointConfig:
    dir: str = "runs/tiny"  # the run directory: checkpoints (step_*/), log.jsonl, tb/, config.yaml
    every: int = 100  # steps between checkpoints (0: only at the end)
    keep_last: int = 3  # older checkpoints are deleted
    resume: str = ""  # "" (start fresh), "auto" (latest checkpoint in dir) or a checkpoint path
    at_end: bool = True  # also save when the run ends (benchmarks turn it off)


@dataclass
class EvalConfig:
    every: int = 50  # steps between held-out evaluations (0: only at the end)
    batches: int = 4  # held-out micro-batches per evaluation


@dataclass
class RuntimeConfig:
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dtype: str = "auto"  # auto (bf16 autocast on CUDA, fp32 on CPU) | float32 | bfloat16
    compile: bool = False  # torch.compile each decoder block for training (evaluation stays eager)
    activation_checkpointing: bool = False  # recompute each block in backward (saves memory)
    seed: int = 0
    threads: int = 0  # CPU intra-op threads per process (0: PyTorch's default, one per core)
    distributed: str = "none"  # none | ddp | fsdp2 (launch with torchrun)


@dataclass
class LoggingConfig:
    every: int = 10  # steps between log lines / JSONL records
    jsonl: bool = True  # <run dir>/log.jsonl
    tensorboard: bool = True  # <run dir>/tb/ when the tensorboard package is installed
    progress: bool = True  # tqdm progress bar (rank 0)


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


CHOICES: dict[str, tuple[str, ...]] = {
    "data.source": ("builtin", "text", "jsonl", "parquet", "task"),
    "runtime.dtype": ("auto", "float32", "bfloat16"),
    "runtime.distributed": ("none", "ddp", "fsdp2"),
}

_FREEFORM = {"model.overrides", "data.task_params"}  # mappings whose keys are not checked here


# ---------------------------------------------------------------------------------------------
# Parsing values to the declared field types


def _parse_scalar_text(text: str) -> Any:
    """A command-line value as YAML would read it (``4`` -> int, ``true`` -> bool, ``[1, 2]`` -> list)."""
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _coerce(value: Any, tp: Any, name: str) -> Any:
    """Convert ``value`` (from YAML, TOML or the command line) to the field type ``tp``, or raise."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        return _coerce(value, args[0], name)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "on", "1", "false", "no", "off", "0"):
            return value.lower() in ("true", "yes", "on", "1")
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise ConfigError(f"{name} must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{name} must be an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.replace("_", ""))
            except ValueError:
                try:
                    f = float(value)  # allow 1e3
                except ValueError:
                    f = None
                if f is not None and f.is_integer():
                    return int(f)
        raise ConfigError(f"{name} must be an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # PyYAML reads "3e-4" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{name} must be a number, got {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{name} must be a string, got {value!r}")
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if isinstance(value, str):
            parsed = _parse_scalar_text(value)
            value = parsed if isinstance(parsed, list) else [v.strip() for v in value.split(",") if v.strip()]
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            value = [value]
        return [_coerce(v, item_tp, f"{name}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if isinstance(value, str):
            value = _parse_scalar_text(value)
        if not isinstance(value, dict):
            raise ConfigError(f"{name} must be a mapping, got {value!r}")
        return dict(value)
    if tp is Any:
        return value
    raise AssertionError(f"unsupported config field type {tp} for {name}")


def _section_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _set_field(cfg: TrainConfig, dotted: str, value: Any, *, from_text: bool) -> None:
    """Set ``section.field`` (or ``section.mapping.key``) on ``cfg``, checking names and types."""
    parts = dotted.split(".")
    sections = {f.name: f for f in dataclasses.fields(TrainConfig)}
    if parts[0] not in sections:
        raise ConfigError(f"unknown config section {parts[0]!r} in {dotted!r}; valid sections: "
                          f"{', '.join(sections)}")
    section = getattr(cfg, parts[0])
    hints = _section_types(type(section))
    if len(parts) < 2 or parts[1] not in hints:
        got = parts[1] if len(parts) > 1 else "(none)"
        raise ConfigError(f"unknown field {got!r} in section {parts[0]!r}; valid fields: "
                          f"{', '.join(hints)}")
    name = f"{parts[0]}.{parts[1]}"
    if len(parts) > 2:  # one key inside a free-form mapping: --model.overrides.num_layers 4
        if name not in _FREEFORM:
            raise ConfigError(f"{name} is not a mapping; {dotted!r} is not a valid key")
        key = ".".join(parts[2:])
        getattr(section, parts[1])[key] = _parse_scalar_text(value) if from_text else value
        return
    tp = hints[parts[1]]
    coerced = _coerce(value, tp, name)
    if name in CHOICES and coerced not in CHOICES[name]:
        raise ConfigError(f"{name} must be one of {', '.join(CHOICES[name])}; got {coerced!r}")
    setattr(section, parts[1], coerced)


def _flatten(mapping: dict[str, Any], where: str) -> list[tuple[str, Any]]:
    """``{section: {field: value}}`` -> ``[("section.field", value)]`` (mappings stay whole)."""
    out = []
    for section, fields in mapping.items():
        if not isinstance(fields, dict):
            raise ConfigError(f"{where}: section {section!r} must be a mapping of fields, got {fields!r}")
        for key, value in fields.items():
            out.append((f"{section}.{key}", value))
    return out


def load_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML (``.yaml``/``.yml``) or TOML (``.toml``) config file into a plain mapping."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    text = path.read_text()
    if path.suffix == ".toml":
        import tomllib

        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: invalid TOML: {e}") from None
    elif path.suffix in (".yaml", ".yml"):
        import yaml

        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: invalid YAML: {e}") from None
    else:
        raise ConfigError(f"{path}: config must be .yaml, .yml or .toml")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    return data


def parse_overrides(args: list[str]) -> list[tuple[str, str]]:
    """``["--optim.lr", "3e-4", "--runtime.compile=true"]`` -> ``[("optim.lr", "3e-4"), ...]``."""
    out, i = [], 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--") or len(arg) == 2:
            raise ConfigError(f"expected --section.field VALUE, got {arg!r}")
        key = arg[2:]
        if "=" in key:
            key, value = key.split("=", 1)
            i += 1
        else:
            if i + 1 >= len(args):
                raise ConfigError(f"{arg} needs a value")
            value = args[i + 1]
            i += 2
        out.append((key, value))
    return out


def build_config(
    mapping: dict[str, Any] | None = None,
    overrides: list[tuple[str, str]] | None = None,
    *,
    where: str = "config",
) -> TrainConfig:
    """Defaults, then the file's mapping, then command-line overrides (text, parsed to each type)."""
    cfg = TrainConfig()
    for key, value in _flatten(mapping or {}, where):
        _set_field(cfg, key, value, from_text=False)
    for key, value in overrides or []:
        _set_field(cfg, key, value, from_text=True)
    validate(cfg)
    return cfg


def load_config(path: str | Path, overrides: list[str] | None = None) -> TrainConfig:
    """The whole path from a file and ``--section.field value`` arguments to a checked config."""
    return build_config(load_file(path), parse_overrides(overrides or []), where=str(path))


def validate(cfg: TrainConfig) -> None:
    """Checks across fields that the types alone cannot express."""
    positive = {
        "data.seq_len": cfg.data.seq_len, "data.batch_size": cfg.data.batch_size,
        "optim.accum_steps": cfg.optim.accum_steps, "schedule.steps": cfg.schedule.steps,
        "eval.batches": cfg.eval.batches, "logging.every": cfg.logging.every,
    }
    for name, value in positive.items():
        if value < 1:
            raise ConfigError(f"{name} must be >= 1, got {value}")
    for name, value in {"checkpoint.every": cfg.checkpoint.every, "eval.every": cfg.eval.every,
                        "schedule.warmup_steps": cfg.schedule.warmup_steps,
                        "checkpoint.keep_last": cfg.checkpoint.keep_last,
                        "schedule.stop_at": cfg.schedule.stop_at,
                        "runtime.threads": cfg.runtime.threads}.items():
        if value < 0:
            raise ConfigError(f"{name} must be >= 0, got {value}")
    if not 0.0 <= cfg.data.heldout_fraction < 1.0:
        raise ConfigError(f"data.heldout_fraction must be in [0, 1), got {cfg.data.heldout_fraction}")
    if len(cfg.optim.betas) != 2:
        raise ConfigError(f"optim.betas must be two numbers, got {cfg.optim.betas}")
    if cfg.optim.lr <= 0:
        raise ConfigError(f"optim.lr must be > 0, got {cfg.optim.lr}")
    if cfg.data.seq_len < 2 and cfg.data.source != "task":
        raise ConfigError(f"data.seq_len must be >= 2 (a row needs a target), got {cfg.data.seq_len}")
    if cfg.data.source in ("text", "jsonl", "parquet") and not cfg.data.paths:
        raise ConfigError(f"data.source={cfg.data.source} needs data.paths (files or directories)")


def to_yaml(cfg: TrainConfig) -> str:
    import yaml

    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
