"""A pipeline's model components as the executor sees them: which are torch modules, their bytes, their device,
and the connected pipelines a combined class hooks one by one."""

from __future__ import annotations

import torch

from planner.executor import compat


def model_components(pipe) -> dict:
    """The pipeline's components that are torch modules, name -> module, in the pipeline's order."""
    return {name: m for name, m in pipe.components.items() if isinstance(m, torch.nn.Module)}


def module_bytes(module) -> int:
    """Parameters and buffers of `module`, each tensor counted once (tied weights share one)."""
    seen = {}
    for tensor in list(module.parameters()) + list(module.buffers()):
        seen[id(tensor)] = tensor.numel() * tensor.element_size()
    return sum(seen.values())


def device_of(module) -> torch.device | None:
    """The device of the module's first parameter (else first buffer), or None for a module without tensors."""
    for tensor in module.parameters():
        return tensor.device
    for tensor in module.buffers():
        return tensor.device
    return None


def connected_pipes(pipe) -> dict:
    """The connected pipelines (attribute -> pipeline) that `pipe`'s own `enable_model_cpu_offload` hooks one by
    one, each with its own chain: combined classes (`_load_connected_pipes`) that override the method (in
    diffusers 0.42: the Kandinsky 2.2 img2img, Wuerstchen and Stable Cascade combined classes). Empty for any other
    pipeline, combined classes that chain their own sequence included."""
    from diffusers import DiffusionPipeline

    cls = type(pipe)
    if not compat.loads_connected_pipes(cls) or \
            getattr(cls, compat.ENABLE) is getattr(DiffusionPipeline, compat.ENABLE):
        return {}
    return {name: value for name, value in vars(pipe).items() if isinstance(value, DiffusionPipeline)}
