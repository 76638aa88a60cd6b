"""Low-dose CT denoising with diffusion models (`medrecon.ct`).

- `data`: simulated NDCT / LDCT pairs (HU / 1000 normalisation), `CTPairDataset`.
- `autoencoder`: MONAI ``AutoencoderKL`` presets, training (L1 + KL), freeze / encode / decode.
- `cold_diffusion`: latent cold diffusion (degradation D(z0, t), z0-predictor, Bansal et al.
  Algorithm 2 sampler from E(LDCT)).
- `pixel_ddpm`: the pixel-space conditional DDPM baseline, sampled via `medrecon.sample.sample`.
- `checkpoint`: safetensors + JSON checkpoints for the autoencoder and the latent model.
- `evaluate` (imported on demand): RMSE in HU inside the body, PSNR, SSIM and time per slice for
  FBP, the pixel DDPM and latent cold diffusion; ``python -m medrecon.ct.evaluate`` runs a tiny
  CPU comparison.
- `inputs`, `recon` (imported on demand): CT inputs (DICOM CT series, sinogram files) and the
  reconstruction behind the registered CT methods (`medrecon.methods.ct`).
- `bench` (imported on demand): ``medrecon bench ct`` on a held-out simulated test set.

MONAI is imported only when a network is built.
"""
from .autoencoder import (AE_PRESETS, AEConfig, AETrainResult, CTAutoencoder, ae_loss, ae_preset,
                          build_autoencoder, decode, encode, freeze, load_autoencoder,
                          save_autoencoder, train_autoencoder)
from .cold_diffusion import (COLD_SCHEDULES, ColdSchedule, ColdTrainResult, LatentColdDiffusion,
                             build_cold_model, cold_loss, cold_sample, cold_timesteps, degrade,
                             load_cold_diffusion, reconstruct_cold, save_cold_diffusion,
                             train_cold_diffusion)
from .data import (HU_SCALE, CTPairDataset, body_mask, check_pair, from_hu, pair_tensors, simulate_pairs,
                   to_hu)
from .pixel_ddpm import (ConditionalDDPM, PixelTrainResult, build_pixel_ddpm, conditional_eps_fn,
                         ddpm_loss, load_pixel_ddpm, sample_pixel_ddpm, save_pixel_ddpm,
                         train_pixel_ddpm)

__all__ = [
    "HU_SCALE", "CTPairDataset", "simulate_pairs", "to_hu", "from_hu", "body_mask", "check_pair",
    "pair_tensors",
    "AEConfig", "AE_PRESETS", "ae_preset", "CTAutoencoder", "build_autoencoder", "ae_loss",
    "train_autoencoder", "AETrainResult", "freeze", "encode", "decode", "save_autoencoder",
    "load_autoencoder",
    "ColdSchedule", "COLD_SCHEDULES", "degrade", "LatentColdDiffusion", "build_cold_model",
    "cold_loss", "cold_sample", "cold_timesteps", "train_cold_diffusion", "ColdTrainResult",
    "reconstruct_cold", "save_cold_diffusion", "load_cold_diffusion",
    "ConditionalDDPM", "build_pixel_ddpm", "ddpm_loss", "train_pixel_ddpm", "PixelTrainResult",
    "conditional_eps_fn", "sample_pixel_ddpm", "save_pixel_ddpm", "load_pixel_ddpm",
]
