"""Every private (or internal) diffusers and accelerate attribute the executor reads or writes, in one place, with a
self-check that fails loudly, naming the attribute, when an installed version moved it.

The executor works with diffusers' and accelerate's own machinery rather than beside it: diffusers' chain is
installed by its own `enable_model_cpu_offload` under shadows of the attributes it reads; the budget policy's
hooks sit where diffusers looks for an offload hook (`module._hf_hook`, whose `execution_device` tells a pipeline
where to put its inputs, and whose `pre_forward` diffusers' `apply_forward_hook` calls before `vae.decode`). Each
of those facts is an attribute someone could rename in a release; `self_check()` tests them all, cheaply, once
per process (the first `apply` runs it), and `tests/test_compat.py` runs it in CI.
"""

from __future__ import annotations

import functools
import inspect
import re
from dataclasses import dataclass

import accelerate.hooks
import torch
from accelerate.hooks import CpuOffload, ModelHook, UserCpuOffloadHook, add_hook_to_module, remove_hook_from_module

from planner.executor.errors import CompatError

# -- the pipeline's attributes -----------------------------------------------------------------------------------
SEQUENCE = "model_cpu_offload_seq"  # the chain diffusers' enable_model_cpu_offload hooks
EXCLUDE = "_exclude_from_cpu_offload"  # components it puts on the device once (and `_execution_device` skips)
ENABLE = "enable_model_cpu_offload"  # called again by maybe_free_model_hooks and after a LoRA load
FREE = "maybe_free_model_hooks"  # called by every pipeline at the end of its __call__
ALL_HOOKS = "_all_hooks"  # the chain's UserCpuOffloadHook list, in install order
OFFLOAD_DEVICE = "_offload_device"
OFFLOAD_GPU_ID = "_offload_gpu_id"
# Instance attributes a plan shadows while it is applied, and diffusers' offload state it overwrites.
SHADOWED = (SEQUENCE, EXCLUDE, ENABLE, FREE)
OFFLOAD_STATE = (ALL_HOOKS, OFFLOAD_DEVICE, OFFLOAD_GPU_ID)

# -- a module's attributes ---------------------------------------------------------------------------------------
HF_HOOK = "_hf_hook"  # accelerate's hook on a module
OLD_FORWARD = "_old_forward"
DIFFUSERS_HOOK = "_diffusers_hook"  # diffusers' HookRegistry (group offloading, caches)
# What accelerate's add_hook_to_module / remove_hook_from_module put on (or leave in) a module's `__dict__`:
# removing a hook leaves `forward` behind as an instance attribute, and dispatch_model's wrappers are popped.
HOOK_KEYS = ("forward", HF_HOOK, OLD_FORWARD, *getattr(accelerate.hooks, "_accelerate_added_attributes", ()))


# -- reading and writing them ------------------------------------------------------------------------------------
def pipe_value(pipe, name: str, default=None):
    """An attribute from the pipeline's own `__dict__` (an instance attribute, never the class's)."""
    return pipe.__dict__.get(name, default)


def all_hooks(pipe) -> list:
    """diffusers' `_all_hooks` on the instance: the chain's UserCpuOffloadHook list ([] when none)."""
    return pipe.__dict__.get(ALL_HOOKS, [])


def set_offload_gpu_id(pipe, index: int) -> None:
    """diffusers computes `gpu_id or device.index or pipe._offload_gpu_id`: an index of 0 would fall through."""
    setattr(pipe, OFFLOAD_GPU_ID, index)


def hook_of(module):
    """The accelerate hook on `module` itself (not inherited, not a submodule's), or None."""
    return module.__dict__.get(HF_HOOK)


def hooked_model(user_hook) -> torch.nn.Module:
    return user_hook.model


def hooked_hook(user_hook):
    return user_hook.hook


def previous_model(hook) -> torch.nn.Module | None:
    """The model a chained `CpuOffload` offloads before its own loads (None for the first and own hooks)."""
    prev = hook.prev_module_hook
    return prev.model if prev is not None else None


def has_group_offloading(module) -> bool:
    """diffusers' group offloading registered on `module` itself (its HookRegistry holds a `group_offloading`)."""
    registry = module.__dict__.get(DIFFUSERS_HOOK)
    return registry is not None and registry.get_hook("group_offloading") is not None


def pipe_group_offloaded(pipe) -> bool:
    """Group offloading anywhere in the pipeline's components (diffusers' own deep check; absent before 0.33)."""
    check = getattr(pipe, "_maybe_raise_error_if_group_offload_active", None)
    return bool(check and check(raise_error=False))


def pipe_device_mapped(pipe) -> bool:
    """The pipeline was loaded with a device_map that spreads it (diffusers' own test; `hf_device_map` before)."""
    mapped = getattr(pipe, "_is_pipeline_device_mapped", None)
    return mapped() if mapped else isinstance(getattr(pipe, "hf_device_map", None), dict)


def device_map_of(module) -> dict:
    return getattr(module, "hf_device_map", None) or {}


def loads_connected_pipes(cls) -> bool:
    return bool(getattr(cls, "_load_connected_pipes", False))


def version_of(tensor: torch.Tensor) -> int:
    """torch's in-place version counter of `tensor` (`_version`): it moves with every in-place operation."""
    return tensor._version


# -- what the self-check tests -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Fact:
    """One thing the executor relies on: `attribute` (as a user would look for it), where it lives, and whether a
    version without it is still fine (`optional`: the executor falls back, as for diffusers before 0.33)."""

    attribute: str
    owner: str
    optional: bool = False


def self_check() -> list[str]:
    """Every fact the executor relies on that the installed diffusers and accelerate no longer hold, one line
    each, naming the attribute and the versions; [] when all hold. Cheap (a probe module of one Linear layer, the
    sources of four diffusers methods), and cached: the first `apply` of a process pays for it."""
    return list(_self_check())


def require() -> None:
    """Raise `CompatError` listing `self_check()`'s findings, if any."""
    found = self_check()
    if found:
        raise CompatError("offload-planner's executor cannot run with the installed libraries:\n  "
                          + "\n  ".join(found) + "\nplease report it, with `pip list` (planner/executor/compat.py "
                          "reads these attributes)")


@functools.lru_cache(maxsize=1)
def _self_check() -> tuple[str, ...]:
    import diffusers

    versions = f"(diffusers {diffusers.__version__}, accelerate {accelerate.__version__})"
    problems = []
    for check in (_accelerate_hooks, _accelerate_chain, _diffusers_pipeline, _diffusers_sources):
        for fact, detail in check():
            problems.append(f"{fact.owner}.{fact.attribute}: {detail} {versions}")
    return tuple(problems)


def _accelerate_hooks():
    """add_hook_to_module puts `_hf_hook` and `_old_forward` on the module and calls the hook around forward;
    remove_hook_from_module takes them off again."""
    owner = "accelerate.hooks.add_hook_to_module"
    probe = torch.nn.Linear(1, 1)
    fired = []

    class Probe(ModelHook):
        def pre_forward(self, module, *args, **kwargs):
            fired.append(module)
            return args, kwargs

    hook = Probe()
    add_hook_to_module(probe, hook)
    if hook_of(probe) is not hook:
        yield Fact(HF_HOOK, owner), "no longer puts the hook in the module's __dict__"
    if OLD_FORWARD not in probe.__dict__:
        yield Fact(OLD_FORWARD, owner), "no longer keeps the original forward there"
    probe(torch.zeros(1, 1))
    if fired != [probe]:
        yield Fact("pre_forward", owner), "no longer calls the hook's pre_forward(module, ...) before forward"
    remove_hook_from_module(probe)
    if HF_HOOK in probe.__dict__ or OLD_FORWARD in probe.__dict__:
        yield Fact(HF_HOOK, "accelerate.hooks.remove_hook_from_module"), "leaves the hook on the module"


def _accelerate_chain():
    """diffusers' chain is made of CpuOffload hooks grouped with their model in UserCpuOffloadHook objects."""
    owner = "accelerate.hooks.CpuOffload"
    probe = torch.nn.Linear(1, 1)
    first = UserCpuOffloadHook(probe, CpuOffload(execution_device="cpu"))
    second = CpuOffload(execution_device="cpu", prev_module_hook=first)
    for fact, value in ((Fact("prev_module_hook", owner), getattr(second, "prev_module_hook", None)),
                        (Fact("execution_device", owner), getattr(second, "execution_device", None))):
        if value is None:
            yield fact, "is gone"
    if getattr(first, "model", None) is not probe or getattr(first, "hook", None) is None:
        yield Fact("model, hook", "accelerate.hooks.UserCpuOffloadHook"), "no longer holds its model and hook"


_PIPELINE_ATTRIBUTES = (
    Fact(SEQUENCE, "DiffusionPipeline"), Fact(EXCLUDE, "DiffusionPipeline"), Fact(ENABLE, "DiffusionPipeline"),
    Fact(FREE, "DiffusionPipeline"), Fact("remove_all_hooks", "DiffusionPipeline"),
    Fact("components", "DiffusionPipeline"), Fact("_execution_device", "DiffusionPipeline"),
    Fact("_load_connected_pipes", "DiffusionPipeline"),
    Fact("_maybe_raise_error_if_group_offload_active", "DiffusionPipeline", optional=True),
    Fact("_is_pipeline_device_mapped", "DiffusionPipeline", optional=True),
)


def _diffusers_pipeline():
    from diffusers import DiffusionPipeline

    for fact in _PIPELINE_ATTRIBUTES:
        if not fact.optional and not hasattr(DiffusionPipeline, fact.attribute):
            yield fact, "is gone"


# The attributes each diffusers function must still name: the executor shadows or reads them around it.
_SOURCES = (
    ("diffusers", "DiffusionPipeline", ENABLE, (SEQUENCE, EXCLUDE, ALL_HOOKS, OFFLOAD_GPU_ID, OFFLOAD_DEVICE)),
    ("diffusers", "DiffusionPipeline", FREE, (ALL_HOOKS, ENABLE)),
    ("diffusers", "DiffusionPipeline", "_execution_device", (HF_HOOK, "execution_device", EXCLUDE)),
    ("diffusers.utils.accelerate_utils", None, "apply_forward_hook", (HF_HOOK, "pre_forward")),
)


def _diffusers_sources():
    """Each diffusers function above still reads the attributes the executor relies on (read from its source;
    an install without sources is not checked)."""
    import importlib

    for module_name, cls, name, attributes in _SOURCES:
        holder = importlib.import_module(module_name)
        where = module_name if cls is None else f"{module_name}.{cls}"
        holder = getattr(holder, cls) if cls else holder
        member = inspect.getattr_static(holder, name, None)
        target = getattr(member, "fget", member)  # a property: its getter
        if target is None:
            yield Fact(name, where), "is gone"
            continue
        try:
            source = inspect.getsource(target)
        except (OSError, TypeError):  # installed without sources
            continue
        for attribute in attributes:
            if not re.search(rf"\b{re.escape(attribute)}\b", source):
                yield Fact(attribute, f"{where}.{name}"), "is no longer read there"
