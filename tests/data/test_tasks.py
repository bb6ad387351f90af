"""Generators of the retrieval tasks: answers where the labels say, lengths and depths as asked,
reproducible, each needle exactly once."""

from __future__ import annotations

import pytest
import torch

from gatedelta.data.tasks import (
    IGNORE_INDEX,
    MQAR,
    NEEDLE_TOKEN,
    QUERY_TOKEN,
    TokenNIAH,
    make_task,
    make_text_task,
)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _count(seq: list[int], sub: list[int]) -> int:
    n = len(sub)
    return sum(seq[i:i + n] == sub for i in range(len(seq) - n + 1))


@pytest.mark.parametrize("T,n", [(64, 4), (97, 8), (256, 16)])
def test_mqar_labels_are_the_values_of_the_queried_keys(T: int, n: int) -> None:
    V = 128
    batch = make_task("mqar", vocab_size=V, seq_len=T, num_kv_pairs=n).sample(5, _gen())
    x, y = batch["input_ids"], batch["labels"]
    assert x.shape == y.shape == (5, T) and x.dtype == y.dtype == torch.long
    for b in range(5):
        keys, values = x[b, 0:2 * n:2], x[b, 1:2 * n:2]
        assert keys.unique().numel() == n and values.unique().numel() == n
        assert (keys >= 1).all() and (keys < V // 2).all() and (values >= V // 2).all() and (values < V).all()
        table = dict(zip(keys.tolist(), values.tolist()))
        pos = (y[b] != IGNORE_INDEX).nonzero().flatten()
        assert pos.numel() == n and (pos >= 2 * n).all()
        assert (y[b, pos] == x[b, pos]).all()                   # HF convention: label == input there
        asked = x[b, pos - 1].tolist()
        assert sorted(asked) == sorted(table)                    # every key is asked once
        assert all(table[k] == v for k, v in zip(asked, y[b, pos].tolist()))


def test_mqar_rejects_impossible_settings() -> None:
    with pytest.raises(ValueError, match="4 \\* num_kv_pairs"):
        MQAR(vocab_size=128, seq_len=30, num_kv_pairs=8)
    with pytest.raises(ValueError, match="key tokens"):
        MQAR(vocab_size=16, seq_len=256, num_kv_pairs=8)


@pytest.mark.parametrize("name", ["mqar", "niah", "s-niah-1", "s-niah-2", "s-niah-3", "mk-niah-1"])
def test_same_seed_same_data(name: str) -> None:
    task = make_task(name, vocab_size=96, seq_len=80)
    a, b, c = task.sample(3, _gen(7)), task.sample(3, _gen(7)), task.sample(3, _gen(8))
    assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["labels"], b["labels"])
    assert not torch.equal(a["input_ids"], c["input_ids"])


@pytest.mark.parametrize("T", [41, 100, 333])
@pytest.mark.parametrize("depth", [0.0, 0.25, 0.5, 1.0])
@pytest.mark.parametrize("num_needles", [1, 4])
def test_token_niah_layout(T: int, depth: float, num_needles: int) -> None:
    task = TokenNIAH(vocab_size=64, seq_len=T, num_needles=num_needles, depth=depth, key_len=2, value_len=3)
    batch = task.sample(4, _gen(T))
    x, y = batch["input_ids"], batch["labels"]
    assert x.shape == (4, T)
    for b in range(4):
        row = x[b].tolist()
        # labels: exactly the last value_len positions, equal to the queried needle's value
        scored = (y[b] != IGNORE_INDEX).nonzero().flatten().tolist()
        assert scored == list(range(T - 3, T))
        assert row[T - 6] == QUERY_TOKEN
        key, value = row[T - 5:T - 3], row[T - 3:]
        assert y[b, T - 3:].tolist() == value
        # each needle exactly once in the context, the queried one at the requested depth
        assert row.count(NEEDLE_TOKEN) == num_needles
        assert _count(row[:T - 6], [NEEDLE_TOKEN, *key, *value]) == 1
        p = int(batch["needle_pos"][b, 0])
        assert row[p:p + 6] == [NEEDLE_TOKEN, *key, *value]
        hay_before = sum(1 for t in row[:p] if t >= task.hay_start)
        assert hay_before == round(depth * task.haystack_len)
        # MK-NIAH: distinct keys
        keys = {tuple(row[int(q) + 1:int(q) + 3]) for q in batch["needle_pos"][b]}
        assert len(keys) == num_needles


def test_token_niah_noise_haystack_repeats_one_sentence() -> None:
    task = make_task("s-niah-1", vocab_size=64, seq_len=120, depth=0.0, noise_period=5)
    row = task.sample(1, _gen())["input_ids"][0].tolist()
    hay = row[5:5 + 40]   # after the needle at depth 0 (1 + 2 + 2 tokens)
    assert hay[:5] * 8 == hay


def test_make_task_errors_list_the_choices() -> None:
    with pytest.raises(ValueError, match="mqar, niah"):
        make_task("nope", vocab_size=64, seq_len=64)
    with pytest.raises(ValueError, match="seq_len=10 is too short"):
        make_task("niah", vocab_size=64, seq_len=10)
    with pytest.raises(ValueError, match="depth"):
        make_task("niah", vocab_size=64, seq_len=64, depth=1.5)
    with pytest.raises(ValueError, match="'mqar'"):
        make_task("mqar", vocab_size=64, seq_len=64, depth=0.5)


@pytest.mark.parametrize("name", ["s-niah-1", "s-niah-2", "s-niah-3", "mk-niah-1"])
@pytest.mark.parametrize("depth", [0.0, 0.5, 1.0])
def test_text_niah_prompts(name: str, depth: float) -> None:
    task = make_text_task(name, seq_len=1200, depth=depth)
    examples = task.sample(3, _gen(1))
    for ex in examples:
        assert 1000 <= ex.length <= 1200
        assert len(ex.needles) == task.num_needles
        for needle in ex.needles:
            value = needle.rsplit(" ", 1)[1].rstrip(".\n")
            assert ex.prompt.count(value) == 1                  # each value once in the prompt
            assert ex.prompt.count(needle) == 1
        key = ex.prompt.rsplit(" for ", 1)[1].split(" ")[0]
        queried = [n for n in ex.needles if f" for {key} is: " in n]
        assert len(queried) == 1 and queried[0].rstrip(".\n").endswith(ex.answers[0])
        keys = {n.split(" for ")[1].split(" ")[0] for n in ex.needles}
        assert len(keys) == task.num_needles
        if name == "s-niah-3":
            assert len(ex.answers[0]) == 36 and ex.answers[0].count("-") == 4
        else:
            assert len(ex.answers[0]) == 7 and ex.answers[0].isdigit()
        # depth: the fraction of haystack text before the queried needle
        pos = ex.prompt.index(queried[0])
        intro_end = ex.prompt.index("\n") + 1
        q_start = ex.prompt.rindex("\nWhat is")
        hay_len = q_start - intro_end - sum(len(n) for n in ex.needles)
        before = pos - intro_end - sum(len(n) for n in ex.needles if ex.prompt.index(n) < pos)
        assert abs(before / hay_len - depth) < 0.1
    a, b = task.sample(2, _gen(3)), task.sample(2, _gen(3))
    assert [e.prompt for e in a] == [e.prompt for e in b]


def test_text_task_errors() -> None:
    with pytest.raises(ValueError, match="s-niah-1, s-niah-2"):
        make_text_task("s-niah-9", seq_len=1000)
    with pytest.raises(ValueError, match="too short"):
        make_text_task("s-niah-1", seq_len=50)
