"""Packed training never lets state or attention cross a document boundary.

Two documents go through the trainer's own packing (``PackedRows``) into one row; the model's
output at every position of document 2 must equal its output on document 2 alone. The negative
control (the same row without ``cu_seqlens``) shows the check would fail if state did leak.
"""

from __future__ import annotations

import pytest
import torch

from gatedelta.data.corpus import PackedRows, tokenize_documents
from gatedelta.data.tokenizer import ByteTokenizer
from gatedelta.models import GatedDeltaForCausalLM, preset_config


@pytest.mark.parametrize("preset", ["gdn2-hybrid", "kda", "mamba2", "transformer"])
def test_document_two_does_not_see_document_one(preset):
    torch.manual_seed(0)
    model = GatedDeltaForCausalLM(preset_config(preset, "tiny", vocab_size=259, hidden_size=32)).eval()
    doc1 = "the first document is longer, and it sets up a state that must not leak " * 2
    doc2 = "def second(x):\n    return x + 1\n"
    stream = tokenize_documents([doc1, doc2], ByteTokenizer())
    T = len(stream)  # one row holding both documents
    batch = PackedRows(stream, T).batch([0])
    cu = batch["cu_seqlens"]
    s2 = int(stream.starts[1])
    assert cu.tolist() == [0, s2, T]  # the boundary the packer recorded
    with torch.no_grad():
        packed = model(input_ids=batch["input_ids"], cu_seqlens=cu).logits[0, s2:]
        alone = model(input_ids=batch["input_ids"][:, s2:]).logits[0]
        leaky = model(input_ids=batch["input_ids"]).logits[0, s2:]  # no boundaries: doc 1 leaks in
    torch.testing.assert_close(packed, alone, atol=1e-4, rtol=1e-4)
    assert (leaky - alone).abs().max() > 1e-3  # the check has teeth


def test_packed_loss_ignores_cross_document_targets():
    """The labels the packer writes score exactly the within-document next-token predictions."""
    torch.manual_seed(0)
    model = GatedDeltaForCausalLM(preset_config("gdn2", "tiny", vocab_size=259, hidden_size=32)).eval()
    docs = ["alpha beta gamma", "x = 1\ny = 2\n", "a third one, cut by the row end " * 3]
    stream = tokenize_documents(docs, ByteTokenizer())
    rows = PackedRows(stream, 40)
    batch = rows.batch([0, 1])
    with torch.no_grad():
        loss = model(**batch).loss
        # the same mean, built piece by piece
        total, n = 0.0, 0
        cu = batch["cu_seqlens"].tolist()
        for a, b in zip(cu[:-1], cu[1:]):
            if b - a < 2:
                continue
            ids = batch["input_ids"][:, a:b]
            total += float(model(input_ids=ids, labels=ids).loss) * (b - a - 1)
            n += b - a - 1
    assert abs(float(loss) - total / n) < 1e-5
