"""Flows: every log|det J| against an autograd Jacobian, MADE's triangular structure,
the planar invertibility constraint, normalisation on a grid, and the flow VAE."""

import math

import pytest
import torch
from torch.autograd.functional import jacobian

from vaetut.flow_vae import FlowVAE
from vaetut.flows import (
    ENERGIES,
    MADE,
    AffineAutoregressive,
    FlowStack,
    IAFStep,
    PlanarFlow,
    compose,
    energy_u1,
    energy_u2,
    energy_u3,
    energy_u4,
    fit_energy,
    iaf,
    made_degrees,
    made_masks,
    planar,
    planar_u_hat,
)

D, C = 4, 3
REVERSED = torch.arange(D).flip(0)
SHUFFLED = torch.tensor([2, 0, 3, 1])


def autograd_log_det(layer, z, context=None):
    """log |det df/dz| for each row of z [B, D] from the full autograd Jacobian, [B]."""
    out = []
    for i in range(len(z)):
        h = None if context is None else context[i : i + 1]
        J = jacobian(lambda v: layer(v.unsqueeze(0), h)[0].squeeze(0), z[i])  # [D, D]
        out.append(torch.linalg.slogdet(J).logabsdet)
    return torch.stack(out)


def random_layer(kind, dim=D, context_dim=None, order=None):
    if kind == "planar":
        layer = PlanarFlow(dim, context_dim=context_dim, init_scale=1.0)
    elif kind == "affine":
        layer = AffineAutoregressive(dim, (16, 16), context_dim=context_dim, order=order)
    else:
        layer = IAFStep(dim, (16, 16), context_dim=context_dim, order=order, sigma_bias=0.5)
    with torch.no_grad():  # move away from the near-identity initialisation
        for p in layer.parameters():
            if kind == "planar":
                p.copy_(0.8 * torch.randn_like(p))  # raw u, w, b (or head) drawn at random
            else:
                p.add_(0.5 * torch.randn_like(p))
    return layer.double()


# ------------------------------------------------------------ log-determinants
@pytest.mark.parametrize("kind", ["planar", "affine", "iaf"])
@pytest.mark.parametrize("conditioned", [False, True])
def test_log_det_matches_autograd_jacobian(kind, conditioned):
    layer = random_layer(kind, context_dim=C if conditioned else None, order=SHUFFLED)
    z = 1.5 * torch.randn(6, D, dtype=torch.float64)
    h = torch.randn(6, C, dtype=torch.float64) if conditioned else None
    _, log_det = layer(z, h)
    expected = autograd_log_det(layer, z, h)
    assert log_det.shape == (6,)
    assert expected.std() > 1e-3, "the test needs layers whose Jacobians vary"
    torch.testing.assert_close(log_det, expected, rtol=1e-7, atol=1e-9)


def test_stack_log_det_is_the_log_det_of_the_composition():
    flow = compose(random_layer("planar"), random_layer("iaf", order=REVERSED), random_layer("affine"))
    z = torch.randn(5, D, dtype=torch.float64)
    _, log_det = flow(z)
    torch.testing.assert_close(log_det, autograd_log_det(flow, z), rtol=1e-7, atol=1e-9)


def test_planar_log_det_by_hand_in_one_dimension():
    # in 1-D f(z) = z + u_hat tanh(w z + b), so f'(z) = 1 + u_hat w (1 - tanh^2(w z + b))
    u_hat, w, b = torch.tensor([0.7]), torch.tensor([-1.3]), torch.tensor(0.2)
    z = torch.linspace(-3, 3, 11).unsqueeze(-1)
    _, log_det = planar(z, u_hat, w, b)
    expected = torch.log(torch.abs(1 + 0.7 * -1.3 * (1 - torch.tanh(-1.3 * z[:, 0] + 0.2) ** 2)))
    torch.testing.assert_close(log_det, expected)


# ---------------------------------------------------------------- invertibility
@pytest.mark.parametrize("kind", ["planar", "affine", "iaf"])
def test_inverse_round_trip_and_log_det_sign(kind):
    layer = random_layer(kind, context_dim=C, order=SHUFFLED)
    z = torch.randn(2, 7, D, dtype=torch.float64)  # [k, B, D] samples
    h = torch.randn(7, C, dtype=torch.float64)  # [B, C] context, broadcast over k
    y, log_det = layer(z, h)
    z_back, log_det_inv = layer.inverse(y, h)
    torch.testing.assert_close(z_back, z, rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(log_det_inv, -log_det)


def test_planar_constraint_holds_for_any_raw_parameters():
    gen = torch.Generator().manual_seed(0)
    draws = []
    for scale_u, scale_w in [(1, 1), (100, 1), (1, 100), (1e3, 1e-3), (1e-3, 1e3), (1e4, 1e-4)]:
        u = scale_u * torch.randn(2000, 5, generator=gen, dtype=torch.float64)
        w = scale_w * torch.randn(2000, 5, generator=gen, dtype=torch.float64)
        draws.append((u, w))
    # adversarial: u anti-parallel to w (w.u very negative), w tiny, w exactly zero
    w = torch.randn(500, 5, generator=gen, dtype=torch.float64)
    draws.append((-50 * w, w))
    draws.append((-1e6 * w, 1e-3 * w))
    draws.append((torch.randn(3, 5, dtype=torch.float64), torch.zeros(3, 5, dtype=torch.float64)))
    for u, w in draws:
        u_hat = planar_u_hat(u, w)
        wu_hat = (w * u_hat).sum(-1)
        assert torch.isfinite(u_hat).all()
        scale = 1e-9 * (w * u).sum(-1).abs().clamp_min(1.0)  # round-off of the subtraction
        assert (wu_hat >= -1 - scale).all(), wu_hat.min()
    # exactly: w.u_hat = m(w.u) = -1 + softplus(w.u), and the part of u orthogonal to w is kept
    u, w = draws[0]
    u_hat = planar_u_hat(u, w)
    torch.testing.assert_close((w * u_hat).sum(-1), torch.nn.functional.softplus((w * u).sum(-1)) - 1)
    w_unit = w / w.norm(dim=-1, keepdim=True)
    orth = lambda v: v - (v * w_unit).sum(-1, keepdim=True) * w_unit  # noqa: E731
    torch.testing.assert_close(orth(u_hat), orth(u))


def test_planar_with_unconstrained_u_can_fold_space_and_constrained_cannot():
    # w.u = -3 makes f(z) = z - 3 w tanh(w.z) non-monotone along w; u_hat repairs it
    w, u, b = torch.tensor([1.0, 0.0]), torch.tensor([-3.0, 0.0]), torch.tensor(0.0)
    z = torch.stack([torch.linspace(-2, 2, 201), torch.zeros(201)], -1)
    folded = planar(z, u, w, b)[0][:, 0]
    fixed = planar(z, planar_u_hat(u, w), w, b)[0][:, 0]
    assert (folded.diff() < 0).any()
    assert (fixed.diff() > 0).all()


def test_log_density_integrates_to_one_on_a_grid():
    torch.manual_seed(1)
    g = torch.linspace(-8, 8, 241, dtype=torch.float64)
    grid = torch.stack(torch.meshgrid(g, g, indexing="xy"), -1).reshape(-1, 2)  # [N, 2]
    cell = (g[1] - g[0]) ** 2
    planar_flow = FlowStack([random_layer("planar", dim=2) for _ in range(3)])
    iaf_flow = FlowStack([random_layer("iaf", dim=2, order=o) for o in (torch.arange(2), torch.arange(2).flip(0))])
    for flow in (planar_flow, iaf_flow):
        with torch.no_grad():
            log_q = flow.log_prob(grid)
            mass = (log_q.exp() * cell).sum().item()
            # the inverse-based density agrees with the forward one at pushed-forward points
            z0 = torch.randn(200, 2, dtype=torch.float64)
            y, log_det = flow(z0)
            forward_log_q = -0.5 * (z0**2).sum(-1) - math.log(2 * math.pi) - log_det
            torch.testing.assert_close(flow.log_prob(y), forward_log_q, rtol=1e-6, atol=1e-8)
        assert abs(mass - 1) < 5e-3, mass
        # a density that is not N(0, I): the flow did something
        assert (log_q - (-0.5 * (grid**2).sum(-1) - math.log(2 * math.pi))).abs().max() > 0.1


# ----------------------------------------------------------------------- MADE
def test_made_masks_follow_the_degree_rules():
    degrees = made_degrees(3, (5,), torch.tensor([1, 2, 0]))
    torch.testing.assert_close(degrees[0], torch.tensor([2, 3, 1]))
    torch.testing.assert_close(degrees[1], torch.tensor([1, 2, 1, 2, 1]))
    # with a context, degree-0 hidden units see no input and feed every output
    torch.testing.assert_close(made_degrees(3, (5,), conditional=True)[1], torch.tensor([0, 1, 2, 0, 1]))
    hidden, out = made_masks(degrees, n_params=2)
    for k in range(5):
        for j in range(3):
            assert hidden[k, j] == float(degrees[1][k] >= degrees[0][j])
    assert out.shape == (6, 5)
    for i in range(6):
        for k in range(5):
            assert out[i, k] == float(degrees[0][i % 3] > degrees[1][k])


@pytest.mark.parametrize("order", [None, REVERSED, SHUFFLED])
@pytest.mark.parametrize("context_dim", [None, C])
def test_made_jacobian_is_strictly_triangular_in_its_order(order, context_dim):
    made = MADE(D, (12, 12), n_params=2, context_dim=context_dim, order=order).double()
    z = torch.randn(D, dtype=torch.float64)
    h = None if context_dim is None else torch.randn(1, context_dim, dtype=torch.float64)
    rank = made.order
    allowed = rank[None, :] < rank[:, None]  # output i may see input j iff j comes first
    for p in range(2):
        J = jacobian(lambda v: made(v.unsqueeze(0), h)[p].squeeze(0), z)  # [D, D]
        assert (J[~allowed] == 0).all()
        assert (J[allowed].abs() > 0).all(), "a permitted connection is missing"
    if context_dim is not None:  # every output, even the first in the order, sees the context
        Jh = jacobian(lambda c: made(z.unsqueeze(0), c)[0].squeeze(0), h)[:, 0, :]  # [D, C]
        assert (Jh.abs().sum(-1) > 0).all()


def test_masks_are_buffers_and_move_with_the_module():
    made = MADE(D, (8,))
    names = dict(made.named_buffers())
    assert "layers.0.mask" in names and "layers.1.mask" in names
    assert not any("mask" in n for n, _ in made.named_parameters())
    assert made.double().layers[0].mask.dtype == torch.float64


def test_iaf_reverses_orders_and_starts_near_identity():
    flow = iaf(D, 3, (16,), context_dim=C)
    orders = [step.made.order.tolist() for step in flow.layers]
    assert orders == [list(range(D)), list(range(D))[::-1], list(range(D))]
    z, h = torch.randn(10, D), torch.randn(10, C)
    _, s = flow.layers[0].made(z, h)
    assert torch.sigmoid(s).mean() > 0.75  # sigma starts near sigmoid(2)
    # log q(z_T) = log q(z_0) - sum_t sum_i log sigma_t,i: the log-det is a sum of log-sigmoids
    _, log_det = flow(z, h)
    assert (log_det < 0).all()


# -------------------------------------------------------------- test energies
def test_energies_match_table_1_written_with_math():
    def u_ref(name, z1, z2):
        w1 = math.sin(2 * math.pi * z1 / 4)
        w2 = 3 * math.exp(-0.5 * ((z1 - 1) / 0.6) ** 2)
        w3 = 3 / (1 + math.exp(-(z1 - 1) / 0.3))
        if name == "U1":
            r = math.hypot(z1, z2)
            return 0.5 * ((r - 2) / 0.4) ** 2 - math.log(
                math.exp(-0.5 * ((z1 - 2) / 0.6) ** 2) + math.exp(-0.5 * ((z1 + 2) / 0.6) ** 2)
            )
        if name == "U2":
            return 0.5 * ((z2 - w1) / 0.4) ** 2
        if name == "U3":
            return -math.log(math.exp(-0.5 * ((z2 - w1) / 0.35) ** 2) + math.exp(-0.5 * ((z2 - w1 + w2) / 0.35) ** 2))
        return -math.log(math.exp(-0.5 * ((z2 - w1) / 0.4) ** 2) + math.exp(-0.5 * ((z2 - w1 + w3) / 0.35) ** 2))

    z = 2 * torch.randn(50, 2, dtype=torch.float64)
    for name, energy in ENERGIES.items():
        expected = torch.tensor([u_ref(name, a, b) for a, b in z.tolist()], dtype=torch.float64)
        torch.testing.assert_close(energy(z), expected)
    assert set(ENERGIES) == {"U1", "U2", "U3", "U4"}
    assert ENERGIES["U1"] is energy_u1 and ENERGIES["U4"] is energy_u4


def test_fit_energy_lowers_the_reverse_kl():
    torch.manual_seed(0)
    flow = FlowStack([PlanarFlow(2) for _ in range(8)])
    losses = fit_energy(flow, energy_u1, steps=200, batch_size=128, lr=1e-2)
    assert losses.shape == (200,)
    # the free energy E_q[log q + U] = KL(q || p) - log Z is bounded below by -log Z
    g = torch.linspace(-6, 6, 401)
    grid = torch.stack(torch.meshgrid(g, g, indexing="xy"), -1)
    log_z = (torch.logsumexp(-energy_u1(grid).flatten(), 0) + 2 * torch.log(g[1] - g[0])).item()
    assert losses[-20:].mean() < losses[:20].mean() - 1.0
    assert -log_z - 0.05 < losses[-20:].mean() < -log_z + 1.0


# -------------------------------------------------------------------- flow VAE
def tiny_vae(flow, steps=2):
    torch.manual_seed(0)
    return FlowVAE(flow=flow, steps=steps, image_shape=(1, 4, 4), latent_dim=3, hidden=(16,), iaf_hidden=(8,))


@pytest.mark.parametrize("flow", ["planar", "iaf"])
def test_flow_vae_log_weights_match_elbo(flow):
    model = tiny_vae(flow)
    x = torch.rand(5, 1, 4, 4)
    with torch.no_grad():
        # the same noise gives exactly the same value
        torch.manual_seed(3)
        one = model.log_weights(x, 1)[0]
        torch.manual_seed(3)
        terms = model.elbo(x)
        torch.testing.assert_close(one, terms.elbo)
        torch.testing.assert_close(terms.elbo, terms.log_px_z - terms.kl)
        # and the mean over many samples is the ELBO, within Monte Carlo error
        n = 2000
        lw = model.log_weights(x, n)  # [n, B]
        elbos = model.elbo(x.repeat(200, 1, 1, 1)).elbo.view(200, -1)  # 200 more draws, [200, B]
    se = (lw.var(0) / n + elbos.var(0) / len(elbos)).sqrt()
    assert ((lw.mean(0) - elbos.mean(0)).abs() < 4 * se).all()


@pytest.mark.parametrize("flow", ["planar", "iaf"])
def test_flow_vae_log_q_is_the_density_of_its_samples(flow):
    # score the samples again by inverting the flow: log N(z_0; mu, sigma^2) + log|det dz_0/dz_T|
    model = tiny_vae(flow).double()
    x = torch.rand(4, 1, 4, 4, dtype=torch.float64)
    with torch.no_grad():
        z, log_q = model.posterior(x, k=3)  # [3, 4, 3], [3, 4]
        h = model.features(x)
        mu, log_var = model.to_mu(h), model.to_log_var(h)
        z0, log_det_inv = model.flow.inverse(z, h)
        base = torch.distributions.Independent(torch.distributions.Normal(mu, (0.5 * log_var).exp()), 1)
        torch.testing.assert_close(log_q, base.log_prob(z0) + log_det_inv, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("flow", ["planar", "iaf"])
def test_flow_vae_kl_is_the_one_sample_estimate_at_z_T_not_the_analytic_diagonal_kl(flow):
    """kl = log q(z_T|x) - log N(z_T; 0, I) at the drawn z_T. The analytic KL of the base
    Gaussian (what VAE.elbo, which FlowVAE inherits, would give) and the one-sample
    estimate at z_0 (the flow's log-det or its move ignored) both differ from it."""
    model = tiny_vae(flow, steps=3)
    with torch.no_grad():  # flow layers that move the samples, not near-identities
        for p in model.flow.parameters():
            p.add_(0.5 * torch.randn_like(p))
    x = torch.rand(6, 1, 4, 4)
    with torch.no_grad():
        torch.manual_seed(2)
        terms = model.elbo(x)
        h = model.features(x)
        mu, std = model.to_mu(h), (0.5 * model.to_log_var(h)).exp()
        torch.manual_seed(2)
        z0 = mu + std * torch.randn_like(mu)  # the same noise
        z, log_det = model.flow(z0, h)
    base = torch.distributions.Independent(torch.distributions.Normal(mu, std), 1)
    prior = torch.distributions.Independent(torch.distributions.Normal(torch.zeros_like(z), torch.ones_like(z)), 1)
    torch.testing.assert_close(terms.kl, base.log_prob(z0) - log_det - prior.log_prob(z), rtol=1e-5, atol=1e-5)
    assert (log_det.abs() > 0.05).all()
    torch.testing.assert_close(terms.elbo, terms.log_px_z - terms.kl)
    assert ((terms.kl - torch.distributions.kl_divergence(base, prior)).abs() > 0.05).all()
    assert ((terms.kl - (base.log_prob(z0) - prior.log_prob(z0))).abs() > 0.05).all()


def test_flow_vae_gradients_reach_the_flow_and_the_encoder():
    model = tiny_vae("planar", steps=3)
    x = torch.rand(6, 1, 4, 4)
    loss = -model.elbo(x).elbo.mean()
    loss.backward()
    for name in ("flow.layers.0.head.weight", "to_mu.weight", "encoder.1.0.weight"):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_flow_vae_works_with_log_likelihood_and_helpers():
    from vaetut.bounds import log_likelihood

    model = tiny_vae("iaf")
    x = torch.rand(7, 1, 4, 4)
    with torch.no_grad():
        ll = log_likelihood(model, x, k=64, batch_size=4)
        elbo = torch.stack([model.elbo(x).elbo for _ in range(64)]).mean(0)
    assert ll.shape == (7,) and (ll > elbo - 0.05).all()
    assert model.sample(3).shape == (3, 1, 4, 4)
    assert model.reconstruct(x).shape == x.shape


# ------------------------------------------------------------------- bad input
def test_bad_input_gets_clear_errors():
    with pytest.raises(ValueError, match="at least one layer"):
        FlowStack([])
    with pytest.raises(ValueError, match="same dimension"):
        compose(PlanarFlow(2), PlanarFlow(3))
    with pytest.raises(ValueError, match=r"2-dimensional points.*got \(5, 3\)"):
        PlanarFlow(2)(torch.randn(5, 3))
    with pytest.raises(ValueError, match="unsqueeze"):
        iaf(2, 1)(torch.randn(2))
    with pytest.raises(ValueError, match="pass context=h"):
        IAFStep(2, (4,), context_dim=3)(torch.randn(5, 2))
    with pytest.raises(ValueError, match=r"context of shape \[B, 3\]"):
        PlanarFlow(2, context_dim=3)(torch.randn(5, 2), torch.randn(5, 4))
    with pytest.raises(ValueError, match="permutation"):
        MADE(3, (4,), order=torch.tensor([0, 0, 1]))
    with pytest.raises(ValueError, match="hidden layer"):
        MADE(3, ())
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        iaf(2, 0)
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        FlowVAE(flow="planar", steps=0)
    with pytest.raises(ValueError, match="flow must be one of"):
        FlowVAE(flow="radial")
    with pytest.raises(ValueError, match=r"\[\.\.\., 2\]"):
        energy_u3(torch.randn(4, 3))
    with pytest.raises(ValueError, match="image"):
        tiny_vae("iaf").elbo(torch.rand(2, 16))
    assert energy_u2(torch.zeros(2)).shape == ()


def test_planar_layers_start_near_the_identity():
    # w.u = log(e - 1) makes w.u_hat = 0: a deep stack must not start by contracting space
    z = torch.randn(4000, 5)
    h = torch.randn(4000, 7)
    for flow, context in ((FlowStack([PlanarFlow(5) for _ in range(32)]), None),
                          (FlowStack([PlanarFlow(5, context_dim=7) for _ in range(32)]), h)):
        with torch.no_grad():
            z_K, log_det = flow(z, context)
        assert log_det.abs().mean() < 0.3  # small random u, w: about -12 in all
        assert 0.6 < z_K.std(0).min() and z_K.std(0).max() < 1.6
    # whereas small random raw parameters would contract along w at every layer
    w = 0.1 * torch.randn(5)
    assert (w * planar_u_hat(0.1 * torch.randn(5), w)).sum() < -0.25
