"""The protocol every installer speaks with the handle, and what the handle gives it (the handle chooses the installer
by (policy, granularity): `applied.installer_for`).

An installer puts one policy on a pipeline and keeps it there: `shadows()` names the pipeline objects the plan
shadows while it is applied; `install(modules, ending)` puts its hooks on the model components as they are now
(after the handle has checked and snapshotted them); `end_call(now)` closes a call; `offload_all()` frees the
device; `release()` lets go of the device before the handle gives the modules back. `hooked` says which hook it
put on each component (the handle's cheap in-force check reads it). Installers never read or write the handle's
state: what they need comes in an `InstallContext`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

from planner.plan import Plan
from planner.trace import Trace


@dataclass(frozen=True)
class InstallContext:
    """What the handle gives an installer: the pipeline, the plan, the trace, the plan's `target` device and the
    `execution_device` (the CPU in a dry run), and the two routes back to the handle that its shadows stand for
    (`enable`: re-install the plan, what diffusers' `enable_model_cpu_offload` does; `maybe_free`: diffusers' end
    of a call)."""

    pipe: object
    plan: Plan
    trace: Trace
    target: object
    execution_device: object
    dry_run: bool
    enable: Callable[..., None]
    maybe_free: Callable[[], None]


class Installer(Protocol):
    policy: str
    hooked: dict  # component name -> (module, the plan's hook on it, or None when it has none)
    copied_back: dict[int, int] | None

    def shadows(self) -> list: ...

    def install(self, modules: dict, ending: bool) -> None: ...

    def end_call(self, now: float) -> None: ...

    def offload_all(self) -> None: ...

    def release(self) -> None: ...
