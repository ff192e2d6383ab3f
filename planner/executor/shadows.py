"""The instance attributes a plan puts on pipeline objects while it is applied (its shadows), and how they were."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from planner.executor import compat

MISSING = object()


@dataclass(frozen=True)
class PipeState:
    """The pipeline's own instance attributes that `apply` changes, as they were."""

    attributes: dict

    @classmethod
    def take(cls, pipe) -> "PipeState":
        return cls({name: pipe.__dict__.get(name, MISSING) for name in compat.SHADOWED + compat.OFFLOAD_STATE})

    def restore(self, pipe) -> None:
        for name, value in self.attributes.items():
            if value is MISSING:
                pipe.__dict__.pop(name, None)
            else:
                pipe.__dict__[name] = value


class Shadowed:
    """A pipeline object the plan puts shadows on: the pipeline itself, or for a combined pipeline each connected
    pipeline (`prior_pipe`, `decoder_pipe`). `state` is how its attributes were; `hooks` its `_all_hooks` as the
    last install left it (chains only)."""

    def __init__(self, pipe, shadows: dict):
        self.pipe, self.shadows = pipe, shadows
        self.state = PipeState.take(pipe)
        self.hooks: list = []
        self.chain = compat.SEQUENCE in shadows

    def in_force(self) -> bool:
        """The shadows are the plan's and (for a chain) diffusers' hook list is the one the last install left."""
        attributes = self.pipe.__dict__
        if any(attributes.get(k, MISSING) is not v for k, v in self.shadows.items()):
            return False
        return not self.chain or attributes.get(compat.ALL_HOOKS) is self.hooks

    def module_ids(self) -> set[int]:
        return {id(m) for m in self.pipe.components.values() if isinstance(m, torch.nn.Module)}
