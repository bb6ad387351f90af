"""CPU smoke test of ``gatedelta bench models --tiny`` (the H100 run is the team lead's)."""

from __future__ import annotations

import json

from gatedelta.bench.models import main


def test_bench_models_tiny_smoke(tmp_path, capsys):
    out = tmp_path / "models.json"
    argv = ["--tiny", "--seq-lens", "16", "--contexts", "8,24", "--decode-steps", "1", "--warmup", "0",
            "--out", str(out)]
    assert main(argv) == 0
    result = json.loads(out.read_text())
    assert [r["model"] for r in result["train"]] == ["gdn2-hybrid", "transformer"]
    for r in result["train"]:
        assert "error" not in r and r["tok_s"] > 0 and r["B"] * r["T"] == 64 and r["params"] > 0
    decode = {(r["model"], r["context"]): r for r in result["decode"]}
    assert len(decode) == 4 and all("error" not in r and r["decode_tok_s"] > 0 for r in decode.values())
    # the Transformer's KV cache grows with the context; the hybrid's cache is bounded by its window
    assert decode["transformer", 24]["cache_kv_MB"] > decode["transformer", 8]["cache_kv_MB"]
    hybrid = [decode["gdn2-hybrid", n]["cache_recurrent_MB"] for n in (8, 24)]
    assert hybrid[0] == hybrid[1] > 0
    assert "tok/s" in capsys.readouterr().out


def test_bench_models_records_errors_per_point(tmp_path):
    out = tmp_path / "models.json"
    assert main(["--tiny", "--models", "no-such-preset", "--seq-lens", "16", "--contexts", "8",
                 "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert "unknown preset" in result["train"][0]["error"]
    assert "unknown preset" in result["decode"][0]["error"]
    # a spent time budget skips the points left instead of overrunning
    assert main(["--tiny", "--max-seconds", "0", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert all(r["error"].startswith("skipped") for r in result["train"] + result["decode"])
