"""How big a network from a checkpoint config would be -- by arithmetic, without building it.

A checkpoint's ``config.json`` decides what gets allocated (issue 15: ``channels: [4096]*4`` asked
for 23 GB, ``num_res_blocks: 10**6`` ran for a minute).  ``check_size`` refuses a config whose
network is over ``MAX_PARAMETERS`` or over ``MAX_ACTIVATION_BYTES`` *before* anything is built.

The counts mirror MONAI 1.6.1's modules layer by layer (``monai/networks/nets/diffusion_model_unet.py``:
``DiffusionModelUNet.__init__``, ``DiffusionUNetResnetBlock``, ``DownBlock``/``UpBlock`` and their
``Attn*`` variants; ``monai/networks/nets/autoencoderkl.py``: ``Encoder``, ``Decoder``, ``AEKLResBlock``;
``monai/networks/blocks/spatialattention.py``) and medrecon's DDGAN (``models/ddgan.py``): the
parameter count is exact (tests compare it with the built networks), so the loaders compare it
with the element count in the safetensors header.

Activations: floats of the block outputs per input pixel (batch 1), times ``REFERENCE_PIXELS``
(one 256 x 256 image) x 4 bytes -- about what a training step keeps for the backward pass and an
upper bound of inference.  Self-attention's N^2 score matrix is not counted: it depends on the
image size chosen at sampling time, not on the checkpoint.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["NetworkSize", "MAX_PARAMETERS", "MAX_ACTIVATION_BYTES", "REFERENCE_PIXELS", "unet_size",
           "autoencoder_size", "generator_size", "discriminator_size", "check_size"]

MAX_PARAMETERS = 2e8  # 800 MB of float32 weights; the shipped priors have 1e6
REFERENCE_PIXELS = 256 * 256
MAX_ACTIVATION_BYTES = 8e9  # for one REFERENCE_PIXELS image, float32


@dataclass
class NetworkSize:
    """``params``: parameter count (exact); ``norm_channels``: channels of all GroupNorm layers (the
    DDGAN generator gives each an AdaGN projection); ``activations``: floats per input pixel."""

    params: int = 0
    norm_channels: int = 0
    activations: float = 0.0

    @property
    def activation_bytes(self) -> float:
        return 4.0 * self.activations * REFERENCE_PIXELS


class _Tally(NetworkSize):
    def __init__(self, spatial_dims: int) -> None:
        super().__init__()
        self.k = 3 ** spatial_dims  # elements of a 3x3(x3) kernel
        self.d = spatial_dims

    def scale(self, level: int) -> float:
        return 1.0 / 2 ** (self.d * level)

    def times(self, n: int, block: Any) -> None:
        """Add ``n`` copies of what ``block()`` adds: O(1) however large ``n`` (``num_res_blocks: 10**6``)."""
        if n <= 0:
            return
        before = (self.params, self.norm_channels, self.activations)
        block()
        self.params += (n - 1) * (self.params - before[0])
        self.norm_channels += (n - 1) * (self.norm_channels - before[1])
        self.activations += (n - 1) * (self.activations - before[2])

    def conv(self, cin: int, cout: int, level: int, k: int | None = None) -> None:
        self.params += cin * cout * (self.k if k is None else k) + cout
        self.activations += cout * self.scale(level)

    def norm(self, c: int, level: int) -> None:
        self.params += 2 * c
        self.norm_channels += c
        self.activations += c * self.scale(level)

    def attention(self, c: int, level: int) -> None:
        """``SpatialAttentionBlock``: GroupNorm, q/k/v/out linear layers with bias."""
        self.norm(c, level)
        self.params += 4 * (c * c + c)
        self.activations += 4 * c * self.scale(level)

    def unet_resnet(self, cin: int, cout: int, temb: int, level: int) -> None:
        """``DiffusionUNetResnetBlock``: norm1, conv1, time projection, norm2, conv2, 1x1 skip."""
        self.norm(cin, level)
        self.conv(cin, cout, level)
        self.params += temb * cout + cout
        self.norm(cout, level)
        self.conv(cout, cout, level)
        if cin != cout:
            self.conv(cin, cout, level, k=1)

    def ae_resnet(self, cin: int, cout: int, level: int) -> None:
        """``AEKLResBlock``: as above without the time projection."""
        self.norm(cin, level)
        self.conv(cin, cout, level)
        self.norm(cout, level)
        self.conv(cout, cout, level)
        if cin != cout:
            self.conv(cin, cout, level, k=1)


def _get(cfg: Any, name: str) -> Any:
    return cfg[name] if isinstance(cfg, dict) else getattr(cfg, name)


def _per_level(val: Any, n: int) -> list[int]:
    return [int(val)] * n if isinstance(val, int) else [int(v) for v in val]


def _levels(cfg: Any) -> tuple[list[int], int, list[int], list[bool]]:
    """(channels, number of levels, res blocks per level, attention per level) of a config."""
    ch = [int(c) for c in _get(cfg, "channels")]
    n = len(ch)
    nrb = _per_level(_get(cfg, "num_res_blocks"), n)
    return ch, n, nrb, [bool(a) for a in _get(cfg, "attention_levels")]


def unet_size(cfg: Any) -> NetworkSize:
    """Size of ``DiffusionModelUNet`` for a (schema-checked) ``UNetConfig`` or its dict."""
    ch, n, nrb, attn = _levels(cfg)
    updown = bool(_get(cfg, "resblock_updown"))
    t = _Tally(int(_get(cfg, "spatial_dims")))
    temb = 4 * ch[0]
    t.conv(int(_get(cfg, "in_channels")), ch[0], 0)
    t.params += ch[0] * temb + temb + temb * temb + temb  # time_embed: Linear, SiLU, Linear
    out = ch[0]
    for i in range(n):  # down blocks
        cin, out = out, ch[i]

        def down(c: int, out: int = out, i: int = i) -> None:
            t.unet_resnet(c, out, temb, i)
            if attn[i]:
                t.attention(out, i)
        down(cin)
        t.times(nrb[i] - 1, lambda: down(out))
        if i < n - 1:
            if updown:
                t.unet_resnet(out, out, temb, i + 1)
            else:
                t.conv(out, out, i + 1)
    t.unet_resnet(ch[-1], ch[-1], temb, n - 1)  # middle: resnet, attention, resnet
    t.attention(ch[-1], n - 1)
    t.unet_resnet(ch[-1], ch[-1], temb, n - 1)
    rev, rev_nrb, rev_attn = ch[::-1], nrb[::-1], attn[::-1]
    out = rev[0]
    for i in range(n):  # up blocks
        prev, out, skip_in = out, rev[i], rev[min(i + 1, n - 1)]
        level = n - 1 - i
        m = rev_nrb[i] + 1  # resnet j takes (prev if j == 0 else out) + (skip_in if j == m - 1 else out)

        def up(c: int, out: int = out, level: int = level, i: int = i) -> None:
            t.unet_resnet(c, out, temb, level)
            if rev_attn[i]:
                t.attention(out, level)
        up(prev + out)
        t.times(m - 2, lambda: up(2 * out))
        up(out + skip_in)
        if i < n - 1:
            if updown:
                t.unet_resnet(out, out, temb, level - 1)
            else:
                t.conv(out, out, level - 1)
    t.norm(ch[0], 0)
    t.conv(ch[0], int(_get(cfg, "out_channels")), 0)
    return NetworkSize(t.params, t.norm_channels, t.activations)


def autoencoder_size(cfg: Any) -> NetworkSize:
    """Size of MONAI's ``AutoencoderKL`` (encoder, quant convs, decoder) for a checked ``AEConfig``."""
    ch, n, nrb, attn = _levels(cfg)
    lat = int(_get(cfg, "latent_channels"))
    t = _Tally(int(_get(cfg, "spatial_dims")))

    def nonlocal_block(c: int, level: int) -> None:
        t.ae_resnet(c, c, level)
        t.attention(c, level)
        t.ae_resnet(c, c, level)

    t.conv(int(_get(cfg, "in_channels")), ch[0], 0)  # encoder
    out = ch[0]
    for i in range(n):
        cin, out = out, ch[i]

        def enc(c: int, out: int = out, i: int = i) -> None:
            t.ae_resnet(c, out, i)
            if attn[i]:
                t.attention(out, i)
        enc(cin)
        t.times(nrb[i] - 1, lambda: enc(out))
        if i < n - 1:
            t.conv(out, out, i + 1)  # AEKLDownsample
    if _get(cfg, "with_encoder_nonlocal_attn"):
        nonlocal_block(ch[-1], n - 1)
    t.norm(ch[-1], n - 1)
    t.conv(ch[-1], lat, n - 1)
    for _ in range(3):  # quant_conv_mu, quant_conv_log_sigma, post_quant_conv (1x1)
        t.conv(lat, lat, n - 1, k=1)
    rev, rev_nrb, rev_attn = ch[::-1], nrb[::-1], attn[::-1]  # decoder
    t.conv(lat, rev[0], n - 1)
    if _get(cfg, "with_decoder_nonlocal_attn"):
        nonlocal_block(rev[0], n - 1)
    cur = rev[0]
    for i in range(n):
        level = n - 1 - i

        def dec(c: int, out: int = rev[i], level: int = level, i: int = i) -> None:
            t.ae_resnet(c, out, level)
            if rev_attn[i]:
                t.attention(out, level)
        dec(cur)
        t.times(rev_nrb[i] - 1, lambda: dec(rev[i]))
        cur = rev[i]
        if i < n - 1:
            t.conv(cur, cur, level - 1)  # Upsample's post_conv
    t.norm(cur, 0)
    t.conv(cur, int(_get(cfg, "out_channels")), 0)
    return NetworkSize(t.params, t.norm_channels, t.activations)


def generator_size(cfg: Any) -> NetworkSize:
    """DDGAN ``Generator``: the U-Net, one AdaGN projection Linear(w_dim, 2C) per GroupNorm(C), and
    the z -> w mapping MLP.  ``cfg`` is a checked ``DDGANConfig`` (its ``unet`` a ``UNetConfig``)."""
    u = unet_size(cfg.unet)
    w, z, layers = int(cfg.w_dim), int(cfg.z_dim), int(cfg.mapping_layers)
    ada = w * 2 * u.norm_channels + 2 * u.norm_channels
    mapping = z * w + w + (layers - 1) * (w * w + w)
    return NetworkSize(u.params + ada + mapping, u.norm_channels, u.activations)


def discriminator_size(cfg: Any) -> NetworkSize:
    """DDGAN ``Discriminator``: time MLP, input conv, one ``_DBlock`` per ``d_channels`` entry, output Linear."""
    d = [int(c) for c in cfg.d_channels]
    t = _Tally(2)
    t_dim = 4 * d[0]
    t.params += 2 * (t_dim * t_dim + t_dim)
    t.conv(2 * int(cfg.unet.in_channels), d[0], 0)
    chans = [d[0]] + d
    for i in range(len(d)):
        cin, cout = chans[i], chans[i + 1]
        t.conv(cin, cout, i)
        t.params += t_dim * cout + cout
        t.conv(cout, cout, i)
        t.params += cin * cout  # 1x1 skip, no bias
        t.activations += 2 * cout * t.scale(i)
    t.params += chans[-1] + 1
    return NetworkSize(t.params, 0, t.activations)


def check_size(size: NetworkSize, what: str, error: type[Exception] = ValueError) -> None:
    """Raise ``error`` naming ``what`` (e.g. the config file) when ``size`` is over a limit."""
    if size.params > MAX_PARAMETERS:
        raise error(f"{what}: the network would have {float(size.params):.2g} parameters (limit "
                    f"{MAX_PARAMETERS:.0e}; medrecon.models.network_size.MAX_PARAMETERS)")
    if size.activation_bytes > MAX_ACTIVATION_BYTES:
        raise error(f"{what}: the network would need {size.activation_bytes / 1e9:.3g} GB of activations for "
                    f"one 256x256 image (limit {MAX_ACTIVATION_BYTES / 1e9:.3g} GB; "
                    f"medrecon.models.network_size.MAX_ACTIVATION_BYTES)")
