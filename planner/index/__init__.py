"""The shipped index of diffusers pipeline classes, read with json alone (no torch, no diffusers import).

`planner/data/pipelines.json` is written by `python scripts/generate_index.py` from an installed diffusers; this
module parses it once per process (`load()`) and answers lookups with frozen records, built on first `get`.

The file: {"format": 1, "diffusers_version": "0.42.1", "transformers_version": "5.24.0", "pipelines": {class:
record}, "skipped": {class: reason}}.
A record, as the generator writes it:
  sequence            `model_cpu_offload_seq` exactly as written: a string ("" included), or null; names may repeat
  exclude, optional   `_exclude_from_cpu_offload`, `_optional_components`, as written
  components          {name: {"types": [declared types, "library.Class"], "model": true | false | null}}: the
                      names of diffusers' `components` property (`_get_signature_keys`), types from
                      `_get_signature_types`
  offload             what `enable_model_cpu_offload` runs: "chain" (diffusers' own method over `sequence`),
                      "connected" (an override that calls it on each connected pipeline), "custom" (another
                      override, e.g. AudioLDM2's: the sequence is not used), "none" (no sequence: diffusers raises)
  effective_sequence  "chain" only: the names diffusers hooks, in chain order: a repeated name once, at its first
                      place; names that are not model components dropped (diffusers skips them)
  effective_exclude   "chain" only: the exclusions diffusers honours (moved to the device); an exclusion that is
                      also in the chain is chained instead (AmusedImg2ImgPipeline's vqvae, the Kandinsky priors)
  connected_pipes     classes with `_load_connected_pipes` only: [{"attribute": "prior_pipe", "class", "components":
                      {its name: the combined class's name}, "sequence", "exclude", "effective_sequence",
                      "effective_exclude"}], effective names in the combined class's names; in call order when
                      offload is "connected", else informational (the combined class chains its own sequence)

Which components are models (`model` per component, decided by the generator on the real classes, because type
names cannot tell `diffusers.IFWatermarker`, a ModelMixin, from a scheduler): true when a declared type (inside
unions, list[...] and tuple[...]) is a `torch.nn.Module` subclass or a transformers AutoModel factory; false when
the declared types are known non-modules (tokenizers, schedulers, processors, guiders); null when nothing tells:
no annotation, `Any`, or only a placeholder for an optional dependency that is not installed (Cosmos' safety
checker without cosmos_guardrail). diffusers itself decides with `isinstance` at run time, so the effective chain
treats null as a model; a validator should be certain only about true (`models`) and false.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from types import MappingProxyType
from typing import Mapping

FORMAT = 1
PATH = Path(__file__).resolve().parent.parent / "data" / "pipelines.json"


@dataclass(frozen=True)
class Component:
    """A component of a pipeline class: its declared types, and whether it is a torch module (True), is not
    (False), or cannot be told from its declaration (None)."""

    name: str
    types: tuple[str, ...]
    model: bool | None


@dataclass(frozen=True)
class Chain:
    """One chain diffusers installs: `sequence` hooked in order (starting N offloads N-1), `exclude` moved to the
    device once; `pipe` is the connected pipeline's attribute (`prior_pipe`), None for the class's own chain.
    Names are the pipeline class's component names."""

    pipe: str | None
    sequence: tuple[str, ...]
    exclude: tuple[str, ...]


@dataclass(frozen=True, eq=False)
class ConnectedPipe:
    """A pipeline a combined class builds (`self.prior_pipe = KandinskyPriorPipeline(prior=prior_prior, ...)`)."""

    attribute: str
    pipeline_class: str
    components: Mapping[str, str]  # its component name -> the combined class's name
    model_cpu_offload_seq: str | None
    exclude: tuple[str, ...]
    effective_sequence: tuple[str, ...]  # in the combined class's names
    effective_exclude: tuple[str, ...]  # in the combined class's names


@dataclass(frozen=True, eq=False)
class Pipeline:
    """The index record of one diffusers pipeline class (see the module docstring for each field's meaning)."""

    name: str
    model_cpu_offload_seq: str | None
    exclude: tuple[str, ...]
    optional: tuple[str, ...]
    components: Mapping[str, Component]
    offload: str
    effective_sequence: tuple[str, ...] | None
    effective_exclude: tuple[str, ...] | None
    connected: tuple[ConnectedPipe, ...]

    @property
    def sequence(self) -> tuple[str, ...]:
        """`model_cpu_offload_seq` split on "->", repeats kept; () when there is none or it is empty."""
        return tuple(self.model_cpu_offload_seq.split("->")) if self.model_cpu_offload_seq else ()

    @property
    def models(self) -> tuple[str, ...]:
        """The names of the components declared as torch modules, sorted."""
        return tuple(name for name, component in self.components.items() if component.model is True)

    @property
    def undetermined(self) -> tuple[str, ...]:
        """The names of the components whose declaration cannot tell whether they are torch modules, sorted."""
        return tuple(name for name, component in self.components.items() if component.model is None)

    @property
    def combined(self) -> bool:
        """True for a class with `_load_connected_pipes` (Kandinsky 2.1/2.2, Wuerstchen, Stable Cascade combined)."""
        return bool(self.connected)

    @property
    def chains(self) -> tuple[Chain, ...]:
        """The chains `enable_model_cpu_offload` installs: one for "chain", one per connected pipeline for
        "connected", none for "custom" and "none"."""
        if self.offload == "chain":
            return (Chain(None, self.effective_sequence, self.effective_exclude),)
        if self.offload == "connected":
            return tuple(Chain(p.attribute, p.effective_sequence, p.effective_exclude) for p in self.connected)
        return ()

    @property
    def unknown_in_sequence(self) -> tuple[str, ...]:
        """Names of the sequence that are not components of the class (diffusers skips them), first place kept."""
        return tuple(dict.fromkeys(n for n in self.sequence if n not in self.components))


class Index:
    """A parsed index: `get`, `names`, `close` and `skipped` over the classes of one diffusers version."""

    def __init__(self, data: dict):
        """Wrap a parsed index file; raises ValueError for another format."""
        if data.get("format") != FORMAT:
            raise ValueError(
                f"pipeline index format {data.get('format')!r} is not {FORMAT}: run python scripts/generate_index.py"
            )
        self.diffusers_version: str = data["diffusers_version"]
        self.transformers_version: str | None = data.get("transformers_version")
        self.skipped: Mapping[str, str] = MappingProxyType(data["skipped"])
        self._raw: dict = data["pipelines"]
        self._records: dict[str, Pipeline] = {}
        self._lower: dict[str, str] | None = None
        self._longest = 0

    def __contains__(self, name: object) -> bool:
        return name in self._raw

    def __len__(self) -> int:
        return len(self._raw)

    def names(self) -> tuple[str, ...]:
        """The indexed class names, sorted (skipped classes are not among them)."""
        return tuple(sorted(self._raw))

    def get(self, name: str) -> Pipeline | None:
        """The record of class `name`, or None when it is not indexed (see `skipped` for the ones left out)."""
        record = self._records.get(name)
        if record is None and name in self._raw:
            record = self._records[name] = _pipeline(name, self._raw[name])
        return record

    def close(self, name: str, limit: int = 3) -> tuple[str, ...]:
        """Up to `limit` known class names (indexed or skipped) that look like `name`, best first, for a "did you
        mean"; a difference in case alone ranks first. Bounded cost: a name over 3 times the longest known one
        cannot reach difflib's 0.6 similarity (at most 2 * short / (short + long)), so it is not compared."""
        lower = self._lowered()
        query = name.lower()
        if len(query) > 3 * self._longest:
            return ()
        exact = [lower[query]] if query in lower and lower[query] != name else []
        rest = difflib.get_close_matches(query, list(lower), n=limit, cutoff=0.6)
        found = exact + [lower[m] for m in rest if lower[m] not in exact and lower[m] != name]
        return tuple(found[:limit])

    def _lowered(self) -> dict[str, str]:
        if self._lower is None:
            self._lower = {n.lower(): n for n in sorted(self._raw.keys() | self.skipped.keys())}
            self._longest = max(map(len, self._lower), default=0)
        return self._lower


def _pipeline(name: str, raw: dict) -> Pipeline:
    return Pipeline(
        name=name,
        model_cpu_offload_seq=raw["sequence"],
        exclude=tuple(raw["exclude"]),
        optional=tuple(raw["optional"]),
        components=MappingProxyType(
            {n: Component(n, tuple(c["types"]), c["model"]) for n, c in sorted(raw["components"].items())}
        ),
        offload=raw["offload"],
        effective_sequence=_tuple_or_none(raw["effective_sequence"]),
        effective_exclude=_tuple_or_none(raw["effective_exclude"]),
        connected=tuple(_connected(part) for part in raw["connected_pipes"] or ()),
    )


def _connected(raw: dict) -> ConnectedPipe:
    return ConnectedPipe(
        attribute=raw["attribute"],
        pipeline_class=raw["class"],
        components=MappingProxyType(dict(raw["components"])),
        model_cpu_offload_seq=raw["sequence"],
        exclude=tuple(raw["exclude"]),
        effective_sequence=tuple(raw["effective_sequence"]),
        effective_exclude=tuple(raw["effective_exclude"]),
    )


def _tuple_or_none(values) -> tuple[str, ...] | None:
    return None if values is None else tuple(values)


@lru_cache(maxsize=4)
def load(path: Path = PATH) -> Index:
    """The index at `path` (default: the shipped one), parsed once per process and path. Raises OSError when the
    file cannot be read, ValueError when it is not an index of this format."""
    with open(path, "rb") as f:
        return Index(json.load(f))


def get(name: str) -> Pipeline | None:
    """The shipped index's record of class `name`, or None."""
    return load().get(name)


def names() -> tuple[str, ...]:
    """The class names of the shipped index, sorted."""
    return load().names()


def close(name: str, limit: int = 3) -> tuple[str, ...]:
    """Did-you-mean candidates for `name` from the shipped index (see `Index.close`)."""
    return load().close(name, limit)


def skip_reason(name: str) -> str | None:
    """Why the generator left class `name` out of the shipped index (a missing optional backend), or None."""
    return load().skipped.get(name)
