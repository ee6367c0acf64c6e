"""Normalizing flows: planar flows, MADE, and inverse autoregressive flow (IAF).

Papers: Rezende & Mohamed (2015), *Variational Inference with Normalizing Flows*
(the planar flow, its log-determinant by the matrix determinant lemma, the
invertibility condition of their appendix, and the test energies of their
Table 1); Germain et al. (2015), *MADE* (masks from unit degrees); Kingma et al.
(2016), *Improving Variational Inference with Inverse Autoregressive Flow* (the
IAF step and its numerically stable gated update). Mittas, *Variational
Autoencoders*, §5.1–§5.3, with the slips corrected as in the errata page of the book (``book/errata.md``)
§5. Taught in the chapters "Normalizing flows" and "Inverse autoregressive flow".

One protocol for every layer. A flow layer is an ``nn.Module`` with

* ``forward(z, context=None) -> (z_new, log_det)``: ``z`` ``[..., D]``, ``z_new``
  ``[..., D]`` and ``log_det = log |det dz_new/dz|`` per example, ``[...]``;
* ``inverse(y, context=None) -> (z, log_det)``: the inverse map and the
  log-determinant of *its* Jacobian, ``log |det dz/dy| = -log |det dy/dz|``.

``context`` is an optional ``[..., C]`` tensor (the encoder's features h) that the
layer's parameters depend on; it broadcasts against ``z``, so a ``[B, C]`` context
serves ``[k, B, D]`` samples. Layers with free parameters ignore it. A
:class:`FlowStack` chains layers and sums their log-determinants, so for
z_0 ~ q_0 and z_T = f_T(...f_1(z_0))::

    log q_T(z_T) = log q_0(z_0) - sum_t log |det dz_t/dz_{t-1}|      (book/errata.md §5.1)

Imports torch and :mod:`vaetut.distributions` only. To use it outside vaetut, copy
this file and ``distributions.py`` into one folder; then, from that folder::

    import torch
    from flows import PlanarFlow, iaf

    z = torch.randn(8, 2)
    z_new, log_det = PlanarFlow(2)(z)              # [8, 2], [8]
    z_new, log_det = iaf(2, steps=2, hidden=(16,))(z)
    print(z_new.shape, log_det.shape)              # torch.Size([8, 2]) torch.Size([8])
"""

from __future__ import annotations

from typing import Callable, Sequence

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

try:  # inside the vaetut package
    from .distributions import check_count, log_standard_normal
except ImportError:  # copied into a folder beside distributions.py (see the module docstring)
    from distributions import check_count, log_standard_normal  # type: ignore[no-redef]

__all__ = [
    "FlowStack",
    "compose",
    "planar_u_hat",
    "planar",
    "planar_inverse",
    "PlanarFlow",
    "made_degrees",
    "made_masks",
    "MaskedLinear",
    "MADE",
    "AffineAutoregressive",
    "IAFStep",
    "iaf",
    "energy_u1",
    "energy_u2",
    "energy_u3",
    "energy_u4",
    "ENERGIES",
    "fit_energy",
]


# ----------------------------------------------------------------- checks
def _check_z(z: Tensor, dim: int, what: str = "z") -> None:
    """Raise ValueError unless ``z`` is a floating ``[..., dim]`` batch."""
    if not torch.is_tensor(z) or z.dim() < 2 or z.shape[-1] != dim:
        got = tuple(z.shape) if torch.is_tensor(z) else type(z).__name__
        raise ValueError(
            f"this flow acts on {dim}-dimensional points: expected {what} of shape [B, {dim}] "
            f"(or [k, B, {dim}]), got {got}. A single point needs a batch dimension: {what}.unsqueeze(0)."
        )
    if not z.is_floating_point():
        raise ValueError(f"{what} must be floating point, got dtype {z.dtype}")


def _check_context(context: Tensor | None, context_dim: int) -> None:
    if context is None:
        raise ValueError(
            f"this layer is conditioned on the encoder: pass context=h with h of shape [B, {context_dim}]"
        )
    if not torch.is_tensor(context) or context.dim() < 1 or context.shape[-1] != context_dim:
        got = tuple(context.shape) if torch.is_tensor(context) else type(context).__name__
        raise ValueError(f"expected context of shape [B, {context_dim}], got {got}")


# ------------------------------------------------------------------ stack
class FlowStack(nn.Module):
    """A chain of flow layers ``f_T o ... o f_1``; log-determinants add up.

    Args:
        layers: one or more flow layers, all acting on the same dimension ``dim``.

    ``forward(z_0, context) -> (z_T, sum_t log|det dz_t/dz_{t-1}|)``, shapes ``[..., D]``
    and ``[...]``; ``inverse`` runs the layers backwards.
    """

    def __init__(self, layers: Sequence[nn.Module]):
        super().__init__()
        layers = list(layers)
        if not layers:
            raise ValueError("a flow needs at least one layer; got none (use K >= 1 steps)")
        dims = {getattr(layer, "dim", None) for layer in layers}
        if len(dims) != 1 or None in dims:
            raise ValueError(f"all layers must act on the same dimension, got dims {sorted(map(str, dims))}")
        self.layers = nn.ModuleList(layers)
        self.dim = dims.pop()

    def __len__(self) -> int:
        return len(self.layers)

    def forward(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        _check_z(z, self.dim)
        log_det = torch.zeros(z.shape[:-1], dtype=z.dtype, device=z.device)  # [...]
        for layer in self.layers:
            z, ld = layer(z, context)
            log_det = log_det + ld
        return z, log_det

    def inverse(self, y: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``z_0 = f^{-1}(y)`` and ``log |det dz_0/dy|`` (the negative of forward's), ``[...]``."""
        _check_z(y, self.dim, "y")
        log_det = torch.zeros(y.shape[:-1], dtype=y.dtype, device=y.device)
        for layer in reversed(self.layers):
            y, ld = layer.inverse(y, context)
            log_det = log_det + ld
        return y, log_det

    def log_prob(self, y: Tensor, context: Tensor | None = None) -> Tensor:
        """log q_T(y) for a standard normal base q_0 = N(0, I), by inverting the flow, ``[...]``."""
        z0, log_det = self.inverse(y, context)
        # $\log q_T(y) = \log q_0(f^{-1}(y)) + \log|\det \partial f^{-1}/\partial y|$
        return log_standard_normal(z0) + log_det

    def rsample_with_log_prob(
        self, n: int, context: Tensor | None = None, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """n reparameterized draws z_T of the flow over a N(0, I) base and their log q_T, ``[n, D]``, ``[n]``."""
        n = check_count(n, "n")
        p = next(self.parameters())
        z0 = torch.randn(n, self.dim, generator=generator, dtype=p.dtype).to(p.device)
        z, log_det = self(z0, context)
        # $\log q_T(z_T) = \log q_0(z_0) - \sum_t \log|\det \partial z_t/\partial z_{t-1}|$
        return z, log_standard_normal(z0) - log_det


def compose(*layers: nn.Module) -> FlowStack:
    """``compose(f1, f2, ...)`` is the flow that applies f1 first: a :class:`FlowStack`."""
    return FlowStack(layers)


# ----------------------------------------------------------------- planar
def planar_u_hat(u: Tensor, w: Tensor) -> Tensor:
    """Constrain u so that the tanh planar map is invertible (Rezende & Mohamed, App. A.1).

    ``u_hat = u + (m(w.u) - w.u) w / |w|^2`` with ``m(a) = -1 + softplus(a)``, so
    ``w.u_hat = m(w.u) > -1`` for any u, w. Shapes ``[..., D]`` -> ``[..., D]``.
    """
    wu = (w * u).sum(-1, keepdim=True)  # [..., 1]
    # $\|w\|^2$, floored only so that w = 0 (where any u is fine) does not divide by zero
    w_sq = (w * w).sum(-1, keepdim=True).clamp_min(torch.finfo(w.dtype).tiny)
    # $\hat u = u + (m(w^\top u) - w^\top u)\, w / \|w\|^2,\quad m(a) = -1 + \log(1 + e^a)$
    return u + (F.softplus(wu) - 1.0 - wu) * w / w_sq


def planar(z: Tensor, u_hat: Tensor, w: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """The planar map ``f(z) = z + u_hat tanh(w.z + b)`` and ``log |det df/dz|``.

    Args:
        z: ``[..., D]``.
        u_hat, w: ``[D]`` or per example ``[..., D]`` (broadcast with z); u_hat already
            constrained by :func:`planar_u_hat`.
        b: ``[]`` or ``[...]``.

    Returns:
        ``(z_new [..., D], log_det [...])`` with
        ``log_det = log |1 + h'(w.z + b) w.u_hat|`` (matrix determinant lemma).
    """
    a = (w * z).sum(-1) + b  # [...]
    t = torch.tanh(a)
    # $f(z) = z + \hat u\, h(w^\top z + b)$
    z_new = z + u_hat * t.unsqueeze(-1)
    # $\log|\det J| = \log|1 + h'(w^\top z + b)\, w^\top \hat u|,\quad h' = 1 - \tanh^2$
    det = 1.0 + (1.0 - t * t) * (w * u_hat).sum(-1)
    return z_new, det.abs().clamp_min(torch.finfo(det.dtype).tiny).log()


def planar_inverse(
    y: Tensor, u_hat: Tensor, w: Tensor, b: Tensor, iters: int = 60
) -> tuple[Tensor, Tensor]:
    """Invert the planar map (needs ``w.u_hat > -1``), and ``log |det dz/dy|``, ``[...]``.

    Writing ``alpha = w.z``, the map gives ``w.y = alpha + (w.u_hat) tanh(alpha + b)``:
    one increasing scalar equation, solved by bisection on
    ``[w.y - |w.u_hat|, w.y + |w.u_hat|]``; then ``z = y - u_hat tanh(alpha + b)``.
    """
    wy = (w * y).sum(-1)  # [...]
    wu = (w * u_hat).sum(-1)
    wy, wu, bb = torch.broadcast_tensors(wy, wu, torch.as_tensor(b, dtype=y.dtype, device=y.device))
    lo, hi = wy - wu.abs(), wy + wu.abs()
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        too_big = mid + wu * torch.tanh(mid + bb) > wy
        hi = torch.where(too_big, mid, hi)
        lo = torch.where(too_big, lo, mid)
    alpha = 0.5 * (lo + hi)
    z = y - u_hat * torch.tanh(alpha + bb).unsqueeze(-1)
    _, log_det = planar(z, u_hat, w, b)
    return z, -log_det


class PlanarFlow(nn.Module):
    """One planar step, with free parameters or parameters produced from a context.

    Args:
        dim: D, the size of z.
        context_dim: ``None`` for free parameters u, w ``[D]`` and b ``[]`` (fitting a
            density); otherwise a linear head maps the encoder features h ``[..., C]``
            to per-example ``u, w [..., D]`` and ``b [...]`` (a VAE posterior,
            as Rezende & Mohamed do for amortized inference).
        init_scale: size of the random part of the initial u (free) or of the head's
            weights (from context).

    Initialisation: w is a random vector of length about 1 and u is chosen with
    ``w.u = log(e - 1)``, where ``m(w.u) = 0``, so ``w.u_hat = 0`` and each layer starts as a
    small volume-preserving shear, close to the identity. (Small random u and w would
    instead give ``w.u_hat = m(0) = -0.31``: every layer would start by contracting space by
    up to 31% along w, and a deep stack would start as a very narrow distribution.)
    """

    def __init__(self, dim: int, context_dim: int | None = None, init_scale: float = 0.1):
        super().__init__()
        dim = check_count(dim, "dim")
        self.dim, self.context_dim = dim, context_dim
        w = torch.randn(dim) / math.sqrt(dim)  # [D], |w| about 1
        # $m(a) = 0$ at $a = \log(e - 1)$: the u that makes $w^\top \hat u = 0$
        u = math.log(math.e - 1) * w / w.pow(2).sum()
        if context_dim is None:
            self.u = nn.Parameter(u + init_scale * torch.randn(dim))
            self.w = nn.Parameter(w)
            self.b = nn.Parameter(torch.zeros(()))
        else:
            context_dim = check_count(context_dim, "context_dim")
            self.head = nn.Linear(context_dim, 2 * dim + 1)
            nn.init.normal_(self.head.weight, std=init_scale / math.sqrt(context_dim))
            with torch.no_grad():
                self.head.bias.copy_(torch.cat([u, w, torch.zeros(1)]))  # [u, w, b]

    def params(self, context: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """``(u_hat, w, b)``: ``[D], [D], []`` (free) or ``[..., D], [..., D], [...]`` (from context)."""
        if self.context_dim is None:
            u, w, b = self.u, self.w, self.b
        else:
            _check_context(context, self.context_dim)
            u, w, b = self.head(context).split([self.dim, self.dim, 1], dim=-1)  # [..., D], [..., D], [..., 1]
            b = b.squeeze(-1)  # [...]
        return planar_u_hat(u, w), w, b

    def forward(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        _check_z(z, self.dim)
        return planar(z, *self.params(context))

    def inverse(self, y: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        _check_z(y, self.dim, "y")
        return planar_inverse(y, *self.params(context))


# ------------------------------------------------------------------- MADE
def made_degrees(
    dim: int, hidden: Sequence[int], order: Tensor | None = None, conditional: bool = False
) -> list[Tensor]:
    """Degrees of the units of a MADE (Germain et al. 2015).

    Args:
        dim: D, the number of inputs (and of outputs per parameter).
        hidden: widths of the hidden layers.
        order: ``[D]`` permutation of ``0..D-1``; ``order[i]`` is the position of
            variable i in the autoregressive order (default ``0..D-1``).
        conditional: the network also reads a context; then hidden degrees start at
            0, and degree-0 units (which see no input, only the context) carry the
            context to every output, the first in the order included.

    Returns:
        ``[d_in [D], d_1 [H_1], ..., d_L [H_L]]``: input i has degree ``order[i] + 1``;
        hidden units cycle through ``1..D-1`` (``0..D-1`` if conditional) so every
        degree is used.
    """
    dim = check_count(dim, "dim")
    if order is None:
        order = torch.arange(dim)
    order = torch.as_tensor(order)
    if order.shape != (dim,) or not torch.equal(order.sort().values, torch.arange(dim)):
        raise ValueError(f"order must be a permutation of 0..{dim - 1}, got {order.tolist()}")
    degrees = [order + 1]
    for h in hidden:
        h = check_count(h, "hidden width")
        degrees.append(torch.arange(h) % dim if conditional else torch.arange(h) % max(dim - 1, 1) + 1)  # [H]
    return degrees


def made_masks(degrees: Sequence[Tensor], n_params: int = 1) -> list[Tensor]:
    """Masks ``[out, in]`` from unit degrees: hidden ``d_out >= d_in``, output ``d_out > d_in``.

    The outputs are ``n_params`` blocks of D units (e.g. m and s of an IAF step), the
    block's unit i carrying the degree of input i; so output i depends only on inputs
    earlier in the order, and the Jacobian is strictly triangular in that order.
    """
    d_out = degrees[0].repeat(n_params)  # [n_params * D]
    masks = [(d[:, None] >= d_prev[None, :]).float() for d_prev, d in zip(degrees[:-1], degrees[1:])]
    masks.append((d_out[:, None] > degrees[-1][None, :]).float())
    return masks


class MaskedLinear(nn.Linear):
    """``y = x (W * M)^T + b`` with a fixed 0/1 mask ``M`` ``[out, in]`` kept as a buffer."""

    def __init__(self, in_features: int, out_features: int, mask: Tensor):
        super().__init__(in_features, out_features)
        if mask.shape != (out_features, in_features):
            raise ValueError(f"mask must be [{out_features}, {in_features}], got {tuple(mask.shape)}")
        self.register_buffer("mask", mask.to(self.weight.dtype))

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight * self.mask, self.bias)


class MADE(nn.Module):
    """Masked autoencoder for distribution estimation: ``n_params`` outputs of size D,
    output i a function of the inputs before i in ``order`` and of the context.

    Args:
        dim: D.
        hidden: hidden widths (at least one layer; widths >= D - 1 keep every path).
        n_params: outputs per variable (2 for [m, s]).
        context_dim: size of an optional context h, added unmasked to the first hidden
            layer (as Kingma et al. 2016 condition on h); it reaches every output.
        order: autoregressive order, see :func:`made_degrees`.

    ``forward(z [..., D], context [..., C]) -> tuple of n_params tensors [..., D]``.
    """

    def __init__(
        self,
        dim: int,
        hidden: Sequence[int] = (64, 64),
        n_params: int = 2,
        context_dim: int | None = None,
        order: Tensor | None = None,
    ):
        super().__init__()
        hidden = tuple(hidden)
        if not hidden:
            raise ValueError("MADE needs at least one hidden layer, e.g. hidden=(64,)")
        n_params = check_count(n_params, "n_params")
        self.dim, self.n_params, self.context_dim = dim, n_params, context_dim
        degrees = made_degrees(dim, hidden, order, conditional=context_dim is not None)
        self.register_buffer("order", degrees[0] - 1)
        masks = made_masks(degrees, n_params)
        sizes = [dim, *hidden, n_params * dim]
        self.layers = nn.ModuleList(
            MaskedLinear(a, b, m) for a, b, m in zip(sizes[:-1], sizes[1:], masks)
        )
        if context_dim is not None:
            context_dim = check_count(context_dim, "context_dim")
            self.context = nn.Linear(context_dim, hidden[0], bias=False)

    def forward(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, ...]:
        _check_z(z, self.dim)
        a = self.layers[0](z)  # [..., H_1]
        if self.context_dim is not None:
            _check_context(context, self.context_dim)
            a = a + self.context(context)  # the context is not masked: every output may use it
        for layer in self.layers[1:]:
            a = layer(F.elu(a))
        return a.unflatten(-1, (self.n_params, self.dim)).unbind(-2)  # n_params x [..., D]


def _autoregressive_inverse(step: nn.Module, y: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
    """Invert an autoregressive step by D fixed-point sweeps (one per variable, in order)."""
    _check_z(y, step.dim, "y")
    z = torch.zeros_like(y)
    for _ in range(step.dim):  # after sweep j the first j variables in the order are exact
        z = step.invert_given(y, z, context)
    _, log_det = step(z, context)
    return z, -log_det


class AffineAutoregressive(nn.Module):
    """The general IAF step ``z_new = mu + sigma * z`` with ``[mu, log sigma] = MADE(z, h)``.

    ``log sigma`` is soft-clipped to ``(-max_log_scale, max_log_scale)`` with a tanh;
    ``log_det = sum_i log sigma_i``. Sampling needs one MADE pass; the inverse needs D.
    """

    def __init__(
        self,
        dim: int,
        hidden: Sequence[int] = (64, 64),
        context_dim: int | None = None,
        order: Tensor | None = None,
        max_log_scale: float = 3.0,
    ):
        super().__init__()
        self.dim, self.max_log_scale = dim, max_log_scale
        self.made = MADE(dim, hidden, 2, context_dim, order)

    def scale_shift(self, z: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        mu, raw = self.made(z, context)
        return mu, self.max_log_scale * torch.tanh(raw / self.max_log_scale)  # [..., D] each

    def forward(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        mu, log_sigma = self.scale_shift(z, context)
        # $z' = \mu(z) + \sigma(z) \odot z,\quad \log|\det J| = \sum_i \log\sigma_i$
        return mu + log_sigma.exp() * z, log_sigma.sum(-1)

    def invert_given(self, y: Tensor, z: Tensor, context: Tensor | None) -> Tensor:
        mu, log_sigma = self.scale_shift(z, context)
        return (y - mu) * torch.exp(-log_sigma)

    def inverse(self, y: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return _autoregressive_inverse(self, y, context)


class IAFStep(nn.Module):
    """One IAF step in the numerically stable, gated form of Kingma et al. (2016):

    ``[m, s] = MADE(z, h)``, ``sigma = sigmoid(s)``, ``z_new = sigma * z + (1 - sigma) * m``,
    ``log_det = sum_i log sigma_i``.

    Args:
        dim, hidden, context_dim, order: as for :class:`MADE`.
        sigma_bias: initial bias of s, so sigma starts near ``sigmoid(sigma_bias)``
            (the paper suggests +1 or +2: each step starts close to the identity).
    """

    def __init__(
        self,
        dim: int,
        hidden: Sequence[int] = (64, 64),
        context_dim: int | None = None,
        order: Tensor | None = None,
        sigma_bias: float = 2.0,
    ):
        super().__init__()
        self.dim = dim
        self.made = MADE(dim, hidden, 2, context_dim, order)
        with torch.no_grad():
            self.made.layers[-1].bias[dim:].fill_(sigma_bias)  # the s block of [m, s]

    def forward(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        m, s = self.made(z, context)  # [..., D] each
        sigma = torch.sigmoid(s)
        # $z_t = \sigma_t \odot z_{t-1} + (1 - \sigma_t) \odot m_t$
        z_new = sigma * z + (1.0 - sigma) * m
        # $\log|\det \partial z_t/\partial z_{t-1}| = \sum_i \log \sigma_{t,i}$ (log-sigmoid, stable)
        return z_new, F.logsigmoid(s).sum(-1)

    def invert_given(self, y: Tensor, z: Tensor, context: Tensor | None) -> Tensor:
        m, s = self.made(z, context)
        sigma = torch.sigmoid(s)
        return (y - (1.0 - sigma) * m) / sigma

    def inverse(self, y: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return _autoregressive_inverse(self, y, context)


def iaf(
    dim: int,
    steps: int,
    hidden: Sequence[int] = (64, 64),
    context_dim: int | None = None,
    sigma_bias: float = 2.0,
) -> FlowStack:
    """T IAF steps, the order reversed between consecutive steps (as in Kingma et al. 2016)."""
    steps = check_count(steps, "steps")
    forward_order = torch.arange(dim)
    return FlowStack(
        IAFStep(dim, hidden, context_dim, forward_order if t % 2 == 0 else forward_order.flip(0), sigma_bias)
        for t in range(steps)
    )


# --------------------------------------------------------- test energies
def _check_2d(z: Tensor) -> None:
    if not torch.is_tensor(z) or z.dim() < 1 or z.shape[-1] != 2:
        got = tuple(z.shape) if torch.is_tensor(z) else type(z).__name__
        raise ValueError(f"the test energies are 2-D: expected z of shape [..., 2], got {got}")


def _w1(z1: Tensor) -> Tensor:
    return torch.sin(2 * math.pi * z1 / 4)


def energy_u1(z: Tensor) -> Tensor:
    """U1 of Rezende & Mohamed (2015, Table 1), a ring with two lobes; ``[..., 2] -> [...]``.

    The target density is ``exp(-U(z)) / Z``.
    """
    _check_2d(z)
    z1 = z[..., 0]
    ring = 0.5 * ((z.norm(dim=-1) - 2) / 0.4) ** 2
    # $U_1 = \frac12\left(\frac{\|z\| - 2}{0.4}\right)^2 - \ln\left(e^{-\frac12[(z_1-2)/0.6]^2} + e^{-\frac12[(z_1+2)/0.6]^2}\right)$
    lobes = torch.logaddexp(-0.5 * ((z1 - 2) / 0.6) ** 2, -0.5 * ((z1 + 2) / 0.6) ** 2)
    return ring - lobes


def energy_u2(z: Tensor) -> Tensor:
    """U2 = ½((z2 − w1(z))/0.4)², w1 = sin(2π z1 / 4); ``[..., 2] -> [...]``."""
    _check_2d(z)
    return 0.5 * ((z[..., 1] - _w1(z[..., 0])) / 0.4) ** 2


def energy_u3(z: Tensor) -> Tensor:
    """U3 = −ln(e^{−½((z2 − w1)/0.35)²} + e^{−½((z2 − w1 + w2)/0.35)²}), w2 = 3 e^{−½((z1 − 1)/0.6)²}."""
    _check_2d(z)
    z1, z2 = z[..., 0], z[..., 1]
    w1, w2 = _w1(z1), 3 * torch.exp(-0.5 * ((z1 - 1) / 0.6) ** 2)
    return -torch.logaddexp(-0.5 * ((z2 - w1) / 0.35) ** 2, -0.5 * ((z2 - w1 + w2) / 0.35) ** 2)


def energy_u4(z: Tensor) -> Tensor:
    """U4 = −ln(e^{−½((z2 − w1)/0.4)²} + e^{−½((z2 − w1 + w3)/0.35)²}), w3 = 3 sigmoid((z1 − 1)/0.3)."""
    _check_2d(z)
    z1, z2 = z[..., 0], z[..., 1]
    w1, w3 = _w1(z1), 3 * torch.sigmoid((z1 - 1) / 0.3)
    return -torch.logaddexp(-0.5 * ((z2 - w1) / 0.4) ** 2, -0.5 * ((z2 - w1 + w3) / 0.35) ** 2)


ENERGIES: dict[str, Callable[[Tensor], Tensor]] = {
    "U1": energy_u1,
    "U2": energy_u2,
    "U3": energy_u3,
    "U4": energy_u4,
}


def fit_energy(
    flow: FlowStack,
    energy: Callable[[Tensor], Tensor],
    *,
    steps: int = 2000,
    batch_size: int = 256,
    lr: float = 1e-2,
    anneal_steps: int = 0,
    seed: int = 0,
    context: Tensor | None = None,
) -> Tensor:
    """Fit a flow over a N(0, I) base to ``exp(-energy)`` by minimising the reverse KL.

    Minimises ``E_q[log q(z) + beta_t U(z)] = KL(q || exp(-beta_t U) / Z) - log Z`` with
    Adam, ``batch_size`` fresh samples per step. ``beta_t`` rises linearly from 0.01
    to 1 over ``anneal_steps`` (Rezende & Mohamed's annealing, which keeps the flow
    from settling on one mode early); 0 means no annealing.

    ``context`` is passed to the flow. With a one-hot context ``[E, 1, E]`` and
    layers conditioned on it, one call fits E targets at once: the samples are then
    ``[E, N, 2]`` and ``energy`` must score target e on row e, ``[E, N]``.

    Returns:
        ``[steps]`` the loss at each step with beta = 1 (the free energy, >= -log Z;
        averaged over the E targets when there are several).
    """
    steps = check_count(steps, "steps")
    batch_size = check_count(batch_size, "batch_size")
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(flow.parameters(), lr=lr)
    losses = torch.empty(steps)
    for step in range(steps):
        beta = min(1.0, 0.01 + step / anneal_steps) if anneal_steps > 0 else 1.0
        z, log_q = flow.rsample_with_log_prob(batch_size, context, generator)  # [(E,) N, 2], [(E,) N]
        u = energy(z)  # [(E,) N]
        loss = (log_q + beta * u).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses[step] = (log_q + u).mean().detach()
    return losses
