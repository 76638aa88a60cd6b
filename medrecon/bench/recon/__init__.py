"""`medrecon bench recon`: MRI reconstruction quality vs speed on a held-out simulated test set.

Test set: ``--slices`` multi-coil brain slices, slice i the one-slice volume of
``medrecon.datasets.simulate_mri.simulate_mri_volume(seed=--seed + i)`` (seeds >= 1000 are
held out: training sets use 0..999): 2x readout-oversampled k-space reconstructed on that grid and
cropped to the ``--size`` x ``--size`` recon matrix, as ``medrecon recon`` does with a fastMRI file
(``--fov full``), or with the oversampling removed first (``--fov crop``: inverse FFT, central
``--size`` rows, FFT -- exact, the readout is fully sampled; half the cost per step).  Reference:
the RSS of the fully sampled coil images on the recon matrix (fastMRI's target).  Masks (``--masks``): the fastMRI kinds of
``medrecon.physics.masks`` (presets below, or ``KIND:R:CENTER_FRACTION``), mask seed = the
slice's simulator seed.

Every row is ``medrecon.reconstruct(kspace, mask, method, seed=--sample-seed, **options)`` per
slice -- the registry, with ESPIRiT maps estimated inside as for any user -- scored with
``medrecon.metrics.evaluate`` on the stack of slices (fastMRI conventions); seconds per slice
is ``ReconResult.seconds`` (ESPIRiT included; one untimed 1-step call per method first, see
`warm_up`) and NFE ``ReconResult.nfe``.  Rows:

- classical: zero-filled, cg-sense, l1-wavelet (default options);
- ``dds`` / ``ddnm``: every generic solver (``--solvers``; ``-o ddnm.solver=X``: X only) through the
  method's ``solver`` option at each NFE budget (``--nfe``; steps from the budget as in ``medrecon bench solvers``:
  Heun 2N - 1 calls, PNDM 12 warm-up calls), with each DeepCache interval in ``--deepcache``
  (1 = off; the methods' ``cache`` option: ``medrecon.accel.DeepCacheUNet`` around the prior's U-Net, a fresh cache per slice);
- ``ccdf``: each NFE budget, steps = NFE / t0;
- ``score-mri`` / ``hfs-sde`` / ``spirit-diffusion`` / ``dps``: each of ``--score-steps`` /
  ``--hfs-steps`` / ``--spirit-steps`` / ``--dps-steps``; hfs-sde only where the mask holds the
  prior's low-frequency block M_L (else "n/a");
- ``fdmr`` when registered (``checkpoint`` = ``--fdmr-checkpoint``); any other registered
  method: one row with its defaults.  ``-o [METHOD.]KEY=VALUE`` sets options.

Goals printed (never adjusted): (1) per mask, the best sampler at <= 50 NFE within 0.5 dB PSNR
of the best slow (> 50 NFE) diffusion sampler; (2) at 8x, every diffusion row above both
CG-SENSE and L1-wavelet.  ``--out`` receives ``bench_recon.md``, ``bench_recon.json`` (rewritten
after every row, so a cut run keeps what finished), ``bench_recon_psnr_nfe.png`` and
``bench_recon_images.png``.  ``--merge A.json B.json --out DIR`` runs nothing and reports the union of
runs on the same slices (`medrecon.bench.recon.merge`: e.g. the slow samplers run as a separate process).

Modules: `rows` (test set, masks, the planned rows), `run` (running them through
``medrecon.reconstruct``), `report` (goal verdicts, table, ``bench_recon.{md,json}``), `merge`, `plots`;
the options are in `medrecon.bench.commands.recon`.
"""
