"""``gatedelta bench kernels|models``: routes to the benchmark that lives beside its subject."""

from __future__ import annotations

import importlib
import sys

TARGETS = {
    "kernels": ("gatedelta.bench.kernels", "token-mixer kernels vs FLA and SDPA (DESIGN §5)"),
    "models": ("gatedelta.bench.models", "model training throughput, decode speed and cache memory"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in TARGETS:
        print("usage: gatedelta bench {" + ",".join(TARGETS) + "} [ARGS...]")
        for name, (_, help_) in TARGETS.items():
            print(f"  {name:<8} {help_}")
        return 0 if not argv or argv[0] in ("-h", "--help") else 2
    return int(importlib.import_module(TARGETS[argv[0]][0]).main(argv[1:]) or 0)
