"""Shared test model of the solver and bench tests (not collected: no ``test_`` prefix)."""
import torch

from medrecon.models.networks import build_unet
from medrecon.models.schedules import VPSchedule, make_betas
from medrecon.models.wrapper import DiffusionModel


def random_unet_model(n_train: int = 100) -> DiffusionModel:
    """A tiny MONAI U-Net with random (non-zero) output weights on a short VP schedule."""
    net = build_unet("tiny", seed=0).eval()
    with torch.no_grad():
        for p in net.out.parameters():
            p.normal_(0, 0.05, generator=torch.Generator().manual_seed(1))
    return DiffusionModel(net, VPSchedule(make_betas("linear", n_train, 1e-3, 0.2)), "eps")
