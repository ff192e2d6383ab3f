"""`planner apply`: load the plan's pipeline, apply the plan, generate, and report what moved."""

from __future__ import annotations

import difflib
import json
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from planner.plan import Plan, PlanError, Problem


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

    @classmethod
    def from_args(cls, args) -> "Request":
        return cls(**{name: getattr(args, name) for name in cls.__dataclass_fields__ if hasattr(args, name)})


def run(plan: Plan, request: Request) -> str:
    """Load, apply, generate `request.calls` times; returns the text summary. Raises `PlanError` (one located
    line each) for anything that stops the run: a pipeline that cannot be loaded, a plan that does not fit it,
    a call that fails."""
    from planner.executor.applied import apply

    quiet()
    pipe = load_pipeline(plan, request.source)
    pipe.set_progress_bar_config(disable=True)
    applied = apply(pipe, plan, dry_run=request.dry_run)
    images = None
    for _ in range(request.calls):
        call = applied.trace.call
        start = time.perf_counter()
        try:
            images = applied(**_call_kwargs(pipe, request)).images
        except Exception as exc:  # the pipeline's own error, reported as one line
            applied.remove()
            raise PlanError([Problem(plan.path, 0, 0, "PLN305", f"the pipeline call failed: {type(exc).__name__}: "
                                     f"{_first_line(exc)}", "check --height/--width/--steps/--image")]) from exc
        applied.trace.calls[call].seconds = time.perf_counter() - start
    if request.out and images:
        Path(request.out).parent.mkdir(parents=True, exist_ok=True)
        images[0].save(request.out)
    if request.trace_json:
        Path(request.trace_json).parent.mkdir(parents=True, exist_ok=True)
        payload = {"plan": plan.path, "sequence": list(plan.sequence), "exclude": sorted(plan.exclude),
                   "dry_run": request.dry_run, "skipped": list(applied.skipped), **applied.trace.to_json()}
        Path(request.trace_json).write_text(json.dumps(payload, indent=2) + "\n")
    report = summary(applied, request)
    applied.remove()
    return report


def load_pipeline(plan: Plan, source: str | None = None):
    """The pipeline named by the plan (or `source`): a local folder, or a hub id (HF_HUB_OFFLINE respected)."""
    import diffusers
    import torch

    source = source or plan.pipeline_source
    if not source:
        raise _load_error(plan, "pipeline.source", "the plan names no pipeline to load",
                          "add `pipeline: {source: FOLDER_OR_HUB_ID}` or pass --source")
    source = _resolve(plan, source)
    cls = _pipeline_class(plan, diffusers)
    kwargs = {}
    if plan.torch_dtype:
        kwargs["torch_dtype"] = getattr(torch, plan.torch_dtype)
    if plan.variant:
        kwargs["variant"] = plan.variant
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # `torch_dtype` is being renamed; both still work
            return cls.from_pretrained(source, **kwargs)
    except Exception as exc:  # diffusers/hub errors of every kind: one line, never a traceback
        offline = " (HF_HUB_OFFLINE is set)" if os.environ.get("HF_HUB_OFFLINE") not in (None, "", "0") else ""
        raise _load_error(plan, "pipeline.source", f"cannot load the pipeline {source!r}{offline}: "
                          f"{type(exc).__name__}: {_first_line(exc)}",
                          "point pipeline.source (or --source) at a saved pipeline folder") from exc


def _resolve(plan: Plan, source: str) -> str:
    path = Path(source).expanduser()
    beside_plan = Path(plan.path).parent / path
    if path.is_dir():
        return str(path)
    if not path.is_absolute() and beside_plan.is_dir():
        return str(beside_plan)
    looks_local = source.startswith((".", "/", "~")) or source.count("/") != 1 or path.exists()
    if looks_local:
        raise _load_error(plan, "pipeline.source", f"no pipeline folder at {source!r}",
                          "build one (planner tiny sd FOLDER) or give a hub id such as org/name")
    return source


def _pipeline_class(plan: Plan, diffusers):
    if not plan.pipeline_class:
        return diffusers.DiffusionPipeline  # reads the class from model_index.json
    try:
        cls = getattr(diffusers, plan.pipeline_class)
        is_pipeline = isinstance(cls, type) and issubclass(cls, diffusers.DiffusionPipeline)
    except Exception:  # a dummy class whose optional backend is missing raises on any access
        cls, is_pipeline = None, False
    if not is_pipeline:
        names = [n for n in dir(diffusers) if n.endswith("Pipeline")]
        hint = difflib.get_close_matches(plan.pipeline_class, names, n=1)
        raise _load_error(plan, "pipeline.class", f"{plan.pipeline_class!r} is not a diffusers pipeline class "
                          f"usable here", f"did you mean {hint[0]!r}?" if hint else "leave class out to read it "
                          "from model_index.json")
    return cls


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


def summary(applied, request: Request) -> str:
    """Per component its size, per call the bytes moved each way, the peak resident and the time."""
    plan, trace = applied.plan, applied.trace
    mode = " (dry run: hooks executed on the CPU; figures are what the device would have received)" \
        if applied.dry_run else ""
    lines = [f"plan {plan.path}: {plan.offload_seq} on {applied.target}{mode}"]
    if applied.skipped:
        lines.append(f"skipped (None in the pipeline, as diffusers does): {', '.join(applied.skipped)}")
    kept = sorted(plan.exclude - set(applied.skipped))
    if kept:
        lines.append(f"kept on the device: {', '.join(kept)}")
    lines.append("")
    lines.append(f"{'component':<20}{'size':>12}")
    for name, size in trace.sizes.items():
        role = "" if name in plan.sequence else (" (excluded)" if name in plan.exclude else " (own hook)")
        lines.append(f"{name + role:<20}{_mb(size):>12}")
    lines.append("")
    lines.append(f"{'call':<6}{'loaded':>12}{'offloaded':>12}{'peak resident':>16}{'time':>10}")
    for stats in sorted(trace.calls.values(), key=lambda s: s.call):
        if stats.call > request.calls:
            continue
        seconds = f"{stats.seconds:.3f}s" if stats.seconds is not None else "-"
        lines.append(f"{stats.call:<6}{_mb(stats.loaded_bytes):>12}{_mb(stats.offloaded_bytes):>12}"
                     f"{_mb(stats.peak_resident_bytes):>16}{seconds:>10}")
    if request.out:
        lines.append(f"\nimage written to {request.out}")
    if request.trace_json:
        lines.append(f"trace ({len(trace.events)} events) written to {request.trace_json}")
    return "\n".join(lines) + "\n"


def quiet() -> None:
    """The CLI prints its own summary: no progress bars, and only errors from transformers and diffusers."""
    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def _mb(n: int) -> str:
    return f"{n / 2**20:.2f} MiB"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else "(no message)"


def _load_error(plan: Plan, key: str, message: str, fix: str) -> PlanError:
    return PlanError([plan.problem(key, "PLN304", message, fix)])
