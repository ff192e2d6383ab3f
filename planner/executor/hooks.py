"""The budget policy's accelerate hooks, each with a frozen config apart from its action: `BudgetHook` on every model
component (before it runs: make it resident, inputs to the execution device), `BlockHook` on every block submodule
(before: the block on the device, after: a streamed block dropped).

Accelerate's hook slot, not diffusers' `HookRegistry`, because diffusers reads that slot: a pipeline takes its
execution device from `module._hf_hook.execution_device`, and `vae.decode`/`encode` reach an offload hook only
through `_hf_hook.pre_forward` (`apply_forward_hook`); a registry hook would see neither, and the dependency floors'
diffusers has no registry at all. Hooks are found by their class, never by a tag.

Under `torch.compile` (a block compiled with `module.compile()`, diffusers' `compile_repeated_blocks`) the hooks run
inside the compiled call: their `pre_forward`/`post_forward` are `torch.compiler.disable`d, as accelerate's own
hooks are, so dynamo breaks the graph at the hook's boundary and runs the residency's bookkeeping eagerly instead of
tracing (and recompiling on) it.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from accelerate.hooks import ModelHook
from accelerate.utils import send_to_device

from planner.executor import compat


def eager(fn):
    """`fn` run outside any compiled graph (`torch.compiler.disable`, applied on first call: importing dynamo at
    import time costs seconds)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if not hasattr(wrapper, "disabled"):
            wrapper.disabled = torch.compiler.disable(fn)
        return wrapper.disabled(*args, **kwargs)

    return wrapper


def key_of(component: str, block: str) -> str:
    """The trace's name of a block: `unet/down_blocks.0`, `unet/rest`."""
    return f"{component}/{block}"


@dataclass(frozen=True)
class BudgetHookConfig:
    """What a budget hook is for: its component's name and the device its inputs go to."""

    component: str
    execution_device: torch.device


class BudgetHook(ModelHook):
    """Before its component runs: `action(component)` makes it resident (the residency's `use`), then the inputs
    go to the execution device. diffusers reads `execution_device` to place a pipeline's own tensors."""

    def __init__(self, config: BudgetHookConfig, action):
        self.config, self.action = config, action

    @property
    def execution_device(self) -> torch.device:
        return self.config.execution_device

    @eager
    def pre_forward(self, module, *args, **kwargs):
        self.action(self.config.component)
        device = self.config.execution_device
        return send_to_device(args, device), send_to_device(kwargs, device)

    def __repr__(self) -> str:
        return f"BudgetHook({self.config.component!r} on {self.config.execution_device})"


def budget_hook(module) -> BudgetHook | None:
    """The budget hook on `module`, found by its class, or None."""
    hook = compat.hook_of(module)
    return hook if isinstance(hook, BudgetHook) else None


@dataclass(frozen=True)
class BlockHookConfig:
    """What a block hook is for: its component, its block and the device its component runs on."""

    component: str
    block: str
    execution_device: torch.device


class BlockHook(ModelHook):
    """Around one block's forward: `enter(component, block)` before it (the block made resident, the next
    streamed one maybe prefetched), `leave(component, block)` after it (a streamed block dropped)."""

    def __init__(self, config: BlockHookConfig, enter, leave):
        self.config, self.enter, self.leave = config, enter, leave

    @property
    def execution_device(self) -> torch.device:
        return self.config.execution_device

    @eager
    def pre_forward(self, module, *args, **kwargs):
        self.enter(self.config.component, self.config.block)
        return args, kwargs

    @eager
    def post_forward(self, module, output):
        self.leave(self.config.component, self.config.block)
        return output

    def __repr__(self) -> str:
        return f"BlockHook({key_of(self.config.component, self.config.block)!r} on {self.config.execution_device})"
