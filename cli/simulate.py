"""`medrecon simulate`: write simulated training/test data in real formats.

    medrecon simulate mri --out DIR --n-volumes N [--slices-per-volume 16] [--coils 8 16]
        [--size 320 320] [--snr 30] [--contrast random] [--seed 0] [--overwrite] [--quiet]
    medrecon simulate ct --out DIR --n-volumes N [--slices-per-volume 8] [--size 256]
        [--angles 360] [--i0 1e5] [--sigma-e 5] [--seed 0] [--overwrite] [--quiet]

MRI files are fastMRI multi-coil HDF5 (`medrecon.datasets.simulate_mri`), readable by
`medrecon recon`; CT files follow the layout of `medrecon.datasets.simulate_ct`.  ``--coils``
and ``--snr`` take one value or a ``LOW HIGH`` range drawn per volume.
"""
from __future__ import annotations

import sys


def register(subparsers) -> None:
    p = subparsers.add_parser("simulate", help="simulate MRI k-space or CT sinogram datasets")
    kinds = p.add_subparsers(dest="kind", metavar="KIND")
    kinds.required = True
    mri = kinds.add_parser("mri", help="multi-coil brain MRI in fastMRI HDF5 format")
    mri.add_argument("--slices-per-volume", type=int, default=16, help="slices per file")
    mri.add_argument("--coils", type=int, nargs="+", default=[8, 16], metavar="C",
                     help="coil count, or LOW HIGH drawn per volume (default 8 16)")
    mri.add_argument("--size", type=int, nargs=2, default=[320, 320], metavar=("H", "W"),
                     help="recon matrix; k-space is 2H x W (readout oversampled 2x)")
    mri.add_argument("--snr", type=float, nargs="+", default=[30.0], metavar="SNR",
                     help="k-space SNR rms(signal)/sigma, or LOW HIGH (default 30)")
    mri.add_argument("--contrast", default="random", choices=["random", "t1", "t2", "pd", "flair"])
    ct = kinds.add_parser("ct", help="head CT images (HU), sinograms and low-dose sinograms")
    ct.add_argument("--slices-per-volume", type=int, default=8, help="slices per file")
    ct.add_argument("--size", type=int, default=256, metavar="N", help="image size N x N")
    ct.add_argument("--angles", type=int, default=360, help="projection angles over 180 deg")
    ct.add_argument("--i0", type=float, default=1e5, help="incident photons per ray")
    ct.add_argument("--sigma-e", type=float, default=5.0, help="electronic noise std (counts)")
    for sp in (mri, ct):
        sp.add_argument("--out", required=True, help="output folder (created if missing)")
        sp.add_argument("--n-volumes", type=int, required=True, help="number of files")
        sp.add_argument("--seed", type=int, default=0, help="dataset seed (volume i is seeded "
                        "from (seed, i))")
        sp.add_argument("--source", default="auto", choices=["auto", "mni152", "shepp-logan"],
                        help="anatomy (MNI152 needs the medrecon[sim] extra)")
        sp.add_argument("--overwrite", action="store_true", help="replace existing files")
        sp.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    p.set_defaults(func=run)


def _one_or_range(values: list, name: str):
    if len(values) == 1:
        return values[0]
    if len(values) == 2 and values[0] <= values[1]:
        return tuple(values)
    raise ValueError(f"{name} takes one value or LOW HIGH with LOW <= HIGH, got {values}")


def _check(args) -> None:
    if args.n_volumes < 1:
        raise ValueError(f"--n-volumes must be >= 1, got {args.n_volumes}")
    if args.slices_per_volume < 1:
        raise ValueError(f"--slices-per-volume must be >= 1, got {args.slices_per_volume}")
    sizes = args.size if isinstance(args.size, list) else [args.size]
    if min(sizes) < 16:
        raise ValueError(f"--size must be >= 16, got {args.size}")


def run(args) -> int:
    _check(args)
    progress = not args.quiet and sys.stderr.isatty()
    if args.kind == "mri":
        from medrecon.datasets.simulate_mri import simulate_mri_dataset

        coils = _one_or_range(args.coils, "--coils")
        snr = _one_or_range(args.snr, "--snr")
        if min(args.coils) < 1:
            raise ValueError(f"--coils must be >= 1, got {args.coils}")
        if min(args.snr) <= 0:
            raise ValueError(f"--snr must be > 0, got {args.snr}")
        paths = simulate_mri_dataset(args.out, args.n_volumes, args.slices_per_volume, coils,
                                     tuple(args.size), snr, args.seed, progress, args.overwrite,
                                     args.contrast, args.source)
    else:
        from medrecon.datasets.simulate_ct import simulate_ct_dataset

        if args.angles < 1 or args.i0 <= 0 or args.sigma_e < 0:
            raise ValueError(f"need --angles >= 1, --i0 > 0 and --sigma-e >= 0, got "
                             f"{args.angles}, {args.i0}, {args.sigma_e}")
        paths = simulate_ct_dataset(args.out, args.n_volumes, args.slices_per_volume, args.size,
                                    args.angles, args.i0, args.sigma_e, args.seed, progress,
                                    args.overwrite, args.source)
    if not args.quiet:
        print(f"simulate {args.kind}: wrote {len(paths)} file(s) to {paths[0].parent}")
    return 0
