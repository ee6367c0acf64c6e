"""The k = 5000 importance-sampled log-likelihood of an MLP VAE against the floor
set by its matrix products.

Times ``vaetut.log_likelihood(model, x, k=5000)`` on binarized MNIST test images
for Burda et al.'s one-stochastic-layer network, 784-200-200-50 with tanh units
and a Bernoulli decoder (``VAE(latent_dim=50, hidden=(200, 200),
activation="tanh")``, the ``vae`` architecture of the results harness). The
weights are a seeded initialisation: the time does not depend on training.

The floor is the time the estimator's matrix products alone would take: their
FLOPs (2 m n p per [m, n] x [n, p] product; the encoder once per image, the
decoder once per importance sample) divided by the machine's float32
matrix-multiply rate, measured on 1024 x 1024 matrices as in
``benchmarks/train_epoch.py`` (best of several tries, between the timed runs).
Prints seconds per 1,000 images, the floor and their ratio (target: <= 2 on the
2-core CPU), and the load average before and after: numbers taken on a busy
machine mean little.

``--compare`` also times the plain route of ``VAE.log_weights``
(``log_px_z(x, decode(z))``, what a subclass that overrides ``decode`` gets)
with the default shapes, and with the shapes log_likelihood used before
(batches of 100, chunks of 2**25 numbers): the latter is the estimator as it
was (about 62 s per 1,000 images on the 2-core CPU).

    python benchmarks/eval_ll.py [--repeats 3] [--device cpu] [--images 200] [--compare]
"""

from __future__ import annotations

import argparse
import os
import time

import torch
from torch import nn

from vaetut import VAE, get_device, load_mnist, log_likelihood
from vaetut.config import run_info

K = 5000
NET = dict(latent_dim=50, hidden=(200, 200), activation="tanh")


class PlainRouteVAE(VAE):
    """The same network; overriding ``decode`` sends ``log_weights`` down its plain route."""

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return super().decode(z)


def linear_flops(modules: list[nn.Module], rows: int) -> float:
    """FLOPs of the matrix products of every nn.Linear in ``modules``, applied to ``rows`` rows."""
    linears = [m for mod in modules for m in mod.modules() if isinstance(m, nn.Linear)]
    return sum(2 * rows * m.in_features * m.out_features for m in linears)


def estimator_flops(model: VAE, n: int, k: int) -> float:
    """Matrix-product FLOPs of log_likelihood: the encoder once per image, the decoder once per sample."""
    encoder = linear_flops([model.encoder, model.to_mu, model.to_log_var], n)
    decoder = linear_flops([model.decoder], n * k)
    return encoder + decoder


def time_log_likelihood(model: VAE, x: torch.Tensor, device: torch.device, **shapes) -> float:
    """Seconds for one k = 5000 estimate of every image in x."""
    torch.manual_seed(0)
    start = time.perf_counter()
    log_likelihood(model, x, k=K, **shapes)
    _sync(device)
    return time.perf_counter() - start


def matmul_gflops(device: torch.device, size: int = 1024, repeats: int = 20) -> float:
    """As in train_epoch.py: float32 [size, size] @ [size, size], GFLOP/s."""
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


def _load() -> str:
    return "load average " + ", ".join(f"{v:.2f}" for v in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per setting; the best is reported")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--images", type=int, default=200, help="test images per run (times are per 1,000)")
    parser.add_argument("--compare", action="store_true", help="also time the plain route, with new and old shapes")
    args = parser.parse_args()
    device = get_device(args.device)
    print(run_info())
    print(f"before: {_load()}")
    x, _ = load_mnist("test", binarized=True)
    x = x[: args.images]
    torch.manual_seed(0)
    model = VAE(**NET).to(device).eval()
    settings = {"log_likelihood, defaults": (model, {})}
    if args.compare:
        plain = PlainRouteVAE(**NET).to(device).eval()
        plain.load_state_dict(model.state_dict())
        settings["plain route, default shapes"] = (plain, {})
        settings["plain route, old shapes (the estimator before)"] = (plain, dict(batch_size=100, max_elements=2**25))

    times = {name: [] for name in settings}
    rates = []
    for _ in range(args.repeats):  # interleaved, so that a busy spell hits every setting alike
        rates.append(matmul_gflops(device))
        for name, (m, shapes) in settings.items():
            times[name].append(time_log_likelihood(m, x, device, **shapes) / len(x) * 1000)
    rates.append(matmul_gflops(device))
    peak = max(rates)
    flops = estimator_flops(model, 1000, K)
    floor = flops / peak / 1e9
    print(f"matrix multiply ({device.type}, 1024x1024 float32): {peak:.1f} GFLOP/s (best of {len(rates)})")
    print(f"floor: {flops / 1e9:.0f} GFLOP of matrix products per 1,000 images at k={K}: {floor:.2f} s")
    for name, seconds in times.items():
        best = min(seconds)
        print(f"{name}: {best:6.2f} s per 1,000 images (best of {len(seconds)})  "
              f"{flops / best / 1e9:6.1f} GFLOP/s  ratio to the floor {best / floor:.2f}")
    print("target: ratio <= 2.00 for the defaults")
    print(f"after: {_load()}")


if __name__ == "__main__":
    main()
