"""Step-by-step training-loss agreement between runs' ``log.jsonl`` files.

    python benchmarks/compare_losses.py REF.jsonl RUN.jsonl [RUN.jsonl ...] [--out summary.json]

For each RUN: the steps both logs have, the largest and the mean |loss_run - loss_ref| over them,
the difference at the last common step, and the largest relative difference. Used for the
multi-GPU scaling check (``benchmarks/multi_gpu.sh``): N ranks with the same global batch as one
process should follow the single-process loss curve to within reduction-order noise.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def read_losses(path: str | Path) -> dict[int, float]:
    """``{step: loss}`` of every per-step record in a training ``log.jsonl``."""
    losses = {}
    for line in Path(path).read_text().splitlines():
        row = json.loads(line)
        if "loss" in row and isinstance(row["loss"], (int, float)):
            losses[int(row["step"])] = float(row["loss"])
    return losses


def compare(ref: dict[int, float], run: dict[int, float]) -> dict[str, float | int]:
    steps = sorted(set(ref) & set(run))
    if not steps:
        raise ValueError("the two logs have no step in common")
    diffs = [abs(run[s] - ref[s]) for s in steps]
    worst = max(range(len(steps)), key=diffs.__getitem__)
    return {
        "steps": len(steps), "first_step": steps[0], "last_step": steps[-1],
        "max_abs_diff": max(diffs), "max_abs_diff_step": steps[worst],
        "mean_abs_diff": sum(diffs) / len(diffs),
        "max_rel_diff": max(d / abs(ref[s]) for d, s in zip(diffs, steps)),
        "last_ref": ref[steps[-1]], "last_run": run[steps[-1]],
        "last_abs_diff": diffs[-1],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("ref")
    p.add_argument("runs", nargs="+")
    p.add_argument("--out", default=None, help="write the summary here as JSON")
    a = p.parse_args()
    ref = read_losses(a.ref)
    summary = {"ref": a.ref, "runs": {}}
    for path in a.runs:
        r = compare(ref, read_losses(path))
        summary["runs"][path] = r
        print(f"{path}: {r['steps']} steps, max |dloss| {r['max_abs_diff']:.2e} (step "
              f"{r['max_abs_diff_step']}), mean {r['mean_abs_diff']:.2e}, at step {r['last_step']}: "
              f"{r['last_run']:.4f} vs {r['last_ref']:.4f}")
    if a.out:
        Path(a.out).write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
