"""``reconstruct_cold(decoder_residual=True)``: D(z0_hat) + (x - D(E(x)))."""
import torch

import medrecon.ct as C
import medrecon.ct.cold_diffusion as cd


def _nets():
    ae = C.build_autoencoder("tiny", seed=0)
    cold = C.build_cold_model("tiny", ae.latent_channels, T=3, seed=0)
    return C.freeze(ae), cold


def test_identity_sampler_returns_the_input_exactly(monkeypatch):
    """If sampling leaves z_T unchanged, the residual form gives back the LDCT itself (the AE's
    error cancels exactly) and the plain form gives D(E(x))."""
    ae, cold = _nets()
    x = torch.rand(2, 1, 30, 34, generator=torch.Generator().manual_seed(0))  # padded and cropped back
    monkeypatch.setattr(cd, "cold_sample", lambda model, z, *a: (z, 3))
    plain, nfe = cd.reconstruct_cold(cold, ae, x)
    res, _ = cd.reconstruct_cold(cold, ae, x, decoder_residual=True)
    torch.testing.assert_close(res, x, atol=1e-5, rtol=0)
    assert float((plain - x).abs().max()) > 1e-2 and nfe == 3  # the tiny AE is far from the identity


def test_residual_is_added_to_the_sampled_decode():
    ae, cold = _nets()
    x = torch.rand(1, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    plain, _ = cd.reconstruct_cold(cold, ae, x)
    res, _ = cd.reconstruct_cold(cold, ae, x, decoder_residual=True)
    with torch.no_grad():
        want = plain + (x - ae.decode(ae.encode(x)))
    torch.testing.assert_close(res, want, atol=1e-5, rtol=0)


def test_method_option_reaches_the_sampler():
    from medrecon.registry import get_method, resolve_options

    opts = resolve_options(get_method("latent-cold-diffusion"), {"decoder_residual": "true"})
    assert opts.decoder_residual is True
