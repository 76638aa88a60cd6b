"""MRI operator timings (`medrecon bench operators`): our SENSE operator against fastMRI-style and
SigPy, same process.

Each reference gets the same inputs (coil maps, image, 1-D mask) and is timed by the best of
``repeats`` runs after a warm-up; the table reports milliseconds and the ratio reference / ours
(> 1 means medrecon is faster).  Outputs are compared too, so a fast wrong operator shows up.

References:
- fastMRI-style: real/imag trailing dim, ``fastmri.fft2c``/``ifft2c`` (roll-based shifts), the
  coil product written out by hand with ``fastmri.complex_mul`` / ``complex_conj`` (what the
  fastMRI varnet code does); its normal operator is adjoint(forward(x)).  Falls back to an
  equivalent local implementation when the ``fastmri`` package is not installed.
- SigPy: ``sigpy.mri.linop.Sense(mps, weights=mask)`` and its ``.H`` / ``.N`` on NumPy.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from medrecon.physics.mri import MultiCoilMRI
from medrecon.bench.timing import best_time_ms

SIZES = {"brain": (16, 640, 320), "knee": (15, 640, 368)}


def _fastmri_ops():
    try:
        import fastmri

        return fastmri.fft2c, fastmri.ifft2c, fastmri.complex_mul, fastmri.complex_conj
    except ImportError:  # same maths, roll-based shifts as in fastmri.fftc
        def shift(x, inverse):
            dims = (-3, -2)
            sh = [(-(n // 2) if inverse else n // 2) for n in (x.shape[-3], x.shape[-2])]
            return torch.roll(x, sh, dims)

        def fft2c(x):
            x = shift(x, True)
            x = torch.view_as_real(torch.fft.fftn(torch.view_as_complex(x), dim=(-2, -1),
                                                  norm="ortho"))
            return shift(x, False)

        def ifft2c(x):
            x = shift(x, True)
            x = torch.view_as_real(torch.fft.ifftn(torch.view_as_complex(x), dim=(-2, -1),
                                                   norm="ortho"))
            return shift(x, False)

        def complex_mul(a, b):
            re = a[..., 0] * b[..., 0] - a[..., 1] * b[..., 1]
            im = a[..., 0] * b[..., 1] + a[..., 1] * b[..., 0]
            return torch.stack((re, im), dim=-1)

        def complex_conj(a):
            return torch.stack((a[..., 0], -a[..., 1]), dim=-1)

        return fft2c, ifft2c, complex_mul, complex_conj


@dataclass
class Row:
    size: str
    op: str
    ours_ms: float
    fastmri_ms: float
    sigpy_ms: float
    max_rel_err: float

    @property
    def vs_fastmri(self) -> float:
        return self.fastmri_ms / self.ours_ms

    @property
    def vs_sigpy(self) -> float:
        return self.sigpy_ms / self.ours_ms


def _steady_allocator() -> None:
    """Make glibc keep freed large blocks on the heap for the rest of this (benchmark) process.

    By default glibc serves blocks above an adaptive threshold (up to 32 MB: one coil tensor at
    fastMRI sizes) with fresh ``mmap`` and returns them on free, so a call may pay thousands
    of page faults or not depending on what ran before; timings then jump 2-3x with the order
    of the rows.  Fixing the thresholds removes that noise for every implementation alike (an
    iterative reconstruction reaches the same steady state after its first iterations).
    """
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
        libc.mallopt(M_MMAP_THRESHOLD, 1 << 30)
        libc.mallopt(M_TRIM_THRESHOLD, (1 << 31) - 1)
    except (OSError, AttributeError):  # not glibc: leave the allocator alone
        pass


def run(sizes=("brain", "knee"), acceleration: int = 4, repeats: int = 5, seed: int = 0,
        sigpy: bool = True, device: str | torch.device = "cpu") -> list[Row]:
    """Time forward/adjoint/normal for each size; return one Row per (size, op).

    ``device``: where our operators and the fastMRI-style reference run (same tensors); SigPy
    runs on the CPU (NumPy) and is skipped on other devices.
    """
    device = torch.device(device)
    sigpy = sigpy and device.type == "cpu"
    fft2c, ifft2c, cmul, cconj = _fastmri_ops()
    _steady_allocator()
    rows = []
    for name in sizes:
        C, H, W = SIZES[name] if isinstance(name, str) else name
        label = name if isinstance(name, str) else f"{C}x{H}x{W}"
        g = torch.Generator().manual_seed(seed)
        smaps = torch.randn(C, H, W, dtype=torch.complex64, generator=g)
        smaps /= smaps.abs().pow(2).sum(0, keepdim=True).sqrt()
        x = torch.randn(H, W, dtype=torch.complex64, generator=g)
        y = torch.randn(C, H, W, dtype=torch.complex64, generator=g)
        cols = torch.zeros(W, dtype=torch.bool)
        cols[::acceleration] = True
        cols[W // 2 - 12: W // 2 + 12] = True
        mask = cols.view(1, W)
        y = y * mask
        smaps_cpu, x_cpu, y_cpu, mask_cpu = smaps, x, y, mask
        smaps, x, y, mask = (t.to(device) for t in (smaps, x, y, mask))
        A = MultiCoilMRI(smaps, mask)

        s_r = torch.view_as_real(smaps).contiguous()
        x_r = torch.view_as_real(x).contiguous()
        y_r = torch.view_as_real(y).contiguous()
        m_r = mask.view(1, 1, W, 1).float()

        def f_fwd(xr):
            return fft2c(cmul(s_r, xr.unsqueeze(0))) * m_r

        def f_adj(yr):
            return cmul(cconj(s_r), ifft2c(yr * m_r)).sum(0)

        ops = {
            "forward": (lambda: A.forward(x), lambda: f_fwd(x_r)),
            "adjoint": (lambda: A.adjoint(y), lambda: f_adj(y_r)),
            "normal": (lambda: A.normal(x), lambda: f_adj(f_fwd(x_r))),
        }
        if sigpy:
            import sigpy.mri

            S = sigpy.mri.linop.Sense(smaps_cpu.numpy(),
                                      weights=mask_cpu.numpy().astype(np.float32).repeat(H, 0))
            xn, yn = x_cpu.numpy(), y_cpu.numpy()
            sp = {"forward": lambda: S * xn, "adjoint": lambda: S.H * yn,
                  "normal": lambda: S.N * xn}
        for op, (ours, ref) in ops.items():
            a = ours()
            b = torch.view_as_complex(ref().contiguous())
            err = float((a - b).abs().max() / b.abs().max())
            t_ours = best_time_ms(ours, repeats, device)
            t_ref = best_time_ms(ref, repeats, device)
            t_sp = best_time_ms(sp[op], max(1, repeats // 2)) if sigpy else float("nan")
            rows.append(Row(label, op, t_ours, t_ref, t_sp, err))
    return rows


def format_table(rows: list[Row]) -> str:
    head = ("| size | op | medrecon ms | fastMRI-style ms | SigPy ms | x vs fastMRI | x vs SigPy "
            "| max rel err |\n|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in rows:
        fmt = ".1f" if r.ours_ms >= 1 else ".3f"
        lines.append(f"| {r.size} | {r.op} | {r.ours_ms:{fmt}} | {r.fastmri_ms:{fmt}} | "
                     f"{r.sigpy_ms:.1f} | {r.vs_fastmri:.2f} | {r.vs_sigpy:.2f} | "
                     f"{r.max_rel_err:.1e} |")
    return "\n".join(lines)
