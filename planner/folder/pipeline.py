"""A pipeline's sizes from any source that lists and reads its files (a local folder, a hub repo): model_index.json,
then each model component's weights chosen as diffusers' `from_pretrained` chooses them (variant, shard index,
single file), then their headers read one by one, within the bounds of `planner.folder.bounds`: past one, nothing
more is read and the file that met it is the problem.

Which components are models is what model_index.json says (`component_kind`: the library and class), not what
their folders hold: an empty `unet/` is a model whose weights are missing, never a scheduler.

Raises nothing for a bad pipeline: `read_pipeline` returns (sizes or None, problems: PLN402, PLN403, PLN404, PLN406,
PLN407).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace
from typing import Iterable, Mapping

from planner.folder import bounds
from planner.folder.bounds import LISTED, MAX_NAME_CHARS, PAST_A_BOUND, cut, listed, shown
from planner.folder.files import REGULAR
from planner.folder.sizes import TORCH_DTYPES, ComponentSizes, ModelSizes
from planner.plan import Problem
from planner.rules import PLN402, PLN403, PLN406, PLN407

_COMPONENT = re.compile(r"[A-Za-z_]\w*")


_BASES = {"diffusers": ("diffusion_pytorch_model",), "transformers": ("model",)}

# What the folder of each kind of component holds, besides a model's weights (the fix of a missing folder).
_CONFIGS = {"scheduler": "scheduler_config.json", "guider": "guider_config.json",
            "processor": "preprocessor_config.json",
            "tokenizer": "tokenizer_config.json and the tokenizer's vocabulary files"}


def read_pipeline(source, label: str, variant, torch_dtype):
    """The sizes of a pipeline whose files `source` lists and reads (a `Folder` or a `_Hub`), within its `budget`."""
    index, found = source.json("model_index.json", PLN402)
    if found:
        return None, [found]
    parsed, problems = pipeline_index(index, source.where("model_index.json"))
    if parsed is None:
        return None, problems
    class_name, entries, absent = parsed
    kinds = {name: component_kind(*entry) for name, entry in entries.items()}
    listings = {name: source.listing(name) for name in entries}
    problems += [_no_folder(source, name, entries[name], kinds[name], variant) for name, files in listings.items()
                 if files is None]
    if variant and not any(has_variant_files(files or {}, variant) for files in listings.values()):
        return None, problems + [PLN407.problem(source.where("model_index.json"),
                                                f"no component has files of the variant {shown(variant)}")]
    models = {name: files for name, files in listings.items() if files is not None and _is_model(kinds[name], files)}
    picks = []
    for name, files in models.items():
        if source.budget.spent:
            break  # the rest is not read: the problem of the bound says why
        picks.append(_pick(source, name, entries[name], kinds[name], files, variant))
    components, found = _read_models(source, picks)
    problems += found
    if source.budget.first is not None and source.budget.first not in problems:
        problems.append(source.budget.first)  # met where no problem is reported (a config.json)
    others = {name: entries[name] for name, files in listings.items() if files is not None and name not in models}
    unread = tuple(name for name in entries if name not in components and name not in others)
    return ModelSizes(class_name, label, components, others, absent, variant, torch_dtype, unread), problems


def _read_models(source, picks: list[_Pick]) -> tuple[dict[str, ComponentSizes], list[Problem]]:
    """The sizes of the picked components (their headers read one by one, until a bound is met), and the problems
    of the others."""
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
    None in place of the triple when it is not a pipeline index (more than MAX_COMPONENTS components, or a name
    longer than MAX_NAME_CHARS, included)."""
    if not isinstance(index, dict):
        return None, [PLN402.problem(where, "model_index.json is not a JSON object")]
    class_name = index.get("_class_name")
    if isinstance(class_name, list) and len(class_name) == 2:  # a custom pipeline: [module file, class]
        class_name = class_name[1]
    if not isinstance(class_name, str) or not class_name:
        return None, [PLN402.problem(where, "model_index.json has no _class_name (the pipeline class)")]
    if len(class_name) > MAX_NAME_CHARS:
        return None, [PLN402.problem(where, f"model_index.json's _class_name {_too_long(class_name)}")]
    # _diffusers_version, and pipeline options such as requires_safety_checker: true, are no components
    named = [(name, value) for name, value in index.items() if not name.startswith("_") and isinstance(value, list)]
    if len(named) > bounds.MAX_COMPONENTS:
        return None, [PLN402.problem(where, f"model_index.json names {len(named):,} components, more than the "
                                     f"{bounds.MAX_COMPONENTS:,} read from one pipeline (a real one names a few "
                                     "dozen at most): nothing more is read", PAST_A_BOUND)]
    entries, absent, problems = {}, [], []
    for name, value in named:
        if len(name) > MAX_NAME_CHARS:
            problems.append(PLN402.problem(where, f"the component name {_too_long(name)}"))
        elif value == [None, None]:
            absent.append(name)
        elif not _COMPONENT.fullmatch(name):
            problems.append(PLN402.problem(where, f"component name {shown(name)} is not an identifier"))
        elif len(value) == 2 and all(isinstance(v, str) and v for v in value):
            long = next((v for v in value if len(v) > MAX_NAME_CHARS), None)
            if long is None:
                entries[name] = (value[0], value[1])
            else:
                problems.append(PLN402.problem(where, f"component {name}: the name {_too_long(long)}"))
        else:
            problems.append(PLN402.problem(where, f"component {name}: {json.dumps(value)[:80]} is neither "
                                           "[library, class] nor [null, null]"))
    return (None if problems else (class_name, entries, tuple(absent))), problems


def _too_long(name: str) -> str:
    return (f"{shown(name)} has {len(name):,} characters, more than the {MAX_NAME_CHARS} a name in "
            "model_index.json is read with (real ones have under 60)")


def component_kind(library: str, class_name: str) -> str | None:
    """What model_index.json says a component is, from its library and class: "model" (a torch module: its folder
    holds config.json and weights), or a component that holds configs only: "scheduler", "guider", "tokenizer",
    "processor" (feature extractors and image processors too). None for a class of another library (a pipeline
    module's, as the safety checker's ["stable_diffusion", ...], or a custom one): its folder's files tell. A test
    checks these names against the declared types of the shipped index of diffusers pipelines."""
    if library not in _BASES:
        return None
    if class_name.endswith(("Scheduler", "Schedulers")) or class_name == "SchedulerMixin":
        return "scheduler"
    if class_name.endswith(("Guidance", "Guider")):
        return "guider"
    if library == "transformers" and ("Tokenizer" in class_name or class_name.endswith("Backend")):
        return "tokenizer"  # diffusers' own *AudioTokenizer classes are models
    if class_name.endswith("FeatureExtractor") or "Processor" in class_name:
        return "processor"
    return "model"


def _is_model(kind: str | None, files: set[str]) -> bool:
    """Whether a component is a model: what model_index.json says (`component_kind`), else (another library's
    class) whether its folder has config.json or weights."""
    if kind is not None:
        return kind == "model"
    return "config.json" in files or any(f.endswith((".safetensors", ".bin", ".index.json")) for f in files)


def _holds(name: str, library: str, kind: str | None, variant: str | None) -> str:
    """What the folder of component `name` holds, for a fix: `unet/config.json and unet/diffusion_pytorch_model.
    safetensors`, `scheduler/scheduler_config.json`, ..."""
    if kind == "model":
        return f"{name}/config.json and {name}/{_add_variant(f'{_BASES[library][0]}.safetensors', variant)}"
    if kind in _CONFIGS:
        return f"{name}/{_CONFIGS[kind]}"
    return f"the {name} folder"


def _download(name: str, library: str, kind: str | None, variant: str | None) -> str:
    return f"download {_holds(name, library, kind, variant)}, or set its entry to [null, null]"


def _no_folder(source, name: str, entry: tuple[str, str], kind: str | None, variant) -> Problem:
    """PLN403 for a component whose folder is missing (or is no folder), with what the folder should hold."""
    what = source.what(name)
    said = f"model_index.json names {name} ({cut(entry[1])}) but"
    message = f"{said} {name} is {what}, not a folder" if what else f"{said} there is no folder {name}"
    return PLN403.problem(source.where(name), message, _download(name, entry[0], kind, variant))


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
    (None: no weights), and for a shard index its shards and weight_map; `headers` are the files to read.
    `skipped`: a bound was met while it was picked, so nothing of it is read."""

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
    skipped: bool = False

    @property
    def headers(self) -> list[str]:
        if self.problems or self.skipped or self.file is None:
            return []
        return [f"{self.name}/{s}" for s in self.shards] if self.file.endswith(".json") else [
            f"{self.name}/{self.file}"]


def _pick(source, name: str, entry: tuple[str, str], kind: str | None, files: set[str], variant) -> _Pick:
    """The weights of component `name` as diffusers chooses them: the variant when the folder has it (else the
    files without one), then the first of `weights_candidates` present; a shard index is read here."""
    use = variant if variant and has_variant_files(files, variant) else None
    candidates = tuple(weights_candidates(entry[0], use))
    found = next((f for f in candidates if f in files), None)
    config_dtype = _config_dtype(source, name, files) if entry[0] == "transformers" else None
    pick = _Pick(name, entry[0], entry[1], use, found, candidates, config_dtype=config_dtype)
    if source.budget.spent:
        return replace(pick, skipped=True)
    if found is None:
        return replace(pick, problems=(_no_weights(source, name, entry, kind, files, candidates, use),))
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
    if not weight_map:
        return replace(pick, problems=(PLN403.problem(
            source.where(rel), f"{name} holds no weights: the weight_map of {found} is empty (it maps no tensor to "
            "a shard)", f"download {name}'s shards and their index again, or set its entry to [null, null]"),))
    shards = tuple(sorted(set(weight_map.values())))
    unsafe = [s for s in shards if not s or "/" in s or "\\" in s or s in (".", "..")]
    missing = [s for s in shards if s not in files]
    if unsafe:
        failure = PLN406.problem(source.where(rel), "shard names must be plain file names in the component "
                                 f"folder, not {listed(unsafe, shown)}")
    elif missing:
        shown_ = [_described(source, f"{name}/{s}", s) for s in missing[:LISTED]]
        odd = " or not regular files" if any(s.endswith(", not a regular file)") for s in shown_) else ""
        failure = PLN406.problem(source.where(rel), f"{len(missing):,} of {len(shards):,} shards missing{odd}: "
                                 f"{listed(shown_ + missing[LISTED:], str)}", "download the missing shards")
    return replace(pick, shards=shards, weight_map=weight_map, problems=(failure,) if failure else ())


def _described(source, rel: str, file: str) -> str:
    """`file` for a message, with what it is when something other than a regular file is there (a FIFO, a
    folder, a link to nothing)."""
    what = source.what(rel)
    return cut(file) + (f" ({what}, not a regular file)" if what and what != REGULAR else "")


def _config_dtype(source, name: str, files: set[str]) -> str | None:
    """The dtype a transformers model's config.json names (what its "auto" loads at), or None: no config, one
    that cannot be read (loading would fail anyway: the weights are what this module checks), or no dtype."""
    if "config.json" not in files:
        return None
    config, failure = source.json(f"{name}/config.json", PLN403)
    value = (config.get("dtype") or config.get("torch_dtype")) if failure is None and isinstance(config, dict) else None
    return value if value in TORCH_DTYPES else None


def _no_weights(source, name: str, entry: tuple[str, str], kind: str | None, files: set[str],
                candidates: tuple[str, ...], variant: str | None) -> Problem:
    """PLN403 for a model component whose folder holds none of the weights diffusers would load: only pickles; a
    weights file's name held by something else (a FIFO, a folder, a link to nothing); no weights and no config
    (an empty folder, or a link to a folder of other files); else the names tried."""
    pickles = sorted(f for f in files if f.endswith(".bin"))
    if pickles:
        return PLN403.problem(source.where(name), f"{name} holds only pickle weights ({listed(pickles)}), "
                              "whose sizes cannot be read without loading them",
                              "convert it to safetensors: save_pretrained(folder, safe_serialization=True)")
    for candidate in candidates:
        what = source.what(f"{name}/{candidate}")
        if what and what != REGULAR:
            return PLN403.problem(source.where(f"{name}/{candidate}"), f"{name} has no weights: {candidate} is "
                                  f"{what}, not a regular file",
                                  f"replace {name}/{candidate} with the weights file (download it again)")
    if kind == "model" and "config.json" not in files:
        holds = f"it holds {listed(sorted(files))}" if files else "it is empty"
        return PLN403.problem(source.where(name), f"{name} is a {cut(entry[1])} (model_index.json), a model, but "
                              f"its folder holds no weights and no config.json: {holds}",
                              _download(name, entry[0], kind, variant))
    variants = _variants(files)
    if variants and variant is None:  # a download made with variant="fp16" leaves only those files
        shown = ", ".join(variants)
        return PLN403.problem(source.where(name), f"{name} has no weights without a variant: it holds only the "
                              f"{shown} variant{'s' * (len(variants) > 1)} ({listed(sorted(files))})",
                              f"pass --variant {variants[0]} (in a plan: `variant: {variants[0]}` under `pipeline:`)")
    return PLN403.problem(source.where(name), f"{name} has no weights: none of {', '.join(candidates)}")


def _variants(files: Iterable[str]) -> list[str]:
    """The variants of the safetensors weights in a folder (`model.fp16.safetensors`, `...fp16.safetensors.index.json`,
    `diffusion_pytorch_model.fp16-00001-of-00002.safetensors`), as diffusers names them: the second dot-part."""
    found = set()
    for f in files:
        parts = f.split(".")
        if len(parts) >= 3 and "safetensors" in parts[2:]:
            found.add(cut(parts[1].split("-", 1)[0]))
    return sorted(v for v in found if v)


def _component(source, pick: _Pick, headers: dict) -> tuple[ComponentSizes | None, list[Problem]]:
    """The sizes of a picked component from its headers, or None and why: each tensor in one shard only, and the
    shards holding exactly the tensors the weight_map names."""
    if pick.problems:
        return None, list(pick.problems)
    read = [headers[rel] for rel in pick.headers]
    if pick.skipped or any(r is None for r in read):
        return None, []  # not read: a bound was met (its own problem says where)
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
                return None, [PLN406.problem(where, f"tensor {shown(t.name)} is stored in both "
                                             f"{cut(home[t.name])} and {cut(shard)}")]
            home[t.name] = shard
            tensors.append(t)
    if pick.shards:
        wrong = sorted(n for n in set(home) | set(pick.weight_map) if home.get(n) != pick.weight_map.get(n))
        if wrong:
            first = wrong[0]
            mapped, stored = pick.weight_map.get(first, "no shard"), home.get(first, "no shard")
            return None, [PLN406.problem(where, f"the weight_map disagrees with the shards for {len(wrong):,} "
                                         f"tensors (first: {shown(first)}, mapped to {cut(mapped)}, stored in "
                                         f"{cut(stored)})")]
    return ComponentSizes(pick.name, pick.library, pick.class_name, files, tuple(tensors), pick.variant,
                          pick.config_dtype), []
