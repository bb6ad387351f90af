"""The lm-evaluation-harness adapter on a tiny byte-level model and small local tasks (no downloads).

lm-eval is an optional extra (``gatedelta[lmeval]``, ~570 MB with its dependencies), so this test
skips cleanly where it is not installed.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

lm_eval = pytest.importorskip("lm_eval")

from gatedelta.evaluate.lm_eval_adapter import GatedDeltaLM  # noqa: E402

MC = """task: gd_tiny_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{label}}}}"
metric_list:
  - metric: acc
"""
ROLLING = """task: gd_tiny_ppl
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{{{text}}}}"
metric_list:
  - metric: word_perplexity
  - metric: bits_per_byte
"""
GEN = """task: gd_tiny_gen
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "{{{{question}}}}"
doc_to_target: "{{{{answer}}}}"
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: 8
  do_sample: false
metric_list:
  - metric: exact_match
"""


def _write_tasks(root: Path) -> Path:
    rows = [{"question": f"{a} plus {b} is", "choices": [f" {a + b}", f" {a + b + 1}"], "label": 0,
             "answer": f" {a + b}", "text": f"The number {a} is followed by {a + 1}."}
            for a, b in [(1, 2), (3, 4), (5, 6)]]
    data = root / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    for name, body in (("mc", MC), ("ppl", ROLLING), ("gen", GEN)):
        (root / f"{name}.yaml").write_text(body.format(data=data))
    return root


def test_simple_evaluate_runs_all_three_request_types(saved_bytes_lm: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from lm_eval.tasks import TaskManager

    tm = TaskManager(include_path=str(_write_tasks(tmp_path)))
    out = lm_eval.simple_evaluate(model="gatedelta", model_args=f"pretrained={saved_bytes_lm},device=cpu",
                                  tasks=["gd_tiny_mc", "gd_tiny_ppl", "gd_tiny_gen"], task_manager=tm,
                                  log_samples=False, bootstrap_iters=0)
    res = out["results"]
    assert 0.0 <= res["gd_tiny_mc"]["acc,none"] <= 1.0
    assert math.isfinite(res["gd_tiny_ppl"]["word_perplexity,none"])
    assert res["gd_tiny_gen"]["exact_match,none"] in (0.0, 1 / 3, 2 / 3, 1.0)


def test_loglikelihood_matches_a_direct_forward(saved_bytes_lm: Path) -> None:
    lm = GatedDeltaLM(pretrained=str(saved_bytes_lm), device="cpu")
    req = SimpleNamespace(args=("Hello", " world"))
    (ll, greedy), = lm.loglikelihood([req], disable_tqdm=True)
    ids = [256] + list(b"Hello world")                      # BOS + bytes
    with torch.no_grad():
        logp = torch.log_softmax(lm.model(input_ids=torch.tensor([ids])).logits[0].float(), -1)
    want = sum(float(logp[i - 1, ids[i]]) for i in range(len(b"Hello") + 1, len(ids)))
    assert ll == pytest.approx(want, abs=1e-4) and isinstance(greedy, bool)
    # rolling: every token of the text, the first conditioned on BOS, windows of max_length
    lm.max_length = 4
    (rolling,) = lm.loglikelihood_rolling([SimpleNamespace(args=("Hello world",))], disable_tqdm=True)
    assert rolling < 0 and math.isfinite(rolling)
    (text,) = lm.generate_until([SimpleNamespace(args=("Hi", {"until": ["\n"], "max_gen_toks": 3}))],
                                disable_tqdm=True)
    assert isinstance(text, str) and "\n" not in text
