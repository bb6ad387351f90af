"""Summarise Nsight Compute's per-source-line export: where a Triton kernel's warps stall.

    ncu --section SourceCounters --section WarpStateStats --import-source yes -k regex:NAME -c 1 \\
        -o rep python3 benchmarks/ncu_kernels.py --T 2048
    ncu --import rep.ncu-rep --page source --csv --print-source cuda,sass > lines.csv
    python benchmarks/ncu_lines.py lines.csv --top 30 --opcodes 5

Prints the source lines with the most warp-stall samples (share of all samples, the three largest
stall reasons, instructions executed, local-memory sectors: spills) and, for the ``--opcodes``
heaviest lines, which SASS instructions carry their samples. A line's samples include the code
the compiler emitted for it, such as the shared-memory staging of an MMA operand produced there.
"""

from __future__ import annotations

import argparse
import csv
from collections import Counter
from dataclasses import dataclass, field

SAMPLES = "Warp Stall Sampling (All Samples)"


@dataclass
class Line:
    where: str
    source: str
    counts: Counter = field(default_factory=Counter)  # per-line totals as ncu reports them
    opcodes: Counter = field(default_factory=Counter)  # stall samples per SASS opcode


def _int(text: str) -> int:
    return int(text) if text.lstrip("-").isdigit() else 0


def parse(path: str) -> list[Line]:
    """One ``Line`` per source line of every file in the export (rows with a line number), with
    the SASS rows that follow it attributed to it."""
    lines: list[Line] = []
    header: list[str] = []
    file_name = ""
    with open(path, newline="") as f:
        for row in csv.reader(f):
            if not row:
                continue
            if row[0] == "File Path":
                file_name = row[1].rsplit("/", 1)[-1]
            elif row[0] == "Line No":
                header = row
            elif row[0] == "Function Name" or not header:
                continue
            elif row[0]:  # a source line: its totals
                line = Line(f"{file_name}:{row[0]}", row[1].strip())
                line.counts.update({k: _int(v) for k, v in zip(header, row) if k == SAMPLES or
                                    k.startswith("stall_") or k in ("Instructions Executed",
                                                                   "L2 Theoretical Sectors Local")})
                lines.append(line)
            elif lines and len(row) > 3 and row[3].split():  # a SASS instruction of that line
                words = row[3].split()
                opcode = (words[1] if words[0].startswith("@") and len(words) > 1 else words[0]).split(".")[0]
                lines[-1].opcodes[opcode] += _int(dict(zip(header, row)).get(SAMPLES, "0"))
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("csv")
    ap.add_argument("--top", type=int, default=30, help="source lines to list")
    ap.add_argument("--opcodes", type=int, default=5, help="lines whose SASS opcodes to break down")
    args = ap.parse_args()
    lines = sorted(parse(args.csv), key=lambda ln: -ln.counts[SAMPLES])
    total = sum(ln.counts[SAMPLES] for ln in lines) or 1
    print(f"{total:,} warp-stall samples over {len(lines)} source lines")
    print(f"{'share':>6} {'samples':>9} {'instr':>12} {'local':>10}  line / source / top stall reasons")
    for ln in lines[:args.top]:
        c = ln.counts
        reasons = Counter({k[6:]: v for k, v in c.items() if k.startswith("stall_") and "Not" not in k})
        top = ", ".join(f"{k} {v / max(c[SAMPLES], 1):.0%}" for k, v in reasons.most_common(3))
        print(f"{c[SAMPLES] / total:6.1%} {c[SAMPLES]:9,} {c['Instructions Executed']:12,} "
              f"{c['L2 Theoretical Sectors Local']:10,}  {ln.where} {ln.source[:80]!r} [{top}]")
    for ln in lines[:args.opcodes]:
        ops = ", ".join(f"{op} {n:,}" for op, n in ln.opcodes.most_common(6))
        print(f"\n{ln.where} by SASS opcode: {ops}")


if __name__ == "__main__":
    main()
