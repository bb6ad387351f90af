"""``gatedelta generate CHECKPOINT --prompt TEXT``: stream text from a trained checkpoint.

Tokens are printed the moment they are sampled. The prompt is prefilled once; every next token
then costs one decode step through the model's cache (constant memory for the recurrent layers),
falling back to a full forward per token for a model without a cache.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator

import torch

from ..data.tokenizer import DataError
from ..models.modeling import output_cache
from .config import UserError


def sample_next(logits: torch.Tensor, *, temperature: float, top_k: int, vocab: int) -> torch.Tensor:
    """One token id per row from ``logits [B, V]`` (greedy when temperature is 0)."""
    logits = logits[:, :vocab].float()  # never sample the embedding's padding ids
    if temperature <= 0:
        return logits.argmax(-1)
    logits = logits / temperature
    if 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.multinomial(torch.softmax(logits, -1), 1).squeeze(-1)


@torch.no_grad()
def stream_tokens(model: torch.nn.Module, input_ids: torch.Tensor, *, max_new_tokens: int,
                  temperature: float = 0.8, top_k: int = 50, vocab: int | None = None,
                  stop_id: int | None = None) -> Iterator[int]:
    """Yield sampled token ids one at a time (``input_ids``: ``[1, T]`` prompt)."""
    vocab = vocab or model.config.vocab_size
    out = model(input_ids=input_ids, use_cache=True)
    cache = output_cache(out)
    ids = input_ids
    for _ in range(max_new_tokens):
        nxt = sample_next(out.logits[:, -1], temperature=temperature, top_k=top_k, vocab=vocab)
        token = int(nxt[0])
        if stop_id is not None and token == stop_id:
            return
        yield token
        step = nxt.view(1, 1).to(ids.device)
        ids = torch.cat([ids, step], 1)
        if cache is not None:
            out = model(input_ids=step, past_key_values=cache, use_cache=True)
            cache = output_cache(out)
        else:
            out = model(input_ids=ids)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="gatedelta generate", description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="a checkpoint directory or a run directory (latest checkpoint)")
    parser.add_argument("--prompt", default="", help="text to continue")
    parser.add_argument("--max-new-tokens", type=int, default=200)
    parser.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    parser.add_argument("--top-k", type=int, default=50, help="0 = no top-k filtering")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)

    from .checkpoint import load_model_for_inference
    from .distributed import pick_device

    try:
        device = pick_device(args.device)
        model, tokenizer = load_model_for_inference(args.checkpoint, device=device)
        if tokenizer is None:
            raise UserError(f"{args.checkpoint} was trained on a synthetic task (no tokenizer): "
                            "nothing to generate text with")
    except (UserError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    torch.manual_seed(args.seed)
    prompt = ([tokenizer.bos_id] if tokenizer.bos_id is not None else []) + tokenizer.encode(args.prompt)
    input_ids = torch.tensor([prompt], dtype=torch.long, device=device)
    decoder = tokenizer.stream_decoder()
    sys.stdout.write(args.prompt)
    sys.stdout.flush()
    for token in stream_tokens(model, input_ids, max_new_tokens=args.max_new_tokens,
                               temperature=args.temperature, top_k=args.top_k,
                               vocab=tokenizer.vocab_size, stop_id=tokenizer.eos_id):
        sys.stdout.write(decoder.push(token))
        sys.stdout.flush()
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
