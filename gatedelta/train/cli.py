"""``gatedelta train CONFIG [--section.field VALUE ...] [--resume [PATH]]`` (or ``-m gatedelta.train``).

Known mistakes (bad config, missing data, unknown preset, ...) print one ``error: ...`` line and
exit with code 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import os
import sys

USAGE = """\
usage: gatedelta train CONFIG [--section.field VALUE ...] [--resume [PATH]] [--print-config]

  CONFIG             a YAML or TOML file (see configs/tiny.yaml); sections: model, data, optim,
                     schedule, checkpoint, eval, runtime, logging
  --section.field V  override one field, e.g. --optim.lr 3e-4 --data.seq_len 512
                     --model.overrides.num_layers 4 (free-form keys for the model preset)
  --resume [PATH]    continue from the latest complete checkpoint of checkpoint.dir, or from PATH
                     (a checkpoint or a run directory)
  --print-config     print the resolved config and exit

Many processes: torchrun --nproc_per_node N -m gatedelta.train CONFIG --runtime.distributed ddp|fsdp2
"""


def _split_resume(argv: list[str]) -> tuple[list[str], str | None, bool]:
    """Pull ``--resume [PATH]`` and ``--print-config`` out of the override list."""
    rest, resume, show = [], None, False
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "--resume":
            nxt = argv[i + 1] if i + 1 < len(argv) else None
            if nxt is not None and not nxt.startswith("--"):
                resume, i = nxt, i + 2
            else:
                resume, i = "auto", i + 1
        elif a.startswith("--resume="):
            resume, i = a.split("=", 1)[1] or "auto", i + 1
        elif a == "--print-config":
            show, i = True, i + 1
        else:
            rest.append(a)
            i += 1
    return rest, resume, show


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    import torch

    from ..data.tokenizer import DataError
    from .config import UserError, load_config, to_yaml

    is_main = int(os.environ.get("RANK", "0")) == 0
    try:
        overrides, resume, show = _split_resume(argv[1:])
        cfg = load_config(argv[0], overrides)
        if resume is not None:
            cfg.checkpoint.resume = resume
        if show:
            print(to_yaml(cfg), end="")
            return 0
        from .loop import train

        result = train(cfg)
    except (UserError, DataError) as e:
        if is_main:
            print(f"error: {e}", file=sys.stderr)
        return 2
    except torch.OutOfMemoryError:
        if is_main:
            print(f"error: out of GPU memory at data.seq_len={cfg.data.seq_len} x data.batch_size="
                  f"{cfg.data.batch_size} on {cfg.model.preset}/{cfg.model.size}; lower data.batch_size "
                  "(raise optim.accum_steps to keep the step size), set runtime.activation_checkpointing "
                  "true, or shard with runtime.distributed fsdp2", file=sys.stderr)
        return 2
    return 130 if result.interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
