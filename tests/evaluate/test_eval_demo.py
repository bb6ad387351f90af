"""`gatedelta demo --quick`: the whole pipeline (train, evaluate beyond the training length,
diagnose, report) in a few steps per model."""

from __future__ import annotations

import json
from pathlib import Path

from gatedelta.demo import MIXERS, main


def test_demo_quick_writes_report_plots_and_json(tmp_path: Path) -> None:
    assert main(["--quick", "--out", str(tmp_path), "--device", "cpu"]) == 0
    report = (tmp_path / "report.md").read_text()
    for mixer in MIXERS:
        assert f"| {mixer} |" in report
    assert "## MQAR" in report and "## MK-NIAH" in report and "sink share" in report
    for png in ("mqar_accuracy.png", "niah_accuracy.png", "sink_share.png", "max_activation.png"):
        assert (tmp_path / png).stat().st_size > 1000
    results = json.loads((tmp_path / "results.json").read_text())
    assert len(results["records"]) == 2 * len(MIXERS)
    gated = [r for r in results["records"] if r["mixer"] == "attn-g1"]
    assert gated and all("diagnostics" in r for r in gated)
    # every recurrent mixer has the same state per layer
    recurrent = [r for r in results["records"] if r["mixer"] not in ("attn", "attn-g1")]
    assert {r["state_floats_per_layer"] for r in recurrent} == {2048}


def test_demo_rejects_unknown_mixer(tmp_path: Path, capsys) -> None:
    assert main(["--mixers", "gdn,lstm", "--out", str(tmp_path)]) == 2
    assert "lstm" in capsys.readouterr().err
