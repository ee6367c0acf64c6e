"""Time one epoch (60,000 images) of each registry model under the published protocol's batch
size (20) on the current CUDA device, on random binary images of MNIST's shape (the speed does not
depend on the pixels), and print the projected training time of the published protocol's 3,280
epochs.  Usage: python scripts/gpu_epoch_time.py [MODEL ...]"""

import sys
import time
from dataclasses import replace

import torch

from vaetut import fit
from vaetut.results import PROTOCOLS, build, train_config

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
sync = torch.cuda.synchronize if DEVICE == "cuda" else (lambda: None)
names = sys.argv[1:] or ["vae", "vae2", "iwae5", "lvae", "planar", "iaf", "conv"]
protocol = PROTOCOLS["published"]
x = (torch.rand(60_000, 1, 28, 28) < 0.13).float()
per_epoch = 60_000 // protocol.batch_size
print(f"{torch.cuda.get_device_name() if DEVICE == 'cuda' else 'cpu'}, torch {torch.__version__}, batch {protocol.batch_size}, {per_epoch} steps per epoch")
for name in names:
    model = build(name, 0, x)
    config = replace(train_config(name, protocol, 0, per_epoch), epochs=None, steps=200, lr_schedule="constant")
    fit(model, x, config, device=DEVICE, progress=False)  # warm-up
    sync()
    start = time.perf_counter()
    fit(model, x, replace(config, steps=1000), device=DEVICE, progress=False)
    sync()
    per_step = (time.perf_counter() - start) / 1000
    epoch = per_step * per_epoch
    print(f"{name:7s} {1000 * per_step:6.2f} ms/step, {epoch:6.1f} s/epoch, 3,280 epochs: {3280 * epoch / 3600:5.1f} h", flush=True)
