"""``medrecon bench ct-operators``: options and output of the CT projector / FBP timings against
scikit-image (`medrecon.bench.ct_operators`; ``medrecon bench ct`` is the denoising benchmark)."""
from __future__ import annotations

HELP = "CT projector and FBP timings vs scikit-image radon/iradon (not the denoising bench: see ct)"
DESCRIPTION = "CT operator timings: medrecon.physics.ct against scikit-image radon / iradon."


def add_arguments(ap) -> None:
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--sizes", default="64x60,256x360", help="NxK[,NxK...]: image size N, K angles")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-skimage", action="store_true")


def parse_sizes(text: str) -> list[tuple[int, int]]:
    """``"64x60,256x360"`` -> ``[(64, 60), (256, 360)]``."""
    sizes = [s.strip().lower().split("x") for s in text.split(",")]
    if not all(len(s) == 2 and all(v.isdigit() and int(v) > 0 for v in s) for s in sizes):
        raise ValueError(f"--sizes: expected NxK[,NxK...] (e.g. 64x60,256x360), got {text!r}")
    return [(int(n), int(k)) for n, k in sizes]


def main(args) -> int:
    from medrecon.bench.ct_operators import format_table, run

    print(format_table(run(parse_sizes(args.sizes), args.device, args.batch, args.repeats, not args.no_skimage)))
    return 0
