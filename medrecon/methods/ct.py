"""CT methods (fbp, latent-cold-diffusion, pixel-ddpm), registered with ``modality="ct"``.

A CT method is ``fn(scan, opts, *, seed, device, batch_size, priors=None) -> (hu, nfe)`` (with
an optional ``fn.prepare(opts, device, priors=None)`` that the CLI calls once before any input:
it loads the networks into ``priors``, a `medrecon.methods.priors.PriorCache`, default
`DEFAULT_PRIORS`, so a bad checkpoint is a usage error): ``scan`` a
`medrecon.ct.inputs.CTScan` (the low-dose sinogram and its geometry, or with ``dose=low`` the
LDCT image itself), ``hu`` the image ``[S, N, N]`` in HU, ``nfe`` the network evaluations of one
call.  `medrecon.pipeline.reconstruct_file` reads the scan, runs the method and writes the output
(`medrecon.ct.recon.reconstruct_ct` adds timing and metrics).

Every CT method also takes the options of its input (`medrecon.ct.inputs`): ``dose`` (``normal``:
a low-dose scan of a DICOM series is simulated with ``i0`` photons, electronic noise ``sigma_e``,
``noise_seed`` and ``n_angles`` views, default 3N/2; ``low``: the series is the LDCT image).
Reference code: latent cold diffusion for CT (Comput. Biol. Med. 2025, 110517) has no public code
(METHODS.md); its sampler, `medrecon.ct.cold_diffusion`, is Bansal et al.'s Algorithm 2.  The pixel DDPM
runs the generic solvers of `medrecon.sample` (tested equal to diffusers).  This module registers them
and holds their options; the pixel-ddpm defaults (DPM-Solver++ 20, ``ldct_above=300``) are measured
choices (docs/bench_ct.md), not a reference's.

The network methods' ``checkpoint`` defaults to the shipped 128x128 CT priors (``""``:
``ct128-latent-cold`` / ``ct128-pixel-ddpm``, `medrecon.builtin_priors`); a builtin name or a
``medrecon train --recipe ct-*`` folder is also accepted.
"""
from __future__ import annotations

from dataclasses import dataclass

from medrecon.registry import register_method

from .priors import CT_LATENT_PRIOR, CT_PIXEL_PRIOR

__all__ = ["CTInputOptions", "FBPOptions", "LatentColdOptions", "PixelDDPMOptions"]


@dataclass
class CTInputOptions:
    """How a DICOM CT series becomes a low-dose scan (`medrecon.ct.inputs`)."""

    dose: str = "normal"
    i0: float = 1e4
    sigma_e: float = 5.0
    noise_seed: int = 0
    n_angles: int | None = None

    def __post_init__(self) -> None:
        if self.dose not in ("normal", "low"):
            raise ValueError(f"option dose: expected 'normal' (simulate a low-dose scan of the "
                             f"series) or 'low' (the series is the LDCT image), got {self.dose!r}")
        if not self.i0 > 0:
            raise ValueError(f"option i0: the incident flux must be > 0 photons, got {self.i0}")
        if not self.sigma_e >= 0:
            raise ValueError(f"option sigma_e: expected >= 0, got {self.sigma_e}")
        if self.n_angles is not None and self.n_angles < 2:
            raise ValueError(f"option n_angles: expected >= 2, got {self.n_angles}")
        from medrecon.physics.ct import FILTERS

        if getattr(self, "filter", "ramp") not in FILTERS:
            raise ValueError(f"option filter={self.filter!r}: expected one of {', '.join(FILTERS)}")
        steps = getattr(self, "steps", None)
        if steps is not None and steps < 1:
            raise ValueError(f"option steps: expected >= 1, got {steps}")


@dataclass
class FBPOptions(CTInputOptions):
    filter: str = "ramp"  # ramp, shepp-logan, cosine, hamming, hann


@dataclass
class LatentColdOptions(CTInputOptions):
    filter: str = "ramp"
    checkpoint: str = ""  # "": the shipped ct128-latent-cold; a ct-latent-cold run folder (or the latent checkpoint)
    autoencoder: str | None = None  # the autoencoder folder when checkpoint is the latent one
    steps: int | None = None  # None: T
    algorithm: str = "improved"  # Bansal et al. Algorithm 2; "naive": Algorithm 1
    decoder_residual: bool = False  # add x - D(E(x)) of the LDCT input (cold_diffusion.reconstruct_cold)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.algorithm not in ("improved", "naive"):
            raise ValueError(f"option algorithm: expected 'improved' or 'naive', got "
                             f"{self.algorithm!r}")


@dataclass
class PixelDDPMOptions(CTInputOptions):
    filter: str = "ramp"
    checkpoint: str = ""  # "": the shipped ct128-pixel-ddpm; a ct-pixel-ddpm checkpoint
    # defaults: what works on the shipped prior (docs/bench_ct.md: DDIM / DPM-Solver++ from t = T diverge on
    # an under-trained pixel DDPM; the warm start from the LDCT above t = 300 gives its best rows)
    solver: str = "dpm-solver++"
    steps: int = 20
    eta: float | None = None  # None: the solver's default
    clip_x0: str = "none"  # "none" or a bound B (HU / 1000) each x0 estimate is clipped to
    ldct_above: int | None = 300  # timestep t_c: above it x0 is the LDCT, no network call (None: off)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.clip_x0 = str(self.clip_x0)
        self.clip_bound  # noqa: B018 -- a bad bound is an option error now, not mid-run

    @property
    def clip_bound(self) -> float | None:
        v = self.clip_x0
        if v.lower() in ("none", "", "0", "false"):
            return None
        try:
            b = float(v)
        except ValueError:
            raise ValueError(f"option clip_x0={v!r}: expected 'none' or a positive bound "
                             "(HU / 1000)") from None
        if not b > 0:
            raise ValueError(f"option clip_x0: expected a positive bound, got {b}")
        return b


@register_method("fbp", FBPOptions, "filtered backprojection of the low-dose sinogram (CT)",
                 modality="ct")
def fbp(scan, opts: FBPOptions, *, seed, device, batch_size, priors=None):
    from medrecon.ct.recon import fbp_hu

    if scan.ldct_hu is not None:
        raise ValueError(f"{scan.path}: with -o dose=low the series already is the (FBP) LDCT "
                         "image; fbp has nothing to reconstruct (use a denoising method)")
    return fbp_hu(scan, scan.sinogram, opts.filter), 0


def _networks(method: str, opts, device, priors):
    from medrecon.ct.recon import networks

    from .priors import DEFAULT_PRIORS

    return networks(method, opts, device, DEFAULT_PRIORS if priors is None else priors)


def _denoiser(method: str):
    """The registered function of a CT denoiser, with its ``prepare(opts, device, priors=None)``
    (load the networks now: a missing or wrong checkpoint, ``steps`` over T or an unknown
    solver is an error before any input is read)."""
    def fn(scan, opts, *, seed, device, batch_size, priors=None):
        from medrecon.ct.recon import denoise

        return denoise(_networks(method, opts, device, priors), scan, opts, seed, batch_size)

    fn.prepare = lambda opts, device=None, priors=None: _networks(method, opts, device, priors)
    fn.__name__ = fn.__qualname__ = method.replace("-", "_")
    return fn


register_method("latent-cold-diffusion", LatentColdOptions,
                "latent cold diffusion from the FBP image (CT; Bansal et al. Alg. 2)",
                kind="diffusion", modality="ct", prior=CT_LATENT_PRIOR)(_denoiser("latent-cold-diffusion"))
register_method("pixel-ddpm", PixelDDPMOptions,
                "pixel-space conditional DDPM on the FBP image (CT), any generic solver",
                kind="diffusion", modality="ct", prior=CT_PIXEL_PRIOR)(_denoiser("pixel-ddpm"))
