"""``gatedelta eval CHECKPOINT --task mqar|niah|ppl|diagnostics``: evaluate a checkpoint.

Writes ``<out>/<task>.json`` and PNG plots, and prints a table. Examples::

    gatedelta eval runs/mqar-gdn2 --task mqar --lengths 128,256,512 --kv-pairs 8,16,32
    gatedelta eval runs/niah-kda --task niah --lengths 256,512,1024 --depths 0,0.5,1
    gatedelta eval runs/lm --task niah --form text --niah-task s-niah-2 --lengths 1024,2048
    gatedelta eval runs/lm --task ppl --text-file heldout.txt
    gatedelta eval runs/lm --task diagnostics

Bad task names, lengths or depths exit with status 2 and list what is valid.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

from gatedelta.data.tasks import TEXT_VARIANTS, TOKEN_TASKS, make_task, make_text_task

TASKS = ("mqar", "niah", "ppl", "diagnostics")
NIAH_TOKEN_TASKS = tuple(n for n in TOKEN_TASKS if n != "mqar")


class UsageError(ValueError):
    """A bad argument: reported on stderr with exit status 2."""


def _ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or any(v < 2 for v in values):
        raise argparse.ArgumentTypeError(f"lengths and counts must be integers >= 2, got {text!r}")
    return values


def _fractions(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not values or any(not 0 <= v <= 1 for v in values):
        raise argparse.ArgumentTypeError(f"depths must lie in [0, 1], got {text!r}")
    return values


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gatedelta eval", description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="run directory or checkpoint directory (config + weights)")
    p.add_argument("--task", required=True, choices=TASKS, help="what to measure")
    p.add_argument("--out", default=None, help="output directory (default: <checkpoint>/eval)")
    p.add_argument("--lengths", type=_ints, default=None,
                   help="comma-separated sequence lengths (default: 128,256,512; ppl: 512)")
    p.add_argument("--depths", type=_fractions, default=[0.0, 0.25, 0.5, 0.75, 1.0],
                   help="NIAH needle depths in [0, 1] (default: 0,0.25,0.5,0.75,1)")
    p.add_argument("--kv-pairs", type=_ints, default=[4, 8, 16, 32], help="MQAR numbers of kv pairs")
    p.add_argument("--niah-task", default=None,
                   help=f"NIAH variant: token form {', '.join(NIAH_TOKEN_TASKS)}; text form "
                        f"{', '.join(TEXT_VARIANTS)} (default: niah / s-niah-2)")
    p.add_argument("--form", choices=("auto", "token", "text"), default="auto",
                   help="NIAH as token sequences (models trained on the task) or text prompts (LMs); "
                        "auto: text when the checkpoint has a tokenizer and a vocabulary >= 256")
    p.add_argument("--num-samples", type=int, default=64, help="samples per cell (text NIAH: 8 by default)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--text-file", default=None, help="held-out text for ppl / diagnostics / text haystacks")
    p.add_argument("--max-windows", type=int, default=64, help="ppl: windows evaluated at most")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return p


def load_checkpoint(path: str | Path) -> tuple[torch.nn.Module, Any]:
    """``(model, tokenizer or None)`` from a run or checkpoint directory."""
    path = Path(path)
    if not path.exists():
        raise UsageError(f"checkpoint {str(path)!r} does not exist")
    if (path / "config.json").is_file() and not (path / "meta.json").is_file():
        # a bare `save_pretrained` directory, not written by the trainer
        from gatedelta.data.tokenizer import read_tokenizer
        from gatedelta.models import GatedDeltaForCausalLM

        return GatedDeltaForCausalLM.from_pretrained(str(path)).eval(), read_tokenizer(path)
    from gatedelta.train.checkpoint import load_model_for_inference
    from gatedelta.train.config import UserError

    try:
        return load_model_for_inference(str(path))
    except UserError as e:  # e.g. a run directory with no complete checkpoint
        raise UsageError(str(e)) from None


def heldout_text(path: str | None = None) -> str:
    """Held-out text: the user's file, else the built-in corpus's validation split."""
    if path is not None:
        return Path(path).read_text(encoding="utf-8", errors="replace")
    from gatedelta.data.corpus import read_documents, split_documents
    from gatedelta.train.config import DataConfig

    # the trainer's own held-out split of the built-in corpus (fixed, seed-independent)
    _, heldout = split_documents(read_documents("builtin", []), DataConfig().heldout_fraction)
    return "\n".join(heldout)


def _encode(tokenizer: Any, text: str) -> list[int]:
    if tokenizer is None:  # byte-level default
        return list(text.encode("utf-8"))
    return list(tokenizer.encode(text))


# ---------------------------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------------------------


def grid_table(rows: list[dict[str, Any]], row_key: str, col_key: str, value: str = "accuracy",
               row_fmt: str = "{}", corner: str = "") -> str:
    """A text table of ``value`` with one row per ``row_key`` and one column per ``col_key``."""
    cols = sorted({r[col_key] for r in rows})
    rws = sorted({r[row_key] for r in rows})
    cell = {(r[row_key], r[col_key]): r[value] for r in rows}
    head = f"{corner:>12} | " + " | ".join(f"{c:>7}" for c in cols)
    lines = [head, "-" * len(head)]
    for rv in rws:
        vals = [f"{cell[(rv, c)]:7.3f}" if (rv, c) in cell else f"{'-':>7}" for c in cols]
        lines.append(f"{row_fmt.format(rv):>12} | " + " | ".join(vals))
    return "\n".join(lines)


def diagnostics_table(d: dict[str, Any]) -> str:
    types = d.get("layer_types") or []
    lines = ["layer | type     | sink share (mean, min-max over heads) | max |h| | median |h|",
             "-" * 82]
    for i in range(len(d["max_activation"]) - 1):
        t = types[i] if i < len(types) else "?"
        s = d["sink_share"].get(i)
        share = f"{sum(s) / len(s):.3f} ({min(s):.3f}-{max(s):.3f})" if s else "-"
        lines.append(f"{i:5d} | {t:<8} | {share:<37} | {d['max_activation'][i + 1]:7.2f} | "
                     f"{d['median_activation'][i + 1]:.3f}")
    lines.append(f"embeddings: max |h| {d['max_activation'][0]:.2f}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------------------------


def _validate(args: argparse.Namespace, vocab: int, form: str) -> None:
    """Build every task once so that bad lengths fail before any model work."""
    try:
        _build_tasks(args, vocab, form)
    except ValueError as e:  # the task's message says what is valid
        raise UsageError(str(e)) from None


def _build_tasks(args: argparse.Namespace, vocab: int, form: str) -> None:
    if args.task == "mqar":
        for T in args.lengths:
            if not any(4 * n <= T for n in args.kv_pairs):
                raise UsageError(f"length {T} fits none of --kv-pairs {args.kv_pairs}: MQAR needs "
                                 f"length >= 4 * pairs; valid lengths are >= {4 * min(args.kv_pairs)}")
        for n in args.kv_pairs:
            make_task("mqar", vocab_size=vocab, seq_len=max(args.lengths + [4 * n]), num_kv_pairs=n)
    elif args.task == "niah":
        choices = NIAH_TOKEN_TASKS if form == "token" else tuple(TEXT_VARIANTS)
        if args.niah_task not in choices:
            raise UsageError(f"unknown --niah-task {args.niah_task!r} for the {form} form; "
                             f"choose one of: {', '.join(choices)}")
        for T in args.lengths:
            if form == "token":
                make_task(args.niah_task, vocab_size=vocab, seq_len=T)
            else:
                make_text_task(args.niah_task, seq_len=T, haystack_text="x\n")


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Evaluate and write results; returns the JSON record (also printed as a table)."""
    model, tokenizer = load_checkpoint(args.checkpoint)
    model.to(args.device)
    vocab = int(model.config.vocab_size)
    progress = not args.no_progress
    form = args.form
    if form == "auto":
        form = "text" if tokenizer is not None and vocab >= 256 else "token"
    if args.niah_task is None:
        args.niah_task = "niah" if form == "token" else "s-niah-2"
    if args.lengths is None:
        args.lengths = [512] if args.task in ("ppl", "diagnostics") else [128, 256, 512]
    _validate(args, vocab, form)

    out = Path(args.out or Path(args.checkpoint) / "eval")
    out.mkdir(parents=True, exist_ok=True)
    from gatedelta.evaluate import plots

    record: dict[str, Any] = {"checkpoint": str(args.checkpoint), "task": args.task, "seed": args.seed}
    pngs: list[Path] = []
    if args.task == "mqar":
        from gatedelta.evaluate.retrieval import eval_mqar

        rows = eval_mqar(model, vocab_size=vocab, seq_lens=args.lengths, kv_pairs=args.kv_pairs,
                         num_samples=args.num_samples, batch_size=args.batch_size, seed=args.seed,
                         progress=progress)
        record["results"] = rows
        table = grid_table(rows, "num_kv_pairs", "seq_len", row_fmt="{} pairs", corner="pairs \\ T")
        series = {f"T={T}": {r["num_kv_pairs"]: r["accuracy"] for r in rows if r["seq_len"] == T}
                  for T in args.lengths}
        pngs.append(plots.lines(series, out / "mqar.png", xlabel="number of kv pairs", ylabel="accuracy",
                                title="MQAR accuracy", logx=True))
    elif args.task == "niah":
        from gatedelta.evaluate.retrieval import eval_niah_text, eval_niah_tokens

        if form == "token":
            rows = eval_niah_tokens(model, vocab_size=vocab, seq_lens=args.lengths, depths=args.depths,
                                    task=args.niah_task, num_samples=args.num_samples,
                                    batch_size=args.batch_size, seed=args.seed, progress=progress)
        else:
            hay = heldout_text(args.text_file)
            rows = eval_niah_text(model, tokenizer, variant=args.niah_task, seq_lens=args.lengths,
                                  depths=args.depths, num_samples=min(args.num_samples, 8), seed=args.seed,
                                  haystack_text=hay, progress=progress)
        record.update(form=form, niah_task=args.niah_task, results=rows)
        table = grid_table(rows, "depth", "seq_len", row_fmt="{:.0%}", corner="depth \\ T")
        pngs.append(plots.niah_heatmap(rows, out / "niah_heatmap.png", title=f"{args.niah_task} accuracy"))
    elif args.task == "ppl":
        from gatedelta.evaluate.perplexity import perplexity

        tokens = torch.tensor(_encode(tokenizer, heldout_text(args.text_file)), dtype=torch.long)
        if int(tokens.max()) >= vocab:
            raise UsageError(f"the text's token ids reach {int(tokens.max())} but the model's vocabulary "
                             f"has {vocab}: this checkpoint is not a byte-level language model")
        rows = [perplexity(model, tokens, seq_len=T, batch_size=args.batch_size, max_windows=args.max_windows,
                           progress=progress) for T in args.lengths]
        record["results"] = rows
        table = "\n".join(f"seq_len {r['seq_len']:>6}: ppl {r['ppl']:.3f}  ({r['bits_per_token']:.3f} "
                          f"bits/token over {r['tokens']} tokens)" for r in rows)
    else:
        from gatedelta.evaluate.diagnostics import diagnose

        T = args.lengths[0]
        if tokenizer is not None and vocab >= 256:
            ids = torch.tensor(_encode(tokenizer, heldout_text(args.text_file)), dtype=torch.long)
            n = min(args.batch_size, ids.numel() // T)
            if n == 0:
                raise UsageError(f"the held-out text is shorter than one window of {T} tokens")
            x = ids[: n * T].view(n, T)
        else:  # a task model: diagnose it on its own kind of input
            task = make_task("niah", vocab_size=vocab, seq_len=T)
            x = task.sample(args.batch_size, torch.Generator().manual_seed(args.seed))["input_ids"]
        d = diagnose(model, x.to(args.device))
        record["results"] = d
        table = diagnostics_table(d)
        if d["sink_share"]:
            pngs.append(plots.sink_share_per_layer({Path(args.checkpoint).name: d["sink_share"]},
                                                   out / "sink_share.png"))
        pngs.append(plots.max_activation_per_layer({Path(args.checkpoint).name: d["max_activation"]},
                                                   out / "max_activation.png"))
    record["plots"] = [str(p) for p in pngs]
    json_path = out / f"{args.task}.json"
    json_path.write_text(json.dumps(record, indent=2))
    print(table)
    print(f"\nwrote {json_path}" + "".join(f"\nwrote {p}" for p in pngs))
    return record


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)  # argparse exits with status 2 and lists choices on bad input
    try:
        run(args)
    except UsageError as e:
        print(f"gatedelta eval: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
