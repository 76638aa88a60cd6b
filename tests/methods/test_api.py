"""The method layer's contracts: options parsed once (a resolved dataclass passes through untouched),
one default seed, the optional ``callback``/``priors`` keywords of method functions (plugins with the
five-argument form keep working), the `PriorCache` a Reconstructor owns, CT methods refused by the
MRI entry point."""
import dataclasses
import math

import pytest
import torch

from medrecon import registry
from medrecon.methods.priors import DEFAULT_PRIORS, PriorCache, load_prior
from medrecon.methods.vp import DDNMOptions
from medrecon.physics.mri import MultiCoilMRI
from medrecon.reconstruct import reconstruct
from medrecon.reconstructor import Reconstructor
from medrecon.registry import DEFAULT_SEED, get_method, register_method, resolve_options, seeded_generator


def _data():
    smaps = torch.ones(2, 16, 16, dtype=torch.complex64) / math.sqrt(2)
    mask = torch.zeros(1, 16, dtype=torch.bool)
    mask[:, ::2] = True
    mask[:, 6:10] = True
    x = torch.randn(1, 16, 16, dtype=torch.complex64, generator=torch.Generator().manual_seed(5))
    return MultiCoilMRI(smaps, mask).forward(x), mask, smaps


def _checkpoint(path) -> str:
    from medrecon.models.checkpoint import save_checkpoint
    from medrecon.models.networks import build_unet, preset
    from medrecon.models.schedules import VPSchedule, make_betas
    from medrecon.models.wrapper import DiffusionModel

    cfg = preset("tiny")
    model = DiffusionModel(build_unet(cfg, seed=0), VPSchedule(make_betas("linear", 1000)), "eps",
                           network_config=cfg)
    return str(save_checkpoint(path, model, cfg))


@dataclasses.dataclass
class _ProbeOptions:
    scale: float = 1.0


@pytest.fixture
def probes():
    """Two plugin methods registered for one test: the five-argument form and the full form."""
    seen = []

    @register_method("test-probe-plain", _ProbeOptions, "plugin, five arguments")
    def plain(kspace, mask, smaps, opts, generator):
        seen.append(("plain", opts, generator))
        return kspace.sum(-3) * opts.scale, 0

    @register_method("test-probe-full", _ProbeOptions, "plugin, callback and priors", kind="diffusion")
    def full(kspace, mask, smaps, opts, generator, callback=None, priors=None):
        seen.append(("full", opts, priors))
        for i in range(3):
            if callback is not None:
                callback(i, kspace)
        return kspace.sum(-3), 3

    yield seen
    for name in ("test-probe-plain", "test-probe-full"):
        registry._REGISTRY.pop(name)


def test_resolved_options_pass_through_untouched(probes):
    spec = get_method("test-probe-plain")
    opts = resolve_options(spec, {"scale": "2.5"})  # CLI strings: parsed here, once
    assert opts == _ProbeOptions(2.5) and resolve_options(spec, opts) is opts
    with pytest.raises(ValueError, match="expected _ProbeOptions or a dict, got DDNMOptions"):
        resolve_options(spec, DDNMOptions())
    k, mask, _ = _data()
    r = reconstruct(k, mask, "test-probe-plain", options=opts, callback=lambda i, x: None)
    assert probes[-1][1] is opts and r.options == {"scale": 2.5}
    assert torch.equal(r.image, reconstruct(k, mask, "test-probe-plain", scale=2.5).image)
    with pytest.raises(ValueError, match="not both"):
        reconstruct(k, mask, "test-probe-plain", options=opts, scale=3.0)
    rec = Reconstructor("test-probe-plain", options=opts)
    assert rec.opts is opts and rec.options == {"scale": 2.5}
    rec(k, mask)
    assert probes[-1][1] is opts
    with pytest.raises(ValueError, match="not both"):
        Reconstructor("test-probe-plain", options=opts, scale=1.0)


def test_callback_and_priors_reach_methods_that_take_them(probes):
    k, mask, _ = _data()
    steps, cache = [], PriorCache()
    r = reconstruct(k, mask, "test-probe-full", callback=lambda i, x: steps.append(i), priors=cache)
    assert steps == [0, 1, 2] and r.nfe == 3 and probes[-1][2] is cache
    rec = Reconstructor("test-probe-full")
    rec(k, mask)
    assert probes[-1][2] is rec.priors


def test_one_default_seed(tmp_path):
    ck = _checkpoint(tmp_path / "ck")
    k, mask, smaps = _data()
    assert DEFAULT_SEED == 0
    assert torch.equal(torch.randn(4, generator=seeded_generator(None)), torch.randn(4, generator=seeded_generator(0)))
    unseeded = reconstruct(k, mask, "ddnm", smaps=smaps, checkpoint=ck, steps=2).image
    assert torch.equal(unseeded, reconstruct(k, mask, "ddnm", smaps=smaps, checkpoint=ck, steps=2,
                                             seed=DEFAULT_SEED).image)
    assert not torch.equal(unseeded, reconstruct(k, mask, "ddnm", smaps=smaps, checkpoint=ck, steps=2, seed=1).image)


@pytest.mark.parametrize("method, options, calls", [
    ("dds", {}, 3), ("ddnm", {}, 3), ("diffpir", {}, 3), ("dps", {}, 3), ("ccdf", {"t0": 0.7}, 2),
    ("score-mri", {}, 3), ("score-mri", {"variant": "sense"}, 3), ("score-mri", {"variant": "hybrid"}, 3),
    ("spirit-diffusion", {}, 3), ("hfs-sde", {}, 3)])
def test_sampler_steps_reach_the_callback(tmp_path, method, options, calls):
    """Every diffusion method reports its sampler's steps through reconstruct's ``callback(i, x)``
    (what the progress bar counts) and the image is the same without it."""
    from medrecon.models.checkpoint import save_checkpoint
    from medrecon.models.hfs_process import HFSSDE
    from medrecon.models.networks import build_unet, preset
    from medrecon.models.schedules import VE
    from medrecon.models.wrapper import DiffusionModel

    ck = _checkpoint(tmp_path / "vp")
    if method == "hfs-sde":
        ve = DiffusionModel(build_unet(preset("tiny"), seed=0), VE(0.01, 50.0), "score", network_config=preset("tiny"))
        ck = str(save_checkpoint(tmp_path / "hfs", ve, {"network": preset("tiny"), "hfs": HFSSDE(4).to_dict()}))
    k, mask, smaps = _data()
    seen = []
    run = dict(smaps=smaps, checkpoint=ck, steps=3, seed=0, **options)
    r = reconstruct(k, mask, method, callback=lambda i, x: seen.append((i, x.shape[-2:])), **run)
    steps = [i for i, _ in seen]  # each sampler's own count (some also report the start or the end state)
    assert len(seen) >= calls and steps == sorted(steps) and set(range(calls)) <= set(steps)
    assert all(s == (16, 16) for _, s in seen)
    assert torch.equal(r.image, reconstruct(k, mask, method, **run).image)


def test_prior_cache_keeps_per_kind_and_reconstructor_holds_its_own(tmp_path):
    cache = PriorCache(per_kind=1)
    assert cache.get(("a", 1), lambda: "x") == "x" and cache.get(("a", 1), lambda: "y") == "x"
    cache.get(("b", 1), lambda: "z")
    cache.get(("a", 2), lambda: "w")
    assert cache.keys() == [("b", 1), ("a", 2)] and len(cache) == 2
    with pytest.raises(ValueError, match="per_kind"):
        PriorCache(per_kind=0)
    ck1, ck2 = _checkpoint(tmp_path / "a"), _checkpoint(tmp_path / "b")
    rec = Reconstructor("ddnm", device="cpu", checkpoint=ck1, steps=2)
    (key,) = rec.priors.keys()  # loaded at construction, into the object's own cache
    model = rec.priors.get(key, lambda: None)
    load_prior(ck2, torch.device("cpu"), "ddnm")  # the shared default cache now holds another model
    assert key not in DEFAULT_PRIORS and rec.priors.get(key, lambda: None) is model
    k, mask, smaps = _data()
    rec(k, mask, smaps)
    assert rec.priors.keys() == [key]


def test_ct_methods_are_refused_by_the_mri_entry_point():
    k, mask, _ = _data()
    assert get_method("fbp").modality == "ct"
    with pytest.raises(ValueError, match="CT method.*reconstruct_file"):
        reconstruct(k, mask, "fbp")
