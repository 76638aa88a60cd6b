"""Per-network-evaluation progress for any diffusion method, without touching the samplers.

The posterior samplers (`medrecon.posterior`) run their own loops and take no callback, but every
sampling step of every one of them calls the prior network.  `count_network_calls` counts those
calls with a forward hook (torch's public ``register_module_forward_hook``) restricted to the
denoising networks -- MONAI ``DiffusionModelUNet`` and `medrecon.accel.DeepCacheUNet` -- and
reports each to ``on_call``; the hook exists only inside the ``with`` block.  One call is one NFE
of the batch being reconstructed (a batch of slices counts once).
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch

__all__ = ["count_network_calls", "network_classes", "step_total"]


def network_classes() -> tuple[type, ...]:
    """The module classes whose forward is one network evaluation."""
    from monai.networks.nets import DiffusionModelUNet

    from medrecon.accel.deepcache import DeepCacheUNet

    return (DiffusionModelUNet, DeepCacheUNet)


@contextlib.contextmanager
def count_network_calls(on_call: Callable[[], None]) -> Iterator[None]:
    """Call ``on_call()`` after every forward of a denoising network inside the block."""
    classes = network_classes()

    def hook(module, args, output):
        if isinstance(module, classes):
            on_call()

    handle = torch.nn.modules.module.register_module_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def step_total(options: dict) -> int | None:
    """Expected network calls of one sampling run from a method's options (``steps`` times
    ``1 + n_corrector`` for predictor-corrector samplers); None when the options do not say.
    An estimate for the progress bar only: the bar is corrected by the count of the first run."""
    steps = options.get("steps")
    if not isinstance(steps, int) or steps < 1:
        return None
    corr = options.get("n_corrector", 0)
    return steps * (1 + (corr if isinstance(corr, int) and corr > 0 else 0))
