"""The CT autoencoder's training options: cosine learning rate, rotations/flips, generic texture."""
import math

import pytest
import torch

import medrecon.ct.autoencoder as C
from medrecon.ct.data import from_hu, to_hu
from medrecon.ct.fit import fit
from medrecon.ct.textures import TEXTURE_IMAGES, texture_bank, texture_batch


def test_cosine_lr_reaches_lr_min_and_constant_without():
    net = torch.nn.Linear(2, 1)
    seen = []
    orig = torch.optim.AdamW.step

    def spy(self, *a, **k):
        seen.append(self.param_groups[0]["lr"])
        return orig(self, *a, **k)

    torch.optim.AdamW.step = spy
    try:
        fit(net, lambda g: net(torch.ones(1, 2)).sum() ** 2, steps=5, lr=1e-2, seed=0,
            device=torch.device("cpu"), lr_min=1e-4)
        cos = list(seen)
        seen.clear()
        fit(net, lambda g: net(torch.ones(1, 2)).sum() ** 2, steps=3, lr=1e-2, seed=0,
            device=torch.device("cpu"))
    finally:
        torch.optim.AdamW.step = orig
    expect = [1e-4 + 0.5 * (1e-2 - 1e-4) * (1 + math.cos(math.pi * i / 5)) for i in range(5)]
    assert cos == pytest.approx(expect) and cos[0] == pytest.approx(1e-2)
    assert seen == [1e-2] * 3
    with pytest.raises(ValueError, match="lr_min"):
        fit(net, lambda g: net(torch.ones(1, 2)).sum(), steps=1, lr=1e-3, seed=0,
            device=torch.device("cpu"), lr_min=1e-2)


def test_augment_batch_is_one_of_the_eight_symmetries():
    x = torch.arange(16.0).view(1, 1, 4, 4)
    views = {tuple(torch.rot90(x, k, (-2, -1)).flip(-1).flatten().tolist()) for k in range(4)} | \
        {tuple(torch.rot90(x, k, (-2, -1)).flatten().tolist()) for k in range(4)}
    got = {tuple(C.augment_batch(x, torch.Generator().manual_seed(s)).flatten().tolist()) for s in range(64)}
    assert got == views  # all 8, nothing else
    with pytest.raises(ValueError, match="square"):
        C.augment_batch(torch.zeros(1, 1, 4, 5), torch.Generator())


def test_texture_batch_ranges_and_determinism():
    assert len(texture_bank()) == len(TEXTURE_IMAGES)
    a = texture_batch(6, 32, torch.Generator().manual_seed(1))
    b = texture_batch(6, 32, torch.Generator().manual_seed(1))
    assert a.shape == (6, 1, 32, 32) and torch.equal(a, b)
    hu = to_hu(a)
    assert float(hu.min()) >= -1000 - 1e-3 and float(hu.max()) <= 2000 + 1e-3
    assert float(hu.flatten(1).std(1).min()) > 1.0  # texture, not constant slices
    assert torch.allclose(from_hu(to_hu(a)), a)


def test_train_autoencoder_with_texture_and_augment_runs_and_is_reproducible():
    x = torch.rand(4, 1, 16, 16)
    kw = dict(steps=2, batch_size=4, seed=3, lr_min=1e-5, augment=True, texture_fraction=0.5,
              scale_latents=False)
    r1 = C.train_autoencoder("tiny", x, **kw)
    r2 = C.train_autoencoder("tiny", x, **kw)
    assert r1.losses == r2.losses and all(math.isfinite(v) for v in r1.losses)
    r3 = C.train_autoencoder("tiny", x, **{**kw, "crop": 8})
    assert r3.losses != r1.losses and all(math.isfinite(v) for v in r3.losses)
    for bad in (0, 7, 18):  # outside [1, 16] or not a multiple of f = 2
        with pytest.raises(ValueError, match="crop"):
            C.train_autoencoder("tiny", x, steps=1, batch_size=2, crop=bad)
    with pytest.raises(ValueError, match="texture_fraction"):
        C.train_autoencoder("tiny", x, steps=1, batch_size=2, texture_fraction=1.5)


def test_random_windows_are_windows_of_the_items():
    x = torch.arange(2 * 36.0).view(2, 1, 6, 6)
    w = C._random_windows(x, 4, torch.Generator().manual_seed(0))
    assert w.shape == (2, 1, 4, 4)
    for i in range(2):
        hits = [(a, b) for a in range(3) for b in range(3) if torch.equal(x[i, :, a:a + 4, b:b + 4], w[i])]
        assert len(hits) == 1


def test_texture_pairs_are_a_consistent_low_dose_simulation():
    from medrecon.ct.evaluate import ct_metrics
    from medrecon.ct.textures import texture_pairs

    p = texture_pairs(3, 32, seed=2, n_angles=48)
    q = texture_pairs(3, 32, seed=2, n_angles=48)
    assert p["ndct"].shape == p["ldct"].shape == (3, 1, 32, 32)
    assert torch.equal(p["ldct"], q["ldct"])
    rmse = ct_metrics(p["ndct"], p["ldct"])["rmse_hu"]
    assert 5 < rmse < 400  # noisy, but not photon-starved
    # no photons lost: more dose -> closer pairs
    hi = texture_pairs(3, 32, seed=2, n_angles=48, i0=1e6)
    assert ct_metrics(hi["ndct"], hi["ldct"])["rmse_hu"] < rmse
