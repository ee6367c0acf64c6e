"""Data parallelism: two CPU processes (gloo) under torchrun against one process."""

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
