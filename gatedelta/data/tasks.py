"""Synthetic long-context retrieval tasks: MQAR (Zoology) and RULER's needle-in-a-haystack family.

Every task is seeded and self-contained (no downloads) and comes in the form its consumer needs:

* **Token-level** tasks (:class:`MQAR`, :class:`TokenNIAH`) for models trained from scratch. One
  interface: ``task.sample(batch_size, generator) -> {"input_ids": [B, T], "labels": [B, T]}`` (both
  int64). Labels follow the Hugging Face causal-LM convention: ``labels[b, t]`` is the token expected
  *at* position ``t`` (equal to ``input_ids[b, t]`` there), the model shifts by one internally, and
  ``-100`` marks unscored positions. So the prediction for position ``t`` is read from the logits
  at ``t - 1``; :func:`retrieval_accuracy` in :mod:`gatedelta.evaluate.retrieval` does that.
* **Text prompts** (:class:`TextNIAH`) for language models: S-NIAH-1/2/3 and MK-NIAH-1 as RULER
  defines them (a haystack of noise sentences or real text, needles "key -> 7-digit number or
  UUID" at a chosen depth, the question at the end); scored by whether the needle's value appears
  in the generated answer.

``make_task(name, vocab_size=..., seq_len=..., **params)`` builds any token-level task by name;
``make_text_task(name, ...)`` the text prompts.
"""

from __future__ import annotations

import math
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch

IGNORE_INDEX = -100


class Task(Protocol):
    """What every token-level task offers."""

    vocab_size: int
    seq_len: int

    def sample(self, batch_size: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """``{"input_ids": [B, T] int64, "labels": [B, T] int64 (-100 = unscored)}``."""
        ...


def _check_positive(name: str, value: int, minimum: int = 1) -> None:
    if not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _sample_distinct(n: int, high: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` distinct integers from ``[0, high)``, uniformly, as a 1-D int64 tensor."""
    return torch.randperm(high, generator=generator)[:n]


# ---------------------------------------------------------------------------------------------
# MQAR
# ---------------------------------------------------------------------------------------------


@dataclass
class MQAR:
    """Multi-query associative recall as Zoology (Arora et al., 2023) defines it.

    The sequence starts with ``num_kv_pairs`` key-value pairs ``k1 v1 k2 v2 … kn vn``: keys are
    distinct tokens from the lower half of the vocabulary (``[1, vocab_size // 2)``), values distinct
    tokens from the upper half. The rest of the sequence is noise (random tokens from the whole
    vocabulary, Zoology's ``random_non_queries``) in which every key is queried once, in random
    order, at a pair-aligned slot ``2·gap`` after the pairs: the key, then its value. Gaps are drawn
    without replacement from a power law (``p(gap) ∝ gap^(power_a - 1)``), so most queries sit near
    the pairs and a few far away, as in Zoology. Only the value positions of the queries are scored.

    Args:
        vocab_size: tokens ``0 … vocab_size - 1``; needs ``vocab_size // 2 - 1 >= num_kv_pairs``.
        seq_len: ``T``; needs ``4 · num_kv_pairs <= seq_len`` (room for the pairs and the queries).
        num_kv_pairs: ``n``, the number of pairs to remember (the task's difficulty knob).
        num_queries: how many of the keys are queried (default: all ``n``).
        power_a: power-law exponent of the query gaps (Zoology's default 0.01).
        random_non_queries: fill the non-query positions with random tokens (else 0).

    ``sample`` returns ``input_ids`` ``[B, T]`` and ``labels`` ``[B, T]`` with exactly
    ``num_queries`` scored positions per row (the values after each queried key).
    """

    vocab_size: int
    seq_len: int
    num_kv_pairs: int = 8
    num_queries: int | None = None
    power_a: float = 0.01
    random_non_queries: bool = True

    def __post_init__(self) -> None:
        _check_positive("num_kv_pairs", self.num_kv_pairs)
        _check_positive("seq_len", self.seq_len, 2)
        if self.num_queries is None:
            self.num_queries = self.num_kv_pairs
        if not 1 <= self.num_queries <= self.num_kv_pairs:
            raise ValueError(f"num_queries must be in [1, num_kv_pairs={self.num_kv_pairs}], "
                             f"got {self.num_queries}")
        if self.vocab_size // 2 - 1 < self.num_kv_pairs:
            raise ValueError(f"vocab_size={self.vocab_size} has {self.vocab_size // 2 - 1} key tokens, fewer "
                             f"than num_kv_pairs={self.num_kv_pairs}; use vocab_size >= "
                             f"{2 * self.num_kv_pairs + 2}")
        if 4 * self.num_kv_pairs > self.seq_len:
            raise ValueError(f"seq_len={self.seq_len} is too short for num_kv_pairs={self.num_kv_pairs}: "
                             f"MQAR needs seq_len >= 4 * num_kv_pairs = {4 * self.num_kv_pairs}")
        # Query slots are pairs after the context; slot s starts at offset 2s (Zoology's layout).
        self._num_slots = (self.seq_len - 2 * self.num_kv_pairs) // 2
        s = torch.arange(1, self._num_slots + 1, dtype=torch.float64)
        self._gap_probs = self.power_a * s ** (self.power_a - 1)

    def sample(self, batch_size: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        _check_positive("batch_size", batch_size)
        B, T, n, nq = batch_size, self.seq_len, self.num_kv_pairs, self.num_queries
        half = self.vocab_size // 2
        if self.random_non_queries:
            input_ids = torch.randint(0, self.vocab_size, (B, T), generator=generator)
        else:
            input_ids = torch.zeros(B, T, dtype=torch.long)
        labels = torch.full((B, T), IGNORE_INDEX, dtype=torch.long)
        for b in range(B):
            keys = 1 + _sample_distinct(n, half - 1, generator)                 # [n] in [1, half)
            values = half + _sample_distinct(n, self.vocab_size - half, generator)  # [n] in [half, V)
            input_ids[b, 0:2 * n:2] = keys
            input_ids[b, 1:2 * n:2] = values
            gaps = torch.multinomial(self._gap_probs, nq, replacement=False, generator=generator)
            which = _sample_distinct(nq, n, generator)                          # which keys are asked
            pos = 2 * n + 2 * gaps                                               # [nq] key positions
            input_ids[b, pos] = keys[which]
            input_ids[b, pos + 1] = values[which]
            labels[b, pos + 1] = values[which]
        return {"input_ids": input_ids, "labels": labels}


# ---------------------------------------------------------------------------------------------
# Token-level needle in a haystack
# ---------------------------------------------------------------------------------------------

NEEDLE_TOKEN = 1   # opens each needle:            NEEDLE k_1 … k_K v_1 … v_V
QUERY_TOKEN = 2    # opens the question at the end: QUERY  k_1 … k_K v_1 … v_V  (values scored)
NUM_SPECIAL = 3    # 0 is left unused (padding)

HAYSTACKS = ("noise", "random")


@dataclass
class TokenNIAH:
    """RULER's needle-in-a-haystack as a token-level task for models trained from scratch.

    Layout of one row (length exactly ``seq_len``)::

        haystack … [NEEDLE k v] … haystack … [NEEDLE k' v'] … haystack  QUERY k v

    where ``k`` is ``key_len`` tokens and ``v`` ``value_len`` tokens. The vocabulary is split so
    the parts never collide: ``0`` unused, ``1`` NEEDLE, ``2`` QUERY, then key tokens, value
    tokens and haystack tokens in three ranges (``3 + [0, nk)``, ``+ [0, nv)``, the rest), with
    ``nk = nv = (vocab_size - 3) // 4``. The labels score the final ``value_len`` tokens only.

    The queried needle sits at ``depth`` (fraction of the haystack before it, 0 = start,
    1 = end; ``None`` draws a uniform depth per row); the ``num_needles - 1`` distractor needles
    (other keys) sit at uniform random depths. Keys of one row are distinct.

    Args:
        vocab_size: needs ``(vocab_size - 3) // 4 >= 2`` and room for the haystack range.
        seq_len: ``T``; must leave at least one haystack token besides the needles and the query.
        num_needles: 1 = S-NIAH, 4 = MK-NIAH-1 (one of four queried).
        key_len, value_len: tokens per key and per value (a "7-digit number" vs a "UUID" is
            ``value_len`` 2 vs 4 by default in the named variants).
        depth: depth of the queried needle in ``[0, 1]``, or ``None`` for uniform random depths.
        haystack: ``"noise"`` — one fixed ``noise_period``-token "sentence" repeated (S-NIAH-1's
            repeated noise), or ``"random"`` — i.i.d. haystack tokens (stands in for real text).
        noise_period: length of the repeated noise sentence.
        seed: fixes the noise sentence (the per-batch randomness comes from ``generator``).
    """

    vocab_size: int
    seq_len: int
    num_needles: int = 4
    key_len: int = 2
    value_len: int = 2
    depth: float | None = None
    haystack: str = "random"
    noise_period: int = 8
    seed: int = 0
    _noise: torch.Tensor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        for name in ("num_needles", "key_len", "value_len", "noise_period"):
            _check_positive(name, getattr(self, name))
        if self.haystack not in HAYSTACKS:
            raise ValueError(f"haystack must be one of {HAYSTACKS}, got {self.haystack!r}")
        if self.depth is not None and not 0.0 <= self.depth <= 1.0:
            raise ValueError(f"depth must be in [0, 1] or None, got {self.depth}")
        self.num_key_tokens = self.num_value_tokens = (self.vocab_size - NUM_SPECIAL) // 4
        self.key_start = NUM_SPECIAL
        self.value_start = self.key_start + self.num_key_tokens
        self.hay_start = self.value_start + self.num_value_tokens
        if self.num_key_tokens < 2 or self.vocab_size - self.hay_start < 2:
            raise ValueError(f"vocab_size={self.vocab_size} is too small for TokenNIAH; use >= 16")
        if self.num_key_tokens ** self.key_len < self.num_needles:
            raise ValueError(f"{self.num_needles} distinct keys need more than "
                             f"{self.num_key_tokens}^{self.key_len} key combinations")
        self.needle_len = 1 + self.key_len + self.value_len
        self.haystack_len = self.seq_len - (self.num_needles + 1) * self.needle_len
        if self.haystack_len < 1:
            raise ValueError(f"seq_len={self.seq_len} is too short: {self.num_needles} needles and the "
                             f"query take {(self.num_needles + 1) * self.needle_len} tokens; use seq_len >= "
                             f"{(self.num_needles + 1) * self.needle_len + 1}")
        g = torch.Generator().manual_seed(self.seed)
        self._noise = self.hay_start + torch.randint(0, self.vocab_size - self.hay_start,
                                                     (self.noise_period,), generator=g)

    def _haystack(self, generator: torch.Generator) -> torch.Tensor:
        """``[haystack_len]`` haystack tokens."""
        if self.haystack == "noise":
            reps = math.ceil(self.haystack_len / self.noise_period)
            return self._noise.repeat(reps)[: self.haystack_len]
        return torch.randint(self.hay_start, self.vocab_size, (self.haystack_len,), generator=generator)

    def _distinct_keys(self, generator: torch.Generator) -> torch.Tensor:
        """``[num_needles, key_len]`` key token tuples, pairwise distinct."""
        while True:
            keys = torch.randint(0, self.num_key_tokens, (self.num_needles, self.key_len),
                                 generator=generator)
            if torch.unique(keys, dim=0).shape[0] == self.num_needles:
                return self.key_start + keys

    def sample(self, batch_size: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Also returns ``depth`` ``[B]`` (float, the queried needle's depth) and ``needle_pos``
        ``[B, num_needles]`` (start of each needle; column 0 is the queried one)."""
        _check_positive("batch_size", batch_size)
        B, T, H = batch_size, self.seq_len, self.haystack_len
        input_ids = torch.empty(B, T, dtype=torch.long)
        labels = torch.full((B, T), IGNORE_INDEX, dtype=torch.long)
        depths = torch.empty(B)
        needle_pos = torch.empty(B, self.num_needles, dtype=torch.long)
        for b in range(B):
            keys = self._distinct_keys(generator)                                   # [N, K]
            values = self.value_start + torch.randint(0, self.num_value_tokens,
                                                      (self.num_needles, self.value_len), generator=generator)
            needles = torch.cat([torch.full((self.num_needles, 1), NEEDLE_TOKEN), keys, values], 1)
            d = float(torch.rand((), generator=generator)) if self.depth is None else self.depth
            # Insertion points in the haystack (number of haystack tokens before each needle).
            others = torch.randint(0, H + 1, (self.num_needles - 1,), generator=generator).tolist()
            cuts = [round(d * H)] + others
            order = sorted(range(self.num_needles), key=lambda i: (cuts[i], i))
            hay = self._haystack(generator)
            pieces, prev = [], 0
            for i in order:
                pieces.append(hay[prev:cuts[i]])
                needle_pos[b, i] = sum(p.numel() for p in pieces)
                pieces.append(needles[i])
                prev = cuts[i]
            pieces.append(hay[prev:])
            query = torch.cat([torch.tensor([QUERY_TOKEN]), keys[0], values[0]])
            input_ids[b] = torch.cat(pieces + [query])
            labels[b, T - self.value_len:] = values[0]
            depths[b] = d
        return {"input_ids": input_ids, "labels": labels, "depth": depths, "needle_pos": needle_pos}


# ---------------------------------------------------------------------------------------------
# Registry of token-level tasks
# ---------------------------------------------------------------------------------------------

# RULER variant -> token-level parameters. "number" values are 2 tokens, "uuid" values 4.
TOKEN_TASKS: dict[str, Callable[..., Task]] = {
    "mqar": MQAR,
    "niah": lambda **kw: TokenNIAH(**{"num_needles": 4, "haystack": "random", **kw}),
    "mk-niah-1": lambda **kw: TokenNIAH(**{"num_needles": 4, "haystack": "random", **kw}),
    "s-niah-1": lambda **kw: TokenNIAH(**{"num_needles": 1, "haystack": "noise", **kw}),
    "s-niah-2": lambda **kw: TokenNIAH(**{"num_needles": 1, "haystack": "random", **kw}),
    "s-niah-3": lambda **kw: TokenNIAH(**{"num_needles": 1, "haystack": "random", "value_len": 4, **kw}),
}


def make_task(name: str, *, vocab_size: int, seq_len: int, **params) -> Task:
    """Build a token-level task by name.

    Args:
        name: one of ``TOKEN_TASKS`` — ``"mqar"``, ``"niah"`` (= ``"mk-niah-1"``: four needles, one
            queried), ``"s-niah-1"`` (noise haystack), ``"s-niah-2"``, ``"s-niah-3"`` (UUID-length
            values).
        vocab_size, seq_len: vocabulary size and sequence length ``T``.
        **params: the task's own parameters (:class:`MQAR`, :class:`TokenNIAH`).

    Raises:
        ValueError: unknown name (the message lists the valid ones), impossible length or vocabulary,
            or a parameter the task does not take.
    """
    if name not in TOKEN_TASKS:
        raise ValueError(f"unknown task {name!r}; choose one of: {', '.join(TOKEN_TASKS)}")
    try:
        return TOKEN_TASKS[name](vocab_size=vocab_size, seq_len=seq_len, **params)
    except TypeError as e:  # an unknown keyword: say which task refused it
        raise ValueError(f"task {name!r}: {e}") from None


# ---------------------------------------------------------------------------------------------
# Text prompts (RULER S-NIAH-1/2/3, MK-NIAH-1)
# ---------------------------------------------------------------------------------------------

# S-NIAH-1's haystack: the same few noise sentences over and over.
NOISE_TEXT = ("The grass is green. The sky is blue. The sun is yellow. Here we go. "
              "There and back again. ")

_ADJECTIVES = ("amber brave calm dusty eager faint gentle hollow icy jolly keen lucky mellow noble odd "
               "plain quiet rapid silent tidy upbeat vivid wary young zesty bold crisp dark early "
               "fresh grand").split()
_NOUNS = ("anchor badger candle dolphin engine falcon garden harbor island jacket kettle lantern "
          "meadow needle orchard pepper quarry river saddle tunnel violin walnut yacht zebra "
          "beacon cactus desert ember fossil glacier").split()


def stdlib_text(max_chars: int = 2_000_000, *, exclude_every: int = 0) -> str:
    """Real English-and-code text every machine has: the Python standard library's sources.

    Used as the haystack of S-NIAH-2/3 and MK-NIAH-1 (RULER uses Paul Graham's essays; any long
    real text serves). Files are read in sorted order so the text is the same on every machine
    with the same Python. ``exclude_every=n`` skips every n-th file (a held-out split).
    """
    root = Path(os.__file__).parent
    chunks, total = [], 0
    for i, path in enumerate(sorted(root.glob("*.py"))):
        if exclude_every and i % exclude_every == 0:
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        chunks.append(text)
        total += len(text)
        if total >= max_chars:
            break
    return "".join(chunks)[:max_chars]


@dataclass
class TextExample:
    """One text prompt: ``prompt`` ends where the model's answer starts; ``answers`` are the values
    that must appear in the generated text (all of them, for multi-value variants)."""

    prompt: str
    answers: list[str]
    length: int          # prompt length in tokens (as counted by the task's ``count_tokens``)
    depth: float         # depth of the queried needle in the haystack, in [0, 1]
    needles: list[str]   # the needle sentences, in insertion order


TEXT_VARIANTS = {
    # name: (haystack, value kind, number of needles)
    "s-niah-1": ("noise", "number", 1),
    "s-niah-2": ("text", "number", 1),
    "s-niah-3": ("text", "uuid", 1),
    "mk-niah-1": ("text", "number", 4),
}


@dataclass
class TextNIAH:
    """RULER needle-in-a-haystack prompts for language models (S-NIAH-1/2/3, MK-NIAH-1).

    The prompt is an instruction, the haystack with the needle sentence(s) "One of the special
    magic {numbers|uuids} for {key} is: {value}." inserted at sentence boundaries, and the question
    about one key. The queried needle sits at ``depth``; distractor needles (MK-NIAH) at random
    depths. Keys are "adjective-noun" words, distinct within a prompt.

    Args:
        variant: ``"s-niah-1"`` (noise haystack, 7-digit number), ``"s-niah-2"`` (real text,
            number), ``"s-niah-3"`` (real text, UUID), ``"mk-niah-1"`` (real text, four needles).
        seq_len: target prompt length in tokens (the haystack fills what the rest leaves).
        depth: depth of the queried needle in ``[0, 1]``, ``None`` for a random depth per example.
        count_tokens: tokens of a string (default: UTF-8 bytes, the byte tokenizer's count).
        haystack_text: real text for the ``"text"`` variants (default: :func:`stdlib_text`).
    """

    variant: str
    seq_len: int
    depth: float | None = None
    count_tokens: Callable[[str], int] = field(default=lambda s: len(s.encode("utf-8")))
    haystack_text: str | None = None

    def __post_init__(self) -> None:
        if self.variant not in TEXT_VARIANTS:
            raise ValueError(f"unknown text task {self.variant!r}; choose one of: {', '.join(TEXT_VARIANTS)}")
        if self.depth is not None and not 0.0 <= self.depth <= 1.0:
            raise ValueError(f"depth must be in [0, 1] or None, got {self.depth}")
        self.haystack_kind, self.value_kind, self.num_needles = TEXT_VARIANTS[self.variant]
        if self.haystack_kind == "text":
            text = self.haystack_text if self.haystack_text is not None else stdlib_text()
            # Sentence-ish pieces: lines, so a needle never splits a line of the haystack.
            self._sentences = [ln + "\n" for ln in text.splitlines() if ln.strip()]
        else:
            self._sentences = [s.strip() + " " for s in NOISE_TEXT.split(". ") if s.strip()]
            self._sentences = [s if s.endswith(". ") else s.rstrip() + ". " for s in self._sentences]
        if not self._sentences:
            raise ValueError("haystack_text is empty")
        kind = "numbers" if self.value_kind == "number" else "uuids"
        self._intro = (f"Some special magic {kind} are hidden within the following text. Make sure to "
                       f"memorize them. I will quiz you about the {kind} afterwards.\n")
        self._kind = kind
        overhead = self.count_tokens(self._intro + self._question("x" * 20)) + self.num_needles * 80
        if self.seq_len < overhead + 16:
            raise ValueError(f"seq_len={self.seq_len} is too short for {self.variant}; "
                             f"use >= {overhead + 16}")

    def _question(self, key: str) -> str:
        return (f"\nWhat is the special magic {self._kind[:-1]} for {key} mentioned in the provided text? "
                f"The special magic {self._kind[:-1]} for {key} mentioned in the provided text is")

    def _value(self, generator: torch.Generator) -> str:
        if self.value_kind == "number":
            return str(int(torch.randint(1_000_000, 10_000_000, (), generator=generator)))
        words = torch.randint(0, 2**32, (4,), generator=generator).tolist()   # 128 random bits
        return str(uuid.UUID(int=sum(w << (32 * i) for i, w in enumerate(words))))

    def _keys(self, generator: torch.Generator) -> list[str]:
        idx = _sample_distinct(self.num_needles, len(_ADJECTIVES) * len(_NOUNS), generator).tolist()
        return [f"{_ADJECTIVES[i // len(_NOUNS)]}-{_NOUNS[i % len(_NOUNS)]}" for i in idx]

    def sample(self, n: int, generator: torch.Generator) -> list[TextExample]:
        """``n`` prompts, each about ``seq_len`` tokens long."""
        _check_positive("n", n)
        out = []
        for _ in range(n):
            keys = self._keys(generator)
            values = [self._value(generator) for _ in keys]
            needles = [f"One of the special magic {self._kind} for {k} is: {v}.\n"
                       for k, v in zip(keys, values)]
            fixed = self.count_tokens(self._intro + "".join(needles) + self._question(keys[0]))
            budget = self.seq_len - fixed
            # Haystack: consecutive sentences from a random start (wrapping), up to the budget.
            start = int(torch.randint(0, len(self._sentences), (), generator=generator))
            hay, cum, i = [], [0], start          # cum[j]: tokens in hay[:j]
            while True:
                s = self._sentences[i % len(self._sentences)]
                c = self.count_tokens(s)
                if cum[-1] + c > budget:
                    break
                hay.append(s)
                cum.append(cum[-1] + c)
                i += 1
            d = float(torch.rand((), generator=generator)) if self.depth is None else self.depth
            # Depth counts tokens, not sentences: the boundary closest to d of the haystack's tokens.
            target = d * cum[-1]
            first = min(range(len(cum)), key=lambda j: abs(cum[j] - target))
            others = torch.randint(0, len(hay) + 1, (self.num_needles - 1,), generator=generator).tolist()
            cuts = [first] + others
            order = sorted(range(self.num_needles), key=lambda j: (cuts[j], j))
            parts, prev = [self._intro], 0
            for j in order:
                parts += hay[prev:cuts[j]] + [needles[j]]
                prev = cuts[j]
            parts += hay[prev:] + [self._question(keys[0])]
            prompt = "".join(parts)
            out.append(TextExample(prompt=prompt, answers=[values[0]], length=self.count_tokens(prompt),
                                   depth=d, needles=[needles[j] for j in order]))
        return out


def make_text_task(name: str, *, seq_len: int, **params) -> TextNIAH:
    """Build a RULER text-prompt task by name (``TEXT_VARIANTS``); see :class:`TextNIAH`."""
    if name not in TEXT_VARIANTS:
        raise ValueError(f"unknown text task {name!r}; choose one of: {', '.join(TEXT_VARIANTS)}")
    return TextNIAH(variant=name, seq_len=seq_len, **params)
