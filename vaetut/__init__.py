"""vaetut: variational autoencoders, tested. The code behind the vaetut book.

The public API at a glance (see README.md):

* math: :func:`kl_normal`, :func:`reparameterize`, :func:`log_bernoulli`, :func:`log_gaussian`
* models: :class:`VAE` / :class:`VAEConfig`, :class:`FlowVAE`, :class:`LadderVAE`, :class:`NVAE`
* bounds: :func:`log_likelihood`, :func:`iwae_bound`
* training: :func:`fit` (:class:`TrainConfig`, :func:`train_step`), :func:`kl_weight`, :class:`History`,
  :class:`TrainingDiverged`, :class:`CheckpointError`
* comparisons: :mod:`vaetut.results` (the registry and protocols; ``vaetut`` on the command line)
* data: :func:`load_mnist`
* run settings: :func:`budget`, :func:`get_device`, :func:`set_seed`, :func:`run_info`
"""

from .bounds import iwae_bound, log_likelihood
from .config import ChapterRun, budget, get_device, is_quick, mode, run_info, set_seed
from .data import DataNotFoundError, load_mnist
from .distributions import (
    ELBO,
    kl_normal,
    log_bernoulli,
    log_gaussian,
    log_normal,
    log_standard_normal,
    reparameterize,
)
from .diagnostics import active_units, activity, elbo_gap, kl_per_dimension, posterior_stats
from .disentanglement import MIG, mig
from .flow_vae import FlowVAE
from .flows import ENERGIES, MADE, AffineAutoregressive, FlowStack, IAFStep, PlanarFlow, compose, fit_energy, iaf
from .gradients import Grad, reparam_grad, score_function_grad
from .ladder_vae import LadderELBO, LadderVAE, LadderVAEConfig, precision_weighted
from .nvae import NVAE, NVAEELBO, NVAEConfig, residual_kl
from .linear_gaussian import LinearGaussian, WithQ
from .shapes import FACTOR_SIZES, FACTORS, Shapes, make_shapes
from .train import (
    CheckpointError,
    History,
    TrainConfig,
    TrainingDiverged,
    fit,
    kl_weight,
    load_checkpoint,
    save_checkpoint,
    train_step,
)
from .autoencoder import Autoencoder
from .vae import VAE, VAEConfig

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "NVAE",
    "NVAEConfig",
    "NVAEELBO",
    "TrainConfig",
    "residual_kl",
    "train_step",
    "LadderELBO",
    "LadderVAE",
    "LadderVAEConfig",
    "precision_weighted",
    "ENERGIES",
    "MADE",
    "AffineAutoregressive",
    "FlowStack",
    "FlowVAE",
    "IAFStep",
    "PlanarFlow",
    "compose",
    "fit_energy",
    "iaf",
    "FACTORS",
    "FACTOR_SIZES",
    "MIG",
    "Shapes",
    "active_units",
    "activity",
    "elbo_gap",
    "kl_per_dimension",
    "make_shapes",
    "mig",
    "posterior_stats",
    "Autoencoder",
    "ChapterRun",
    "ELBO",
    "VAE",
    "VAEConfig",
    "DataNotFoundError",
    "Grad",
    "History",
    "LinearGaussian",
    "WithQ",
    "TrainingDiverged",
    "budget",
    "fit",
    "get_device",
    "is_quick",
    "iwae_bound",
    "kl_normal",
    "kl_weight",
    "load_checkpoint",
    "load_mnist",
    "log_bernoulli",
    "log_gaussian",
    "log_likelihood",
    "log_normal",
    "log_standard_normal",
    "mode",
    "reparam_grad",
    "reparameterize",
    "run_info",
    "save_checkpoint",
    "score_function_grad",
    "set_seed",
]
