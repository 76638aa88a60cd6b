"""CT operator timings (``medrecon bench ct-operators``): `medrecon.physics.ct` against
scikit-image ``radon`` / ``iradon``.

One process, same image (resized Shepp-Logan) and angles; best of ``repeats`` after a warm-up,
milliseconds per slice.  skimage runs on the CPU, one slice at a time (it has no batch axis);
ours runs on ``device`` (CPU or CUDA, synchronised) for one slice and, where ``batch > 1``,
per slice of a batch.  Outputs are compared with skimage so a fast wrong operator shows up.
Not to be confused with ``medrecon bench ct`` (`medrecon.bench.ct`), the low-dose denoising
benchmark: these operator timings are a separate command so that benchmark does not also spend
minutes on 512x512 projector timings.
"""
from __future__ import annotations

import numpy as np
import torch

from medrecon.bench.timing import best_time_ms
from medrecon.physics.ct import FanBeam, ParallelBeam, fbp


def run(sizes=((64, 60), (256, 360), (512, 720)), device="cpu", batch: int = 16,
        repeats: int = 3, skimage: bool = True) -> list[dict]:
    """Rows ``{size, n_angles, op, ours_ms, ours_batched_ms, skimage_ms, rel_err}``."""
    from skimage.data import shepp_logan_phantom
    from skimage.transform import iradon, radon, resize

    dev = torch.device(device)
    rows = []
    for n, k in sizes:
        img = resize(shepp_logan_phantom(), (n, n), anti_aliasing=True)
        theta = np.linspace(0.0, 180.0, k, endpoint=False)
        A = ParallelBeam(n, torch.tensor(np.deg2rad(theta)))
        x = torch.tensor(img, dtype=torch.float32, device=dev)
        xb = x.expand(batch, n, n).contiguous()
        y = A.forward(x)
        yb = A.forward(xb)
        ref_s = radon(img, theta=theta, circle=True) if skimage else None
        ref_r = iradon(ref_s, theta=theta, circle=True) if skimage else None
        inside = np.add.outer((np.arange(n) - n // 2) ** 2, (np.arange(n) - n // 2) ** 2) \
            <= (n // 2) ** 2

        def rel(a, b, m=None):
            a = a.double().cpu().numpy()
            return float(np.linalg.norm((a - b)[m if m is not None else ...])
                         / np.linalg.norm(b[m if m is not None else ...]))

        ops = [
            ("parallel forward", lambda: A.forward(x), lambda: A.forward(xb),
             (lambda: radon(img, theta=theta, circle=True)) if skimage else None,
             rel(y, ref_s.T) if skimage else None),
            ("parallel adjoint", lambda: A.adjoint(y), lambda: A.adjoint(yb), None, None),
            ("parallel fbp ramp", lambda: fbp(y, A), lambda: fbp(yb, A),
             (lambda: iradon(ref_s, theta=theta, circle=True)) if skimage else None,
             rel(fbp(torch.tensor(ref_s.T.copy(), dtype=torch.float32, device=dev), A),
                 ref_r, inside) if skimage else None),
        ]
        G = FanBeam(n, torch.linspace(0, 2 * np.pi, 2 * k + 1, dtype=torch.float64)[:-1],
                    2.0 * n, 1.0 * n, int(1.5 * n), 1.5, "equiangular")
        yf, yfb = G.forward(x), G.forward(xb)
        ops += [("fan forward (2K angles)", lambda: G.forward(x), lambda: G.forward(xb), None,
                 None),
                ("fan adjoint (2K angles)", lambda: G.adjoint(yf), lambda: G.adjoint(yfb), None,
                 None),
                ("fan fbp (2K angles)", lambda: fbp(yf, G), lambda: fbp(yfb, G), None, None)]
        for name, one, many, ref, err in ops:
            rows.append({
                "size": n, "n_angles": k, "op": name, "device": str(dev),
                "ours_ms": best_time_ms(one, repeats, dev),
                "ours_batched_ms": best_time_ms(many, repeats, dev) / batch if batch > 1 else None,
                "skimage_ms": best_time_ms(ref, repeats) if ref is not None else None,
                "rel_err": err,
            })
    return rows


def format_table(rows: list[dict]) -> str:
    head = (f"{'N':>4} {'K':>4} {'op':<24} {'device':<7} {'ours ms':>9} {'ours/slice B':>12} "
            f"{'skimage ms':>10} {'speedup':>8} {'rel err':>9}")
    out = [head, "-" * len(head)]
    for r in rows:
        sk = r["skimage_ms"]
        f = (lambda v, w, p: f"{v:>{w}.{p}f}" if v is not None else " " * (w - 1) + "-")
        out.append(f"{r['size']:>4} {r['n_angles']:>4} {r['op']:<24} {r['device']:<7} "
                   f"{r['ours_ms']:>9.2f} {f(r['ours_batched_ms'], 12, 2)} {f(sk, 10, 1)} "
                   f"{f(sk / r['ours_ms'] if sk else None, 8, 1)} "
                   + (f"{r['rel_err']:>9.1e}" if r["rel_err"] is not None else " " * 8 + "-"))
    return "\n".join(out)
