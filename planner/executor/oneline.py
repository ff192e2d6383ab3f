"""`planner.apply(pipe)` without a plan: the plan `planner init` writes for the pipeline's class, or with
`budget=` the budget policy at the granularity `planner.budget.decide` picks for the loaded modules' sizes.

The plan is built as YAML text (`planner.scaffold`, the budget keys added) and read by the normal loader
(`planner.validate.load_text`), so it is the same `Plan` the YAML file would give, its problems located in that
text (`<planner.apply>`), and `plan.to_yaml()` prints it to save, check in and validate in CI.
"""

from __future__ import annotations

from dataclasses import replace

from planner import scaffold
from planner.budget import decide
from planner.executor.modules import model_components, module_bytes
from planner.plan import Plan, PlanError
from planner.validate import load_text

PSEUDO_PATH = "<planner.apply>"


def plan_for(pipe, budget: str | int | None = None, steps: int | None = None, device: str = "cuda") -> Plan:
    """The plan for `pipe`'s class (`planner init --pipeline-class CLS`): diffusers' chain; with `budget` the
    budget policy, whole components when they fit (`decide.granularity_for`), else block by block; `steps` the
    denoising steps a block schedule is planned for. Raises `PlanError` for a class no plan describes, or a budget
    or steps value the plan rules refuse (located in the generated text)."""
    class_name = type(pipe).__name__
    options = scaffold.Options(device=device, budget=budget, steps=steps, schema=scaffold.schema_path(None),
                               granularity="component" if budget is not None else None)
    try:
        text = scaffold.plan_text(class_name, options, where=f"{PSEUDO_PATH} (type(pipe) is {class_name})")
    except scaffold.NoPlan as exc:
        raise PlanError([exc.problem]) from None
    plan = load_text(text, PSEUDO_PATH)
    if budget is None:
        return plan
    sizes = {name: module_bytes(module) for name, module in model_components(pipe).items()}
    granularity = decide.granularity_for(plan, sizes, plan.budget)
    if granularity == plan.granularity:
        return plan
    return load_text(scaffold.plan_text(class_name, replace(options, granularity=granularity)), PSEUDO_PATH)
