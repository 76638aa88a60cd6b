"""Metrics equal fastMRI's `evaluate` formulas on the same volumes."""
import numpy as np
import pytest
import torch

from medrecon.metrics import evaluate, nmse, psnr, ssim


@pytest.fixture(scope="module")
def fe():
    """fastMRI's ``evaluate`` module; only the tests that compare with it skip without it."""
    return pytest.importorskip("fastmri.evaluate")


def _volumes(seed, shape=(3, 32, 24), noise=0.1):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:shape[1], :shape[2]]
    gt = np.stack([np.exp(-((yy - 12 - s) ** 2 + (xx - 10) ** 2) / 60.0) * (1 + s)
                   for s in range(shape[0])]) + 0.05 * rng.random(shape)
    pred = gt + noise * rng.standard_normal(shape)
    return gt.astype(np.float32), np.abs(pred).astype(np.float32)


@pytest.mark.parametrize("seed,noise", [(0, 0.01), (1, 0.1), (2, 0.5)])
def test_equal_to_fastmri(fe, seed, noise):
    gt, pred = _volumes(seed, noise=noise)
    assert nmse(gt, pred) == pytest.approx(float(fe.nmse(gt, pred)), rel=1e-5)
    assert psnr(gt, pred) == pytest.approx(float(fe.psnr(gt, pred)), rel=1e-5)
    assert ssim(gt, pred) == pytest.approx(float(np.squeeze(fe.ssim(gt, pred))), rel=1e-5)
    # data_range is the max of the whole target volume, not per slice
    assert psnr(gt, pred, maxval=2.0) == pytest.approx(float(fe.psnr(gt, pred, 2.0)), rel=1e-5)


def test_tensors_complex_and_single_images(fe):
    gt, pred = _volumes(3)
    m = evaluate(torch.from_numpy(gt), torch.from_numpy(pred) * np.exp(0.3j))  # magnitude used
    assert m["nmse"] == pytest.approx(float(fe.nmse(gt, pred)), rel=1e-4)
    assert psnr(gt[0], pred[0]) == pytest.approx(float(fe.psnr(gt[:1], pred[:1])), rel=1e-5)


def test_monotone_in_noise_and_identity():
    gt, _ = _volumes(4)
    scores = [evaluate(gt, _volumes(4, noise=n)[1]) for n in (0.01, 0.05, 0.2)]
    assert scores[0]["psnr"] > scores[1]["psnr"] > scores[2]["psnr"]
    assert scores[0]["ssim"] > scores[1]["ssim"] > scores[2]["ssim"]
    assert scores[0]["nmse"] < scores[1]["nmse"] < scores[2]["nmse"]
    same = evaluate(gt, gt)
    assert same["nmse"] == 0 and same["ssim"] == pytest.approx(1.0) and same["psnr"] is None
    assert same["reason"] == "prediction equals the reference (PSNR is infinite)"


def test_bad_input():
    gt, pred = _volumes(5)
    with pytest.raises(ValueError, match="must be equal"):
        nmse(gt, pred[:2])
    bad = pred.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="pred contains NaN"):
        psnr(gt, bad)
    with pytest.raises(ValueError, match=r"\[S, H, W\]"):
        ssim(gt[None], pred[None])
