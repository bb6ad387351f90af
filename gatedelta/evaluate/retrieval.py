"""Retrieval accuracy: MQAR per number of pairs, NIAH per length × depth (token-level and text).

Token-level tasks are scored teacher-forced in one forward pass: the prediction for a labelled
position ``t`` is ``argmax logits[t - 1]``. MQAR counts each query (Zoology's accuracy); NIAH counts
a needle as found only when every value token is right. Text prompts are scored the RULER way:
greedy generation, then "does the needle's value appear in the answer".
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from tqdm.auto import tqdm

from gatedelta.data.tasks import IGNORE_INDEX, make_task, make_text_task


@torch.no_grad()
def score_batch(model: torch.nn.Module, input_ids: torch.Tensor,
                labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """Teacher-forced correctness at the labelled positions.

    Args:
        input_ids, labels: ``[B, T]`` int64; labels in the HF convention (``-100`` unscored).

    Returns:
        ``correct`` ``[B]`` (number of labelled positions predicted right), ``scored`` ``[B]``
        (number of labelled positions), ``exact`` ``[B]`` bool (all of a row's positions right).
    """
    logits = model(input_ids=input_ids).logits                   # (B, T, V)
    pred = logits[:, :-1].argmax(-1)                              # (B, T-1): prediction for t+1
    target = labels[:, 1:]
    mask = target != IGNORE_INDEX
    hit = (pred == target) & mask
    correct, scored = hit.sum(1), mask.sum(1)
    return {"correct": correct, "scored": scored, "exact": correct == scored}


def _batches(n: int, batch_size: int) -> Iterable[int]:
    while n > 0:
        yield min(batch_size, n)
        n -= batch_size


def _model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def evaluate_task(model: torch.nn.Module, task: Any, *, num_samples: int, batch_size: int,
                  generator: torch.Generator) -> dict[str, float]:
    """Accuracy of ``model`` on ``num_samples`` draws of a token-level ``task``.

    Returns ``{"accuracy": per-position accuracy, "exact": fraction of rows all right, "n": rows}``.
    """
    device = _model_device(model)
    was_training = model.training
    model.eval()
    correct = scored = exact = 0
    for b in _batches(num_samples, batch_size):
        batch = task.sample(b, generator)
        r = score_batch(model, batch["input_ids"].to(device), batch["labels"].to(device))
        correct += int(r["correct"].sum())
        scored += int(r["scored"].sum())
        exact += int(r["exact"].sum())
    model.train(was_training)
    return {"accuracy": correct / max(scored, 1), "exact": exact / num_samples, "n": num_samples}


def eval_mqar(model: torch.nn.Module, *, vocab_size: int, seq_lens: Sequence[int], kv_pairs: Sequence[int],
              num_samples: int = 64, batch_size: int = 16, seed: int = 0,
              progress: bool = True) -> list[dict[str, Any]]:
    """MQAR accuracy (fraction of queries answered) per sequence length × number of kv pairs.

    Combinations that do not fit (``4 · pairs > seq_len``) are skipped; call :func:`check_mqar`
    first to refuse them instead.
    """
    rows = []
    combos = [(T, n) for T in seq_lens for n in kv_pairs if 4 * n <= T]
    for T, n in tqdm(combos, desc="mqar", disable=not progress):
        task = make_task("mqar", vocab_size=vocab_size, seq_len=T, num_kv_pairs=n)
        g = torch.Generator().manual_seed(seed)
        r = evaluate_task(model, task, num_samples=num_samples, batch_size=batch_size, generator=g)
        rows.append({"seq_len": T, "num_kv_pairs": n, "accuracy": r["accuracy"], "n": r["n"]})
    return rows


def eval_niah_tokens(model: torch.nn.Module, *, vocab_size: int, seq_lens: Sequence[int],
                     depths: Sequence[float], task: str = "niah", num_samples: int = 32,
                     batch_size: int = 16, seed: int = 0, progress: bool = True,
                     **task_params: Any) -> list[dict[str, Any]]:
    """Token-level NIAH: fraction of needles retrieved exactly, per length × depth."""
    rows = []
    combos = [(T, d) for T in seq_lens for d in depths]
    for T, d in tqdm(combos, desc=task, disable=not progress):
        t = make_task(task, vocab_size=vocab_size, seq_len=T, depth=d, **task_params)
        g = torch.Generator().manual_seed(seed)
        r = evaluate_task(model, t, num_samples=num_samples, batch_size=batch_size, generator=g)
        rows.append({"seq_len": T, "depth": d, "accuracy": r["exact"], "token_accuracy": r["accuracy"],
                     "n": r["n"]})
    return rows


@torch.no_grad()
def eval_niah_text(model: torch.nn.Module, tokenizer: Any, *, variant: str, seq_lens: Sequence[int],
                   depths: Sequence[float], num_samples: int = 8, max_new_tokens: int = 48, seed: int = 0,
                   haystack_text: str | None = None, progress: bool = True) -> list[dict[str, Any]]:
    """RULER text NIAH: greedy answers; a hit when the needle's value appears in the generated text.

    ``tokenizer`` needs ``encode(str) -> list[int]`` and ``decode(list[int]) -> str``; lengths are
    counted in its tokens.
    """
    count: Callable[[str], int] = lambda s: len(tokenizer.encode(s))
    device = _model_device(model)
    was_training = model.training
    model.eval()
    rows = []
    combos = [(T, d) for T in seq_lens for d in depths]
    for T, d in tqdm(combos, desc=variant, disable=not progress):
        task = make_text_task(variant, seq_len=T, depth=d, count_tokens=count, haystack_text=haystack_text)
        g = torch.Generator().manual_seed(seed)
        hits = 0
        for ex in task.sample(num_samples, g):
            ids = torch.tensor([tokenizer.encode(ex.prompt)], device=device)
            out = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False)
            answer = tokenizer.decode(out[0, ids.shape[1]:].tolist())
            hits += all(a in answer for a in ex.answers)
        rows.append({"seq_len": T, "depth": d, "accuracy": hits / num_samples, "n": num_samples})
    model.train(was_training)
    return rows
