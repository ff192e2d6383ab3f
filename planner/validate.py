"""The driver: a plan file -> its problems, and its `Plan` when it has no error.

    read_plan_bytes, load (loader) -> schema -> device -> graph -> policy [-> pipeline class] -> problems | Plan

It sits above the loader and every rule module, and below the CLI and the executor: the core reads top-down, with
no import circle. `check` (what `planner validate` reports) also checks `pipeline.class` against the shipped
index of diffusers pipelines; `load_plan` (what `planner apply` and `show` use) does not, because `apply` checks
the loaded pipeline itself, which knows its installed diffusers better than an index made from one version.
Warnings (`severity: warning`) are reported with the errors but never keep a plan from loading.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

from planner import loader, planfile, units
from planner.loader import Document
from planner.plan import Plan, PlanError, Problem
from planner.rules import PLN000, device, graph, pipeline, policy, schema
from planner.rules.context import Context


def check(path: str | Path, overrides: Mapping[str, object] | None = None) -> list[Problem]:
    """Every problem of the plan file at `path`, in source order: the file's own and its pipeline class's against
    the index, warnings included (empty when it is clean). Never raises for a bad plan."""
    doc = _document(path)
    if isinstance(doc, list):
        return doc
    checked = _RulesRun(doc, overrides)
    checked.against_index()
    return checked.problems()


def load_plan(path: str | Path, overrides: Mapping[str, object] | None = None) -> Plan:
    """The `Plan` in the file at `path`, with command-line style `overrides` (such as {"device": "xpu"}) applied
    and checked by the same rules; raises `PlanError` with every problem of the file when any is an error."""
    doc = _document(path)
    if isinstance(doc, list):
        raise PlanError(doc)
    plan, problems = check_document(doc, overrides)
    if plan is None:
        raise PlanError(problems)
    return plan


def load_text(text: str, path: str = "<planner.apply>", overrides: Mapping[str, object] | None = None) -> Plan:
    """The `Plan` in the YAML `text`, read and checked as a file would be: its problems located at `path` (a pseudo
    path such as `<planner.apply>`), lines and columns in `text`; raises `PlanError` when any is an error."""
    if len(text.encode("utf-8")) > planfile.MAX_PLAN_BYTES:
        raise PlanError([PLN000.problem(path, f"the plan text is over {planfile.MAX_PLAN_BYTES} bytes",
                                        "a plan is a few hundred bytes: check what was passed")])
    plan, problems = check_document(loader.load(text.encode("utf-8"), path), overrides)
    if plan is None:
        raise PlanError(problems)
    return plan


def check_document(doc: Document, overrides: Mapping[str, object] | None = None) -> tuple[Plan | None, list[Problem]]:
    """The loaded document's `Plan` (None when any of its problems is an error) and its problems, in source order:
    the file's own rules (schema, device, graph), not the pipeline class's."""
    checked = _RulesRun(doc, overrides)
    return checked.plan(), checked.problems()


def _document(path) -> Document | list[Problem]:
    """The plan file at `path` loaded, or the PLN000 problem of a path that cannot be read."""
    path = os.fsdecode(path)
    try:
        return loader.load(planfile.read_plan_bytes(path), path)
    except PlanError as exc:
        return exc.problems


class _RulesRun:
    """A document through the file's own rules: the names, edges, exclusions and sequence they found."""

    def __init__(self, doc: Document, overrides: Mapping[str, object] | None):
        self.doc, self.ctx, self.sequence = doc, None, None
        if doc.data is None:
            return
        self.ctx = ctx = Context(doc, overrides or {})
        schema.check(ctx)
        device.check(ctx)
        self.names, self.edges = graph.components(ctx)
        self.excluded = graph.exclude(ctx, self.names)
        self.own_hook = graph.own_hook(ctx, self.names, self.excluded)
        self.pipes = graph.pipes(ctx, self.names)
        self.sequence = graph.sequence(ctx, self.names, self.edges)
        policy.check(ctx, self.names, self.excluded, self.own_hook)

    def against_index(self) -> None:
        if self.ctx is not None:
            pipeline.check(self.ctx, self.names, self.excluded, self.own_hook, self.pipes)

    def problems(self) -> list[Problem]:
        found = self.doc.problems + (self.ctx.problems if self.ctx is not None else [])
        return _sorted(found) if found else []

    def plan(self) -> Plan | None:
        if self.sequence is None or any(p.severity == "error" for p in self.doc.problems + self.ctx.problems):
            return None
        ctx, doc = self.ctx, self.doc
        data = ctx.data
        pipe = data.get("pipeline") or {}
        locations = {}
        for path, mark in doc.key_marks.items():
            if len(path) <= 2 and path[0] not in ctx.overridden:
                locations[".".join(map(str, path))] = mark
        for key in ("exclude", "own_hook"):
            for i, name in enumerate(data.get(key) or ()):
                locations[f"{key}.{name}"] = doc.where((key, i))
        if isinstance(data["components"], list):
            for i, name in enumerate(data["components"]):
                locations[f"components.{name}"] = doc.where(("components", i))
        return Plan(
            path=doc.path, version=data["version"], device=data["device"], gpu_id=data.get("gpu_id"),
            sequence=self.sequence, exclude=frozenset(data.get("exclude") or ()),
            own_hook=frozenset(self.own_hook), pipes=self.pipes,
            edges=tuple(self.edges), policy=data.get("policy", "chain"), **_budget_keys(data),
            pipeline_class=pipe.get("class"), pipeline_source=pipe.get("source"),
            torch_dtype=pipe.get("torch_dtype"), variant=pipe.get("variant"), locations=locations,
            text=doc.text if not ctx.flags else None,  # overridden: the text no longer says what the plan is
        )


def _budget_keys(data: dict) -> dict:
    """The `Plan` fields of the budget policy's keys, sizes in bytes (the schema has checked every value)."""
    found = {key: units.parse_size(data[key]) for key in ("budget", "reserve") if key in data}
    if "keep_host_copy" in data:
        found["keep_host_copy"] = data["keep_host_copy"]
    if "uses" in data:
        found["uses"] = tuple(data["uses"])
    for key in ("granularity", "steps", "prefetch"):
        if key in data:
            found[key] = data[key]
    if "pin" in data:
        found["pin"] = str(data["pin"]).lower()  # true/false as YAML booleans or as strings
    return found


def _sorted(problems: list[Problem]) -> list[Problem]:
    """In source order; only exact duplicates are dropped (two different problems at one place are both kept)."""
    return list(dict.fromkeys(sorted(problems, key=lambda p: (p.path, p.line, p.column, p.rule))))
