"""``gatedelta`` command line: one entry point, one subcommand per pipeline stage.

Each subcommand lives with the code it drives and exposes ``main(argv) -> int``; this file only
routes, so ``gatedelta --help`` stays fast (nothing heavy is imported until a command runs).
"""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "train": ("gatedelta.train.cli", "pretrain a preset on a corpus or a synthetic task"),
    "generate": ("gatedelta.train.generate", "stream tokens from a trained checkpoint"),
    "eval": ("gatedelta.evaluate.cli", "MQAR / NIAH / perplexity / diagnostics on a checkpoint"),
    "demo": ("gatedelta.demo", "the main job: which mixer keeps the needle (writes runs/demo/report.md)"),
    "bench": ("gatedelta.bench.cli", "kernel and model benchmarks (GPU)"),
    "corpus": ("gatedelta.data.corpus", "build the built-in real-text corpus"),
}


def _usage() -> str:
    lines = ["usage: gatedelta COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<10} {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "`gatedelta COMMAND --help` describes each command."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"gatedelta: unknown command {name!r}; choose one of: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
