"""The ``cache`` option (DeepCache interval) of the VP posterior methods: interval 1 is the plain
sampler, interval N makes only every N-th network call a full U-Net pass, and the image stays close to
the plain one on the shipped prior (a cached step reuses the deep features of the last full step)."""
import pytest
import torch

from medrecon.datasets.demo import make_demo_file
from medrecon.datasets.fastmri import FastMRIFile
from medrecon.physics.masks import make_mask
from medrecon.reconstruct import reconstruct


@pytest.fixture(scope="module")
def slice_data(tmp_path_factory):
    path = make_demo_file(tmp_path_factory.mktemp("cache") / "demo.h5")
    with FastMRIFile(path) as f:
        k = f.read_slice(1)["kspace"]
    mask = make_mask("equispaced_fraction", k.shape[-2:], acceleration=4, center_fraction=0.08, seed=0)
    return k, mask


def _count_full_passes(monkeypatch):
    """Count full (uncached) U-Net passes: MONAI's middle block runs only on those."""
    from medrecon.methods.priors import load_prior

    model, _ = load_prior("brain128-vp", torch.device("cpu"), "test")
    calls = []
    handle = model.net.middle_block.register_forward_hook(lambda *a: calls.append(1))
    return calls, handle


@pytest.mark.parametrize("method", ["ddnm", "dds"])
def test_cache_interval(slice_data, method, monkeypatch):
    torch.set_num_threads(min(2, torch.get_num_threads()))
    k, mask = slice_data
    calls, handle = _count_full_passes(monkeypatch)
    try:
        plain = reconstruct(k, mask, method, steps=10, seed=0)
        full_plain = len(calls)
        one = reconstruct(k, mask, method, steps=10, seed=0, cache=1)
        calls.clear()
        two = reconstruct(k, mask, method, steps=10, seed=0, cache=2)
        full_two = len(calls)
        calls.clear()
        three = reconstruct(k, mask, method, steps=10, seed=0, cache=3)
        full_three = len(calls)
    finally:
        handle.remove()
    assert torch.equal(one.image, plain.image)
    assert plain.nfe == two.nfe == three.nfe == 10
    assert (full_plain, full_two, full_three) == (10, 5, 4)
    rel2, rel3 = (float((c.image - plain.image).norm() / plain.image.norm()) for c in (two, three))
    # measured on this slice: ddnm 0.049 / 0.16, dds 0.095 / 0.24 (the error grows with the interval)
    assert 0 < rel2 < 0.15 and rel2 < rel3, (rel2, rel3)
    with pytest.raises(ValueError, match="cache"):
        reconstruct(k, mask, method, steps=2, seed=0, cache=0)
