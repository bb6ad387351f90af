"""`gatedelta eval` end to end on tiny freshly saved models: JSON, PNGs, a printed table, and exit
status 2 with the valid choices for bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from gatedelta.evaluate.cli import main


def _run(args: list[str]) -> int:
    return main([*args, "--no-progress", "--device", "cpu"])


def test_mqar_writes_json_png_and_table(saved_hybrid: Path, tmp_path: Path, capsys) -> None:
    rc = _run([str(saved_hybrid), "--task", "mqar", "--lengths", "32,64", "--kv-pairs", "4,8",
               "--num-samples", "8", "--out", str(tmp_path)])
    assert rc == 0
    out = capsys.readouterr().out
    assert "pairs \\ T" in out and "8 pairs" in out
    record = json.loads((tmp_path / "mqar.json").read_text())
    cells = {(r["seq_len"], r["num_kv_pairs"]) for r in record["results"]}
    assert cells == {(32, 4), (32, 8), (64, 4), (64, 8)}
    assert (tmp_path / "mqar.png").stat().st_size > 1000


def test_niah_token_heatmap(saved_hybrid: Path, tmp_path: Path, capsys) -> None:
    rc = _run([str(saved_hybrid), "--task", "niah", "--lengths", "40,64", "--depths", "0,0.5,1",
               "--num-samples", "4", "--out", str(tmp_path)])
    assert rc == 0
    assert "depth \\ T" in capsys.readouterr().out
    record = json.loads((tmp_path / "niah.json").read_text())
    assert record["form"] == "token" and len(record["results"]) == 6
    assert (tmp_path / "niah_heatmap.png").stat().st_size > 1000


def test_diagnostics_sink_share_png(saved_hybrid: Path, tmp_path: Path, capsys) -> None:
    rc = _run([str(saved_hybrid), "--task", "diagnostics", "--lengths", "48", "--batch-size", "4",
               "--out", str(tmp_path)])
    assert rc == 0
    out = capsys.readouterr().out
    assert "sink share" in out and "attn" in out
    record = json.loads((tmp_path / "diagnostics.json").read_text())
    assert list(record["results"]["sink_share"]) == ["1"]
    assert (tmp_path / "sink_share.png").is_file() and (tmp_path / "max_activation.png").is_file()


def test_ppl_and_text_niah_on_a_byte_model(saved_bytes_lm: Path, tmp_path: Path, capsys) -> None:
    text = tmp_path / "heldout.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. " * 40)
    rc = _run([str(saved_bytes_lm), "--task", "ppl", "--lengths", "128", "--text-file", str(text),
               "--out", str(tmp_path)])
    assert rc == 0
    ppl = json.loads((tmp_path / "ppl.json").read_text())["results"][0]["ppl"]
    assert 1 < ppl < 1000                                  # untrained: near the vocabulary size
    rc = _run([str(saved_bytes_lm), "--task", "niah", "--form", "text", "--niah-task", "s-niah-1",
               "--lengths", "500", "--depths", "0.5", "--num-samples", "1", "--out", str(tmp_path)])
    assert rc == 0
    record = json.loads((tmp_path / "niah.json").read_text())
    assert record["form"] == "text" and record["results"][0]["accuracy"] in (0.0, 1.0)


@pytest.mark.parametrize("args,match", [
    (["--lengths", "8", "--kv-pairs", "4"], "valid lengths are >= 16"),
    (["--lengths", "abc"], "comma-separated integers"),
])
def test_bad_lengths_exit_2(saved_hybrid: Path, tmp_path: Path, capsys, args: list[str], match: str) -> None:
    try:
        rc = _run([str(saved_hybrid), "--task", "mqar", *args, "--out", str(tmp_path)])
    except SystemExit as e:   # argparse's own refusals
        rc = e.code
    assert rc == 2
    assert match in capsys.readouterr().err


def test_bad_niah_variant_lists_choices(saved_hybrid: Path, tmp_path: Path, capsys) -> None:
    rc = _run([str(saved_hybrid), "--task", "niah", "--niah-task", "s-niah-9", "--out", str(tmp_path)])
    assert rc == 2
    assert "niah, mk-niah-1, s-niah-1" in capsys.readouterr().err


def test_bad_task_name_exits_2_with_choices(saved_hybrid: Path) -> None:
    # through the real command line: the router, argparse and the process exit status
    cmd = [sys.executable, "-m", "gatedelta.cli", "eval", str(saved_hybrid), "--task", "hellaswag"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2
    assert "mqar" in p.stderr and "diagnostics" in p.stderr and "hellaswag" in p.stderr


def test_missing_checkpoint_exit_2(tmp_path: Path, capsys) -> None:
    assert _run([str(tmp_path / "nope"), "--task", "mqar"]) == 2
    assert "does not exist" in capsys.readouterr().err
