"""The train and generate commands end to end; bad input gives one `error:` line and exit code 2."""

from __future__ import annotations

import pytest
import torch

from gatedelta.cli import main as gatedelta
from gatedelta.train.checkpoint import load_model_for_inference
from gatedelta.train.generate import stream_tokens

from .helpers import tiny_yaml


@pytest.fixture
def cfg(tmp_path):
    return str(tiny_yaml(tmp_path / "tiny.yaml", tmp_path / "run"))


def _one_error_line(capsys, *words: str) -> None:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    for w in words:
        assert w in err, err


@pytest.mark.parametrize("args, words", [
    (["--data.source", "text", "--data.paths", "/no/such/dir"], ["data path not found", "/no/such/dir"]),
    (["--model.preset", "gdn9"], ["unknown preset 'gdn9'", "gdn2-hybrid"]),
    (["--model.size", "7b"], ["unknown size '7b'", "350m"]),
    # sequence lengths that do not fit: the task's content, the corpus, the device's memory (below)
    (["--data.source", "task", "--data.task", "mqar", "--data.seq_len", "16",
      "--data.task_params", "{num_kv_pairs: 64}"], ["data.task", "seq_len=16 is too short"]),
    (["--data.seq_len", "1000000000"], ["fewer than one optimizer step", "smaller data.seq_len"]),
    (["--data.seq_len", "1"], ["data.seq_len must be >= 2"]),
    (["--data.tokenizer", "/no/tokenizer"], ["tokenizer directory not found"]),
    (["--optim.lr", "-1"], ["optim.lr must be > 0"]),
])
def test_bad_input_is_one_clear_line(cfg, capsys, args, words):
    assert gatedelta(["train", cfg, *args]) == 2
    _one_error_line(capsys, *words)


def test_out_of_memory_is_one_clear_line(cfg, capsys, monkeypatch):
    from gatedelta.train import loop

    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(loop, "_train", oom)
    assert gatedelta(["train", cfg, "--data.seq_len", "65536"]) == 2
    _one_error_line(capsys, "out of GPU memory", "data.seq_len=65536", "activation_checkpointing")


def test_empty_corpus(cfg, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "a.txt").write_text("\n\n")
    assert gatedelta(["train", cfg, "--data.source", "text", "--data.paths", str(tmp_path / "empty")]) == 2
    _one_error_line(capsys, "empty corpus")


def test_train_then_generate_streams_text(cfg, tmp_path, capsys):
    assert gatedelta(["train", cfg]) == 0
    run = tmp_path / "run"
    assert (run / "log.jsonl").is_file() and (run / "step_000008").is_dir()
    capsys.readouterr()
    assert gatedelta(["generate", str(run), "--prompt", "def ", "--max-new-tokens", "12",
                      "--temperature", "0"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("def ") and len(out.encode()) > len("def ")
    # the streamed (cached) tokens equal greedy decoding by full forwards
    model, tok = load_model_for_inference(run)
    ids = torch.tensor([[tok.bos_id] + tok.encode("import ")])
    streamed = list(stream_tokens(model, ids, max_new_tokens=10, temperature=0, vocab=tok.vocab_size))
    full = ids
    for _ in range(10):
        with torch.no_grad():
            nxt = model(input_ids=full, use_cache=False).logits[:, -1, :tok.vocab_size].argmax(-1)
        full = torch.cat([full, nxt[:, None]], 1)
    assert streamed == full[0, ids.shape[1]:].tolist()


def test_generate_bad_checkpoint(tmp_path, capsys):
    assert gatedelta(["generate", str(tmp_path / "nothing"), "--prompt", "x"]) == 2
    _one_error_line(capsys, "checkpoint not found")
