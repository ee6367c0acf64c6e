"""Run by tests/test_ddp.py under ``torchrun --nproc_per_node 2`` (gloo, CPU); not a test module.

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/ddp_worker.py PHASE OUT_DIR

PHASE ``first``: two data-parallel SGD steps of an Autoencoder (deterministic, binarized batches)
and a data-parallel VAE run of 6 steps, plus the first 3 steps of the same VAE run
with a checkpoint. PHASE ``resume``: the VAE run resumed from that checkpoint to 6 steps.
Process 0 saves the weights it ends with.
"""

import os
import sys

import torch

from vaetut import VAE, Autoencoder, fit

phase, out = sys.argv[1], sys.argv[2]
rank = int(os.environ["RANK"])
torch.set_num_threads(1)
g = torch.Generator().manual_seed(0)
x = torch.rand(64, 1, 28, 28, generator=g)
vae_settings = dict(batch_size=32, binarize=True, seed=4, log_every=1, progress=False, device="cpu")


def vae():
    torch.manual_seed(0)
    return VAE(latent_dim=2, hidden=(32,))


if phase == "first":
    torch.manual_seed(0)
    ae = Autoencoder(latent_dim=2, hidden=(32,))
    sgd = torch.optim.SGD(ae.parameters(), lr=0.5)  # plain steps: the weights move by the gradient itself
    fit(ae, x, steps=2, batch_size=32, binarize=True, objective="reconstruction", optimizer=sgd, progress=False, device="cpu")
    full = vae()
    history = fit(full, x, steps=6, **vae_settings)
    fit(vae(), x, steps=3, checkpoint=os.path.join(out, "vae.pt"), **vae_settings)
    if rank == 0:
        torch.save({"ae": ae.state_dict(), "vae_full": full.state_dict(), "history": history.terms}, os.path.join(out, "first.pt"))
else:
    resumed = vae()
    history = fit(resumed, x, steps=6, checkpoint=os.path.join(out, "vae.pt"), resume=True, **vae_settings)
    if rank == 0:
        torch.save({"vae_resumed": resumed.state_dict(), "history": history.terms}, os.path.join(out, "resumed.pt"))
