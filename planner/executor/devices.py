"""The plan's target device, and whether this machine has it."""

from __future__ import annotations

from typing import Callable

import torch

from planner.plan import Plan, Problem
from planner.rules import PLN303


def target(plan: Plan) -> torch.device:
    """`device` with its index: `gpu_id` when given (0 included), else the index in `device`, else 0."""
    kind, _, index = plan.device.partition(":")
    return torch.device(kind, plan.gpu_id if plan.gpu_id is not None else int(index or 0))


def count(kind: str) -> int:
    """How many devices of type `kind` torch can use here (0 when the backend is missing or unavailable)."""
    backend = getattr(torch, kind, None)
    try:
        if backend is None or not backend.is_available():
            return 0
        return int(backend.device_count()) if hasattr(backend, "device_count") else 1
    except (AttributeError, RuntimeError):
        return 0


# How each caller asks for a dry run, in the fix of a PLN303: the Python API's spelling is the default.
API_DRY_RUN = "pass dry_run=True to trace the plan on the CPU"


def problems(plan: Plan, device: torch.device, at: Callable[..., Problem] | None = None,
             dry_run_hint: str = API_DRY_RUN) -> list[Problem]:
    """PLN303 when `device` is not on this machine (no such backend, or an index beyond the devices present).

    `at(key, rule, message, fix)` builds each problem (default `plan.problem`, located at the plan's `device` or
    `gpu_id`; the CLI passes one that points at its `--device` / `--gpu-id` flags), and `dry_run_hint` says how
    the caller asks for a dry run, so each interface speaks its own spelling.
    """
    at = at or plan.problem
    present = count(device.type)
    if present == 0:
        return [at("device", PLN303, f"no {device.type} device found", dry_run_hint)]
    if device.index >= present:
        key = "gpu_id" if plan.gpu_id is not None else "device"
        return [at(key, PLN303, f"{device} is beyond the {present} {device.type} device"
                   f"{'s' * (present != 1)} present (0..{present - 1})",
                   f"use an index below {present}, or {dry_run_hint}")]
    return []


def free_memory(device: torch.device) -> int | None:
    """Bytes free on `device` now, as its backend reports them (`torch.cuda.mem_get_info` and its likes), or None
    when this backend cannot say (then the budget policy needs a `budget`)."""
    backend = getattr(torch, device.type, None)
    info = getattr(backend, "mem_get_info", None)
    if info is None:
        return None
    try:
        free, _total = info(device)
    except (RuntimeError, AssertionError, TypeError):  # no such device, or a backend that is not built in
        return None
    return int(free)


def empty_cache(device: torch.device) -> None:
    """Give the memory the caching allocator of `device` holds back to the device (nothing for the CPU)."""
    backend = getattr(torch, device.type, None)
    empty = getattr(backend, "empty_cache", None) if device.type != "cpu" else None
    if empty is not None:
        try:
            empty()
        except RuntimeError:  # not initialised: nothing to give back
            pass
