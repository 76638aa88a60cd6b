"""The CT autoencoder E / D of latent cold diffusion: training, encoding and checkpoints (the
network and its config, MONAI ``AutoencoderKL``: `medrecon.ct.autoencoder_net`).

Training (``train_autoencoder``): L1 reconstruction + ``kl_weight`` x KL(q(z|x) || N(0, I))
(KL summed over latent elements, averaged over the batch, MONAI tutorials' convention;
reparameterised sample drawn with the step generator).  The perceptual (LPIPS) and adversarial
losses of the LDM recipe are skipped (documented deviation: no pretrained perceptual network
offline, and CPU budget).  By default it trains on NDCT and LDCT slices together, since both are
encoded (z_0 = E(NDCT), z_T = E(LDCT)).

Encoding is deterministic: ``encode`` returns the posterior mean times ``scale_factor``
(LDM's latent scaling, set after training to 1 / std of the training NDCT latents so the latent
network sees unit-scale inputs); ``decode`` divides it back out.  ``freeze`` turns off gradients.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

# the network names stay importable from here (AE_PRESETS, ae_preset: re-exported only)
from .autoencoder_net import AE_PRESETS, AEConfig, CTAutoencoder, ae_preset, build_autoencoder
from .checkpoint import load_ct_state, read_ct_network, save_ct_checkpoint
from .data import pair_tensors
from .fit import FitResult, check_steps, fit

__all__ = ["AEConfig", "AE_PRESETS", "ae_preset", "CTAutoencoder", "build_autoencoder",
           "ae_loss", "augment_batch", "train_autoencoder", "AETrainResult", "freeze", "encode", "decode",
           "save_autoencoder", "load_autoencoder"]

AE_KIND = "ct-autoencoder-kl"


def ae_loss(ae: CTAutoencoder, x: torch.Tensor, kl_weight: float = 1e-6,
            generator: torch.Generator | None = None, l2_weight: float = 0.0) -> torch.Tensor:
    """L1(D(z), x) + l2_weight * MSE(D(z), x) + kl_weight * KL, z = mu + sigma * n
    (reparameterised, n from ``generator``).  The MSE term weighs the rare large errors (in HU /
    1000 units: above |e| = 1 / (2 l2_weight) its gradient exceeds L1's), which RMSE in HU, the
    CT metric, punishes and L1 alone lets through (the bright rim of a slice cut by the FOV)."""
    mu, sigma = ae.posterior(x)
    n = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
    rec = ae.net.decode(mu + sigma * n)
    err = rec - x
    loss = err.abs().mean()
    if l2_weight:
        loss = loss + l2_weight * err.pow(2).mean()
    kl = 0.5 * (mu.pow(2) + sigma.pow(2) - torch.log(sigma.pow(2)) - 1).flatten(1).sum(1).mean()
    return loss + kl_weight * kl


@dataclass
class AETrainResult:
    autoencoder: CTAutoencoder
    losses: list[float]
    seconds: float
    checkpoint: Path | None = None


def _images(data, use_ldct: bool) -> torch.Tensor:
    if isinstance(data, torch.Tensor):
        x = data
    else:
        nd, ld = pair_tensors(data)
        x = torch.cat([nd, ld]) if use_ldct else nd
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4 or x.shape[0] < 1 or x.is_complex():
        raise ValueError(f"data: expected images [S, 1, H, W] or a dataset of (ndct, ldct) pairs, "
                         f"got {tuple(x.shape)}")
    return x.float()


def train_autoencoder(config: AEConfig | dict | str | CTAutoencoder, data, *, steps: int = 500,
                      batch_size: int = 8, lr: float = 1e-3, kl_weight: float = 1e-6,
                      use_ldct: bool = True, scale_latents: bool = True, grad_clip: float | None = 1.0,
                      seed: int = 0, device: str | torch.device = "cpu",
                      out_dir: str | os.PathLike | None = None, overwrite: bool = False,
                      progress: bool = False, start_step: int = 0,
                      extra: dict | None = None, lr_min: float | None = None,
                      augment: bool = False, texture_fraction: float = 0.0,
                      crop: int | None = None, l2_weight: float = 0.0) -> AETrainResult:
    """Train an autoencoder on CT slices and freeze it.

    ``data``: a ``CTPairDataset``, a (ndct, ldct) tensor pair or any dataset of (ndct, ldct) pairs
    (both are used when ``use_ldct``), or one image tensor ``[S, 1, H, W]``.  With ``out_dir`` the frozen model is saved
    there (``save_autoencoder``, with ``extra`` in its JSON).  Returns the autoencoder (eval mode,
    frozen), losses and time.  To continue a run pass the loaded ``CTAutoencoder`` and
    ``start_step`` (its trainable weights are switched back on).  ``lr_min``: cosine decay of the
    learning rate to it over these steps (`medrecon.ct.fit.fit`); ``augment``: each batch is
    rotated by a random multiple of 90 degrees and flipped left-right with probability 1/2 (the
    autoencoder must reproduce any slice, so orientation is not something it should learn);
    ``texture_fraction``: that share of each batch (rounded) is generic texture
    (`medrecon.ct.textures.texture_batch`) instead of CT slices; ``crop``: train on random
    ``crop`` x ``crop`` windows (one per item; a multiple of the downsampling factor), as LDM
    trains its autoencoders on crops and applies them to larger images -- the network is
    convolutional, and a window costs (crop / N)^2 of a slice; ``l2_weight``: see `ae_loss`.
    """
    if l2_weight < 0:
        raise ValueError(f"l2_weight: expected >= 0, got {l2_weight}")
    if not 0.0 <= texture_fraction <= 1.0:
        raise ValueError(f"texture_fraction: expected a number in [0, 1], got {texture_fraction}")
    n_tex = int(round(texture_fraction * batch_size))
    check_steps(steps, batch_size)
    device = torch.device(device)
    ae = config if isinstance(config, CTAutoencoder) else build_autoencoder(config, seed=seed)
    ae.to(device)
    ae.requires_grad_(True)
    x_all = _images(data, use_ldct).to(device)
    ae._check(x_all[:1])
    side = min(x_all.shape[-2:])
    if crop is not None:
        crop = int(crop)
        if not 0 < crop <= side or crop % ae.config.downsample_factor:
            raise ValueError(f"crop: expected a multiple of {ae.config.downsample_factor} in "
                             f"[1, {side}], got {crop}")

    def loss_fn(g: torch.Generator) -> torch.Tensor:
        idx = torch.randint(0, x_all.shape[0], (batch_size - n_tex,), generator=g, device=device)
        x = x_all[idx]
        if crop is not None:
            x = _random_windows(x, crop, g)
        if n_tex:
            from .textures import texture_batch

            x = torch.cat([x, texture_batch(n_tex, x.shape[-1], g).to(device)])
        if augment:
            x = augment_batch(x, g)
        return ae_loss(ae, x, kl_weight, g, l2_weight)

    res: FitResult = fit(ae.net, loss_fn, steps=steps, lr=lr, seed=seed, device=device,
                         grad_clip=grad_clip, progress=progress, start_step=start_step, lr_min=lr_min)
    if scale_latents:
        with torch.no_grad():
            nd = _images(data, False).to(device)
            mu = torch.cat([ae.posterior(nd[i:i + 64])[0] for i in range(0, nd.shape[0], 64)])
            std = float(mu.std())
        ae.scale_factor = 1.0 / std if std > 1e-8 else 1.0
    freeze(ae)
    path = None
    if out_dir is not None:
        path = save_autoencoder(out_dir, ae, step=int(start_step) + steps, overwrite=overwrite,
                                extra=extra)
    return AETrainResult(ae, res.losses, res.seconds, path)


def _random_windows(x: torch.Tensor, crop: int, generator: torch.Generator) -> torch.Tensor:
    """One random ``crop`` x ``crop`` window of each item of ``x`` ``[B, 1, H, W]``."""
    H, W = x.shape[-2:]
    r = torch.randint(0, H - crop + 1, (x.shape[0],), generator=generator, device=generator.device)
    c = torch.randint(0, W - crop + 1, (x.shape[0],), generator=generator, device=generator.device)
    return torch.stack([x[i, :, int(a):int(a) + crop, int(b):int(b) + crop] for i, (a, b) in
                        enumerate(zip(r.tolist(), c.tolist()))])


def augment_batch(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """``x`` ``[B, 1, H, W]`` rotated by k x 90 degrees (k uniform in 0..3, one k per batch) and,
    with probability 1/2, flipped left-right; draws one number from ``generator``."""
    if x.shape[-1] != x.shape[-2]:
        raise ValueError(f"augment: square slices expected, got {tuple(x.shape[-2:])}")
    r = torch.randint(0, 8, (1,), generator=generator, device=generator.device).item()
    x = torch.rot90(x, r % 4, (-2, -1))
    return x.flip(-1) if r >= 4 else x


def freeze(ae: CTAutoencoder) -> CTAutoencoder:
    """Eval mode and no gradients (the autoencoder is fixed while the latent network trains)."""
    ae.eval()
    ae.requires_grad_(False)
    return ae


@torch.no_grad()
def encode(ae: CTAutoencoder, x: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """E(x) in batches, without gradients."""
    return torch.cat([ae.encode(x[i:i + batch_size]) for i in range(0, x.shape[0], batch_size)])


@torch.no_grad()
def decode(ae: CTAutoencoder, z: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """D(z) in batches, without gradients."""
    return torch.cat([ae.decode(z[i:i + batch_size]) for i in range(0, z.shape[0], batch_size)])


def save_autoencoder(directory: str | os.PathLike, ae: CTAutoencoder, *, step: int = 0,
                     overwrite: bool = False, extra: dict | None = None) -> Path:
    """Checkpoint (``medrecon.ct.checkpoint`` layout): config + scale_factor in JSON, weights in safetensors."""
    return save_ct_checkpoint(directory, AE_KIND,
                              {"network": {"type": "monai.AutoencoderKL", "config": ae.config.to_dict()},
                               "scale_factor": ae.scale_factor},
                              {"model": ae.net.state_dict()}, step=step, extra=extra, overwrite=overwrite)


def load_autoencoder(directory: str | os.PathLike, map_location: str | torch.device = "cpu") -> CTAutoencoder:
    """Rebuild and load a saved autoencoder (frozen, eval mode)."""
    ae, cfg, weights = read_ct_network(
        directory, AE_KIND, "monai.AutoencoderKL", "autoencoder",
        lambda net, c: CTAutoencoder(AEConfig.from_dict(net), float(c["scale_factor"])))
    load_ct_state(ae.net, directory, cfg, weights, "model")
    return freeze(ae.to(map_location))
