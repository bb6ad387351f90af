"""Checkpoints: atomic under a kill mid-write, keep-last-k, Ctrl-C saves, loadable for inference."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from gatedelta.data.tokenizer import ByteTokenizer
from gatedelta.models import GatedDeltaForCausalLM
from gatedelta.train import checkpoint as ckpt
from gatedelta.train.loop import build_model, train

from .helpers import tiny_config


def test_failed_write_never_replaces_the_last_good_checkpoint(tmp_path, monkeypatch):
    train(tiny_config(tmp_path, checkpoint={"every": 4}, schedule={"stop_at": 4}))
    good = tmp_path / "step_000004"
    assert ckpt.latest_checkpoint(tmp_path) == good
    before = (good / "model.safetensors").read_bytes()

    def crash(*args, **kwargs):  # dies after the weights were written, before the rename
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(ckpt.torch, "save", crash)
    with pytest.raises(OSError, match="simulated"):
        train(tiny_config(tmp_path, ("checkpoint.resume", "auto"), checkpoint={"every": 4}))
    monkeypatch.undo()
    assert ckpt.latest_checkpoint(tmp_path) == good and not (tmp_path / "step_000008").exists()
    assert list(tmp_path.glob(".tmp-step_000008-*"))  # the partial write is there, ignored
    assert (good / "model.safetensors").read_bytes() == before
    model, tok = ckpt.load_model_for_inference(tmp_path)
    assert isinstance(tok, ByteTokenizer) and model.config.vocab_size == 320
    # the next start sweeps the partial directory and finishes the run from the good checkpoint
    res = train(tiny_config(tmp_path, ("checkpoint.resume", "auto"), checkpoint={"every": 4}))
    assert min(res.losses) == 5 and res.step == 8 and not list(tmp_path.glob(".tmp-*"))


def test_process_killed_mid_save_leaves_last_good_checkpoint(tmp_path):
    """SIGKILL while a checkpoint is being written (files on disk, not yet renamed)."""
    script = textwrap.dedent(f"""
        import sys, time, pathlib
        sys.path.insert(0, {str(os.path.dirname(os.path.dirname(__file__)))!r})
        from train.helpers import tiny_config
        from gatedelta.train import checkpoint as ckpt
        from gatedelta.train.loop import train
        real = ckpt._fsync_tree
        def slow(directory):
            real(directory)
            if directory.name.startswith(".tmp-step_000008"):
                pathlib.Path({str(tmp_path / "ready")!r}).touch()
                time.sleep(60)
        ckpt._fsync_tree = slow
        train(tiny_config(pathlib.Path({str(tmp_path / "run")!r}), checkpoint={{"every": 4}}))
    """)
    proc = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.time() + 90
        while not (tmp_path / "ready").exists():
            assert proc.poll() is None, "the training subprocess died early"
            assert time.time() < deadline, "the subprocess never reached the save"
            time.sleep(0.1)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    run = tmp_path / "run"
    assert ckpt.latest_checkpoint(run) == run / "step_000004"
    assert list(run.glob(".tmp-step_000008-*"))  # complete files, but never published
    model, _ = ckpt.load_model_for_inference(run)
    assert torch.isfinite(next(model.parameters())).all()


def test_keep_last_and_resolution(tmp_path):
    train(tiny_config(tmp_path, checkpoint={"every": 2, "keep_last": 2}))
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step_000006", "step_000008"]
    assert ckpt.resolve_checkpoint(tmp_path) == tmp_path / "step_000008"
    assert ckpt.resolve_checkpoint(tmp_path / "step_000006") == tmp_path / "step_000006"
    with pytest.raises(ckpt.UserError, match="checkpoint not found"):
        ckpt.resolve_checkpoint(tmp_path / "nope")


def test_checkpoint_is_a_from_pretrained_model(tmp_path):
    res = train(tiny_config(tmp_path))
    model = GatedDeltaForCausalLM.from_pretrained(str(res.checkpoint)).eval()
    loaded, tok = ckpt.load_model_for_inference(res.checkpoint)
    ids = torch.tensor([tok.encode("def f(x): return x")])
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, loaded(input_ids=ids).logits)
    # and it is the trained model, not a fresh one
    fresh = build_model(tiny_config(tmp_path), 320)
    assert not torch.equal(fresh.lm_head.weight, model.lm_head.weight)


def test_ctrl_c_writes_a_checkpoint_then_stops(tmp_path):
    def interrupt_at_step_3(cfg, vocab):
        model = build_model(cfg, vocab)
        calls = {"n": 0}

        def hook(module, args, out):
            if module.training:
                calls["n"] += 1
                if calls["n"] == 3:
                    os.kill(os.getpid(), signal.SIGINT)  # what Ctrl-C sends
            return out

        model.register_forward_hook(hook)
        return model

    res = train(tiny_config(tmp_path), model_factory=interrupt_at_step_3)
    assert res.interrupted and res.step == 3
    assert ckpt.latest_checkpoint(tmp_path) == tmp_path / "step_000003"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored
    again = train(tiny_config(tmp_path, ("checkpoint.resume", "auto")))
    assert min(again.losses) == 4 and again.step == 8
