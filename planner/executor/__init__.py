"""The only part of offload-planner that imports torch, accelerate and diffusers."""

from planner.executor.applied import AppliedPlan, apply

__all__ = ["AppliedPlan", "apply"]
