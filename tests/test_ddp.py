"""Data parallelism: two CPU processes (gloo) under torchrun against one process."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vaetut import Autoencoder, VAE, fit
from vaetut.train import CheckpointError

WORKER = Path(__file__).with_name("ddp_worker.py")


def _torchrun(phase: str, out: Path) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(WORKER), phase, str(out)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    _torchrun("first", out)
    _torchrun("resume", out)
    return out


def test_a_data_parallel_step_equals_a_one_process_step_on_the_whole_batch(runs):
    first = torch.load(runs / "first.pt", weights_only=True)
    x = torch.rand(64, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    ae = Autoencoder(latent_dim=2, hidden=(32,))
    start = {k: v.clone() for k, v in ae.state_dict().items()}
    sgd = torch.optim.SGD(ae.parameters(), lr=0.5)
    fit(ae, x, steps=2, batch_size=32, binarize=True, objective="reconstruction", optimizer=sgd, progress=False, device="cpu")
    for key, value in ae.state_dict().items():
        assert not torch.equal(value, start[key])  # training moved every tensor
        torch.testing.assert_close(first["ae"][key], value, rtol=1e-5, atol=1e-6)


def test_a_two_process_run_resumes_exactly(runs):
    first = torch.load(runs / "first.pt", weights_only=True)
    resumed = torch.load(runs / "resumed.pt", weights_only=True)
    for key, value in first["vae_full"].items():
        assert torch.equal(resumed["vae_resumed"][key], value), key
    assert resumed["history"] == first["history"]  # logged means (averaged over both processes) too


def test_a_two_process_checkpoint_refuses_a_one_process_resume(runs):
    x = torch.rand(64, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    with pytest.raises(CheckpointError, match="processes: 2 in the checkpoint, 1 now"):
        fit(VAE(latent_dim=2, hidden=(32,)), x, steps=6, batch_size=32, binarize=True, seed=4, log_every=1,
            progress=False, device="cpu", checkpoint=runs / "vae.pt", resume=True)


def test_a_timed_command_line_run_under_torchrun(tmp_path):
    """`torchrun -m vaetut train MODEL --minutes M`: every process measures the speed together (the
    probe is data-parallel too), all stop at the same step boundary at the time limit, and the
    learning rate follows the main process's clock, so the processes' weights stay equal."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "vaetut", "train", "vae", "--minutes", "0.1", "--out", str(out), "--device", "cpu"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    history = json.loads((out / "history.json").read_text())
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert state["world_size"] == 2 and state["config"]["lr_schedule"] == "cosine-time"
    # the time limit ends it, or (when the machine ran faster than its measured speed) the step
    # count, which is ten times the measured estimate
    assert history["stopped"] == "time limit" or state["step"] == state["total_steps"], history
    assert 0 < state["step"] <= state["total_steps"] and history["seconds"] < 60
