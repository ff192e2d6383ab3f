"""`planner apply`'s driver: check, load, apply the plan, generate, report what moved; raises `PlanError`.

Importing this module loads no torch. `run` checks what it can without torch first (the source folder and its
model_index.json), then the device, then the class against the folder, and only then loads the weights: a
mistake never costs a multi-GB load. The pipeline is located and loaded by `planner.executor.source`, the outputs
written by `planner.executor.outputs`, the summary made by `planner.executor.summary`.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

from planner.executor import outputs, source
from planner.executor.source import FLAGS, first_line, locator
from planner.executor.summary import summary
from planner.plan import Plan, PlanError, Problem
from planner.rules import PLN305

CLI_DRY_RUN = "run with --dry-run to trace the plan on the CPU"


@dataclass(frozen=True)
class Request:
    """What to generate and where to write it; built from the CLI's arguments."""

    source: str | None = None
    prompt: str = "an astronaut riding a horse"
    negative_prompt: str | None = None
    steps: int = 2
    seed: int = 0
    height: int | None = None
    width: int | None = None
    image: str | None = None
    calls: int = 1
    out: str | None = None
    dry_run: bool = False
    trace_json: str | None = None
    events: bool = False  # list every transfer in the summary (`--events`)
    progress: bool = False  # diffusers' progress bars (loading, denoising) on stderr
    overridden: frozenset[str] = frozenset()  # the FLAGS keys the command line set

    @classmethod
    def from_args(cls, args, **changes) -> "Request":
        """The request the CLI's parsed `args` describe, `changes` on top; notes which FLAGS the command line set."""
        fields = {name: getattr(args, name) for name in cls.__dataclass_fields__ if hasattr(args, name)}
        fields["overridden"] = frozenset(key for key, flag in FLAGS.items()
                                         if getattr(args, flag[2:].replace("-", "_"), None) is not None)
        return cls(**{**fields, **changes})


def run(plan: Plan, request: Request) -> str:
    """Check, load, apply, generate `request.calls` times; returns the text summary.

    Raises `PlanError` (one located line each) for anything that stops the run: a source that is not a pipeline,
    a missing device, a class that does not fit the folder, a pipeline that cannot be loaded, a plan that does not
    fit it, a call that fails. However the run ends (KeyboardInterrupt included), the plan is removed again.
    """
    at = locator(plan, request)
    located = source.locate_source(plan, request, at)
    if not request.dry_run:
        check_device(plan, at)
    from planner.executor import budget, compat, devices
    from planner.executor.applied import apply

    compat.require()  # a diffusers that moved what the executor reads is found before the weights are loaded

    budgeted = plan.policy == "budget"
    if budgeted and plan.granularity == "block" and plan.steps != request.steps:
        plan = replace(plan, steps=request.steps)  # the block schedule counts the denoiser's forwards this run makes
    if budgeted:  # no budget to be had (a dry run without one) fails before the pipeline loads
        budget.budget_for(plan, devices.target(plan), request.dry_run, at)
    with console(request.progress):
        pipe = source.load_pipeline(plan, located, at)
        pipe.set_progress_bar_config(disable=not request.progress)
        # the budget policy's problems located at --budget when the flag set it, not at the plan
        applied = apply(pipe, plan, dry_run=request.dry_run, calls=request.calls, at=at)
        try:
            images = _generate(applied, request)
            outputs.write(applied, request, images)
            return summary(applied, request)
        finally:
            applied.remove()


def check_device(plan: Plan, at: Callable[..., Problem] | None = None) -> None:
    """Raise PLN303 (with the CLI's fix) when the plan's device is not on this machine; imports torch, reads no
    weights."""
    from planner.executor import devices

    problems = devices.problems(plan, devices.target(plan), at, CLI_DRY_RUN)
    if problems:
        raise PlanError(problems)


@contextlib.contextmanager
def _remembered_interrupts():
    """Yields a function saying whether Ctrl-C came. A KeyboardInterrupt raised while a finalizer (`__del__`)
    runs is lost: Python reports it as "Exception ignored" and the run goes on. Such a one is kept here, and not
    printed, so that the loop of calls stops at the next call instead of running to its end."""
    seen: list[bool] = []
    previous = sys.unraisablehook

    def hook(unraisable) -> None:
        if unraisable.exc_type is not None and issubclass(unraisable.exc_type, KeyboardInterrupt):
            seen.append(True)
            return
        previous(unraisable)

    sys.unraisablehook = hook
    try:
        yield lambda: bool(seen)
    finally:
        sys.unraisablehook = previous


def _generate(applied, request: Request):
    """Call through the handle (which times each call in its trace) `request.calls` times; the last call's
    pictures (see `_pictures`). A Ctrl-C lost in a finalizer stops the calls at the next one."""
    with _remembered_interrupts() as interrupted:
        return _calls(applied, request, interrupted)


def _calls(applied, request: Request, interrupted):
    images = None
    for _ in range(request.calls):
        if interrupted():
            raise KeyboardInterrupt
        try:
            images = _pictures(applied(**_call_kwargs(applied.pipe, request)))
        except Exception as exc:  # the pipeline's own error, reported as one line
            raise PlanError([PLN305.problem(applied.plan.path, f"the pipeline call failed: "
                                            f"{type(exc).__name__}: {first_line(exc)}",
                                            "check --height/--width/--steps/--image")]) from exc
    return images


def _pictures(output) -> list:
    """The first image of an image pipeline's output (`images`), or every frame of the first video of a video
    pipeline's (`frames`, one list of frames per video: Wan, CogVideoX, LTX-Video)."""
    images = getattr(output, "images", None)
    if images is not None:
        return list(images[:1])
    frames = getattr(output, "frames", None)
    return list(frames[0]) if frames is not None and len(frames) else []


def _call_kwargs(pipe, request: Request) -> dict:
    import torch

    kwargs = {"prompt": request.prompt, "num_inference_steps": request.steps, "output_type": "pil",
              "generator": torch.Generator("cpu").manual_seed(request.seed)}
    for name, value in (("negative_prompt", request.negative_prompt), ("height", request.height),
                        ("width", request.width)):
        if value is not None:
            kwargs[name] = value
    if request.image:
        from PIL import Image

        kwargs["image"] = Image.open(request.image).convert("RGB")
    return kwargs


@contextlib.contextmanager
def console(progress: bool) -> Iterator[None]:
    """For the block: diffusers', transformers' and the hub's progress bars on when `progress` (the CLI asks for
    them on a terminal, without --quiet), off otherwise, and only their errors logged (the CLI prints its own
    summary). Their previous settings come back afterwards."""
    import diffusers
    import huggingface_hub.utils as hub
    import transformers

    libraries = (diffusers.utils.logging, transformers.utils.logging)
    saved = [(lib.get_verbosity(), lib.is_progress_bar_enabled()) for lib in libraries]
    hub_off = hub.are_progress_bars_disabled()
    for lib in libraries:
        lib.set_verbosity_error()
        (lib.enable_progress_bar if progress else lib.disable_progress_bar)()
    (hub.enable_progress_bars if progress else hub.disable_progress_bars)()
    try:
        yield
    finally:
        for lib, (verbosity, bars) in zip(libraries, saved, strict=True):
            lib.set_verbosity(verbosity)
            (lib.enable_progress_bar if bars else lib.disable_progress_bar)()
        (hub.disable_progress_bars if hub_off else hub.enable_progress_bars)()
