"""The trained priors that ship with medrecon (package data under ``medrecon/priors/``).

Each is a medrecon checkpoint directory (``config.json`` + ``model.safetensors``, EMA weights,
no optimizer state) trained by ``medrecon train --recipe ...`` on the simulated multi-coil brain;
how exactly is in ``docs/priors.md``.

- ``brain128-vp``:  VP eps complex-image prior (recipe ``vp``) -- the default of the VP samplers
  (dds, ddnm, diffpir, dps, ccdf, score-mri, spirit-diffusion).
- ``brain128-hfs``: HFS-SDE prior (recipe ``hfs``, acs 10) -- the default of hfs-sde.
- ``brain128-ddgan``: denoising-diffusion-GAN generator (recipe ``ddgan``, T = 4; a DDGAN checkpoint
  directory: ``config.json`` + ``generator.safetensors`` (EMA weights) + ``discriminator.safetensors``)
  -- the default of fdmr.
- ``brain128-vp-distill4``: ``brain128-vp`` distilled into a 4-step DDNM chain (recipe ``distill-chain``,
  `medrecon.models.distill_chain`; extra.distilled holds its grid) -- for ddnm / dds at ``steps=4``.
- ``ct128-pixel-ddpm``: conditional pixel-space DDPM on simulated 128x128 low-dose CT (recipe
  ``ct-pixel-ddpm``; a medrecon checkpoint with ``extra.kind`` the pixel DDPM) -- the default of
  pixel-ddpm.
- ``ct128-latent-cold``: latent cold diffusion (recipe ``ct-latent-cold``: ``autoencoder/`` (MONAI
  ``AutoencoderKL``) + ``latent/``, `medrecon.ct.checkpoint` layout) -- the default of
  latent-cold-diffusion.

The name says the network's 128x128 training windows, not the image size: both were trained on
128x128 brains and then fine-tuned on windows of 128-384 recon matrices (``--recipe-option
scales=1``), all normalised by the zero-filled image's maximum, the scale the posterior methods
use with ``normalize=True``.  ``PRIORS`` holds what the checkpoint cannot say (kind, data, the
steps before its last run, intended NFE); `describe` joins it with the checkpoint's own facts
(``medrecon priors`` prints it).
"""
from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path

__all__ = ["BUILTIN_PRIORS", "PRIORS", "PriorInfo", "prior_path", "resolve_checkpoint", "describe",
           "weights_parameters", "export_prior", "export_ddgan"]

_ROOT = Path(__file__).resolve().parent / "priors"

_BRAIN = ("simulated multi-coil brain (MNI152 simulator, training seeds): 128 slices at 128x128, then "
          "36 slices per recon matrix 128, 192, 256, 320, 384 (T1/T2/PD/FLAIR), ESPIRiT-SENSE combined, "
          "normalised by the zero-filled maximum; 128x128 windows")
_BRAIN_MS = ("simulated multi-coil brain (MNI152 simulator, training seeds): 36 slices per recon matrix 128, "
             "192, 256, 320, 384 (T1/T2/PD/FLAIR), ESPIRiT-SENSE combined, normalised by the zero-filled "
             "maximum; 128x128 windows")


_CT = ("simulated head CT (medrecon.ct simulator, training seeds 0..63): 256 slices at 128x128, "
       "bone 700-1900 HU, parallel beam over 192 views, I0 = 1e4 photons, sigma_e = 5; NDCT / LDCT = ramp FBP in HU / 1000")


@dataclass(frozen=True)
class PriorInfo:
    """Metadata of a shipped prior that its checkpoint does not record (docs/priors.md)."""
    kind: str  # vp, hfs, ddgan, distilled, ct, ...
    description: str
    data: str  # training data
    steps_before: int  # optimizer steps of the runs before the one config.json's ``step`` counts (its ``init``)
    nfe: int  # network evaluations per image it is meant to be sampled with
    nfe_note: str


PRIORS: dict[str, PriorInfo] = {
    "brain128-vp": PriorInfo(
        "vp", "VP eps-prediction prior of complex (2-channel) images, 1000 linear betas (recipe vp)", _BRAIN,
        4832, 50, "DDIM-type samplers (dds 50, ddnm / ccdf / diffpir 20-100); dps, score-mri 1000"),
    "brain128-hfs": PriorInfo(
        "hfs", "HFS-SDE score prior of the high frequencies, M_L = 10 central lines, VE sigma 1e-3..1 "
        "(recipe hfs)", _BRAIN, 4751, 2000, "hfs-sde: N = 1000 predictor steps + 1 corrector each"),
    "brain128-ddgan": PriorInfo(
        "ddgan", "denoising diffusion GAN generator (Xiao et al., ICLR 2022), T = 4 VP steps, z_dim 32 "
        "(recipe ddgan)", _BRAIN_MS, 0, 4,
        "fdmr: T = 4 generator steps, then early-stopped adaptation and refinement (10-20 NFE)"),
    "brain128-vp-distill4": PriorInfo(
        "distilled", "brain128-vp distilled into a 4-step DDNM chain (eta 0, data step between its steps) from the "
        "teacher's DDNM-50 reconstructions (recipe distill-chain)", _BRAIN_MS + "; problems: 512 windows, then 256 "
        "single-coil strips of 128 rows of whole 640x320 images (64 simulated volumes at recon matrix 320, 3 slices "
        "each), then 128 such strips as 16-coil SENSE problems, then 256 of them with the simulator's k-space noise "
        "(SNR 30) and the student's data step at 25 CG iterations; fastMRI equispaced_fraction / random column "
        "masks at 4x (centre 0.08) and 8x (0.04), targets brain128-vp's DDNM-50 (eta 0.85)", 1475, 4,
        "ddnm / dds at steps=4 only (its grid 750, 500, 250, 0; eta 0 and cg_iters 25 by default); ccdf with t0=1"),
    "ct128-pixel-ddpm": PriorInfo(
        "ct-pixel-ddpm", "conditional pixel-space DDPM for low-dose CT, eps on 1000 linear betas, LDCT as a second "
        "input channel (recipe ct-pixel-ddpm)", _CT, 0, 5,
        "pixel-ddpm: DPM-Solver++ on a 20-step grid, warm-started from the LDCT below t = 300 (5 network calls)"),
    "ct128-latent-cold": PriorInfo(
        "ct-latent-cold", "latent cold diffusion for low-dose CT: MONAI AutoencoderKL + latent z0 network, cosine cold "
        "schedule (recipe ct-latent-cold)", _CT + "; the autoencoder also on generic texture (half of each batch: "
        "scikit-image's bundled photographs in random HU windows, medrecon.ct.textures), 64x64 crops", 0, 10, "latent-cold-diffusion: T = 10 cold steps (Bansal et al. Alg. 2)"),
}

# the weight files each kind's directory must hold (beside config.json unless a path says otherwise)
_FILES = {"ddgan": ("config.json", "generator.safetensors", "discriminator.safetensors"),
          "ct-latent-cold": ("autoencoder/config.json", "autoencoder/model.safetensors", "latent/config.json",
                             "latent/model.safetensors")}

BUILTIN_PRIORS: dict[str, str] = {name: info.description for name, info in PRIORS.items()}


def prior_path(name: str) -> Path:
    """The directory of the shipped prior ``name`` (one of ``BUILTIN_PRIORS``)."""
    if name not in BUILTIN_PRIORS:
        raise ValueError(f"unknown builtin prior {name!r}; builtin priors: {', '.join(BUILTIN_PRIORS)}")
    path = _ROOT / name
    missing = [f for f in _FILES.get(PRIORS[name].kind, ("config.json", "model.safetensors"))
               if not (path / f).is_file()]
    if missing:
        raise FileNotFoundError(f"builtin prior {name!r}: {path} lacks {', '.join(missing)} "
                                f"(a broken medrecon installation?)")
    return path


def resolve_checkpoint(checkpoint: str, default: str) -> Path:
    """A checkpoint option -> directory: ``""`` is the builtin ``default``, a builtin name its
    directory, anything else a path (checked by the loader)."""
    if not isinstance(checkpoint, (str, Path)):
        raise ValueError(f"checkpoint: expected a builtin prior name or a directory, got {type(checkpoint).__name__}")
    name = str(checkpoint) or default
    if name in BUILTIN_PRIORS:
        return prior_path(name)
    return Path(name)


def weights_parameters(path) -> int:
    """The number of parameters in a safetensors file, from its header alone (8-byte little-endian
    header length, then JSON ``{name: {dtype, shape, data_offsets}}``; no tensor is read)."""
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) != 8:
            raise ValueError(f"{path}: not a safetensors file (shorter than its 8-byte header length)")
        (n,) = struct.unpack("<Q", head)
        if n > 100 * 2 ** 20:
            raise ValueError(f"{path}: safetensors header of {n} bytes (corrupt file?)")
        header = json.loads(f.read(n))
    return sum(math.prod(v["shape"]) for k, v in header.items() if k != "__metadata__")


def describe(name: str) -> dict:
    """The facts of the shipped prior ``name``: `PriorInfo` joined with its checkpoint's (network,
    prediction type, schedule, parameters from the weights header, size on disk, training steps)."""
    path = prior_path(name)
    info = PRIORS[name]
    if info.kind == "ct-latent-cold":
        return _describe_latent(name, path, info)
    cfg = json.loads((path / "config.json").read_text())
    extra = cfg.get("extra") or {}
    steps = int(cfg.get("step", 0))
    if info.kind == "ddgan":
        unet = cfg["config"]["unet"]
        cfg = {**cfg, "network": {"type": "monai.UNet + AdaGN (generator)", "config": unet},
               "prediction_type": "x0 (generator)", "schedule": {"type": f"vp, T = {cfg['config']['num_steps']}"}}
    net = cfg["network"]["config"]
    schedule = cfg.get("schedule") or {}
    weights = cfg["files"].get("model") or cfg["files"]["generator"]
    return {
        "name": name, "kind": info.kind, "description": info.description,
        "parameters": weights_parameters(path / weights),
        "size_bytes": sum(p.stat().st_size for p in path.iterdir() if p.is_file()),
        "network": f"{cfg['network']['type']} channels {list(net['channels'])}, {net['in_channels']} in",
        "prediction": cfg.get("prediction_type"), "schedule": schedule.get("type"),
        "training_data": info.data, "training_steps": info.steps_before + steps,
        "training_runs": [info.steps_before, steps] if extra.get("init") or (extra.get("distilled") or {}).get("init")
        else [steps],
        "weights": extra.get("weights"), "nfe": info.nfe, "nfe_note": info.nfe_note, "path": str(path),
    }


def _describe_latent(name: str, path: Path, info: PriorInfo) -> dict:
    """`describe` for a latent-cold-diffusion folder: the latent network's facts, both networks' parameters."""
    ae, lat = (json.loads((path / d / "config.json").read_text()) for d in ("autoencoder", "latent"))
    net = lat["config"]["network"]["config"]
    aenet = ae["config"]["network"]["config"]
    files = [p for p in path.rglob("*") if p.is_file()]
    return {
        "name": name, "kind": info.kind, "description": info.description,
        "parameters": sum(weights_parameters(path / d / "model.safetensors") for d in ("autoencoder", "latent")),
        "size_bytes": sum(p.stat().st_size for p in files),
        "network": f"monai.AutoencoderKL channels {list(aenet['channels'])} + monai.DiffusionModelUNet channels "
                   f"{list(net['channels'])}, {net['in_channels']} in",
        "prediction": lat["config"].get("prediction"),
        "schedule": f"cold, T = {lat['config']['schedule']['T']}",
        "training_data": info.data, "training_steps": int(ae.get("step", 0)) + int(lat.get("step", 0)),
        "training_runs": [int(ae.get("step", 0)), int(lat.get("step", 0))],  # autoencoder, then latent network
        "weights": (lat.get("extra") or {}).get("weights"), "nfe": info.nfe, "nfe_note": info.nfe_note,
        "path": str(path),
    }


def export_prior(run_checkpoint, out_dir, weights: str = "ema-corrected", overwrite: bool = False,
                 cg_iters: int | None = None) -> Path:
    """Write a training checkpoint (``<run>/step-XXXXXXXX``) as a shippable prior: one set of
    weights as ``model.safetensors`` and ``config.json`` -- no optimizer state, no EMA copy.  The
    config keeps the run's extras (objective, HFS process, ...) and adds ``source_step`` and
    ``weights``.  How the shipped priors were made (docs/priors.md).

    ``weights``: ``"ema"`` (the EMA shadow), ``"raw"`` (the trained weights), or ``"ema-corrected"``
    (default): the EMA without its start-up bias.  The shadow after n steps of decay d is
    d^n theta_0 + (1 - d) sum_k d^(n-k) theta_k with theta_0 the initial weights; for short runs
    (n ~ 1/(1 - d)) the d^n theta_0 term shrinks the output (MONAI's zero-initialised last layer), so
    it is removed and the rest renormalised, (shadow - d^n theta_0) / (1 - d^n): an exponentially
    weighted average of the trained weights only (theta_0 rebuilt from the run's seed, as
    ``medrecon.models.train`` builds it).

    ``cg_iters``: for a chain-distilled student, record the data step's CG iterations it runs with
    by default (``extra.distilled.cg_iters``, `medrecon.methods.distilled.default_cg_iters`), chosen on
    validation slices; refused for other checkpoints.  An intermediate chain checkpoint has no held-out
    record yet: `medrecon.models.distill_chain_train.export_chain_student` exports it with one.
    """
    from medrecon.models.checkpoint import load_checkpoint, load_model, save_checkpoint
    from medrecon.models.networks import build_unet

    if weights not in ("ema", "raw", "ema-corrected"):
        raise ValueError(f"weights: expected 'ema', 'raw' or 'ema-corrected', got {weights!r}")
    ck = load_checkpoint(run_checkpoint)
    distilled = ck.extra.get("distilled") if isinstance(ck.extra.get("distilled"), dict) else {}
    if cg_iters is not None and (distilled.get("method") != "chain" or int(cg_iters) < 1):
        raise ValueError(f"cg_iters={cg_iters}: expected >= 1 and a chain-distilled checkpoint "
                         f"(extra.distilled.method 'chain'), got {run_checkpoint} ({distilled.get('method')!r})")
    model = load_model(run_checkpoint, use_ema=weights != "raw")
    if weights != "raw" and ck.ema is None:
        raise ValueError(f"weights={weights!r}: {run_checkpoint} has no EMA weights; use weights='raw'")
    if weights == "ema-corrected":
        decay, seed = ck.extra.get("ema_decay"), ck.extra.get("seed")
        if decay is None or seed is None:
            raise ValueError(f"weights='ema-corrected': {run_checkpoint}/config.json lacks ema_decay / seed")
        init = build_unet(ck.network_config, seed=int(seed)).state_dict()
        bias = float(decay) ** int(ck.step)
        state = {k: ((v - bias * init[k]) / (1 - bias)) if v.is_floating_point() else v
                 for k, v in ck.ema.items()}
        model.net.load_state_dict(state)
    extra = {k: v for k, v in ck.extra.items() if k != "network"}
    extra.update(source_step=int(ck.step), weights=weights)
    if cg_iters is not None:
        extra["distilled"] = {**distilled, "cg_iters": int(cg_iters)}
    return save_checkpoint(out_dir, model, {"network": ck.network_config, **extra}, step=ck.step,
                           overwrite=overwrite)


def export_ddgan(run_checkpoint, out_dir, overwrite: bool = False) -> Path:
    """Write a DDGAN training checkpoint as a shippable prior: the EMA generator weights as
    ``generator.safetensors`` (the loader needs the small discriminator too), no EMA copy, no optimizer
    state; ``extra`` keeps the run's options (``data`` reduced to its file name) plus ``source_step``."""
    from medrecon.models.ddgan import load_ddgan, save_ddgan

    ck = load_ddgan(run_checkpoint)
    if ck.ema is None:
        raise ValueError(f"{run_checkpoint}: no EMA weights to export")
    ck.generator.load_state_dict(ck.ema)
    extra = {**ck.extra, "source_step": ck.step, "weights": "ema"}
    if extra.get("data"):
        extra["data"] = Path(str(extra["data"])).name
    return save_ddgan(out_dir, ck.generator, ck.discriminator, step=ck.step, extra=extra, overwrite=overwrite)

