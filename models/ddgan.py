"""Denoising diffusion GAN (Xiao, Kreis & Vahdat, ICLR 2022): a few large steps, each denoised
by a conditional GAN.

- Schedule (Sec. 4 / their ``get_sigma_schedule``): T = 2..8 steps of the continuous VP-SDE,
  abar_k = exp(-(beta_max - beta_min) s_k^2 / 2 - beta_min s_k), s_k = eps + (1 - eps) k / T,
  k = 1..T, and abar_0 = 1 (clean data); beta_k = 1 - abar_k / abar_{k-1}.
- Posterior q(x_{k-1} | x_k, x0) (Ho et al. 2020, Eq. 6-7): mean c1 x0 + c2 x_k with
  c1 = beta_k sqrt(abar_{k-1}) / (1 - abar_k), c2 = (1 - abar_{k-1}) sqrt(1 - beta_k) / (1 - abar_k),
  variance beta_k (1 - abar_{k-1}) / (1 - abar_k) (zero at k = 1: x_0 = x0 exactly).
- Generator G(x_k, k, z) -> x0 (their Eq. 9: the implicit p(x_{k-1}|x_k) is q(x_{k-1}|x_k, G)):
  MONAI's ``DiffusionModelUNet`` whose GroupNorm layers become adaptive group norm, scale and
  shift from a mapping MLP of the latent z (their NCSN++ AdaGN, StyleGAN-style mapping).
- Discriminator D(x_{k-1}, x_k, k) -> logit: a small residual conv net with a time embedding
  (MONAI has none).  Loss: non-saturating GAN (their Eq. 8) with R1 on real x_{k-1}
  (Mescheder et al. 2018): gamma/2 E ||grad_{x_{k-1}} D||^2.

Complex images are ``[B, H, W]`` complex64 (networks see real/imag channels, see
``medrecon.models.wrapper``); noise for complex data is circular CN(0, I) as everywhere in
medrecon.  The network's time input is 1000 k / T so the sinusoidal embedding spans the same
range as a 1000-step prior.  Knows nothing of physics: the sampler takes a ``dc(x0, k)`` hook.
"""
from __future__ import annotations

import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from .checkpoint import _optimizer_join, _optimizer_split, _state, finish_directory, read_config_json
from .config_schema import DDGAN_FORMAT, DDGAN_VERSION
from .ddgan_config import DDGANConfig
from .networks import build_unet
from .wrapper import from_channels, to_channels

__all__ = ["DDGANConfig", "DDGANSchedule", "AdaGN", "Generator", "Discriminator", "build_ddgan",
           "d_loss", "g_loss", "r1_penalty", "ddgan_sample", "save_ddgan", "load_ddgan", "load_generator",
           "DDGANCheckpoint", "FORMAT"]

FORMAT, VERSION = DDGAN_FORMAT, DDGAN_VERSION  # defined with the schema (config_schema)


# ---------------------------------------------------------------------------- schedule
class DDGANSchedule:
    """The T-step VP schedule and its Gaussian posteriors (tables float64 on the CPU)."""

    def __init__(self, num_steps: int = 4, beta_min: float = 0.1, beta_max: float = 20.0, eps_small: float = 1e-3):
        T = int(num_steps)
        if T < 1:
            raise ValueError(f"num_steps: expected >= 1, got {num_steps}")
        s = eps_small + (1 - eps_small) * torch.arange(1, T + 1, dtype=torch.float64) / T
        abar = torch.exp(-0.5 * (beta_max - beta_min) * s ** 2 - beta_min * s)
        self.num_steps = T
        self.abar = torch.cat([torch.ones(1, dtype=torch.float64), abar])  # [T + 1], abar[0] = 1
        self.betas = 1 - self.abar[1:] / self.abar[:-1]  # betas[k - 1] = beta_k
        prev, cur, b = self.abar[:-1], self.abar[1:], self.betas
        self.coef_x0 = b * prev.sqrt() / (1 - cur)
        self.coef_xt = (1 - prev) * (1 - b).sqrt() / (1 - cur)
        self.post_var = b * (1 - prev) / (1 - cur)

    @classmethod
    def from_config(cls, cfg: DDGANConfig) -> "DDGANSchedule":
        return cls(cfg.num_steps, cfg.beta_min, cfg.beta_max, cfg.eps_small)

    def _k(self, k: Any, x: torch.Tensor) -> torch.Tensor:
        k = torch.as_tensor(k, dtype=torch.long).detach().cpu()
        if k.ndim == 0:
            k = k.expand(x.shape[0])
        if k.shape != (x.shape[0],):
            raise ValueError(f"k: expected a scalar or [{x.shape[0]}] step indices, got shape {tuple(k.shape)}")
        if bool((k < 1).any()) or bool((k > self.num_steps).any()):
            raise ValueError(f"k: step indices must lie in 1..{self.num_steps}, got {k.tolist()}")
        return k

    def _col(self, table: torch.Tensor, k: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        real = x.real.dtype if x.is_complex() else x.dtype
        return table[k].to(x.device, real).reshape((-1,) + (1,) * (x.ndim - 1))

    def net_time(self, k: torch.Tensor, device: torch.device) -> torch.Tensor:
        """The value fed to the U-Net's sinusoidal time embedding: 1000 k / T."""
        return (k.to(torch.float32) * (1000.0 / self.num_steps)).to(device)

    def q_sample(self, x0: torch.Tensor, k: Any, noise: torch.Tensor) -> torch.Tensor:
        """x_k = sqrt(abar_k) x0 + sqrt(1 - abar_k) noise (k = 0 allowed: x0)."""
        kk = torch.as_tensor(k, dtype=torch.long).cpu().expand(x0.shape[0])
        a = self._col(self.abar, kk, x0)
        return a.sqrt() * x0 + (1 - a).sqrt() * noise

    def q_pair(self, x0: torch.Tensor, k: Any, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(x_{k-1}, x_k) from the forward chain: x_{k-1} ~ q(.|x0), x_k = sqrt(1-beta_k) x_{k-1} + sqrt(beta_k) e."""
        k = self._k(k, x0)
        prev = self.q_sample(x0, k - 1, _randn(x0, generator))
        b = self._col(self.betas, k - 1, x0)
        return prev, (1 - b).sqrt() * prev + b.sqrt() * _randn(x0, generator)

    def posterior(self, x_k: torch.Tensor, x0: torch.Tensor, k: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and variance (per item, broadcastable) of q(x_{k-1} | x_k, x0)."""
        k = self._k(k, x_k)
        mean = self._col(self.coef_x0, k - 1, x0) * x0 + self._col(self.coef_xt, k - 1, x_k) * x_k
        return mean, self._col(self.post_var, k - 1, x_k)

    def posterior_sample(self, x_k: torch.Tensor, x0: torch.Tensor, k: Any,
                         generator: torch.Generator) -> torch.Tensor:
        mean, var = self.posterior(x_k, x0, k)
        return mean + var.sqrt() * _randn(x_k, generator)


def _randn(like: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    # complex: circular CN(0, I) with E|z|^2 = 1 (medrecon's convention); real: N(0, 1)
    return torch.randn(like.shape, generator=generator, dtype=like.dtype, device=like.device)


# ---------------------------------------------------------------------------- generator
class AdaGN(nn.Module):
    """Adaptive group norm: GN(x) (1 + gamma(w)) + beta(w), w the mapped latent (Xiao et al. App. C).

    Wraps an existing ``nn.GroupNorm`` (its affine parameters stay); ``w`` is set by the owning
    ``Generator`` for the duration of one forward pass.
    """

    def __init__(self, norm: nn.GroupNorm, w_dim: int):
        super().__init__()
        self.norm = norm
        self.proj = nn.Linear(w_dim, 2 * norm.num_channels)
        nn.init.normal_(self.proj.weight, std=0.02)
        nn.init.zeros_(self.proj.bias)
        self.w: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)
        if self.w is None:
            raise RuntimeError("AdaGN called outside Generator.forward (no latent set)")
        gamma, beta = self.proj(self.w).to(h.dtype).chunk(2, dim=1)
        shape = gamma.shape + (1,) * (h.ndim - 2)
        return h * (1 + gamma.reshape(shape)) + beta.reshape(shape)


def _replace_group_norms(module: nn.Module, w_dim: int) -> list[AdaGN]:
    out = []
    for name, child in module.named_children():
        if isinstance(child, nn.GroupNorm):
            ada = AdaGN(child, w_dim)
            setattr(module, name, ada)
            out.append(ada)
        else:
            out.extend(_replace_group_norms(child, w_dim))
    return out


class Generator(nn.Module):
    """G(x_k, k, z) -> x0 on MONAI's ``DiffusionModelUNet`` with AdaGN(z) in place of every GroupNorm."""

    def __init__(self, cfg: DDGANConfig):
        super().__init__()
        self.cfg = cfg
        self.schedule = DDGANSchedule.from_config(cfg)
        self.in_channels = cfg.unet.in_channels
        self.unet = build_unet(cfg.unet)
        self._norms = _replace_group_norms(self.unet, cfg.w_dim)
        layers: list[nn.Module] = []
        d = cfg.z_dim
        for _ in range(cfg.mapping_layers):
            layers += [nn.Linear(d, cfg.w_dim), nn.SiLU()]
            d = cfg.w_dim
        self.mapping = nn.Sequential(*layers)

    def sample_z(self, batch: int, generator: torch.Generator, device: torch.device | str = "cpu") -> torch.Tensor:
        return torch.randn(batch, self.cfg.z_dim, generator=generator, device=device)

    def forward(self, x: torch.Tensor, k: Any, z: torch.Tensor) -> torch.Tensor:
        """x0 prediction in x's representation (complex [B, H, W] or real [B, C, H, W])."""
        kk = self.schedule._k(k, x)
        if z.ndim != 2 or z.shape != (x.shape[0], self.cfg.z_dim):
            raise ValueError(f"z: expected shape [{x.shape[0]}, {self.cfg.z_dim}], got {tuple(z.shape)}")
        h = to_channels(x, self.in_channels)
        w = self.mapping(z.to(h.device, torch.float32))
        for n in self._norms:
            n.w = w
        try:
            out = self.unet(h, self.schedule.net_time(kk, h.device))
        finally:
            for n in self._norms:
                n.w = None
        return from_channels(out, x)


# ---------------------------------------------------------------------------- discriminator
class _DBlock(nn.Module):
    def __init__(self, cin: int, cout: int, t_dim: int, down: bool):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.temb = nn.Linear(t_dim, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1, bias=False)
        self.down = down

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.leaky_relu(x, 0.2)) + self.temb(t)[:, :, None, None]
        h = self.conv2(F.leaky_relu(h, 0.2))
        s = self.skip(x)
        if self.down:
            h, s = F.avg_pool2d(h, 2), F.avg_pool2d(s, 2)
        return (h + s) / math.sqrt(2)


class Discriminator(nn.Module):
    """D(x_{k-1}, x_k, k) -> logit [B]: residual conv blocks (each halving the size) with an
    additive time embedding, then a spatial sum and a linear layer (per-sample: no batch norm)."""

    def __init__(self, cfg: DDGANConfig):
        super().__init__()
        self.schedule = DDGANSchedule.from_config(cfg)
        c = cfg.unet.in_channels
        t_dim = 4 * cfg.d_channels[0]
        self.t_dim = t_dim
        self.t_mlp = nn.Sequential(nn.Linear(t_dim, t_dim), nn.LeakyReLU(0.2), nn.Linear(t_dim, t_dim))
        self.conv_in = nn.Conv2d(2 * c, cfg.d_channels[0], 3, padding=1)
        chans = (cfg.d_channels[0],) + cfg.d_channels
        self.blocks = nn.ModuleList(_DBlock(chans[i], chans[i + 1], t_dim, True) for i in range(len(cfg.d_channels)))
        self.out = nn.Linear(chans[-1], 1)
        self.in_channels = c

    def forward(self, x_prev: torch.Tensor, x_k: torch.Tensor, k: Any) -> torch.Tensor:
        from monai.networks.nets.diffusion_model_unet import get_timestep_embedding

        hp, hk = to_channels(x_prev, self.in_channels), to_channels(x_k, self.in_channels)
        kk = self.schedule._k(k, hk)
        t = self.t_mlp(get_timestep_embedding(self.schedule.net_time(kk, hk.device), self.t_dim).to(hk.dtype))
        h = self.conv_in(torch.cat([hp, hk], dim=1))
        for blk in self.blocks:
            h = blk(h, t)
        return self.out(F.leaky_relu(h, 0.2).sum(dim=(2, 3)))[:, 0]


def build_ddgan(cfg: DDGANConfig | dict, seed: int | None = None) -> tuple[Generator, Discriminator]:
    """Generator and discriminator, initialised from ``seed`` without touching the global RNG."""
    cfg = cfg if isinstance(cfg, DDGANConfig) else DDGANConfig.from_dict(cfg)
    if seed is None:
        return Generator(cfg), Discriminator(cfg)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        return Generator(cfg), Discriminator(cfg)


# ---------------------------------------------------------------------------- losses
def r1_penalty(D: nn.Module, x_prev: torch.Tensor, x_k: torch.Tensor, k: Any,
               create_graph: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, E_b ||grad_{x_{k-1}} D(x_{k-1}, x_k, k)||^2) with the gradient over the real
    channels of x_{k-1}; one backward pass (D is per-sample, so grad of the summed logits is
    each sample's own gradient)."""
    h = to_channels(x_prev, D.in_channels).detach().requires_grad_(True)
    logits = D(h, to_channels(x_k, D.in_channels), k)
    (grad,) = torch.autograd.grad(logits.sum(), h, create_graph=create_graph)
    return logits, grad.flatten(1).pow(2).sum(1).mean()


def d_loss(D: nn.Module, real_prev: torch.Tensor, fake_prev: torch.Tensor, x_k: torch.Tensor, k: Any,
           r1_gamma: float = 0.05) -> tuple[torch.Tensor, dict[str, float]]:
    """softplus(-D(real)) + softplus(D(fake)) + r1_gamma / 2 * R1 (fake detached)."""
    if r1_gamma > 0:
        real_logits, r1 = r1_penalty(D, real_prev, x_k, k)
    else:
        real_logits, r1 = D(real_prev, x_k, k), torch.zeros((), device=x_k.device)
    fake_logits = D(fake_prev.detach(), x_k, k)
    loss_real = F.softplus(-real_logits).mean()
    loss_fake = F.softplus(fake_logits).mean()
    loss = loss_real + loss_fake + 0.5 * r1_gamma * r1
    return loss, {"d_real": float(loss_real.detach()), "d_fake": float(loss_fake.detach()), "r1": float(r1.detach())}


def g_loss(D: nn.Module, fake_prev: torch.Tensor, x_k: torch.Tensor, k: Any) -> torch.Tensor:
    """Non-saturating generator loss softplus(-D(fake)) (Goodfellow et al. 2014)."""
    return F.softplus(-D(fake_prev, x_k, k)).mean()


# ---------------------------------------------------------------------------- sampling
@torch.no_grad()
def ddgan_sample(G: Generator, x: torch.Tensor, generator: torch.Generator, *, start: int | None = None,
                 dc: Callable[[torch.Tensor, int], torch.Tensor] | None = None,
                 z: torch.Tensor | None = None) -> tuple[torch.Tensor, int]:
    """Run k = start..1: x0_hat = dc(G(x_k, k, z), k); x_{k-1} ~ q(x_{k-1} | x_k, x0_hat).
    ``x`` is x_start (``start`` defaults to T).  Returns (x_0, nfe)."""
    T = G.schedule.num_steps
    start = T if start is None else int(start)
    if not 1 <= start <= T:
        raise ValueError(f"start: expected 1..{T}, got {start}")
    nfe = 0
    for k in range(start, 0, -1):
        zk = z if z is not None else G.sample_z(x.shape[0], generator, x.device)
        x0 = G(x, k, zk)
        nfe += 1
        if dc is not None:
            x0 = dc(x0, k)
        x = G.schedule.posterior_sample(x, x0, k, generator)
    return x, nfe


# ---------------------------------------------------------------------------- checkpoints
@dataclass
class DDGANCheckpoint:
    generator: Generator
    discriminator: Discriminator
    config: DDGANConfig
    step: int
    ema: dict[str, torch.Tensor] | None = None
    opt_g: dict[str, Any] | None = None
    opt_d: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None


def save_ddgan(directory: str | os.PathLike, G: Generator, D: Discriminator, *, step: int = 0,
               ema: dict[str, torch.Tensor] | None = None, opt_g: torch.optim.Optimizer | None = None,
               opt_d: torch.optim.Optimizer | None = None, extra: dict[str, Any] | None = None,
               overwrite: bool = False) -> Path:
    """Write ``config.json`` + ``generator/discriminator/ema/opt_*.safetensors`` atomically."""
    from safetensors.torch import save_file

    directory = Path(directory)
    if directory.exists() and not overwrite:
        raise FileExistsError(f"{directory}: checkpoint already exists (pass overwrite=True to replace it)")
    cfg: dict[str, Any] = {"format": FORMAT, "version": VERSION, "config": G.cfg.to_dict(), "step": int(step),
                           "files": {"generator": "generator.safetensors",
                                     "discriminator": "discriminator.safetensors"},
                           "extra": extra or {}}
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-", dir=directory.parent))
    try:
        save_file(_state(G), str(tmp / "generator.safetensors"))
        save_file(_state(D), str(tmp / "discriminator.safetensors"))
        if ema is not None:
            save_file(_state(ema), str(tmp / "ema.safetensors"))
            cfg["files"]["ema"] = "ema.safetensors"
        for name, opt in (("opt_g", opt_g), ("opt_d", opt_d)):
            if opt is not None:
                tensors, meta = _optimizer_split(opt.state_dict())
                save_file(tensors, str(tmp / f"{name}.safetensors"))
                cfg["files"][name] = f"{name}.safetensors"
                cfg[name] = meta
        finish_directory(tmp, directory, cfg)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def load_ddgan(directory: str | os.PathLike, map_location: str | torch.device = "cpu") -> DDGANCheckpoint:
    """Rebuild G and D from ``config.json`` and load the safetensors weights (no code executed).
    Nothing is built before the config passed the schema (``config_schema.validate_ddgan``) and the
    size cap (``network_size``), and every weights header matched the networks (``weights_file``)."""
    from .config_schema import CheckpointConfigError, validate_ddgan
    from .network_size import check_size, discriminator_size, generator_size
    from .weights_file import checked_file, checked_weights, expected_state, load_tensors

    directory = Path(directory)
    file = directory / "config.json"
    meta = read_config_json(directory, "DDGAN checkpoint")
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        got = meta.get("format") if isinstance(meta, dict) else None
        raise CheckpointConfigError(f"{file}: not a DDGAN checkpoint (format {got!r}, expected {FORMAT!r}; a "
                                    f"diffusion prior from `medrecon train` is not a DDGAN generator)")
    cfg, files = validate_ddgan(meta, file)
    sizes = {"generator": generator_size(cfg), "discriminator": discriminator_size(cfg)}
    for name, size in sizes.items():
        check_size(size, f"{file} ({name})", CheckpointConfigError)
    expected = {"generator": expected_state(lambda: Generator(cfg), file),
                "discriminator": expected_state(lambda: Discriminator(cfg), file)}
    paths = {name: checked_weights(directory, files, name, file, expected[net], sizes[net].params)
             for name, net in (("generator", "generator"), ("discriminator", "discriminator"), ("ema", "generator"))
             if name in files}
    n_params = sizes["generator"].params + sizes["discriminator"].params
    for name in ("opt_g", "opt_d"):
        if name in files:
            paths[name] = checked_file(directory, files, name, file, 4 * n_params + 10 ** 6)
    G, D = build_ddgan(cfg)
    G.load_state_dict(load_tensors(paths["generator"], "cpu"))
    D.load_state_dict(load_tensors(paths["discriminator"], "cpu"))
    opts = {name: _optimizer_join(load_tensors(paths[name], map_location), meta[name], paths[name])
            for name in ("opt_g", "opt_d") if name in paths}
    ema = load_tensors(paths["ema"], map_location) if "ema" in paths else None
    return DDGANCheckpoint(G.to(map_location), D.to(map_location), cfg, int(meta.get("step", 0)), ema,
                           opts.get("opt_g"), opts.get("opt_d"), meta.get("extra", {}), directory)


def load_generator(directory: str | os.PathLike, map_location: str | torch.device = "cpu",
                   use_ema: bool = True) -> Generator:
    """The generator ready for sampling: EMA weights when saved (and ``use_ema``), eval mode."""
    ck = load_ddgan(directory, map_location)
    if use_ema and ck.ema is not None:
        ck.generator.load_state_dict(ck.ema)
    return ck.generator.eval()

