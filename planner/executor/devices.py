"""The plan's target device, and whether this machine has it."""

from __future__ import annotations

import torch

from planner.plan import Plan, Problem


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


def problems(plan: Plan, device: torch.device) -> list[Problem]:
    present = count(device.type)
    if present == 0:
        return [plan.problem("device", "PLN303", f"no {device.type} device found",
                             "run with --dry-run to trace the plan on the CPU")]
    if device.index >= present:
        key = "gpu_id" if plan.gpu_id is not None else "device"
        return [plan.problem(key, "PLN303", f"{device} is beyond the {present} {device.type} device"
                             f"{'s' * (present != 1)} present (0..{present - 1})", f"use a gpu_id below {present}")]
    return []
