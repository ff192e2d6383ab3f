"""offload-planner: declarative, checked model CPU offload plans for diffusers pipelines.

The core (`load_plan`, `check`, `Plan`, `Problem`, `PlanError`) imports neither torch nor diffusers; `apply`
and `AppliedPlan` load the executor, which does, on first use.
"""

from planner.plan import Plan, PlanError, Problem, check, load_plan

__all__ = ["AppliedPlan", "Plan", "PlanError", "Problem", "apply", "check", "load_plan"]
__version__ = "0.1.0"


def __getattr__(name):
    if name in ("apply", "AppliedPlan"):
        from planner.executor import applied

        return getattr(applied, name)
    raise AttributeError(f"module 'planner' has no attribute {name!r}")
