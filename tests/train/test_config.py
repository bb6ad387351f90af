"""Config files (YAML, TOML) -> typed dataclasses; --section.field overrides; loud unknown keys."""

from __future__ import annotations

import pytest

from gatedelta.train.cli import _split_resume, main
from gatedelta.train.config import ConfigError, build_config, load_config, parse_overrides


def test_yaml_and_toml_give_the_same_config(tmp_path):
    (tmp_path / "a.yaml").write_text(
        "model: {preset: kda, size: tiny, overrides: {num_layers: 3}}\n"
        "optim: {lr: 3e-4, betas: [0.9, 0.99]}\n"  # PyYAML reads 3e-4 as a string: must still be a float
        "data: {seq_len: 128, paths: [a.txt, b.txt], source: text}\n")
    (tmp_path / "a.toml").write_text(
        '[model]\npreset = "kda"\nsize = "tiny"\noverrides = { num_layers = 3 }\n'
        "[optim]\nlr = 3e-4\nbetas = [0.9, 0.99]\n"
        '[data]\nseq_len = 128\npaths = ["a.txt", "b.txt"]\nsource = "text"\n')
    a, b = load_config(tmp_path / "a.yaml"), load_config(tmp_path / "a.toml")
    assert a == b
    assert a.optim.lr == 3e-4 and isinstance(a.optim.lr, float)
    assert a.model.overrides == {"num_layers": 3} and a.data.paths == ["a.txt", "b.txt"]


def test_overrides_are_parsed_to_the_field_types(tmp_path):
    (tmp_path / "c.yaml").write_text("optim: {lr: 1e-3}\n")
    cfg = load_config(tmp_path / "c.yaml", [
        "--optim.lr", "2e-4", "--data.seq_len=512", "--runtime.compile", "true", "--optim.betas", "0.8,0.9",
        "--model.overrides.num_layers", "4", "--model.overrides.window", "null", "--data.paths", "x,y",
        "--runtime.distributed", "fsdp2", "--checkpoint.resume", "auto"])
    assert cfg.optim.lr == 2e-4 and cfg.data.seq_len == 512 and cfg.runtime.compile is True
    assert cfg.optim.betas == [0.8, 0.9] and cfg.data.paths == ["x", "y"]
    assert cfg.model.overrides == {"num_layers": 4, "window": None}
    assert cfg.runtime.distributed == "fsdp2" and cfg.checkpoint.resume == "auto"


@pytest.mark.parametrize("args, words", [
    (["--optim.weight_decy", "0.1"], ["weight_decy", "valid fields", "weight_decay", "grad_clip"]),
    (["--optimizer.lr", "0.1"], ["optimizer", "valid sections", "optim", "schedule"]),
    (["--data.seq_len", "many"], ["data.seq_len", "integer", "many"]),
    (["--runtime.compile", "maybe"], ["runtime.compile", "true or false"]),
    (["--runtime.distributed", "horovod"], ["none", "ddp", "fsdp2"]),
    (["--data.seq_len", "0"], ["data.seq_len", ">= 1"]),
    (["--optim.lr"], ["needs a value"]),
    (["optim.lr", "1"], ["expected --section.field"]),
])
def test_bad_overrides_name_the_problem(args, words):
    with pytest.raises(ConfigError) as e:
        build_config({}, parse_overrides(args))
    for w in words:
        assert w in str(e.value)


def test_unknown_key_in_file_lists_valid_ones(tmp_path):
    (tmp_path / "bad.yaml").write_text("schedule: {step: 10}\n")
    with pytest.raises(ConfigError, match=r"unknown field 'step'.*valid fields: steps, warmup_steps"):
        load_config(tmp_path / "bad.yaml")


def test_cli_resume_flag_and_print_config(tmp_path, capsys):
    assert _split_resume(["--resume", "--optim.lr", "1"]) == (["--optim.lr", "1"], "auto", False)
    assert _split_resume(["--resume", "runs/x", "--print-config"]) == ([], "runs/x", True)
    (tmp_path / "c.yaml").write_text("data: {seq_len: 64}\n")
    assert main([str(tmp_path / "c.yaml"), "--resume", "--print-config"]) == 0
    out = capsys.readouterr().out
    assert "seq_len: 64" in out and "resume: auto" in out


def test_cli_config_errors_are_one_line(tmp_path, capsys):
    assert main([str(tmp_path / "missing.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: config file not found") and "Traceback" not in err
    (tmp_path / "c.yaml").write_text("optim: {lr: fast}\n")
    assert main([str(tmp_path / "c.yaml")]) == 2
    assert "optim.lr must be a number" in capsys.readouterr().err
