"""A pipeline's sizes from any source that lists and reads its files (a local folder, a hub repo): model_index.json,
then each model component's weights chosen as diffusers' `from_pretrained` chooses them (variant, shard index,
single file), then their headers read in one batch.

Raises nothing for a bad pipeline: `read_pipeline` returns (sizes or None, problems: PLN402, PLN403, PLN406, PLN407).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace
from typing import Iterable, Mapping

from planner.folder.sizes import TORCH_DTYPES, ComponentSizes, ModelSizes
from planner.plan import Problem
from planner.rules import PLN402, PLN403, PLN406, PLN407

_COMPONENT = re.compile(r"[A-Za-z_]\w*")


_BASES = {"diffusers": ("diffusion_pytorch_model",), "transformers": ("model",)}


def read_pipeline(source, label: str, variant, torch_dtype):
    """The sizes of a pipeline whose files `source` lists and reads (a `Folder` or a `_Hub`)."""
    index, found = source.json("model_index.json", PLN402)
    if found:
        return None, [found]
    parsed, problems = pipeline_index(index, source.where("model_index.json"))
    if parsed is None:
        return None, problems
    class_name, entries, absent = parsed
    listings = {name: source.listing(name) for name in entries}
    problems += [PLN403.problem(source.where(name), f"model_index.json names {name} ({entries[name][1]}) but "
                                f"there is no folder {name}") for name, files in listings.items() if files is None]
    if variant and not any(has_variant_files(files or {}, variant) for files in listings.values()):
        return None, problems + [PLN407.problem(source.where("model_index.json"),
                                                f"no component has files of the variant {variant!r}")]
    picks = [_pick(source, name, entries[name], files, variant) for name, files in listings.items()
             if files is not None and _is_model(files)]
    components, found = _read_models(source, picks)
    others = {name: entries[name] for name, files in listings.items()
              if files is not None and not _is_model(files)}
    unread = tuple(name for name in entries if name not in components and name not in others)
    return ModelSizes(class_name, label, components, others, absent, variant, torch_dtype, unread), problems + found


def _read_models(source, picks: list[_Pick]) -> tuple[dict[str, ComponentSizes], list[Problem]]:
    """The sizes of the picked components (every header read in one batch), and the problems of the others."""
    wanted = [rel for p in picks for rel in p.headers]
    headers = dict(zip(wanted, source.headers(wanted), strict=True))
    components, problems = {}, []
    for p in picks:
        comp, found = _component(source, p, headers)
        problems += found
        if comp is not None:
            components[p.name] = comp
    return components, problems


def pipeline_index(index, where: str):
    """((class name, {component: (library, class)}, absent names), problems) of a model_index.json document;
    None in place of the triple when it is not a pipeline index."""
    if not isinstance(index, dict):
        return None, [PLN402.problem(where, "model_index.json is not a JSON object")]
    class_name = index.get("_class_name")
    if isinstance(class_name, list) and len(class_name) == 2:  # a custom pipeline: [module file, class]
        class_name = class_name[1]
    if not isinstance(class_name, str) or not class_name:
        return None, [PLN402.problem(where, "model_index.json has no _class_name (the pipeline class)")]
    entries, absent, problems = {}, [], []
    for name, value in index.items():
        if name.startswith("_") or not isinstance(value, list):
            continue  # _diffusers_version, and pipeline options such as requires_safety_checker: true
        if value == [None, None]:
            absent.append(name)
        elif not _COMPONENT.fullmatch(name):
            problems.append(PLN402.problem(where, f"component name {name!r} is not an identifier"))
        elif len(value) == 2 and all(isinstance(v, str) and v for v in value):
            entries[name] = (value[0], value[1])
        else:
            problems.append(PLN402.problem(where, f"component {name}: {json.dumps(value)[:80]} is neither "
                                           "[library, class] nor [null, null]"))
    return (None if problems else (class_name, entries, tuple(absent))), problems


def _is_model(files: set[str]) -> bool:
    """Whether a component folder belongs to a model (it has config.json or weights), not to a scheduler,
    tokenizer or feature extractor."""
    return "config.json" in files or any(f.endswith((".safetensors", ".bin", ".index.json")) for f in files)


def has_variant_files(files: Iterable[str], variant: str) -> bool:
    """diffusers' `_identify_model_variants`: a folder has the variant when a file's second dot-part starts with
    it (`model.fp16.safetensors`, `diffusion_pytorch_model.fp16-00001-of-00002.safetensors`)."""
    return any(len(parts := f.split(".")) > 1 and parts[1].startswith(variant) for f in files)


def _add_variant(name: str, variant: str | None) -> str:
    """diffusers' and transformers' `_add_variant`: the variant goes before the last suffix."""
    if variant is None:
        return name
    stem, suffix = name.rsplit(".", 1)
    return f"{stem}.{variant}.{suffix}"


def weights_candidates(library: str, variant: str | None) -> list[str]:
    """The weights file names `from_pretrained` tries for a component of `library`, in its order: diffusers tries
    a shard index, its legacy variant spelling, then one file; transformers one file, then an index. Another
    library's component is tried both ways."""
    names = []
    for base in _BASES.get(library, ("diffusion_pytorch_model", "model")):
        index = _add_variant(f"{base}.safetensors.index.json", variant)
        single = _add_variant(f"{base}.safetensors", variant)
        legacy = [f"{base}.safetensors.{variant}.index.json"] if variant else []
        names += [single, index] if base == "model" else [index, *legacy, single]
    return names


@dataclass(frozen=True)
class _Pick:
    """The weights chosen for one model component, before any header is read: the file diffusers would load
    (None: no weights), and for a shard index its shards and weight_map; `headers` are the files to read."""

    name: str
    library: str
    class_name: str
    variant: str | None
    file: str | None
    candidates: tuple[str, ...]
    shards: tuple[str, ...] = ()
    weight_map: Mapping[str, str] = field(default_factory=dict)
    problems: tuple[Problem, ...] = ()
    config_dtype: str | None = None

    @property
    def headers(self) -> list[str]:
        if self.problems or self.file is None:
            return []
        return [f"{self.name}/{s}" for s in self.shards] if self.file.endswith(".json") else [
            f"{self.name}/{self.file}"]


def _pick(source, name: str, entry: tuple[str, str], files: set[str], variant) -> _Pick:
    """The weights of component `name` as diffusers chooses them: the variant when the folder has it (else the
    files without one), then the first of `weights_candidates` present; a shard index is read here."""
    use = variant if variant and has_variant_files(files, variant) else None
    candidates = tuple(weights_candidates(entry[0], use))
    found = next((f for f in candidates if f in files), None)
    config_dtype = _config_dtype(source, name, files) if entry[0] == "transformers" else None
    pick = _Pick(name, entry[0], entry[1], use, found, candidates, config_dtype=config_dtype)
    if found is None:
        return replace(pick, problems=(_no_weights(source, name, files, candidates),))
    if not found.endswith(".json"):
        return pick
    rel = f"{name}/{found}"
    index, failure = source.json(rel, PLN406)
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if failure is None and (not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in
                                                                        weight_map.values())):
        failure = PLN406.problem(source.where(rel), "not a shard index: it needs a weight_map of tensor names "
                                 "to shard files")
    if failure:
        return replace(pick, problems=(failure,))
    shards = tuple(sorted(set(weight_map.values())))
    unsafe = [s for s in shards if not s or "/" in s or "\\" in s or s in (".", "..")]
    missing = [s for s in shards if s not in files]
    if unsafe:
        failure = PLN406.problem(source.where(rel), "shard names must be plain file names in the component "
                                 f"folder, not {', '.join(map(repr, unsafe))}")
    elif missing:
        failure = PLN406.problem(source.where(rel), f"{len(missing)} of {len(shards)} shards missing: "
                                 f"{', '.join(missing)}", "download the missing shards")
    return replace(pick, shards=shards, weight_map=weight_map, problems=(failure,) if failure else ())


def _config_dtype(source, name: str, files: set[str]) -> str | None:
    """The dtype a transformers model's config.json names (what its "auto" loads at), or None: no config, one
    that cannot be read (loading would fail anyway: the weights are what this module checks), or no dtype."""
    if "config.json" not in files:
        return None
    config, failure = source.json(f"{name}/config.json", PLN403)
    value = (config.get("dtype") or config.get("torch_dtype")) if failure is None and isinstance(config, dict) else None
    return value if value in TORCH_DTYPES else None


def _no_weights(source, name: str, files: set[str], candidates: tuple[str, ...]) -> Problem:
    pickles = sorted(f for f in files if f.endswith(".bin"))
    if pickles:
        return PLN403.problem(source.where(name), f"{name} holds only pickle weights ({', '.join(pickles)}), "
                              "whose sizes cannot be read without loading them",
                              "convert it to safetensors: save_pretrained(folder, safe_serialization=True)")
    return PLN403.problem(source.where(name), f"{name} has no weights: none of {', '.join(candidates)}")


def _component(source, pick: _Pick, headers: dict) -> tuple[ComponentSizes | None, list[Problem]]:
    """The sizes of a picked component from its headers, or None and why: each tensor in one shard only, and the
    shards holding exactly the tensors the weight_map names."""
    if pick.problems:
        return None, list(pick.problems)
    read = [headers[rel] for rel in pick.headers]
    problems = [found for _, found in read if found]
    if problems:
        return None, problems
    files = tuple(f"{pick.name}/{f}" for f in ((pick.file, *pick.shards) if pick.shards else (pick.file,)))
    where = source.where(files[0])
    home: dict[str, str] = {}
    tensors = []
    for rel, (found, _) in zip(pick.headers, read, strict=True):
        shard = rel.rsplit("/", 1)[1]
        for t in found:
            if t.name in home:
                return None, [PLN406.problem(where, f"tensor {t.name!r} is stored in both {home[t.name]} "
                                             f"and {shard}")]
            home[t.name] = shard
            tensors.append(t)
    if pick.shards:
        wrong = sorted(n for n in set(home) | set(pick.weight_map) if home.get(n) != pick.weight_map.get(n))
        if wrong:
            first = wrong[0]
            mapped, stored = pick.weight_map.get(first, "no shard"), home.get(first, "no shard")
            return None, [PLN406.problem(where, f"the weight_map disagrees with the shards for {len(wrong)} "
                                         f"tensors (first: {first!r}, mapped to {mapped}, stored in {stored})")]
    return ComponentSizes(pick.name, pick.library, pick.class_name, files, tuple(tensors), pick.variant,
                          pick.config_dtype), []
