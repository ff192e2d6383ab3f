"""Locating and loading the pipeline `planner apply` runs: raises `PlanError` (PLN304, PLN407), one located line each.

Importing this module loads no torch. `locate_source` checks what it can without torch (the source folder and its
model_index.json); `load_pipeline` imports diffusers, checks the plan's class against the folder, and only then
reads the weights. Here too: where a problem with a key the command line can set is located (`FLAGS`, `locator`).
"""

from __future__ import annotations

import difflib
import json
import os
import stat
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from planner.plan import Plan, PlanError, Problem
from planner.rules import PLN304, PLN407, Rule

# Plan keys a command-line flag can set: a problem with one of them is located at the flag when the flag set it.
FLAGS = {"pipeline.source": "--source", "device": "--device", "gpu_id": "--gpu-id", "pipeline.torch_dtype": "--dtype",
         "pipeline.variant": "--variant", "policy": "--policy", "budget": "--budget", "granularity": "--granularity"}
MODEL_INDEX_LIMIT = 1 << 20  # a model_index.json holds a few hundred bytes; a file this large is not one


@dataclass(frozen=True)
class Source:
    """What `from_pretrained` gets: a local folder with the `_class_name` its model_index.json holds, or a hub id
    (`folder_class` None: nothing of it can be read before the download)."""

    name: str
    folder_class: str | None = None


def locator(plan: Plan, request) -> Callable[..., Problem]:
    """`at(key, rule, message, fix)`: a problem located at the flag that set `key` when one did (`request.overridden`,
    a `planner.executor.run.Request`'s), else at the plan's `key`."""

    def at(key: str, rule: Rule, message: str, fix: str | None = None) -> Problem:
        if key in request.overridden:
            return rule.problem(FLAGS[key], message, fix)
        return plan.problem(key, rule, message, fix)

    return at


def locate_source(plan: Plan, request, at: Callable[..., Problem] | None = None) -> Source:
    """The pipeline to load (`request.source`, a `planner.executor.run.Request`'s, else the plan's), checked as far
    as it can be without torch: a local folder must exist and hold a readable model_index.json naming its class; a
    hub id is taken as it is. Raises `PlanError` (PLN304)."""
    return _located(plan, request.source, "pipeline.source" in request.overridden, at or locator(plan, request))


def _located(plan: Plan, given: str | None, flagged: bool, at: Callable[..., Problem]) -> Source:
    """`locate_source` for the source `given` (None: the plan's), `flagged` when --source gave it."""
    spelled = FLAGS["pipeline.source"] if flagged else "pipeline.source"
    name = given if given is not None else plan.pipeline_source
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
        return f"{str(index)!r} is not JSON: {first_line(exc)}", None
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
        source = _located(plan, source, False, at)
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
                            f"{type(exc).__name__}: {first_line(exc)}",
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


def first_line(exc: BaseException) -> str:
    """The first line of `exc`'s message, for a one-line problem."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else "(no message)"


def _load_error(plan: Plan, key: str, message: str, fix: str) -> PlanError:
    return PlanError([plan.problem(key, PLN304, message, fix)])
