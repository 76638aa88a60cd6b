"""The built-in reconstruction methods: importing this package registers every one of them
(`medrecon.registry`), and these modules are the only callers of ``register_method`` in medrecon.

- `classical`: zero-filled, cg-sense, l1-wavelet, spirit-cg
- `vp`: dds, ddnm, diffpir, dps, ccdf, score-mri (VP priors)
- `sde`: hfs-sde, spirit-diffusion (VE score priors, or a lifted VP image prior)
- `fdmr`: fdmr (a DDGAN prior; the sampler is `medrecon.posterior.fdmr`)
- `ct`: fbp, latent-cold-diffusion, pixel-ddpm (CT, ``modality="ct"``)
- `priors`: checkpoint resolution, loading and the `PriorCache` a `medrecon.Reconstructor` owns
"""
from . import classical, ct, fdmr, sde, vp  # noqa: F401  (registers the methods)
