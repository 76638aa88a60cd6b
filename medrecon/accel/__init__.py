"""Accelerators that wrap a trained prior without retraining it: DeepCache feature reuse and the
timestep tuner."""
from .deepcache import DeepCacheUNet, quadratic_full_steps

__all__ = ["DeepCacheUNet", "quadratic_full_steps"]
