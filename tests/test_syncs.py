"""Host-device synchronisations the planner adds to a steady call, counted on the CPU: a `TorchFunctionMode` counts
every call by name that makes the host wait for a device value (on a CPU tensor the wait is moot, so the names are
counted, not the effect). A block plan on the tiny Flux, whose transformer streams its blocks every step, adds at
most 2 per call whatever the steps, images stay bitwise those of a run without the plan, and a weight changed on the
device between calls (in place, or by peft's `fuse_lora`) is never lost, on a kept block as on a streamed one."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from torch.overrides import TorchFunctionMode

import planner

pytest.importorskip("diffusers")
from test_executor_blocks import budgets, call_kwargs, load, probed, write_plan  # noqa: E402

# Each makes the host wait for a device value (a scalar, a list, a truth value, a host copy).
SYNCING = frozenset({"item", "tolist", "__bool__", "__int__", "__float__", "__index__", "equal",
                     "allclose", "nonzero", "argwhere", "masked_select", "unique", "cpu", "numpy", "__repr__",
                     "__format__", "is_nonzero", "bincount", "repeat_interleave"})


class Syncs(TorchFunctionMode):
    """Counts the syncing calls made while it is on, by name."""

    def __init__(self):
        super().__init__()
        self.counted: Counter = Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in SYNCING:
            self.counted[name] += 1
        return func(*args, **(kwargs or {}))

    @property
    def total(self) -> int:
        return sum(self.counted.values())


def counted(run, calls: int = 3):
    """(syncs of the last of `calls` calls, its images as a numpy array)."""
    for _ in range(calls - 1):
        run()
    with Syncs() as syncs:
        images = run()
    return syncs, images


def long_flux(pipe):
    """The tiny Flux with a transformer of 4 double and 4 single blocks (the tiny build has one of each, which a
    block budget cannot stream: two blocks in flight are the whole transformer)."""
    from diffusers import FluxPipeline, FluxTransformer2DModel

    config = dict(pipe.transformer.config)
    torch.manual_seed(0)
    transformer = FluxTransformer2DModel(**{k: v for k, v in config.items() if not k.startswith("_")}
                                         | {"num_layers": 4, "num_single_layers": 4})
    built = FluxPipeline(**{**pipe.components, "transformer": transformer})
    built.set_progress_bar_config(disable=True)
    return built


def flux_plan(tiny_builds, tmp_path, fired, steps: int, share: float = 0.0):
    """The long tiny Flux and a block plan at the least budget (plus `share` of the rest) for `steps` steps."""
    pipe, components, uses, _ = probed("flux", tiny_builds, tmp_path, fired)
    pipe = long_flux(pipe)
    least, total = budgets(pipe, write_plan(tmp_path, components, 1, uses=uses, steps=steps, name="size.yaml"))
    budget = least + int(share * (total - least))
    return pipe, write_plan(tmp_path, components, budget, uses=uses, steps=steps)


def images(result) -> list:
    import numpy as np

    return [np.asarray(image) for image in result.images]


@pytest.mark.parametrize("steps", [4, 16])
def test_a_steady_call_adds_at_most_two_syncs_and_the_same_images(steps, tiny_builds, tmp_path, fired):
    pipe, plan = flux_plan(tiny_builds, tmp_path, fired, steps)
    kwargs = dict(call_kwargs("flux", steps), output_type="pil")
    bare, expected = counted(lambda: pipe(**{**kwargs, "generator": torch.Generator().manual_seed(0)}))
    applied = planner.apply(pipe, plan, dry_run=True)
    assert any(c == "transformer" for c, _ in applied.schedule.streamed)  # the transformer streams every step
    ours, found = counted(lambda: applied(**{**kwargs, "generator": torch.Generator().manual_seed(0)}))
    added = ours.total - bare.total
    print(f"steps {steps}: without the plan {bare.total} {dict(bare.counted)}, with it {ours.total} "
          f"{dict(ours.counted)}")
    assert added <= 2, (dict(bare.counted), dict(ours.counted))
    assert applied.copied_back.get(applied.trace.call, 0) == 0  # nothing copied back: no hidden device-to-host copy
    assert all((a == b).all() for a, b in zip(images(found), images(expected), strict=True))
    applied.remove()


def edit(param: torch.nn.Parameter, how: str) -> None:
    with torch.no_grad():
        if how == "in place":
            param.add_(1)  # moves the version counter
        else:
            param.data += 1  # what peft's fuse_lora does: no version counter sees it, only the checksum


@pytest.mark.parametrize("how", ["in place", "through data"])
def test_a_weight_changed_between_calls_is_never_lost_on_kept_and_streamed_blocks(how, tiny_builds, tmp_path, fired):
    pipe, plan = flux_plan(tiny_builds, tmp_path, fired, 2, share=0.5)
    applied = planner.apply(pipe, plan, dry_run=True)
    kwargs = call_kwargs("flux", 2)
    for _ in range(2):
        applied(**kwargs)
    residency = applied._installer.residency
    streamed = {f"{c}/{b}" for c, b in applied.schedule.streamed}
    kept = sorted(k for k in residency.on if not k.endswith("/rest") and k.startswith("transformer/"))
    moving = sorted(k for k in streamed if k.startswith("transformer/"))
    assert kept and moving, (kept, moving)  # one block of each kind
    chosen = [residency.partitions["transformer"].modules[k.split("/", 1)[1]] for k in (kept[0], moving[0])]
    params = [next(module.parameters()) for module in chosen]
    expected = []
    for param in params:
        edit(param, how)
        expected.append(param.detach().clone())
    applied(**kwargs)  # the kept block's change is found at the call's start, the streamed one's is on the host
    for param, value in zip(params, expected, strict=True):
        edit(param, how)
        value += 1
    applied.remove()  # the kept block leaves the device: its change is copied back
    for param, value in zip(params, expected, strict=True):
        assert param.device.type == "cpu" and torch.equal(param.detach(), value)


def test_fuse_lora_between_calls_on_kept_and_streamed_blocks_is_kept(tiny_builds, tmp_path, fired):
    from test_budget import _lora

    lora = _lora(tmp_path, tiny_builds["sd"])
    pipe, components, uses, steps = probed("sd", tiny_builds, tmp_path, fired)
    pipe.load_lora_weights(**lora)
    budget = budgets(pipe, write_plan(tmp_path, components, 1, uses=uses, steps=steps, name="size.yaml"))[0]
    applied = planner.apply(pipe, write_plan(tmp_path, components, budget, uses=uses, steps=steps), dry_run=True)
    assert any(c == "unet" for c, _ in applied.schedule.streamed)
    kwargs = call_kwargs("sd", steps)
    for _ in range(2):
        applied(**kwargs)
    with Syncs() as syncs:
        pipe.fuse_lora()  # into the device copies of the kept blocks, the host data of the streamed ones
        applied(**kwargs)
    assert syncs.counted["tolist"] <= 2
    pipe.unfuse_lora()
    pipe.fuse_lora(lora_scale=0.5)
    fused = applied(**call_kwargs("sd", steps)).images
    reference = load(tiny_builds["sd"])
    reference.load_lora_weights(**lora)
    reference.fuse_lora()  # the same sequence: unfusing is not bitwise exact
    reference.unfuse_lora()
    reference.fuse_lora(lora_scale=0.5)
    assert (fused == reference(**call_kwargs("sd", steps)).images).all()
    applied.remove()
    ours = dict(pipe.unet.named_parameters())
    for name, param in reference.unet.named_parameters():
        assert ours[name].device.type == "cpu" and torch.equal(ours[name].detach(), param.detach()), name
