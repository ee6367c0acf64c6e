"""One training epoch of the 784-400-20 MLP VAE on MNIST: vaetut.fit against a
reference loop in the style of the PyTorch examples VAE.

The reference keeps MNIST as a torchvision dataset with a per-item ``ToTensor``
transform behind a ``DataLoader`` and sums an unfused BCE of sigmoid outputs, as
that example does. vaetut keeps the data as one tensor, batches by ``index_select``,
uses ``log_bernoulli`` (stable, with a hand-written backward pass and no ``log1p``,
which is slow on this CPU) and a fused Adam step. Both use batch 128,
Adam with lr 1e-3 and grey-level targets.

Prints both times, their ratio (target: vaetut <= 0.30 of the reference on a
2-core CPU), the training GFLOP/s each achieves, and the machine's measured
matrix-multiply rate for comparison.

    python benchmarks/train_epoch.py [--repeats 2] [--device cpu]
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from torch import nn

from vaetut import VAE, fit, get_device, load_mnist
from vaetut.config import data_root, run_info

D, H, Z, BATCH = 784, 400, 20, 128


class ReferenceVAE(nn.Module):
    """The architecture of the PyTorch examples VAE (fc1, fc21, fc22, fc3, fc4)."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc21, self.fc22 = nn.Linear(D, H), nn.Linear(H, Z), nn.Linear(H, Z)
        self.fc3, self.fc4 = nn.Linear(Z, H), nn.Linear(H, D)

    def forward(self, x):
        h = F.relu(self.fc1(x.view(-1, D)))
        mu, log_var = self.fc21(h), self.fc22(h)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * log_var)
        return torch.sigmoid(self.fc4(F.relu(self.fc3(z)))), mu, log_var


def reference_epoch(device: torch.device) -> float:
    from torchvision import datasets, transforms

    ds = datasets.MNIST(data_root(), train=True, download=False, transform=transforms.ToTensor())
    loader = torch.utils.data.DataLoader(ds, batch_size=BATCH, shuffle=True)
    model = ReferenceVAE().to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    start = time.perf_counter()
    for x, _ in loader:
        x = x.to(device)
        opt.zero_grad()
        x_hat, mu, log_var = model(x)
        bce = F.binary_cross_entropy(x_hat, x.view(-1, D), reduction="sum")
        kld = -0.5 * torch.sum(1 + log_var - mu.pow(2) - log_var.exp())
        (bce + kld).backward()
        opt.step()
    _sync(device)
    return time.perf_counter() - start


def vaetut_epoch(device: torch.device, x: torch.Tensor) -> float:
    model = VAE(latent_dim=Z, hidden=(H,))
    start = time.perf_counter()
    fit(model, x, epochs=1, batch_size=BATCH, lr=1e-3, device=device, progress=False)
    _sync(device)
    return time.perf_counter() - start


def training_flops(n: int) -> float:
    """Multiply-adds of the five linear layers, x2 for FLOPs, x3 for forward + backward."""
    macs = D * H + 2 * H * Z + Z * H + H * D
    return 3 * 2 * macs * n


def matmul_gflops(device: torch.device, size: int = 1024, repeats: int = 20) -> float:
    a, b = torch.randn(size, size, device=device), torch.randn(size, size, device=device)
    for _ in range(3):
        a @ b
    _sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    _sync(device)
    return 2 * size**3 * repeats / (time.perf_counter() - start) / 1e9


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=2, help="epochs timed per method; the best is reported")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = get_device(args.device)
    print(run_info())
    start = time.perf_counter()
    x, _ = load_mnist("train")
    print(f"load_mnist('train') as one tensor: {time.perf_counter() - start:.2f} s (not counted below)")

    ref = min(reference_epoch(device) for _ in range(args.repeats))
    ours = min(vaetut_epoch(device, x) for _ in range(args.repeats))
    flops = training_flops(len(x))
    peak = matmul_gflops(device)
    print(f"reference loop (DataLoader + ToTensor): {ref:6.2f} s/epoch  {flops / ref / 1e9:6.1f} GFLOP/s")
    print(f"vaetut.fit (tensor batches, fused):     {ours:6.2f} s/epoch  {flops / ours / 1e9:6.1f} GFLOP/s")
    print(f"ratio vaetut / reference: {ours / ref:.2f} (target <= 0.30)")
    print(f"matrix multiply ({device.type}, 1024x1024 float32): {peak:.1f} GFLOP/s; "
          f"the epoch's {flops / 1e9:.0f} GFLOP alone take {flops / peak / 1e9:.2f} s at that rate")


if __name__ == "__main__":
    main()
