"""The analytic Gaussian prior against dense linear algebra (numpy FFT matrices) and scipy's ODE solver."""
import diffusers
import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp

from medrecon.gaussian_prior import GaussianPrior
from medrecon.models.schedules import make_betas

H, W = 4, 6


def dense_F():
    """Centered orthonormal 2-D DFT as a matrix acting on row-major flattened images (numpy only)."""
    def f1(n):
        e = np.eye(n)
        return np.fft.fftshift(np.fft.fft(np.fft.ifftshift(e, axes=0), axis=0, norm="ortho"), axes=0)
    return np.kron(f1(H), f1(W))


def dense_cov(pr):
    F = dense_F()
    return F.conj().T @ np.diag(pr.lam.numpy().reshape(-1)) @ F, F


def rand_c(shape, seed):
    return torch.randn(shape, dtype=torch.complex128, generator=torch.Generator().manual_seed(seed))


def test_spectrum_shape_and_samples():
    pr = GaussianPrior((16, 16), p=1.5, k0=2.0)
    assert pr.lam.mean().item() == pytest.approx(1.0)
    assert pr.lam[8, 8] == pr.lam.max()  # DC at the centre (fft2c convention)
    x = pr.sample(400, generator=torch.Generator().manual_seed(0), dtype=torch.complex128)
    from medrecon.physics.fft import fft2c
    ratio = (fft2c(x).abs() ** 2 / pr.lam).mean().item()  # mean of 400*256 Exp(1) variables
    assert abs(ratio - 1) < 4 / np.sqrt(400 * 256)


@pytest.mark.parametrize("abar", [0.9, 0.3, 0.01])
def test_denoiser_equals_dense_gaussian_conditioning(abar):
    pr = GaussianPrior((H, W), p=1.0, k0=1.0)
    C, _ = dense_cov(pr)
    x_t = rand_c((2, H, W), 1)
    cov_t = abar * C + (1 - abar) * np.eye(H * W)
    xt = x_t.numpy().reshape(2, -1).T
    x0_ref = np.sqrt(abar) * C @ np.linalg.solve(cov_t, xt)
    eps_ref = np.sqrt(1 - abar) * np.linalg.solve(cov_t, xt)
    np.testing.assert_allclose(pr.x0_hat(x_t, abar).numpy().reshape(2, -1).T, x0_ref, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(pr.eps_hat(x_t, abar).numpy().reshape(2, -1).T, eps_ref, rtol=1e-10, atol=1e-10)


def test_pf_ode_equals_numerical_ode_solution():
    """dz/ds = (z - D(z, s)) / s in z = x / alpha, s = sigma / alpha (Karras et al. 2022, Eq. 3)."""
    pr = GaussianPrior((H, W), p=1.0, k0=1.0)
    C, _ = dense_cov(pr)
    s0, s1 = 30.0, 0.05
    x_T = rand_c((H, W), 2)
    z0 = x_T.numpy().reshape(-1) * np.sqrt(1 + s0 ** 2)

    def rhs(s, v):
        z = v[: H * W] + 1j * v[H * W:]
        d = C @ np.linalg.solve(C + s ** 2 * np.eye(H * W), z)
        r = (z - d) / s
        return np.concatenate([r.real, r.imag])

    sol = solve_ivp(rhs, (s0, s1), np.concatenate([z0.real, z0.imag]), rtol=1e-10, atol=1e-12)
    z1 = sol.y[: H * W, -1] + 1j * sol.y[H * W:, -1]
    ref = z1 / np.sqrt(1 + s1 ** 2)
    out = pr.pf_ode(x_T, 1 / (1 + s0 ** 2), 1 / (1 + s1 ** 2))
    np.testing.assert_allclose(out.numpy().reshape(-1), ref, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("sigma_n", [0.0, 0.3])
def test_posterior_equals_dense_conditioning(sigma_n):
    pr = GaussianPrior((H, W), p=1.0, k0=1.0)
    C, F = dense_cov(pr)
    mask = torch.zeros(H, W, dtype=torch.bool)
    mask[:, ::2] = True
    mask[:, 3] = True
    x = pr.sample(1, generator=torch.Generator().manual_seed(3), dtype=torch.complex128)[0]
    y = pr.measure(x, mask, sigma_n, generator=torch.Generator().manual_seed(4))
    rows = np.flatnonzero(mask.numpy().reshape(-1))
    A = F[rows]
    G = A @ C @ A.conj().T + sigma_n ** 2 * np.eye(len(rows))
    mean_ref = C @ A.conj().T @ np.linalg.solve(G, y.numpy().reshape(-1)[rows])
    cov_ref = C - C @ A.conj().T @ np.linalg.solve(G, A @ C)
    mean_k, var_k = pr.posterior(y, mask, sigma_n)
    from medrecon.physics.fft import ifft2c
    np.testing.assert_allclose(ifft2c(mean_k).numpy().reshape(-1), mean_ref, atol=1e-10)
    np.testing.assert_allclose(var_k.numpy().reshape(-1), np.real(np.diag(F @ cov_ref @ F.conj().T)), atol=1e-10)


def test_fractional_timesteps_follow_diffusers_sigma_interpolation():
    betas = make_betas("linear", 1000)
    acp = torch.cumprod(1 - betas.float(), 0).double()
    s = diffusers.EulerDiscreteScheduler(trained_betas=betas.float().numpy())
    s.set_timesteps(4)  # fractional timesteps 666, 333 ... are exact thirds of 999
    for t, sig in zip(s.timesteps, s.sigmas):
        assert GaussianPrior.abar_at(acp, float(t)) == pytest.approx(1 / (1 + float(sig) ** 2), rel=1e-5)


def test_bad_input():
    pr = GaussianPrior((H, W))
    with pytest.raises(ValueError, match="x"):
        pr.x0_hat(torch.zeros(H, W), 0.5)
    with pytest.raises(ValueError, match="mask"):
        pr.posterior(torch.zeros(H, W, dtype=torch.complex64), torch.ones(H, W), 0.0)
    with pytest.raises(ValueError, match="shape"):
        GaussianPrior((4,))
