"""Scoring: teacher-forced accuracy reads the logits one position before each label."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from gatedelta.data.tasks import make_task
from gatedelta.evaluate.perplexity import perplexity
from gatedelta.evaluate.retrieval import eval_mqar, eval_niah_tokens, score_batch


class Oracle(torch.nn.Module):
    """Predicts the next token of a known batch exactly (or wrongly at chosen rows)."""

    def __init__(self, ids: torch.Tensor, vocab: int, wrong_rows: tuple[int, ...] = ()) -> None:
        super().__init__()
        self.ids, self.vocab, self.wrong = ids, vocab, wrong_rows
        self.w = torch.nn.Parameter(torch.zeros(()))
        self.config = SimpleNamespace(vocab_size=vocab)

    def forward(self, input_ids: torch.Tensor, **_) -> SimpleNamespace:
        nxt = torch.roll(self.ids, -1, dims=1)
        for r in self.wrong:
            nxt[r] = (nxt[r] + 1) % self.vocab
        return SimpleNamespace(logits=torch.nn.functional.one_hot(nxt, self.vocab).float())


def test_score_batch_uses_previous_position() -> None:
    batch = make_task("mqar", vocab_size=64, seq_len=32, num_kv_pairs=4).sample(3, torch.Generator())
    r = score_batch(Oracle(batch["input_ids"], 64), batch["input_ids"], batch["labels"])
    assert r["scored"].tolist() == [4, 4, 4] and r["exact"].all()
    r = score_batch(Oracle(batch["input_ids"], 64, wrong_rows=(1,)), batch["input_ids"], batch["labels"])
    assert r["correct"].tolist() == [4, 0, 4] and r["exact"].tolist() == [True, False, True]


def test_eval_grids_cover_every_cell(make_tiny) -> None:
    model = make_tiny(["gdn", "attn"])
    rows = eval_mqar(model, vocab_size=64, seq_lens=[16, 32], kv_pairs=[2, 8], num_samples=4, progress=False)
    assert [(r["seq_len"], r["num_kv_pairs"]) for r in rows] == [(16, 2), (32, 2), (32, 8)]   # 4·8 > 16
    rows = eval_niah_tokens(model, vocab_size=64, seq_lens=[40, 50], depths=[0.0, 1.0], num_samples=4,
                            progress=False)
    assert len(rows) == 4 and all(0 <= r["accuracy"] <= 1 for r in rows)


def test_perplexity_of_uniform_model_is_vocab_size() -> None:
    class Uniform(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(()))

        def forward(self, input_ids: torch.Tensor, **_) -> SimpleNamespace:
            return SimpleNamespace(logits=torch.zeros(*input_ids.shape, 50))

    r = perplexity(Uniform(), torch.randint(0, 50, (1000,)), seq_len=64, progress=False)
    assert abs(r["ppl"] - 50) < 1e-3 and r["windows"] == 15 and r["tokens"] == 15 * 63
