"""`planner apply`: load the plan's pipeline, apply the plan, generate, and report what moved.

Importing this module loads no torch. `run` checks what it can without torch first (the source folder and its
model_index.json), then the device, then the class against the folder, and only then loads the weights: a
mistake never costs a multi-GB load.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import os
import stat
import sys
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from planner.plan import Plan, PlanError, Problem
from planner.report.common import visible
from planner.rules import PLN304, PLN305, PLN407, Rule

# Plan keys a command-line flag can set: a problem with one of them is located at the flag when the flag set it.
FLAGS = {"pipeline.source": "--source", "device": "--device", "gpu_id": "--gpu-id", "pipeline.torch_dtype": "--dtype",
         "pipeline.variant": "--variant", "policy": "--policy", "budget": "--budget"}
CLI_DRY_RUN = "run with --dry-run to trace the plan on the CPU"
MODEL_INDEX_LIMIT = 1 << 20  # a model_index.json holds a few hundred bytes; a file this large is not one


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


@dataclass(frozen=True)
class Source:
    """What `from_pretrained` gets: a local folder with the `_class_name` its model_index.json holds, or a hub id
    (`folder_class` None: nothing of it can be read before the download)."""

    name: str
    folder_class: str | None = None


def run(plan: Plan, request: Request) -> str:
    """Check, load, apply, generate `request.calls` times; returns the text summary.

    Raises `PlanError` (one located line each) for anything that stops the run: a source that is not a pipeline,
    a missing device, a class that does not fit the folder, a pipeline that cannot be loaded, a plan that does not
    fit it, a call that fails. However the run ends (KeyboardInterrupt included), the plan is removed again.
    """
    at = locator(plan, request)
    source = locate_source(plan, request, at)
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
        pipe = load_pipeline(plan, source, at)
        pipe.set_progress_bar_config(disable=not request.progress)
        # the budget policy's problems located at --budget when the flag set it, not at the plan
        applied = apply(pipe, plan, dry_run=request.dry_run, calls=request.calls, at=at)
        try:
            images = _generate(applied, request)
            _write(applied, request, images)
            return summary(applied, request)
        finally:
            applied.remove()


def locator(plan: Plan, request: Request) -> Callable[..., Problem]:
    """`at(key, rule, message, fix)`: a problem located at the flag that set `key` when one did, else at the
    plan's `key`."""

    def at(key: str, rule: Rule, message: str, fix: str | None = None) -> Problem:
        if key in request.overridden:
            return rule.problem(FLAGS[key], message, fix)
        return plan.problem(key, rule, message, fix)

    return at


def check_device(plan: Plan, at: Callable[..., Problem] | None = None) -> None:
    """Raise PLN303 (with the CLI's fix) when the plan's device is not on this machine; imports torch, reads no
    weights."""
    from planner.executor import devices

    problems = devices.problems(plan, devices.target(plan), at, CLI_DRY_RUN)
    if problems:
        raise PlanError(problems)


def locate_source(plan: Plan, request: Request, at: Callable[..., Problem] | None = None) -> Source:
    """The pipeline to load, checked as far as it can be without torch: a local folder must exist and hold a
    readable model_index.json naming its class; a hub id is taken as it is. Raises `PlanError` (PLN304)."""
    at = at or locator(plan, request)
    spelled = FLAGS["pipeline.source"] if "pipeline.source" in request.overridden else "pipeline.source"
    name = request.source if request.source is not None else plan.pipeline_source
    if name is None:
        raise PlanError([at("pipeline.source", PLN304, "the plan names no pipeline to load",
                            "add `pipeline: {source: FOLDER_OR_HUB_ID}` or pass --source")])
    if not name.strip():
        raise PlanError([at("pipeline.source", PLN304, f"the source {name!r} names no pipeline",
                            f"give {spelled} a folder or a hub id such as org/name")])
    folder = _folder(plan, name)
    if folder is None and _looks_local(name):
        raise PlanError([at("pipeline.source", PLN304, f"no pipeline folder at {name!r}",
                            "build one (planner tiny sd FOLDER) or give a hub id such as org/name")])
    if folder is None:
        return Source(name)
    problem, folder_class = _folder_class(folder)
    if problem:
        raise PlanError([at("pipeline.source", PLN304, problem, f"point {spelled} at a folder written by "
                            "save_pretrained (planner tiny sd FOLDER builds one)")])
    from planner.folder import local

    if plan.variant and not local.has_variant(folder, plan.variant):  # diffusers refuses it only after imports
        raise PlanError([at("pipeline.variant", PLN407, f"no component of {str(folder)!r} has files of the "
                            f"variant {plan.variant!r}", PLN407.fix)])
    return Source(str(folder), folder_class)


def _folder(plan: Plan, source: str) -> Path | None:
    """The folder `source` names (relative: to the working folder, then to the plan's folder), or None."""
    try:
        path = Path(source).expanduser()
    except RuntimeError:  # `~user` with no such user
        return None
    for candidate in (path,) if path.is_absolute() else (path, Path(plan.path).parent / path):
        if _is_dir(candidate):
            return candidate
    return None


def _is_dir(path: Path) -> bool:
    try:
        return path.is_dir()
    except (OSError, ValueError):  # no search permission on a parent; a NUL byte in the name
        return False


def _looks_local(source: str) -> bool:
    """A path rather than a hub id (`org/name`)."""
    return source.startswith((".", "/", "~")) or source.count("/") != 1 or os.path.lexists(source)


def _folder_class(folder: Path) -> tuple[str | None, str | None]:
    """(problem, None) or (None, the `_class_name` of `folder`'s model_index.json), read without blocking on a
    special file and without reading past MODEL_INDEX_LIMIT."""
    index = folder / "model_index.json"
    try:
        info = index.stat()
    except FileNotFoundError:
        return f"{str(folder)!r} is not a diffusers pipeline folder: it has no model_index.json", None
    except OSError as exc:
        return f"cannot read {str(index)!r}: {exc.strerror or exc}", None
    if not stat.S_ISREG(info.st_mode):
        return f"{str(index)!r} is not a regular file", None
    if info.st_size > MODEL_INDEX_LIMIT:
        return f"{str(index)!r} has {info.st_size} bytes: too large to be a model_index.json", None
    try:
        with open(index, "rb") as f:
            data = json.loads(f.read(MODEL_INDEX_LIMIT + 1))
    except OSError as exc:
        return f"cannot read {str(index)!r}: {exc.strerror or exc}", None
    except (ValueError, RecursionError) as exc:  # not JSON, not UTF-8/16/32, absurdly nested
        return f"{str(index)!r} is not JSON: {_first_line(exc)}", None
    name = data.get("_class_name") if isinstance(data, dict) else None
    if not isinstance(name, str) or not name:
        return f"{str(index)!r} names no pipeline class (no `_class_name`)", None
    return None, name


def load_pipeline(plan: Plan, source: Source | str | None = None, at: Callable[..., Problem] | None = None):
    """The pipeline at `source` (a `Source` from `locate_source`; a string or None is located first, None meaning
    the plan's), loaded with the plan's class, torch_dtype and variant. The class is checked against the folder
    before any weight is read. Raises `PlanError` (PLN304, one line) for anything diffusers or the hub refuse."""
    import diffusers
    import torch

    at = at or plan.problem
    if not isinstance(source, Source):
        source = locate_source(plan, Request(source=source), at)
    cls = _pipeline_class(plan, diffusers, source)
    kwargs = {}
    if plan.torch_dtype:
        kwargs["torch_dtype"] = getattr(torch, plan.torch_dtype)
    if plan.variant:
        kwargs["variant"] = plan.variant
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # `torch_dtype` is being renamed; both still work
            return cls.from_pretrained(source.name, **kwargs)
    except Exception as exc:  # diffusers/hub errors of every kind: one line, never a traceback
        offline = " (HF_HUB_OFFLINE is set)" if os.environ.get("HF_HUB_OFFLINE") not in (None, "", "0") else ""
        raise PlanError([at("pipeline.source", PLN304, f"cannot load the pipeline {source.name!r}{offline}: "
                            f"{type(exc).__name__}: {_first_line(exc)}",
                            "point pipeline.source (or --source) at a saved pipeline folder")]) from exc


def _pipeline_class(plan: Plan, diffusers, source: Source):
    """The class to load with: `pipeline.class` when the plan names one (it must be a diffusers pipeline class
    that takes the same components as the folder's class), else DiffusionPipeline (which reads the folder's)."""
    if not plan.pipeline_class:
        return diffusers.DiffusionPipeline  # reads the class from model_index.json
    cls = _lookup(diffusers, plan.pipeline_class)
    if cls is None:
        names = [n for n in dir(diffusers) if n.endswith("Pipeline")]
        hint = difflib.get_close_matches(plan.pipeline_class, names, n=1)
        raise _load_error(plan, "pipeline.class", f"{plan.pipeline_class!r} is not a diffusers pipeline class "
                          f"usable here", f"did you mean {hint[0]!r}?" if hint else "leave class out to read it "
                          "from model_index.json")
    theirs = _lookup(diffusers, source.folder_class) if source.folder_class else None
    if theirs is not None and theirs is not cls:
        # diffusers loads another class from a folder (StableDiffusionImg2ImgPipeline from a StableDiffusionPipeline
        # folder) when both take the same components; otherwise it drops weights, leaves parts None, or fails
        # only after reading every weight.
        ours, folders = _components(cls), _components(theirs)
        if ours != folders:
            only = [f"only {c.__name__} takes {', '.join(sorted(names))}" for c, names in
                    ((cls, ours - folders), (theirs, folders - ours)) if names]
            raise _load_error(plan, "pipeline.class", f"{plan.pipeline_class!r} does not match the folder "
                              f"{source.name!r}, which holds a {source.folder_class} (its model_index.json): "
                              f"{'; '.join(only)}", f"write class: {source.folder_class}, or leave class out "
                              "to read it from model_index.json")
    return cls


def _lookup(diffusers, name: str):
    """The diffusers pipeline class called `name`, or None (not a pipeline, or a dummy whose backend is missing)."""
    try:
        cls = getattr(diffusers, name)
        return cls if isinstance(cls, type) and issubclass(cls, diffusers.DiffusionPipeline) else None
    except Exception:  # a dummy class whose optional backend is missing raises on any access
        return None


def _components(cls) -> set[str]:
    """The components `cls.__init__` takes (optional ones included), as diffusers itself reads them."""
    return set(cls._get_signature_keys(cls)[0])


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
                                            f"{type(exc).__name__}: {_first_line(exc)}",
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


def _write(applied, request: Request, images) -> None:
    """The last image (a video's frames as an animation where the format has them: .png, .gif, .webp; else its
    first frame) and the trace JSON, where the request asks (missing folders created)."""
    plan = applied.plan
    if request.out and images:
        from PIL import Image

        Path(request.out).parent.mkdir(parents=True, exist_ok=True)
        first, *rest = images
        image_format = Image.registered_extensions().get(Path(request.out).suffix.lower())
        if rest and image_format in Image.SAVE_ALL:
            first.save(request.out, save_all=True, append_images=rest, duration=125, loop=0)
        else:
            first.save(request.out)
    if request.trace_json:
        Path(request.trace_json).parent.mkdir(parents=True, exist_ok=True)
        payload = {"plan": plan.path, "sequence": list(plan.sequence), "exclude": sorted(plan.exclude),
                   "dry_run": request.dry_run, "skipped": list(applied.skipped), **applied.trace.to_json()}
        Path(request.trace_json).write_text(json.dumps(payload, indent=2) + "\n")


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


def summary(applied, request: Request, events: bool | None = None) -> str:
    """Per component (in running order: the plan's sequence, then components with a hook of their own, then the
    exclusions) its size; per call the bytes moved each way, the peak resident and the time; with `events`
    (default `request.events`) every transfer of those calls, labelled when the plan did not ask for it."""
    plan, trace = applied.plan, applied.trace
    mode = " (dry run: hooks executed on the CPU; figures are what the device would have received)" \
        if applied.dry_run else ""
    loaded = "".join(f", {key} {value}" for key, value in (("torch_dtype", plan.torch_dtype),
                                                           ("variant", plan.variant)) if value)
    lines = [f"plan {plan.path}: {plan.offload_seq} on {applied.target}{loaded}{mode}"]
    if applied.budget is not None:
        lines.append(_policy_line(applied))
    if applied.skipped:
        lines.append(f"skipped (None in the pipeline, as diffusers does): {', '.join(applied.skipped)}")
    kept = sorted(plan.exclude - set(applied.skipped))
    if kept:
        lines.append(f"kept on the device: {', '.join(kept)}")
    lines.append("")
    lines.append(f"{'component':<20}{'size':>12}")
    sizes = _component_sizes(trace.sizes)
    for name, role in _running_order(plan, sizes):
        lines.append(f"{name + role:<20}{_mb(sizes[name]):>12}")
    lines.append("")
    back = applied.copied_back  # the budget policy: evictions copy nothing back unless a weight changed
    header = f"{'call':<6}{'loaded':>12}"
    header += f"{'offloaded':>12}" if back is None else f"{'evicted':>12}{'copied back':>13}"
    lines.append(f"{header}{'peak resident':>16}{'time':>10}")
    for stats in sorted(trace.calls.values(), key=lambda s: s.call):
        if stats.call > request.calls:
            continue
        seconds = f"{stats.seconds:.3f}s" if stats.seconds is not None else "-"
        copied = "" if back is None else f"{_mb(back.get(stats.call, 0)):>13}"
        lines.append(f"{stats.call:<6}{_mb(stats.loaded_bytes):>12}{_mb(stats.offloaded_bytes):>12}{copied}"
                     f"{_mb(stats.peak_resident_bytes):>16}{seconds:>10}")
    if request.events if events is None else events:
        lines += _event_lines(trace, request.calls)
    if request.out:
        lines.append(f"\nimage written to {visible(request.out)}")
    if request.trace_json:
        lines.append(f"trace ({len(trace.events)} events) written to {visible(request.trace_json)}")
    return "\n".join(lines) + "\n"


def _policy_line(applied) -> str:
    """The budget policy's line: its budget, and how its schedule was made."""
    from planner.units import human

    schedule = applied.schedule
    how = "schedule: the fewest bytes moved, exact" if schedule is not None and schedule.exact else \
        (schedule.note if schedule is not None else "no schedule fits the budget")
    copies = "host copies kept: an eviction copies back only weights changed on the device" \
        if applied.plan.keep_host_copy else "no host copies: every eviction copies back"
    line = f"policy budget: {human(applied.budget)} on {applied.target} ({how}; {copies})"
    used = applied.host  # what the host holds and pins
    if used is None:
        return line
    host = f"host copies held {human(used.held)}, pinned {human(used.pinned)}: {used.note}"
    if applied.plan.granularity != "block" or applied.schedule is None:  # (no block schedule fits any more)
        return f"{line}\n{host}"
    schedule = applied.schedule
    keys = schedule.model.keys
    moved = sum(1 for key in keys if schedule.loads(key))
    return (f"{line}\ngranularity block: {len(schedule.resident)} of {len(keys)} blocks resident, {moved} moved "
            f"each call ({len(schedule.streamed)} of them more than once), {human(schedule.h2d_bytes)} per steady "
            f"call; {host}")


def _component_sizes(sizes: dict) -> dict:
    """The trace's sizes per component: a block plan's `component/block` names summed into their component."""
    found: dict = {}
    for name, size in sizes.items():
        component = name.split("/", 1)[0]
        found[component] = found.get(component, 0) + size
    return found


def _running_order(plan: Plan, sizes: dict) -> list[tuple[str, str]]:
    """(name, role) of each component the trace knows: the chain in the plan's order, then the components
    outside it with a hook of their own, then the exclusions (both in the pipeline's order)."""
    chained = [(name, "") for name in plan.sequence if name in sizes]
    rest = [name for name in sizes if name not in plan.sequence]
    return (chained + [(name, " (own hook)") for name in rest if name not in plan.exclude]
            + [(name, " (excluded)") for name in rest if name in plan.exclude])


def _event_lines(trace, calls: int) -> list[str]:
    """One line per transfer of the first `calls` calls, then how many came after them (the exclusions going
    back to the device once the last call ended)."""
    shown = [e for e in trace.events if e.call <= calls]
    lines = ["", f"{'call':<6}{'transfer':<10}{'component':<20}{'size':>12}  why"]
    for e in shown:
        lines.append(f"{e.call:<6}{e.event:<10}{e.component:<20}{_mb(e.bytes):>12}  {e.reason or ''}".rstrip())
    after = len(trace.events) - len(shown)
    if after:
        lines.append(f"(and {after} after the last call: {', '.join(_describe(e) for e in trace.events[-after:])})")
    return lines


def _describe(event) -> str:
    reason = f" ({event.reason})" if event.reason else ""
    return f"{event.event} {event.component}{reason}"


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


def _mb(n: int) -> str:
    return f"{n / 2**20:.2f} MiB"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else "(no message)"


def _load_error(plan: Plan, key: str, message: str, fix: str) -> PlanError:
    return PlanError([plan.problem(key, PLN304, message, fix)])
