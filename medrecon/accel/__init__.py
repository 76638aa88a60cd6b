"""Accelerators that wrap a trained prior without retraining it: DeepCache feature reuse and the
timestep tuner."""
from .deepcache import DeepCacheUNet, quadratic_full_steps
from .timestep_tuner import TimestepShifts, fit_timestep_shifts

__all__ = ["DeepCacheUNet", "quadratic_full_steps", "TimestepShifts", "fit_timestep_shifts"]
