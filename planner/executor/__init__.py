"""The only part of offload-planner that imports torch, accelerate and diffusers.

`apply` and `AppliedPlan` load torch on first use, so that light modules here (`tiny.KINDS`) can be named by the
CLI's parser without it.
"""

__all__ = ["AppliedPlan", "apply"]


def __getattr__(name):
    if name in __all__:
        from planner.executor import applied

        return getattr(applied, name)
    raise AttributeError(f"module 'planner.executor' has no attribute {name!r}")
