"""offload-planner: declarative, checked model CPU offload plans for diffusers pipelines.

The core (`load_plan`, `check`, `Plan`, `Problem`, `PlanError`) imports neither torch nor diffusers; `apply`
and `AppliedPlan` load the executor, which does, on first use. Everything is imported on first use: the values
(`planner.plan`), the driver (`planner.validate`: the loader, yaml, the rules), the executor.
"""

__all__ = ["AppliedPlan", "Plan", "PlanError", "Problem", "apply", "check", "load_plan", "load_text",
           "offload_strategy"]
__version__ = "0.1.0"


def __getattr__(name):
    # Nothing is imported with the package itself: the console script's guard (planner.console) then covers every
    # module of the command, so Ctrl-C at any moment is one line.
    if name in ("Plan", "PlanError", "Problem"):
        from planner import plan

        return getattr(plan, name)
    if name in ("check", "load_plan", "load_text"):
        from planner import validate

        return getattr(validate, name)
    if name in ("apply", "AppliedPlan"):
        from planner.executor import applied

        return getattr(applied, name)
    if name == "offload_strategy":
        from planner.executor import modular

        return modular.offload_strategy
    raise AttributeError(f"module 'planner' has no attribute {name!r}")
