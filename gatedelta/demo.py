"""``gatedelta demo`` — the main job: which mixer keeps the needle?

Trains small models of matched recurrent-state size — Gated DeltaNet, KDA, Gated DeltaNet-2, Mamba2
and softmax attention with and without the G1 output gate — on two retrieval tasks, evaluates them
at lengths beyond training, and writes ``runs/demo/report.md`` with tables, plots and JSON:

1. **MQAR** (Zoology): ``num_kv_pairs`` associations to recall, trained at one length, evaluated
   at longer ones (queries drift further from the pairs).
2. **MK-NIAH** (token-level RULER): four needles in a random-token haystack, one queried; trained
   at one length, evaluated at longer ones and every depth.
3. **Diagnostics** of the attention models: first-token attention share (sink) with and without the
   gate, and the largest hidden activation per layer.

Every recurrent mixer gets the same state per layer (``num_heads × head_dim × head_dim`` floats;
Mamba2 keeps its expand-2 shape with head and state sizes chosen for the same count), the same
width, depth, data, steps and optimizer. Defaults finish in under 10 minutes on a 2-core CPU;
``--scale N`` multiplies steps, lengths and pairs for a GPU.

The training step is a compact AdamW loop here (not :mod:`gatedelta.train`): the demo
trains twelve tiny models in one process and needs none of the trainer's checkpointing, corpus or
distribution machinery.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from gatedelta.data.tasks import make_task

# label -> (preset, overrides). Layer patterns are set explicitly so every model is "pure".
MIXERS: dict[str, tuple[str, dict[str, Any]]] = {
    "gdn": ("gdn", {"layer_pattern": ["gdn"]}),
    "kda": ("kda", {"layer_pattern": ["kda"]}),
    "gdn2": ("gdn2", {"layer_pattern": ["gdn2"]}),
    "mamba2": ("mamba2", {"layer_pattern": ["mamba2"]}),
    "attn": ("transformer", {"layer_pattern": ["attn"], "attn_gate": None}),
    "attn-g1": ("transformer-gated", {"layer_pattern": ["attn"], "attn_gate": "elementwise"}),
}
ATTENTION = ("attn", "attn-g1")


@dataclass
class DemoConfig:
    """Everything the demo does; ``--scale`` multiplies the starred fields."""

    out: str = "runs/demo"
    mixers: list[str] = field(default_factory=lambda: list(MIXERS))
    tasks: list[str] = field(default_factory=lambda: ["mqar", "niah"])
    seed: int = 0
    device: str = "cpu"
    threads: int = 0                       # 0: all cores
    # model (same for every mixer)
    vocab_size: int = 64
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 2
    head_dim: int = 32
    # optimisation
    steps: int = 400                       # *
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.1
    # MQAR
    mqar_train_len: int = 64               # *
    mqar_kv_pairs: int = 8                 # *
    mqar_eval_lens: list[int] = field(default_factory=lambda: [64, 128, 256])  # *
    # token-level MK-NIAH
    niah_train_len: int = 64               # *
    niah_eval_lens: list[int] = field(default_factory=lambda: [64, 128, 256, 512])  # *
    niah_depths: list[float] = field(default_factory=lambda: [0.0, 0.5, 1.0])
    eval_samples: int = 48
    diag_len: int = 128                    # *

    def scaled(self, s: int) -> DemoConfig:
        if s == 1:
            return self
        c = DemoConfig(**asdict(self))
        c.steps *= s
        c.mqar_train_len *= s
        c.mqar_kv_pairs *= s
        c.mqar_eval_lens = [t * s for t in c.mqar_eval_lens]
        c.niah_train_len *= s
        c.niah_eval_lens = [t * s for t in c.niah_eval_lens]
        c.diag_len *= s
        c.vocab_size = max(c.vocab_size, 8 * c.mqar_kv_pairs)   # room for distinct keys and values
        return c


QUICK = dict(steps=3, batch_size=4, eval_samples=4, mqar_train_len=32, mqar_eval_lens=[32, 48],
             niah_train_len=32, niah_eval_lens=[32, 48], niah_depths=[0.0, 1.0], diag_len=32)


# ---------------------------------------------------------------------------------------------
# 1. Models and training
# ---------------------------------------------------------------------------------------------


def build_model(mixer: str, cfg: DemoConfig) -> torch.nn.Module:
    """A fresh model of ``mixer`` with the demo's shared width, depth and per-layer state."""
    from gatedelta.models import GatedDeltaForCausalLM, preset_config

    preset, overrides = MIXERS[mixer]
    overrides = dict(overrides, vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size,
                     num_layers=cfg.num_layers, num_heads=cfg.num_heads, head_dim=cfg.head_dim)
    if mixer == "mamba2":
        # Mamba2's canonical expand-2 shape with the same state: (2·hidden / P) heads × P × N
        # floats with N = P, i.e. 2·hidden·P = num_heads·head_dim² (8 heads × 16 × 16 = 2048 here).
        p = max(1, cfg.num_heads * cfg.head_dim ** 2 // (2 * cfg.hidden_size))
        overrides.update(mamba_head_dim=p, mamba_state_size=p, mamba_num_heads=2 * cfg.hidden_size // p)
    torch.manual_seed(cfg.seed)
    return GatedDeltaForCausalLM(preset_config(preset, size="tiny", **overrides))


def state_floats(model: torch.nn.Module) -> int | None:
    """Recurrent state floats per layer of a pure model (``None`` for attention: a growing KV cache)."""
    c = model.config
    kind = c.layer_pattern[0]
    if kind == "mamba2":
        return c.mamba_num_heads * c.mamba_head_dim * c.mamba_state_size
    if kind in ("attn", "swa"):
        return None
    return c.num_heads * c.head_dim * c.head_dim


def wsd(step: int, steps: int, warmup: float = 0.05, decay: float = 0.25) -> float:
    """Warm-up, stable, decay: the lr multiplier at ``step``. Retrieval tasks learn in a sudden drop
    after a plateau; a cosine over a short run lowers the lr before that drop, a flat middle does not."""
    w, d = max(1, int(warmup * steps)), max(1, int(decay * steps))
    if step < w:
        return (step + 1) / w
    return min(1.0, max(0.0, (steps - step) / d))


def fit(model: torch.nn.Module, task: Any, cfg: DemoConfig, *, desc: str) -> dict[str, Any]:
    """AdamW with the :func:`wsd` schedule on fresh task samples; returns the loss curve."""
    from gatedelta.train.loop import param_groups  # no decay on norms, biases, A_log, dt_bias

    opt = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: wsd(s, cfg.steps))
    g = torch.Generator().manual_seed(cfg.seed + 1)
    model.train()
    losses, t0 = [], time.perf_counter()
    bar = tqdm(range(cfg.steps), desc=desc, leave=False, dynamic_ncols=True)
    for _ in bar:
        batch = task.sample(cfg.batch_size, g)
        loss = model(input_ids=batch["input_ids"].to(cfg.device), labels=batch["labels"].to(cfg.device)).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))   # a sync per step; negligible at these sizes
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
    return {"losses": losses, "seconds": time.perf_counter() - t0}


# ---------------------------------------------------------------------------------------------
# 2. Evaluation
# ---------------------------------------------------------------------------------------------


def run_mixer_task(mixer: str, task_name: str, cfg: DemoConfig) -> dict[str, Any]:
    """Train ``mixer`` on ``task_name`` and evaluate it at every evaluation length."""
    from gatedelta.evaluate.retrieval import eval_mqar, eval_niah_tokens

    model = build_model(mixer, cfg).to(cfg.device)
    params = sum(p.numel() for p in model.parameters())
    if task_name == "mqar":
        task = make_task("mqar", vocab_size=cfg.vocab_size, seq_len=cfg.mqar_train_len,
                         num_kv_pairs=cfg.mqar_kv_pairs)
    else:
        task = make_task("niah", vocab_size=cfg.vocab_size, seq_len=cfg.niah_train_len)
    train = fit(model, task, cfg, desc=f"{task_name}/{mixer}")
    t0 = time.perf_counter()
    if task_name == "mqar":
        rows = eval_mqar(model, vocab_size=cfg.vocab_size, seq_lens=cfg.mqar_eval_lens,
                         kv_pairs=[cfg.mqar_kv_pairs], num_samples=cfg.eval_samples, batch_size=32,
                         seed=cfg.seed + 1000, progress=False)
        by_len = {r["seq_len"]: r["accuracy"] for r in rows}
    else:
        rows = eval_niah_tokens(model, vocab_size=cfg.vocab_size, seq_lens=cfg.niah_eval_lens,
                                depths=cfg.niah_depths, num_samples=cfg.eval_samples, batch_size=32,
                                seed=cfg.seed + 1000, progress=False)
        by_len = {T: sum(r["accuracy"] for r in rows if r["seq_len"] == T) / len(cfg.niah_depths)
                  for T in cfg.niah_eval_lens}
    record: dict[str, Any] = {
        "mixer": mixer, "task": task_name, "params": params,
        "state_floats_per_layer": state_floats(model),
        "train_seconds": train["seconds"], "eval_seconds": time.perf_counter() - t0,
        "final_loss": sum(train["losses"][-20:]) / len(train["losses"][-20:]),
        "loss_curve": train["losses"][:: max(1, len(train["losses"]) // 50)],
        "accuracy_by_length": by_len, "rows": rows,
    }
    if mixer in ATTENTION:
        from gatedelta.evaluate.diagnostics import diagnose

        diag_task = make_task("niah", vocab_size=cfg.vocab_size, seq_len=cfg.diag_len)
        x = diag_task.sample(16, torch.Generator().manual_seed(cfg.seed + 2000))["input_ids"]
        record["diagnostics"] = diagnose(model, x.to(cfg.device))
    return record


# ---------------------------------------------------------------------------------------------
# 3. Report
# ---------------------------------------------------------------------------------------------


def _acc_table(records: list[dict[str, Any]], task: str, lengths: list[int], train_len: int) -> str:
    head = "| mixer | state/layer | params | train s | final loss | " + " | ".join(
        f"T={T}{' (train)' if T == train_len else ''}" for T in lengths) + " |"
    lines = [head, "|" + "---|" * (5 + len(lengths))]
    for r in (r for r in records if r["task"] == task):
        n = r["state_floats_per_layer"]
        state = "KV cache (grows with T)" if n is None else f"{n:,}"
        accs = " | ".join(f"{r['accuracy_by_length'][T]:.3f}" for T in lengths)
        lines.append(f"| {r['mixer']} | {state} | {r['params']:,} | {r['train_seconds']:.0f} | "
                     f"{r['final_loss']:.3f} | {accs} |")
    return "\n".join(lines)


def uniform_sink_share(T: int) -> float:
    """First-token share of uniform causal attention over queries 1..T-1: mean of 1/(t+1)."""
    return sum(1.0 / (t + 1) for t in range(1, T)) / (T - 1)


def _sink_table(records: list[dict[str, Any]]) -> str:
    lines = ["| model | task | sink share per layer (mean over heads) | max head | max \\|h\\| per layer |",
             "|---|---|---|---|---|"]
    for r in records:
        d = r.get("diagnostics")
        if not d:
            continue
        means = ", ".join(f"{v:.3f}" for v in d["sink_share_mean"].values())
        top = max(max(v) for v in d["sink_share"].values())
        acts = ", ".join(f"{v:.1f}" for v in d["max_activation"][1:])
        lines.append(f"| {r['mixer']} | {r['task']} | {means} | {top:.3f} | {acts} |")
    return "\n".join(lines)


def write_report(records: list[dict[str, Any]], cfg: DemoConfig, out: Path, wall: float) -> Path:
    from gatedelta.evaluate import plots

    figs = []
    for task, train_len in (("mqar", cfg.mqar_train_len), ("niah", cfg.niah_train_len)):
        series = {r["mixer"]: r["accuracy_by_length"] for r in records if r["task"] == task}
        if series:
            name = "MQAR" if task == "mqar" else "MK-NIAH (mean over depths)"
            figs.append(plots.lines(series, out / f"{task}_accuracy.png", xlabel="sequence length",
                                    ylabel="accuracy", title=f"{name} accuracy per mixer", logx=True,
                                    vline=train_len, vline_label="training length"))
    sinks = {f"{r['mixer']} ({r['task']})": r["diagnostics"]["sink_share"]
             for r in records if r.get("diagnostics")}
    if sinks:
        figs.append(plots.sink_share_per_layer(sinks, out / "sink_share.png",
                                               title="first-token attention share: ungated vs G1-gated"))
        acts = {f"{r['mixer']} ({r['task']})": r["diagnostics"]["max_activation"]
                for r in records if r.get("diagnostics")}
        figs.append(plots.max_activation_per_layer(acts, out / "max_activation.png"))

    md = [
        "# gatedelta demo: which mixer keeps the needle?", "",
        f"Models: {cfg.num_layers} layers, width {cfg.hidden_size}, {cfg.num_heads} heads of dim "
        f"{cfg.head_dim}; every recurrent mixer holds {cfg.num_heads * cfg.head_dim ** 2:,} state floats per "
        f"layer. Training: {cfg.steps} steps × {cfg.batch_size} sequences, AdamW lr {cfg.lr} "
        f"(warm-up, stable, decay); "
        f"vocabulary {cfg.vocab_size}; seed {cfg.seed}; device {cfg.device}. Wall time {wall:.0f} s.", "",
    ]
    if any(r["task"] == "mqar" for r in records):
        md += [f"## MQAR — {cfg.mqar_kv_pairs} key-value pairs, trained at T={cfg.mqar_train_len}", "",
               "Accuracy = fraction of queries answered (teacher-forced, Zoology's metric).", "",
               _acc_table(records, "mqar", cfg.mqar_eval_lens, cfg.mqar_train_len), "",
               "![MQAR](mqar_accuracy.png)", ""]
    if any(r["task"] == "niah" for r in records):
        md += [f"## MK-NIAH (token-level) — 4 needles, 1 queried, trained at T={cfg.niah_train_len}", "",
               f"Accuracy = fraction of queried needles whose value tokens are all right, mean over depths "
               f"{', '.join(f'{d:.0%}' for d in cfg.niah_depths)} (per-depth numbers in results.json).", "",
               _acc_table(records, "niah", cfg.niah_eval_lens, cfg.niah_train_len), "",
               "![NIAH](niah_accuracy.png)", ""]
    if sinks:
        md += ["## Attention sinks and massive activations (Gated Attention paper diagnostics)", "",
               f"Measured on {cfg.diag_len}-token MK-NIAH inputs: the mean attention probability that "
               "queries (after the first) put on token 0, per layer, and the largest |hidden| per layer. "
               f"Uniform causal attention would give {uniform_sink_share(cfg.diag_len):.3f}; a sink is a "
               "share well above that.",
               "", _sink_table(records), "", "![sink share](sink_share.png)", "",
               "![max activation](max_activation.png)", ""]
    md += ["Reproduce: `make demo` (or `gatedelta demo --help` for the knobs). Raw numbers: "
           "[results.json](results.json).", ""]
    path = out / "report.md"
    path.write_text("\n".join(md))
    return path


# ---------------------------------------------------------------------------------------------
# 4. Entry point
# ---------------------------------------------------------------------------------------------


def default_threads() -> int:
    """Intra-op threads: the cores this process may use, less those other processes keep busy.

    Tiny models issue many small kernels; when their threads share cores with other work, each
    kernel's threads spin waiting for a descheduled sibling (measured: 2 threads on 2 busy cores ran
    a GDN step 20× slower than 1 thread). So count only the cores the 1-minute load leaves free.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    busy = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    return max(1, min(cores, cores - int(busy + 0.5)))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gatedelta demo", description=__doc__.split("\n")[0])
    p.add_argument("--out", default="runs/demo", help="output directory (default: runs/demo)")
    p.add_argument("--scale", type=int, default=1,
                   help="multiply steps, sequence lengths and MQAR pairs (e.g. 4 on a GPU)")
    p.add_argument("--quick", action="store_true", help="a few steps only: a smoke test of the pipeline")
    p.add_argument("--mixers", default=",".join(MIXERS), help=f"subset of {','.join(MIXERS)}")
    p.add_argument("--tasks", default="mqar,niah", help="subset of mqar,niah")
    p.add_argument("--steps", type=int, default=None, help="override training steps")
    p.add_argument("--lr", type=float, default=None, help="override the learning rate")
    p.add_argument("--batch-size", type=int, default=None, help="override the batch size")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=0,
                   help="CPU threads (default: the cores not kept busy by other processes)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    mixers = [m for m in args.mixers.split(",") if m]
    tasks = [t for t in args.tasks.split(",") if t]
    bad = [m for m in mixers if m not in MIXERS] + [t for t in tasks if t not in ("mqar", "niah")]
    if bad or not mixers or not tasks:
        print(f"gatedelta demo: error: unknown mixer/task {bad}; mixers: {', '.join(MIXERS)}; "
              "tasks: mqar, niah", file=sys.stderr)
        return 2
    if args.scale < 1:
        print("gatedelta demo: error: --scale must be >= 1", file=sys.stderr)
        return 2
    cfg = DemoConfig(out=args.out, mixers=mixers, tasks=tasks, seed=args.seed, device=args.device,
                     threads=args.threads)
    if args.quick:
        cfg = DemoConfig(**{**asdict(cfg), **QUICK})
    cfg = cfg.scaled(args.scale)
    for name in ("steps", "lr", "batch_size"):
        if getattr(args, name) is not None:
            setattr(cfg, name, getattr(args, name))
    torch.set_num_threads(cfg.threads or default_threads())

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"gatedelta demo: {len(cfg.mixers)} mixers × {len(cfg.tasks)} tasks, {cfg.steps} steps each, "
          f"device {cfg.device}, {torch.get_num_threads()} CPU thread(s); writing {out}")
    t0 = time.perf_counter()
    records = []
    jobs = [(t, m) for t in cfg.tasks for m in cfg.mixers]
    for task_name, mixer in tqdm(jobs, desc="demo", dynamic_ncols=True):
        r = run_mixer_task(mixer, task_name, cfg)
        records.append(r)
        accs = ", ".join(f"T={T}: {a:.2f}" for T, a in r["accuracy_by_length"].items())
        tqdm.write(f"{task_name:5s} {mixer:8s} loss {r['final_loss']:.3f}  {accs}  "
                   f"({r['train_seconds']:.0f} s)")
    wall = time.perf_counter() - t0
    summary = {"config": asdict(cfg), "wall_seconds": wall, "threads": torch.get_num_threads(),
               "records": records}
    (out / "results.json").write_text(json.dumps(summary, indent=1))
    report = write_report(records, cfg, out, wall)
    print(f"\nwrote {report} ({wall:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
