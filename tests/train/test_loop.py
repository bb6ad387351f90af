"""The training loop: exact resume, loss normalisation under accumulation, the non-finite guard."""

from __future__ import annotations

import json
import math

import pytest

from gatedelta.train.loop import lr_lambda, param_groups, train

from .helpers import tiny_config


def test_resume_continues_exactly(tmp_path):
    """N steps straight == N/2 steps, stop, resume, N/2 steps: the same loss at every step (fp32 CPU)."""
    n = 12
    straight = train(tiny_config(tmp_path / "a", schedule={"steps": n}))
    first = train(tiny_config(tmp_path / "b", schedule={"steps": n, "stop_at": n // 2}))
    assert first.step == n // 2 and (tmp_path / "b" / f"step_{n // 2:06d}").is_dir()
    second = train(tiny_config(tmp_path / "b", ("checkpoint.resume", "auto"), schedule={"steps": n}))
    resumed = {**first.losses, **second.losses}
    assert sorted(resumed) == list(range(1, n + 1))
    assert [resumed[s] for s in range(1, n + 1)] == [straight.losses[s] for s in range(1, n + 1)]
    assert second.evals == {s: v for s, v in straight.evals.items() if s > n // 2}


def test_accumulation_equals_one_big_batch(tmp_path):
    """2 micro-batches of 2 rows == 1 micro-batch of 4 rows (tokens per micro-batch differ)."""
    short = {"steps": 4, "warmup_steps": 1}
    big = train(tiny_config(tmp_path / "a", data={"batch_size": 4}, schedule=short, eval={"every": 0}))
    acc = train(tiny_config(tmp_path / "b", data={"batch_size": 2}, optim={"accum_steps": 2}, schedule=short,
                            eval={"every": 0}))
    for s in big.losses:
        assert abs(big.losses[s] - acc.losses[s]) < 1e-5, (s, big.losses[s], acc.losses[s])


def test_non_finite_loss_skips_the_update_and_reports(tmp_path):
    calls = {"n": 0}

    def poisoned(cfg, vocab):
        from gatedelta.train.loop import build_model

        model = build_model(cfg, vocab)

        def hook(module, args, kwargs, out):
            if module.training:
                calls["n"] += 1
                if calls["n"] == 3:  # the third training forward = step 3
                    out.loss = out.loss * float("nan")
            return out

        model.register_forward_hook(hook, with_kwargs=True)
        return model

    res = train(tiny_config(tmp_path), model_factory=poisoned)
    assert res.skipped == [3] and math.isnan(res.losses[3])
    assert all(math.isfinite(v) for s, v in res.losses.items() if s != 3)
    events = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert any(e.get("event") == "skipped_nonfinite" and e["step"] == 3 for e in events)


def test_param_groups_and_schedule(tmp_path):
    from gatedelta.train.loop import build_model

    cfg = tiny_config(tmp_path, schedule={"steps": 100, "warmup_steps": 10, "min_lr_ratio": 0.1})
    model = build_model(cfg, 64)
    decay, no_decay = param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim >= 2 and not getattr(p, "_no_weight_decay", False) for p in decay["params"])
    tagged = [p for p in model.parameters() if getattr(p, "_no_weight_decay", False)]
    assert tagged and all(any(p is q for q in no_decay["params"]) for p in tagged)
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))
    f = lr_lambda(cfg)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(55) == pytest.approx(0.55) and f(100) == pytest.approx(0.1)


def test_synthetic_task_source(tmp_path):
    cfg = tiny_config(tmp_path, data={"source": "task", "task": "mqar", "seq_len": 64,
                                      "task_params": {"num_kv_pairs": 4}},
                      model={"overrides": {"vocab_size": 128, "hidden_size": 32, "num_layers": 2}})
    res = train(cfg)
    assert len(res.losses) == 8 and all(math.isfinite(v) for v in res.losses.values())
    assert res.evals and (tmp_path / "step_000008").is_dir()
    assert json.loads((tmp_path / "step_000008" / "gatedelta_tokenizer.json").read_text()) == {"kind": "none"}


def test_progress_bar_jsonl_and_tensorboard_logs(tmp_path, capsys):
    pytest.importorskip("tensorboard")
    res = train(tiny_config(tmp_path, logging={"tensorboard": True, "progress": True, "every": 2},
                            schedule={"steps": 4}, eval={"every": 2}))
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [2, 4]
    assert [r["step"] for r in records if "eval_loss" in r] == [2, 4]
    assert math.isclose(records[-1]["tok_per_s"], res.tokens_per_s) and records[-1]["event"] == "end"
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))
    assert "4/4" in capsys.readouterr().err  # tqdm's bar, with ETA, on stderr


def test_stop_flag_ignores_the_forwarded_copy_of_one_ctrl_c(monkeypatch):
    import signal

    from gatedelta.train import loop

    now = [100.0]
    monkeypatch.setattr(loop.time, "monotonic", lambda: now[0])
    flag = loop.StopFlag()
    flag._handle(signal.SIGINT, None)
    assert flag.requested
    now[0] += 0.2
    flag._handle(signal.SIGINT, None)  # torchrun forwarding the same Ctrl-C: keep saving
    flag._handle(signal.SIGTERM, None)
    now[0] += 2.0
    with pytest.raises(KeyboardInterrupt):  # a deliberate second Ctrl-C: abort now
        flag._handle(signal.SIGINT, None)


@pytest.mark.parametrize("preset", ["transformer", "mamba2", "gdn2-hybrid"])
def test_bf16_autocast_trains(tmp_path, preset):
    """runtime.dtype bfloat16: autocast around forward, fp32 master weights (CPU autocast here)."""
    res = train(tiny_config(tmp_path, runtime={"dtype": "bfloat16", "threads": 1},
                            model={"preset": preset}, schedule={"steps": 3}, eval={"every": 0}))
    assert all(math.isfinite(v) for v in res.losses.values())
