"""``reconstruct(samples=K)`` / ``medrecon recon --samples K``: the Monte-Carlo posterior mean."""
import dataclasses
import json
import math

import pytest
import torch

from medrecon import registry
from medrecon.cli.main import main
from medrecon.datasets.demo import make_demo_file
from medrecon.reconstruct import reconstruct
from medrecon.registry import register_method

MU, SIGMA = 0.7 - 0.2j, 0.5  # the toy posterior: N(MU, SIGMA^2) per pixel, complex


@dataclasses.dataclass
class _Opts:
    steps: int = 3


@pytest.fixture
def gaussian_method():
    """A diffusion-kind plugin whose output is one draw of a known per-pixel posterior."""
    shapes = []

    @register_method("test-gaussian-posterior", _Opts, "toy posterior sampler", kind="diffusion")
    def sample(kspace, mask, smaps, opts, generator):
        shapes.append((tuple(kspace.shape), tuple(smaps.shape)))
        shape = kspace.shape[:-3] + kspace.shape[-2:]
        z = torch.randn(shape, dtype=torch.complex64, generator=generator)
        return MU + SIGMA * z, opts.steps

    yield shapes
    registry._REGISTRY.pop("test-gaussian-posterior")


def _data(batch=()):
    k = torch.ones(*batch, 2, 12, 10, dtype=torch.complex64)
    return k, torch.ones(1, 10, dtype=torch.bool), torch.ones(*batch, 2, 12, 10, dtype=torch.complex64)


def test_average_of_k_samples_is_the_posterior_mean(gaussian_method):
    k, m, s = _data()
    one = reconstruct(k, m, "test-gaussian-posterior", smaps=s, seed=3)
    many = reconstruct(k, m, "test-gaussian-posterior", smaps=s, seed=3, samples=64)
    assert gaussian_method[-1] == ((64, 2, 12, 10), (64, 2, 12, 10))  # one batched run
    assert many.image.shape == one.image.shape == (12, 10) and many.samples == 64
    assert many.nfe == 64 * one.nfe == 192
    err1 = (one.image - MU).abs().pow(2).mean().sqrt()
    errk = (many.image - MU).abs().pow(2).mean().sqrt()
    assert abs(float(err1) - SIGMA) < 0.1  # one sample: error ~ sigma
    assert abs(float(errk) - SIGMA / 8) < 0.02  # 64 samples: sigma / sqrt(64)
    # the per-pixel std estimates sigma (biased by sqrt((K-1)/K))
    assert abs(float(many.std.mean()) - SIGMA * math.sqrt(63 / 64)) < 0.03
    assert one.std is None and one.samples == 1


def test_samples_keep_slice_batch_axes(gaussian_method):
    k, m, s = _data((3,))
    r = reconstruct(k, m, "test-gaussian-posterior", smaps=s, samples=4)
    assert gaussian_method[-1][0] == (4, 3, 2, 12, 10) and r.image.shape == (3, 12, 10)
    assert r.std.shape == (3, 12, 10)


def test_samples_on_a_real_sampler_match_the_mean_of_its_draws():
    """DDNM on a tiny network: the K-sample mean is the mean of the K batched draws."""
    from medrecon.posterior import ddnm  # noqa: F401  (the real sampler, registered as "ddnm")
    from tests.methods.test_api import _checkpoint, _data as api_data

    import tempfile
    with tempfile.TemporaryDirectory() as d:
        ck = _checkpoint(d + "/ck")
        k, m, s = api_data()
        r = reconstruct(k, m, "ddnm", smaps=s, seed=1, samples=3, steps=2, checkpoint=ck, normalize=False)
        spec = registry.get_method("ddnm")
        opts = registry.resolve_options(spec, {"steps": 2, "checkpoint": ck, "normalize": False})
        lead = (3,) + k.shape[:-3]
        draws, nfe = spec.fn((k * m).expand(3, *k.shape).contiguous(), m,
                             s.expand(*lead, *s.shape[-3:]).contiguous(), opts,
                             registry.seeded_generator(1, k.device))
    assert r.nfe == 3 * nfe
    torch.testing.assert_close(r.image, draws.mean(0))
    assert float((draws[0] - draws[1]).abs().max()) > 0  # different noise per sample


def test_samples_refused_for_deterministic_and_bad_values():
    k, m, s = _data()
    with pytest.raises(ValueError, match="'cg-sense' is deterministic"):
        reconstruct(k, m, "cg-sense", smaps=s, samples=2)
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="samples: expected an int >= 1"):
            reconstruct(k, m, "cg-sense", smaps=s, samples=bad)


def test_cli_samples(tmp_path, capsys):
    demo = make_demo_file(tmp_path / "demo.h5", n_slices=1, coils=2, size=(64, 64))
    assert main(["recon", str(demo), "--method", "cg-sense", "--samples", "2", "--quiet"]) == 2
    assert "deterministic" in capsys.readouterr().err
    assert main(["recon", str(demo), "--method", "zero-filled", "--samples", "0", "--quiet"]) == 2
    assert main(["recon", str(demo), "--method", "ddnm", "--steps", "2", "--samples", "2", "--json",
                 "--quiet", "--center-fraction", "0.16"]) == 0
    rec = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert rec["samples"] == 2 and rec["nfe"] == 4
