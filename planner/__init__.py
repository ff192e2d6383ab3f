"""offload-planner: declarative, checked model CPU offload plans for diffusers pipelines.

The core (`load_plan`, `check`, `Plan`, `Problem`, `PlanError`) imports neither torch nor diffusers; `apply`
and `AppliedPlan` load the executor, which does, on first use. The values are imported here; the driver
(`planner.validate`: the loader, yaml, the rules) on first use of `load_plan` or `check`.
"""

from planner.plan import Plan, PlanError, Problem

__all__ = ["AppliedPlan", "Plan", "PlanError", "Problem", "apply", "check", "load_plan"]
__version__ = "0.1.0"


def __getattr__(name):
    if name in ("check", "load_plan"):
        from planner import validate

        return getattr(validate, name)
    if name in ("apply", "AppliedPlan"):
        from planner.executor import applied

        return getattr(applied, name)
    raise AttributeError(f"module 'planner' has no attribute {name!r}")
