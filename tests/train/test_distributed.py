"""torchrun --nproc_per_node 2 on the CPU (gloo): DDP and FSDP2 through the real CLI.

DDP must reproduce a single process fed the same global batch (rank r takes rows r*B..(r+1)*B-1 of
each step, the loss is normalised by the global token count); FSDP2's full-state checkpoint must
resume on a different number of ranks.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from gatedelta.train.loop import train

from .helpers import tiny_config, tiny_yaml

STEPS = 6


def _torchrun(cfg_path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # two ranks on two cores: no oversubscription
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "gatedelta.train", str(cfg_path), *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _losses(run_dir) -> dict[int, float]:
    records = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in records if "loss" in r}


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """One process, batch 4 = the global batch of 2 ranks x 2 rows."""
    run = tmp_path_factory.mktemp("single")
    return train(tiny_config(run, data={"batch_size": 4}, schedule={"steps": STEPS + 2}))


@pytest.mark.slow
def test_ddp_matches_one_process_on_the_global_batch(tmp_path, single):
    cfg = tiny_yaml(tmp_path / "c.yaml", tmp_path / "ddp", schedule={"steps": STEPS + 2})
    proc = _torchrun(cfg, "--runtime.distributed", "ddp")
    assert proc.stdout.count("model gdn2-hybrid/tiny") == 1  # only rank 0 prints
    ddp = _losses(tmp_path / "ddp")
    assert sorted(ddp) == list(range(1, STEPS + 3))
    diff = max(abs(ddp[s] - single.losses[s]) for s in ddp)
    assert diff < 1e-5, (diff, ddp, single.losses)


@pytest.mark.slow
def test_fsdp2_trains_and_its_checkpoint_resumes_on_one_process(tmp_path, single):
    run = tmp_path / "fsdp"
    cfg = tiny_yaml(tmp_path / "c.yaml", run, schedule={"steps": STEPS + 2, "stop_at": STEPS})
    # 1 row x 2 micro-batches per rank: the same 4 rows per step, and FSDP2's no-sync accumulation
    _torchrun(cfg, "--runtime.distributed", "fsdp2", "--data.batch_size", "1", "--optim.accum_steps", "2")
    fsdp = _losses(run)
    assert max(abs(fsdp[s] - single.losses[s]) for s in fsdp) < 1e-5
    assert (run / f"step_{STEPS:06d}" / "model.safetensors").is_file()
    # 2 ranks -> 1 process: the same global batch, so the same losses as the single run
    rest = train(tiny_config(run, ("checkpoint.resume", "auto"), data={"batch_size": 4},
                             schedule={"steps": STEPS + 2}))
    assert sorted(rest.losses) == [STEPS + 1, STEPS + 2]
    assert max(abs(rest.losses[s] - single.losses[s]) for s in rest.losses) < 1e-5


@pytest.mark.slow
def test_ctrl_c_under_torchrun_saves_a_checkpoint(tmp_path):
    """The terminal's SIGINT reaches the workers and, forwarded by torchrun, again: save, then exit."""
    import signal
    import time

    run = tmp_path / "run"
    cfg = tiny_yaml(tmp_path / "c.yaml", run, schedule={"steps": 100_000})
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "gatedelta.train", str(cfg), "--runtime.distributed", "ddp", "--logging.every", "5"]
    proc = subprocess.Popen(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.time() + 120
        while not ((run / "log.jsonl").is_file() and (run / "log.jsonl").read_text().count("loss") >= 2):
            assert proc.poll() is None and time.time() < deadline, proc.stdout.read() if proc.stdout else ""
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: the whole foreground process group
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert "interrupted: stopped after step" in out, out[-3000:]
    ckpts = sorted(run.glob("step_*"))
    assert len(ckpts) == 1 and (ckpts[0] / "meta.json").is_file()
