"""A convolutional variational autoencoder (VAE, Kingma & Welling 2014) on the descriptor grid.

The AE's encoder and decoder (:mod:`hdmap_ad.methods.ae`, same input, standardisation,
training loop and checkpoint) with a probabilistic bottleneck: the encoder's 1x1 conv gives a
mean and a log-variance per latent channel and position (a spatial ``latent x h x w`` code,
log-variance clamped to [-10, 10]); training decodes a sample ``z = mu + exp(logvar / 2) * eps``
(the reparameterisation trick; ``eps`` from a generator seeded with the experiment seed, so
CPU training is deterministic) and minimises

    loss = reconstruction + beta * KL(q(z | x) || N(0, I)),

both terms as per-element means (the squared error over the input's elements, the KL over the
code's), so ``beta`` weighs them the same whatever the grid size (``beta`` 1 is thus not the
ELBO's weighting, whose sums weigh the KL by code size / input size less; smaller ``beta``
reconstructs more sharply, larger regularises the code more).

Scoring is deterministic: the decoder reconstructs from the posterior mean ``mu`` (no
sampling); patch score = the reconstruction error as in ``ae`` (``l2`` | ``ssim``, optional
``row_window``); image score = the largest patch score, plus ``kl_score`` times the map's KL
divergence (per-element mean) when ``kl_score`` > 0: a map whose code is unlike the
references' is then scored higher even where its reconstruction looks fine (off by default).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from hdmap_ad.methods.ae import AE, AEModel, AEOptions, conv_autoencoder_class
from hdmap_ad.methods.base import FitContext

LOGVAR_RANGE = (-10.0, 10.0)


@dataclass(frozen=True)
class VAEOptions(AEOptions):
    beta: float = field(default=1.0, metadata={
        "min": 0.0, "doc": "weight of the KL term in the training loss (per-element means)"})
    kl_score: float = field(default=0.0, metadata={
        "stage": "score", "min": 0.0,
        "doc": "weight of the map's KL divergence added to the image score (0 = off)"})


def kl_divergence(mu: Any, logvar: Any) -> Any:
    """``KL(N(mu, exp(logvar)) || N(0, 1))`` per map, averaged over the code's elements:
    ``(B, C, h, w)`` x2 -> ``(B,)`` (0 exactly for a standard-normal posterior)."""
    kl = 0.5 * (mu * mu + logvar.exp() - 1.0 - logvar)
    return kl.flatten(1).mean(dim=1)


@functools.cache
def vae_class() -> type:
    """The AE module class with a mean / log-variance code (torch imported on first use)."""
    import torch

    base = conv_autoencoder_class()

    class VariationalAutoencoder(base):  # type: ignore[misc, valid-type]
        def __init__(self, channels: int, hidden: int, depth: int, latent: int,
                     seed: int = 0) -> None:
            super().__init__(channels, hidden, depth, latent, code_channels=2 * latent)
            # not part of the state dict: only training samples
            self.generator = torch.Generator().manual_seed(seed)

        def elbo_terms(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            """``(reconstruction, mu, logvar)``: decoded from a sample in training mode, from
            ``mu`` in eval mode."""
            code, sizes, feats = self.encode(x)
            mu, logvar = code.chunk(2, dim=1)
            logvar = logvar.clamp(*LOGVAR_RANGE)
            z = mu
            if self.training:
                eps = torch.randn(mu.shape, generator=self.generator).to(mu.device, mu.dtype)
                z = mu + (0.5 * logvar).exp() * eps
            return self.decode(z, sizes, feats, x.shape[-2:]), mu, logvar

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.elbo_terms(x)[0]

    return VariationalAutoencoder


class VAEModel(AEModel):
    """A trained VAE: the AE's scores from the posterior mean, plus the optional KL term."""

    def standardised_scores(self, x: Any) -> tuple[Any, Any]:
        rec, mu, logvar = self.module.elbo_terms(x)
        patch = self.patch_error(x, rec)
        image = patch.flatten(1).amax(dim=1)
        if self.options.kl_score > 0:
            image = image + self.options.kl_score * kl_divergence(mu, logvar)
        return image, patch


class VAE(AE):
    name = "vae"
    Options = VAEOptions
    model_class = VAEModel
    summary = ("convolutional VAE (reconstruction + `beta` x KL); scored from the posterior "
               "mean: patch score = reconstruction error, optional KL term in the image score")
    smoke_options = MappingProxyType({"epochs": 8, "hidden": 8, "latent": 8})

    def build(self, channels: int, options: VAEOptions, ctx: FitContext) -> Any:
        return vae_class()(channels, options.hidden, options.depth, options.latent,
                           seed=ctx.seed)

    def loss(self, options: VAEOptions, ctx: FitContext) -> Callable[[Any, Any], Any]:
        def elbo_loss(module: Any, batch: Any) -> Any:
            rec, mu, logvar = module.elbo_terms(batch)
            return ((rec - batch) ** 2).mean() + options.beta * kl_divergence(mu, logvar).mean()

        return elbo_loss
