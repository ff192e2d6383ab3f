"""The only part of offload-planner that imports torch, accelerate and diffusers.

`apply` and `AppliedPlan` load torch on first use, so that light modules here (`source`'s checks)
can be used by the CLI before it, and `missing()` can say what to install without importing anything.
"""

import importlib.util

__all__ = ["AppliedPlan", "apply"]


from planner.executor.errors import CompatError  # noqa: F401 - the CLI catches it from here, before torch loads

# What the `apply` extra installs, as module name -> distribution name.
APPLY_EXTRA = {"torch": "torch", "accelerate": "accelerate", "diffusers": "diffusers", "transformers": "transformers",
               "safetensors": "safetensors", "PIL": "pillow"}


def missing() -> list[str]:
    """The distributions of the `apply` extra that are not installed here; found without importing them."""
    return [dist for module, dist in APPLY_EXTRA.items() if not _findable(module)]


def _findable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # blocked by an import hook; a module object without a spec
        return False


def __getattr__(name):
    if name in __all__:
        from planner.executor import applied

        return getattr(applied, name)
    raise AttributeError(f"module 'planner.executor' has no attribute {name!r}")
