"""Documents -> token stream -> packed rows with cu_seqlens -> rank-sharded, resumable loader."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch

from gatedelta.data import corpus
from gatedelta.data.tokenizer import ByteTokenizer, DataError, load_tokenizer, read_tokenizer, save_tokenizer


def _docs(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    words = ["alpha", "beta", "gamma", "delta", "état", "λ", "\n"]
    return [" ".join(rng.choice(words, size=int(rng.integers(1, 40)))) for _ in range(n)]


def test_byte_tokenizer_round_trip_and_specials(tmp_path):
    tok = ByteTokenizer()
    text = "naïve — 日本 🙂"
    assert tok.vocab_size == 259 and (tok.bos_id, tok.eos_id, tok.pad_id) == (256, 257, 258)
    ids = tok.encode(text)
    assert max(ids) < 256 and tok.decode(ids + [tok.eos_id]) == text
    assert np.array_equal(tok.encode_batch([text])[0], np.array(ids, dtype=np.uint8))
    # streaming holds back a split multi-byte character until it is complete
    dec = tok.stream_decoder()
    assert "".join(dec.push(i) for i in ids) == text
    save_tokenizer(tok, tmp_path)
    assert isinstance(read_tokenizer(tmp_path), ByteTokenizer)
    with pytest.raises(DataError, match="tokenizer directory not found"):
        load_tokenizer(str(tmp_path / "nope"))


def test_packing_records_every_document_boundary():
    tok = ByteTokenizer()
    docs = _docs(30)
    stream = corpus.tokenize_documents(docs, tok)
    assert len(stream) == sum(len(d.encode()) + 2 for d in docs)
    T = 37  # odd on purpose: rows cut documents anywhere
    rows = corpus.PackedRows(stream, T)
    picked = [3, 0, len(rows) - 1]
    b = rows.batch(picked)
    ids, labels, cu = b["input_ids"], b["labels"], b["cu_seqlens"]
    assert ids.shape == (1, 3 * T) and labels.shape == ids.shape and cu.dtype == torch.int32
    assert cu[0] == 0 and cu[-1] == 3 * T and bool((cu[1:] > cu[:-1]).all())
    starts = set(stream.starts.tolist())
    for j, r in enumerate(picked):
        expect = torch.from_numpy(stream.tokens[r * T:(r + 1) * T].astype(np.int64))
        assert torch.equal(ids[0, j * T:(j + 1) * T], expect)
        # every row start and every BOS inside the row is a boundary, nothing else
        inside = {j * T} | {p - r * T + j * T for p in starts if r * T < p < (r + 1) * T}
        assert inside == {int(c) for c in cu[:-1] if j * T <= c < (j + 1) * T}
    for c in cu[:-1].tolist():  # a piece starts with a BOS or at a row start
        assert c % T == 0 or ids[0, c] == tok.bos_id
    # the first token of each piece is never a target; everything else is
    scored = torch.ones_like(ids, dtype=torch.bool).index_fill(1, cu[:-1].long(), False)
    assert torch.equal(labels != -100, scored)


def test_loader_shards_one_global_batch_across_ranks_and_resumes():
    rows = corpus.PackedRows(corpus.tokenize_documents(_docs(200), ByteTokenizer()), 16)
    one = corpus.PackedLoader(rows, batch_size=4, accum_steps=2, seed=3)
    ranks = [corpus.PackedLoader(rows, batch_size=2, accum_steps=2, rank=r, world_size=2, seed=3)
             for r in range(2)]
    for _ in range(2 * len(rows) // 8 + 3):  # past an epoch boundary
        ref = one.next_step()
        got = [ld.next_step() for ld in ranks]
        for m in range(2):  # micro m of the single process == rank 0's then rank 1's micro m
            both = torch.cat([got[0][m]["input_ids"], got[1][m]["input_ids"]], 1)
            assert torch.equal(ref[m]["input_ids"], both)
    assert one.epoch >= 1
    state = one.state_dict()
    nxt = one.next_step()
    again = corpus.PackedLoader(rows, batch_size=4, accum_steps=2, seed=3)
    again.load_state_dict(json.loads(json.dumps(state)))
    assert all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(nxt, again.next_step()))


def test_split_is_fixed_and_disjoint():
    docs = [f"doc {i}" for i in range(50)]
    train, held = corpus.split_documents(docs, 0.1)
    assert len(held) == 5 and not set(train) & set(held) and len(train) + len(held) == 50
    assert corpus.split_documents(docs, 0.1) == (train, held)
    assert corpus.split_documents(docs[:1], 0.5) == (docs[:1], [])


def test_sources_text_jsonl_and_errors(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.txt").write_text("first doc")
    (tmp_path / "d" / "b.md").write_text("second doc")
    (tmp_path / "d" / "skip.bin").write_bytes(b"\x00\x01")
    assert corpus.read_documents("text", [str(tmp_path / "d")]) == ["first doc", "second doc"]
    (tmp_path / "x.jsonl").write_text('{"body": "one"}\n\n{"body": "two"}\n')
    assert corpus.read_documents("jsonl", [str(tmp_path / "x.jsonl")], text_field="body") == ["one", "two"]
    with pytest.raises(DataError, match=r"x.jsonl:1: no 'text' field \(has: body\)"):
        corpus.read_documents("jsonl", [str(tmp_path / "x.jsonl")])
    with pytest.raises(DataError, match="data path not found"):
        corpus.read_documents("text", [str(tmp_path / "missing")])
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "blank.txt").write_text("  \n")
    with pytest.raises(DataError, match="empty corpus"):
        corpus.read_documents("text", [str(tmp_path / "empty")])
    rows = corpus.PackedRows(corpus.tokenize_documents(["tiny"], ByteTokenizer()), 4)
    with pytest.raises(DataError, match="fewer than one optimizer step"):
        corpus.PackedLoader(rows, batch_size=8)


def test_builtin_corpus_is_deterministic_real_text(tmp_path, capsys):
    assert corpus.main(["build", "--out", str(tmp_path / "a"), "--max-mb", "0.5"]) == 0
    assert "documents" in capsys.readouterr().out
    corpus.build_builtin_corpus(tmp_path / "b", max_mb=0.5)
    ma = json.loads((tmp_path / "a" / corpus.MANIFEST_FILE).read_text())
    mb = json.loads((tmp_path / "b" / corpus.MANIFEST_FILE).read_text())
    assert ma == mb and ma["documents"] > 10 and ma["characters"] <= 0.5 * 2**20
    docs = corpus.read_documents("builtin", [], corpus_dir=str(tmp_path / "a"))
    assert any("def " in d for d in docs) and any("statement" in d for d in docs)  # code and prose
    assert not list(tmp_path.glob(".*tmp*"))  # built atomically: no leftovers


def test_parquet_through_datasets(tmp_path):
    pytest.importorskip("datasets")
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    pq.write_table(pa.table({"body": ["first", "", "second"]}), tmp_path / "a.parquet")
    assert corpus.read_documents("parquet", [str(tmp_path)], text_field="body") == ["first", "second"]
    with pytest.raises(DataError, match="no column 'text'"):
        corpus.read_documents("parquet", [str(tmp_path / "a.parquet")])


def test_parquet_without_datasets_says_how_to_install(tmp_path, monkeypatch):
    (tmp_path / "a.parquet").write_bytes(b"PAR1")
    for name in ("datasets", "pyarrow", "pyarrow.parquet"):
        monkeypatch.setitem(sys.modules, name, None)  # makes `import name` raise ImportError
    with pytest.raises(DataError, match="pip install datasets"):
        corpus.read_documents("parquet", [str(tmp_path / "a.parquet")])


def test_local_hugging_face_tokenizer(tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    from transformers import PreTrainedTokenizerFast

    words = ["<bos>", "<eos>", "<unk>", "alpha", "beta", "gamma"]
    vocab = {w: i for i, w in enumerate(words)}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tok.decoder = tokenizers.decoders.WordPiece()  # joins words with spaces
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>",
                                   unk_token="<unk>")
    fast.save_pretrained(str(tmp_path / "tok"))
    hf = load_tokenizer(str(tmp_path / "tok"))
    assert (hf.vocab_size, hf.bos_id, hf.eos_id) == (6, 0, 1)
    stream = corpus.tokenize_documents(["alpha beta", "gamma"], hf)
    assert stream.tokens.tolist() == [0, 3, 4, 1, 0, 5, 1] and stream.starts.tolist() == [0, 4]
    save_tokenizer(hf, tmp_path / "ckpt")
    again = read_tokenizer(tmp_path / "ckpt")  # from the copy inside the checkpoint
    assert again.encode("beta gamma") == [4, 5] and again.decode([3, 4]) == "alpha beta"


def test_heldout_batches_are_equal_in_number_on_every_rank():
    rows = corpus.PackedRows(corpus.tokenize_documents(_docs(20), ByteTokenizer()), 16)
    per_rank = [corpus.heldout_batches(rows, batches=1000, batch_size=3, rank=r, world_size=3)
                for r in range(3)]
    assert len({len(b) for b in per_rank}) == 1 and len(per_rank[0]) == len(rows) // 9
    seen = [b["input_ids"] for r in range(3) for b in per_rank[r]]
    assert len({tuple(x[0].tolist()) for x in seen}) == len(seen)  # disjoint rows
