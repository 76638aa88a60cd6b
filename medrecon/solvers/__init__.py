"""Generic diffusion solvers: pure functions over an explicit timestep tensor (k-diffusion style).

Every solver has the shared signature of ``medrecon.solvers.base`` and takes a data-consistency hook
``dc(x0_hat, t) -> x0_hat`` and a ``callback``.  ``medrecon.sample.sample`` selects the timesteps
exactly as the diffusers scheduler of the same name does.
"""
from .base import predict_x0
from .ddim import ddim
from .ddpm import ddpm
from .dpm_solver import dpm_solver_pp
from .euler import euler, heun
from .paradigms import paradigms
from .pndm import pndm, pndm_timesteps
from .unipc import unipc

__all__ = ["predict_x0", "ddim", "ddpm", "dpm_solver_pp", "euler", "heun", "paradigms", "pndm", "pndm_timesteps", "unipc"]
