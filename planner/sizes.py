"""Model folders read without loading weights: `model_index.json` and each component's safetensors headers give
every component's class, stored dtype and bytes (as stored, and as loaded at a torch dtype), and the bytes of each
repeated block: the units the budget policy keeps resident or streams.

Pure: json, struct and pathlib (huggingface_hub is imported only to read a hub id). A bad folder never raises:
`read` returns (sizes, problems), each problem a `Problem` with a PLN4xx rule, line 0 and the offending file as its
path. A component with any problem is left out of the sizes, so every size reported is exact.

The sizes are the weights: parameters and persistent buffers, what the safetensors files hold. A model can also
build non-persistent buffers when it is made (CLIP's `position_ids`, rotary tables); they move with the model, so
the executor's trace, which measures the loaded modules, counts them too, and nothing here can see them.

`check_plan` compares a plan with a pipeline read here (`planner validate --model`): the same mistakes `planner
apply` finds once the weights are loaded (PLN301, PLN304), found from the folder before.
"""

from __future__ import annotations

import difflib
import errno
import importlib.metadata
import json
import math
import os
import re
import stat
import struct
from dataclasses import dataclass, field, replace
from functools import cached_property, lru_cache
from pathlib import Path
from types import MappingProxyType
from typing import BinaryIO, Iterable, Mapping, NamedTuple

from planner import index, units
from planner import rules as _rules
from planner.plan import Plan, Problem
from planner.rules import PLN301, PLN304, PLN401, PLN402, PLN403, PLN404, PLN405, PLN406, PLN407, PLN408, PLN409, Rule
from planner.rules.context import did_you_mean, some

# safetensors' own bound on a header (MAX_HEADER_SIZE in its reader): a larger length is not a safetensors file.
MAX_HEADER_BYTES = 100_000_000
# model_index.json and shard indexes: the index of a model of a thousand shards is a few MB.
MAX_JSON_BYTES = 16 * 1024 * 1024
REST = "rest"  # the block holding every tensor outside the repeated blocks

# Bits per element of every dtype the safetensors format defines.
DTYPE_BITS = {
    "BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E4M3FNUZ": 8, "F8_E5M2FNUZ": 8, "F8_E8M0": 8,
    "I16": 16, "U16": 16, "F16": 16, "BF16": 16, "I32": 32, "U32": 32, "F32": 32,
    "I64": 64, "U64": 64, "F64": 64, "C64": 64, "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6,
}
# What `torch_dtype` casts: diffusers and transformers cast a tensor when `torch.is_floating_point` (float8
# included); integers, bools and complex keep their size. The packed sub-byte formats (F4, F6) are quantized
# weights that only a quantizer loads, so they are counted as stored.
CAST_DTYPES = frozenset({"F64", "F32", "F16", "BF16", "F8_E5M2", "F8_E4M3", "F8_E4M3FNUZ", "F8_E5M2FNUZ", "F8_E8M0"})
TORCH_DTYPES = {"float16": 2, "bfloat16": 2, "float32": 4, "float64": 8}  # the plan's torch_dtype values
_TORCH_NAMES = {"F16": "float16", "BF16": "bfloat16", "F32": "float32", "F64": "float64"}

# Modules a class keeps in float32 when loaded at some dtypes: class -> (name segments, the torch dtypes where it
# happens). transformers' `_keep_in_fp32_modules` acts at float16 only, diffusers' at every dtype. Reading the
# attribute needs the library, so this lists the classes where it is large (T5's `wo`: 2 GB more for T5-XXL at
# float16) and a test checks each against the installed libraries; other classes' are counted at the requested
# dtype, an approximation (they keep norms and embedders: well under 1% of a model).
KEEP_IN_FP32 = {
    "T5EncoderModel": (("wo",), ("float16",)),
    "UMT5EncoderModel": (("wo",), ("float16",)),
    "WanTransformer3DModel": (("rope", "time_embedder", "scale_shift_table", "norm1", "norm2", "norm3"),
                              ("float16", "bfloat16", "float32", "float64")),
}

# rule -> (what it catches, the fix printed unless a problem has a more precise one): the model-folder rules of
# the one rule list, planner.rules, where their texts live
RULES = {r.id: (r.title, r.fix) for r in _rules.RULES.values() if r.id.startswith("PLN4")}

_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}")
_COMPONENT = re.compile(r"[A-Za-z_]\w*")
_LFS_POINTER = b"version "  # a Git LFS pointer file starts "version https://git-lfs.github.com/spec/v1"
_BASES = {"diffusers": ("diffusion_pytorch_model",), "transformers": ("model",)}
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)


class Tensor(NamedTuple):
    """One tensor as its safetensors header describes it; `nbytes` is its size as stored."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    nbytes: int

    @property
    def numel(self) -> int:
        return self.nbytes * 8 // DTYPE_BITS[self.dtype]


@dataclass(frozen=True)
class ComponentSizes:
    """A model component: its class and the tensors of the weights files diffusers would load, each stored tensor
    once (a tied tensor is stored once, so it counts once). `files` are relative to the source, index first.
    `config_dtype` is the dtype a transformers model's config.json names (`dtype`, formerly `torch_dtype`)."""

    name: str
    library: str
    class_name: str
    files: tuple[str, ...]
    tensors: tuple[Tensor, ...]
    variant: str | None = None
    config_dtype: str | None = None

    @cached_property
    def bytes(self) -> int:
        """Bytes as stored."""
        return sum(t.nbytes for t in self.tensors)

    @cached_property
    def dtypes(self) -> dict[str, int]:
        """Bytes per stored dtype, the largest first."""
        totals: dict[str, int] = {}
        for t in self.tensors:
            totals[t.dtype] = totals.get(t.dtype, 0) + t.nbytes
        return dict(sorted(totals.items(), key=lambda item: (-item[1], item[0])))

    @property
    def dtype(self) -> str | None:
        """The stored dtype holding the most bytes (None for a component without tensors)."""
        return next(iter(self.dtypes), None)

    def load_dtype(self, torch_dtype: str | None) -> str | None:
        """The dtype floating tensors get when loaded with `torch_dtype`, or None for "as stored". Without one,
        diffusers builds its models in float32 and casts the weights to it; transformers 5 loads "auto": the
        dtype config.json names, else as stored (transformers 4: float32)."""
        if torch_dtype is not None:
            return torch_dtype
        if self.library == "diffusers":
            return "float32"
        if self.library == "transformers":
            return self.config_dtype if _transformers_loads_auto() else "float32"
        return None

    def bytes_at(self, torch_dtype: str | None) -> int:
        """Bytes once loaded by `from_pretrained(..., torch_dtype=torch_dtype)` (see `load_dtype`)."""
        return sum(self._loaded_sizes(torch_dtype).values())

    def blocks(self, torch_dtype: str | None = None) -> dict[str, int]:
        """Bytes per repeated block once loaded at `torch_dtype` (see `block_of`), in natural name order, then
        REST; they sum to `bytes_at(torch_dtype)`."""
        totals: dict[str, int] = {}
        for name, size in self._loaded_sizes(torch_dtype).items():
            block = block_of(name)
            totals[block] = totals.get(block, 0) + size
        rest = totals.pop(REST, 0)
        return {**{b: totals[b] for b in sorted(totals, key=block_order)}, REST: rest}

    def to_json(self, torch_dtype: str | None) -> dict:
        """The JSON form: class, library, variant, files, stored bytes and dtypes, bytes and blocks at the dtype."""
        return {"class": self.class_name, "library": self.library, "variant": self.variant, "files": list(self.files),
                "bytes": self.bytes, "dtype": self.dtype, "dtypes": self.dtypes,
                "load_dtype": self.load_dtype(torch_dtype), "bytes_at_dtype": self.bytes_at(torch_dtype),
                "blocks": self.blocks(torch_dtype)}

    def _loaded_sizes(self, torch_dtype: str | None) -> dict[str, int]:
        """Bytes of each tensor once loaded at `torch_dtype`."""
        target = self.load_dtype(torch_dtype)
        # transformers' "auto" loads at the stored dtype, and its float32 exceptions follow that dtype
        modules, dtypes = KEEP_IN_FP32.get(self.class_name, ((), ()))
        kept = frozenset(modules) if (target or _TORCH_NAMES.get(self.dtype)) in dtypes else frozenset()
        loaded = {}
        for t in self.tensors:
            if t.dtype not in CAST_DTYPES:
                loaded[t.name] = t.nbytes
            elif kept and not kept.isdisjoint(t.name.split(".")):
                loaded[t.name] = t.numel * 4
            else:
                loaded[t.name] = t.numel * TORCH_DTYPES[target] if target else t.nbytes
        return loaded


@dataclass(frozen=True)
class ModelSizes:
    """A pipeline read from its folder or hub repo: the model components (those with weights) in model_index.json
    order, the components without weights (scheduler, tokenizer: library and class), and the absent ones
    ([null, null]). `variant` and `torch_dtype` are what was asked; each component says which variant it has.
    `unread` are the model components model_index.json names whose weights could not be read (the problems `read`
    returned with these sizes say why)."""

    class_name: str
    source: str
    components: Mapping[str, ComponentSizes]
    others: Mapping[str, tuple[str, str]] = field(default_factory=dict)
    absent: tuple[str, ...] = ()
    variant: str | None = None
    torch_dtype: str | None = None
    unread: tuple[str, ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "components", MappingProxyType(dict(self.components)))
        object.__setattr__(self, "others", MappingProxyType(dict(self.others)))

    def loaded_bytes(self) -> dict[str, int]:
        """Bytes of each model component once loaded at `torch_dtype`: what a residency schedule moves."""
        return {name: c.bytes_at(self.torch_dtype) for name, c in self.components.items()}

    def to_json(self) -> dict:
        """The `planner inspect --format json` document."""
        comps = {name: c.to_json(self.torch_dtype) for name, c in self.components.items()}
        return {"class": self.class_name, "source": self.source, "variant": self.variant, "dtype": self.torch_dtype,
                "components": comps, "bytes": sum(c["bytes"] for c in comps.values()),
                "bytes_at_dtype": sum(c["bytes_at_dtype"] for c in comps.values()),
                "others": {name: {"library": lib, "class": cls} for name, (lib, cls) in self.others.items()},
                "absent": list(self.absent), "unread": list(self.unread)}


def block_of(name: str) -> str:
    """The repeated block a tensor belongs to: its name up to the first index that follows a name
    (`down_blocks.0`, `text_model.encoder.layers.5`, `encoder.block.7`, `single_transformer_blocks.3`), or up to a
    single `*_block` module met before any index (`mid_block`, `decoder.mid_block`); REST otherwise."""
    parts = name.split(".")
    if _is_index(parts[0]) and len(parts) > 1:
        return parts[0]
    for i in range(len(parts) - 1):
        if _is_index(parts[i + 1]):
            return ".".join(parts[:i + 2])
        if parts[i].endswith("_block"):
            return ".".join(parts[:i + 1])
    return REST


def _is_index(part: str) -> bool:
    return part.isascii() and part.isdigit()


def block_order(block: str) -> list:
    """The sort key of a block name: its indices as numbers (`blocks.10` after `blocks.9`), names as text."""
    return [(0, int(p), "") if _is_index(p) else (1, 0, p) for p in block.split(".")]


# --- reading -----------------------------------------------------------------------------------------------------


def read(source: str | os.PathLike, *, variant: str | None = None, torch_dtype: str | None = None,
         revision: str | None = None) -> tuple[ModelSizes | None, list[Problem]]:
    """The sizes of the pipeline at `source` (a local folder, or a hub id `org/name` when no such path exists)
    and every problem found; sizes are None when the pipeline itself cannot be read. Never raises for bad input;
    raises ValueError for a `torch_dtype` other than float16, bfloat16, float32, float64."""
    if torch_dtype is not None and torch_dtype not in TORCH_DTYPES:
        raise ValueError(f"unknown torch_dtype {torch_dtype!r}: use one of {', '.join(TORCH_DTYPES)}")
    path = os.fsdecode(source)
    if not path.strip():  # Path("") is the working folder: never read it for a name that names nothing
        return None, [PLN401.problem(path, f"{path!r} names no folder")]
    if not os.path.exists(path) and _HUB_ID.fullmatch(path):
        return _read_hub(path, variant, torch_dtype, revision)
    return _read_folder(path, variant, torch_dtype)


def _read_folder(path: str, variant, torch_dtype):
    root = Path(path)
    if not root.is_dir():
        what = "is a file, not a folder" if root.exists() else "does not exist"
        return None, [PLN401.problem(path, f"{path} {what}")]
    if not (root / "model_index.json").is_file():
        single = (root / "config.json").is_file()
        why = ("holds one model (config.json), not a pipeline" if single else "is not a diffusers pipeline folder")
        return None, [PLN401.problem(path, f"{path} {why}: it has no model_index.json",
                                     "name the pipeline folder above it" if single else None)]
    return _read_pipeline(_Folder(root), path, variant, torch_dtype)


def _read_pipeline(source, label: str, variant, torch_dtype):
    """The sizes of a pipeline whose files `source` lists and reads (a `_Folder` or a `_Hub`)."""
    index, found = source.json("model_index.json", PLN402)
    if found:
        return None, [found]
    parsed, problems = _pipeline_index(index, source.where("model_index.json"))
    if parsed is None:
        return None, problems
    class_name, entries, absent = parsed
    listings = {name: source.listing(name) for name in entries}
    problems += [PLN403.problem(source.where(name), f"model_index.json names {name} ({entries[name][1]}) but "
                                f"there is no folder {name}") for name, files in listings.items() if files is None]
    if variant and not any(_has_variant(files or {}, variant) for files in listings.values()):
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


def _pipeline_index(index, where: str):
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


def _has_variant(files: Iterable[str], variant: str) -> bool:
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
    use = variant if variant and _has_variant(files, variant) else None
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


@lru_cache(maxsize=1)
def _transformers_loads_auto() -> bool:
    """Whether the installed transformers loads a model given no dtype as "auto" (5.0 on), not in float32; read
    from the package's metadata, without importing it. Without transformers, the current behaviour ("auto")."""
    try:
        version = importlib.metadata.version("transformers")
    except importlib.metadata.PackageNotFoundError:
        return True
    major = version.split(".", 1)[0]
    return not major.isdigit() or int(major) >= 5


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


# --- safetensors headers -----------------------------------------------------------------------------------------


def read_header(path: str | os.PathLike) -> tuple[tuple[Tensor, ...], Problem | None]:
    """The tensors of the safetensors file at `path`, from its header alone (at most 8 + MAX_HEADER_BYTES bytes
    read), and the first problem found: unreadable, a header that is not valid, or a file length that disagrees
    with the header (the bytes missing or extra are named). No tensors when there is a problem."""
    where = os.fsdecode(path)
    try:
        f, size = _open_regular(where)
        with f:
            prefix = f.read(8)
            found = _prefix_problem(prefix, size, where)
            raw = b"" if found else f.read(struct.unpack("<Q", prefix)[0])
    except OSError as exc:
        return (), PLN404.problem(where, f"cannot read it: {exc.strerror or exc}", "check the file and its "
                                  "permissions")
    if found:
        return (), found
    if len(raw) != struct.unpack("<Q", prefix)[0]:  # it shrank while read
        return (), _prefix_problem(prefix, 8 + len(raw), where)
    return parse_header(raw, where, size)


def parse_header(raw: bytes, where: str, size: int | None = None) -> tuple[tuple[Tensor, ...], Problem | None]:
    """The tensors a safetensors header (the JSON after the 8-byte length) describes, checked as safetensors
    checks them: a UTF-8 JSON object (a name given twice keeps its last entry), known dtypes, shapes and offsets
    of non-negative integers, each tensor's bytes matching its shape, tensors packed end to end from 0. With the
    file's `size`, also that the file ends where the last tensor does."""
    header, why = _decode(raw)
    tensors, end, why = ((), 0, why) if why else _entries(header)
    if why:
        return (), PLN404.problem(where, f"not a valid safetensors header: {why}")
    declared = 8 + len(raw) + end
    if size is not None and size != declared:
        return (), _length_problem(where, size, declared)
    return tensors, None


def _prefix_problem(prefix: bytes, size: int, where: str) -> Problem | None:
    if prefix == _LFS_POINTER and size < 1024:
        return PLN405.problem(where, "a Git LFS pointer file, not the weights",
                              "fetch the weights: git lfs pull (or download the file again)")
    if len(prefix) < 8:
        return PLN405.problem(where, f"{size} bytes: too short to be a safetensors file (truncated)")
    length = struct.unpack("<Q", prefix)[0]
    if length > MAX_HEADER_BYTES:
        return PLN404.problem(where, f"not a valid safetensors header: its length field says {length:,} bytes, "
                              f"more than the {MAX_HEADER_BYTES:,} safetensors allows")
    if 8 + length > size:
        return PLN405.problem(where, f"truncated inside its header: at least {8 + length - size:,} bytes "
                              f"missing (a {length:,}-byte header, a {size:,}-byte file)")
    return None


def _length_problem(where: str, size: int, declared: int) -> Problem:
    if size < declared:
        return PLN405.problem(where, f"truncated: {declared - size:,} bytes missing (the header declares "
                              f"{declared:,} bytes, the file has {size:,})")
    return PLN405.problem(where, f"{size - declared:,} bytes after the last tensor (the header declares "
                          f"{declared:,} bytes, the file has {size:,})",
                          "the file is not the one its header describes: download it again")


def _decode(raw: bytes) -> tuple[dict | None, str | None]:
    """The JSON object a header holds, or why it holds none. A name given twice keeps its last entry, as in
    safetensors' own reader; the offsets check then finds the bytes the first one described."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return None, f"not UTF-8 (byte {exc.start})"
    if not text.startswith("{"):
        return None, "not a JSON object (it does not start with '{')"
    try:
        return json.loads(text), None
    except (ValueError, RecursionError) as exc:
        return None, f"not JSON ({exc})"


def _entries(header: dict) -> tuple[tuple[Tensor, ...], int, str | None]:
    """(tensors, end of the last one, None) of a decoded header, or ((), 0, why it is not valid)."""
    tensors, spans = [], []
    for name, entry in header.items():
        if name == "__metadata__":
            if not isinstance(entry, dict) or not all(isinstance(v, str) for v in entry.values()):
                return (), 0, "__metadata__ must map strings to strings"
            continue
        found = _entry(name, entry)
        if found is None:
            return (), 0, _entry_problem(name, entry)
        tensors.append(found[0])
        spans.append((found[1], found[1] + found[0].nbytes, name))
    spans.sort()
    end = 0
    for begin, stop, name in spans:
        if begin != end:
            return (), 0, (f"tensor {name!r} starts at byte {begin:,} of the data where {end:,} was expected: "
                           "tensors overlap or leave a gap")
        end = stop
    return tuple(tensors), end, None


def _entry(name: str, entry) -> tuple[Tensor, int] | None:
    """The tensor an entry describes and the offset where its data begins, or None when the entry is not valid
    (`_entry_problem` says why). The hot loop of a header: a few thousand entries per model."""
    try:
        dtype, shape, (begin, end) = entry["dtype"], entry["shape"], entry["data_offsets"]
        bits = DTYPE_BITS[dtype]
    except (TypeError, KeyError, ValueError):
        return None
    if type(shape) is not list or type(begin) is not int or type(end) is not int or not 0 <= begin <= end:
        return None
    numel = 1
    for d in shape:
        if type(d) is not int or d < 0:
            return None
        numel *= d
    if numel * bits != (end - begin) * 8:
        return None
    return Tensor(name, dtype, tuple(shape), end - begin), begin


def _entry_problem(name: str, entry) -> str:
    """Why an entry that `_entry` refused is not valid."""
    if not isinstance(entry, dict):
        return f"tensor {name!r} is not described by an object"
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in DTYPE_BITS:
        return f"tensor {name!r} has the unknown dtype {str(dtype)[:40]!r} (known: {', '.join(DTYPE_BITS)})"
    if not _naturals(shape):
        return f"tensor {name!r} has a shape that is not a list of non-negative integers"
    if not _naturals(offsets) or len(offsets) != 2 or offsets[0] > offsets[1]:
        return f"tensor {name!r} has data_offsets that are not [begin, end] with 0 <= begin <= end"
    bits = math.prod(shape) * DTYPE_BITS[dtype]
    span = offsets[1] - offsets[0]
    needs = f"{bits // 8:,}" if bits < 1 << 80 else "more than 2**77"  # a shape can be absurd: never a float here
    shown = str(shape) if len(str(shape)) <= 80 else str(shape)[:77] + "..."
    return f"tensor {name!r} ({dtype} {shown}) needs {needs} bytes, its data_offsets span {span:,}"


def _naturals(value) -> bool:
    return type(value) is list and all(type(v) is int and v >= 0 for v in value)


def _open_regular(path: str | Path) -> tuple[BinaryIO, int]:
    """A regular file opened for reading, and its size; OSError for anything else. The open does not block, so a
    named pipe put where a weights file was expected is refused instead of waited on."""
    fd = os.open(path, _OPEN_FLAGS)
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise OSError(errno.EINVAL, "not a regular file")
    return os.fdopen(fd, "rb"), info.st_size


def _read_json(path: Path) -> tuple[object, str | None]:
    """(document, None) of a small JSON file, or (None, why it cannot be used)."""
    try:
        f, _ = _open_regular(path)
        with f:
            raw = f.read(MAX_JSON_BYTES + 1)
    except OSError as exc:
        return None, f"cannot read {path.name}: {exc.strerror or exc}"
    if len(raw) > MAX_JSON_BYTES:
        return None, f"{path.name} is larger than {MAX_JSON_BYTES:,} bytes"
    try:
        return json.loads(raw.decode("utf-8")), None
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        return None, f"{path.name} is not valid JSON ({exc})"


class _Folder:
    """A pipeline folder on disk: what `_read_pipeline` lists and reads."""

    def __init__(self, root: Path):
        self.root = root

    def where(self, rel: str) -> str:
        return str(self.root / rel)

    def listing(self, name: str) -> set[str] | None:
        """The regular files of a component folder (symbolic links followed, as in the hub cache), or None."""
        try:
            with os.scandir(self.root / name) as entries:
                return {e.name for e in entries if _regular(e)}
        except OSError:
            return None

    def json(self, rel: str, rule: Rule) -> tuple[object, Problem | None]:
        """(document, None) of a small JSON file, or (None, a `rule` problem saying why it cannot be used)."""
        doc, why = _read_json(self.root / rel)
        return doc, rule.problem(self.where(rel), why) if why else None

    def headers(self, rels: list[str]) -> list:
        return [read_header(self.root / rel) for rel in rels]


def _regular(entry: os.DirEntry) -> bool:
    try:
        return entry.is_file()
    except OSError:
        return False


# --- the hub -----------------------------------------------------------------------------------------------------


def _read_hub(repo_id: str, variant, torch_dtype, revision):
    """The sizes of a hub repo from its file list, model_index.json and the headers of its weights (range requests
    of the first bytes of each file): no weights are downloaded. Offline, or with the hub unreachable, one
    PLN408 problem says so."""
    from huggingface_hub import constants

    if constants.is_offline_mode() or _truthy(os.environ.get("HF_HUB_OFFLINE")):
        return None, [PLN408.problem(repo_id, f"{repo_id} is no folder, and offline (HF_HUB_OFFLINE is set) "
                                     "its headers cannot be read from the hub")]
    hub = _Hub(repo_id, revision, os.environ.get("HF_ENDPOINT") or constants.ENDPOINT)
    failure = hub.list_files()
    if failure:
        return None, [failure]
    if "model_index.json" not in hub.files:
        return None, [PLN401.problem(repo_id, f"{repo_id} has no model_index.json: not a diffusers pipeline "
                                     "repository", "name a pipeline repository, or a folder")]
    return _read_pipeline(hub, repo_id, variant, torch_dtype)


def _truthy(value: str | None) -> bool:
    return (value or "").upper() in {"1", "ON", "YES", "TRUE"}


class _Hub:
    """A hub repo read through huggingface_hub: its file list (model_info), small JSON files (hf_hub_download,
    cached as usual) and safetensors headers (parse_safetensors_file_metadata: range requests). The file sizes
    are not checked against the headers here: the hub verifies each upload by its hash."""

    def __init__(self, repo_id: str, revision: str | None, endpoint: str):
        from huggingface_hub import HfApi

        self.repo_id, self.revision, self.endpoint = repo_id, revision, endpoint.rstrip("/")
        self.api = HfApi(endpoint=self.endpoint)
        self.files: set[str] = set()

    def where(self, rel: str) -> str:
        return f"{self.repo_id}/{rel}"

    def list_files(self) -> Problem | None:
        try:
            info = self.api.model_info(self.repo_id, revision=self.revision)
        except Exception as exc:  # noqa: BLE001 - anything the hub client raises becomes one located problem
            return self._failure(exc, self.repo_id)
        self.files = {s.rfilename for s in info.siblings or ()}
        return None

    def listing(self, name: str) -> set[str] | None:
        """The files directly in the component's folder of the repo, or None when it has none."""
        prefix = f"{name}/"
        found = {f[len(prefix):] for f in self.files if f.startswith(prefix) and "/" not in f[len(prefix):]}
        return found or None

    def json(self, rel: str, rule: Rule) -> tuple[object, Problem | None]:
        """As `_Folder.json`, the file downloaded (and cached) by hf_hub_download; a download that fails is a
        hub problem (PLN408), not a `rule` one."""
        from huggingface_hub import hf_hub_download

        try:
            path = hf_hub_download(self.repo_id, rel, revision=self.revision, endpoint=self.endpoint)
        except Exception as exc:  # noqa: BLE001 - see list_files
            return None, self._failure(exc, self.where(rel))
        doc, why = _read_json(Path(path))
        return doc, rule.problem(self.where(rel), why) if why else None

    def headers(self, rels: list[str]) -> list:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=8) as pool:
            return list(pool.map(self._header, rels))

    def _header(self, rel: str) -> tuple[tuple[Tensor, ...], Problem | None]:
        from huggingface_hub.errors import SafetensorsParsingError

        where = self.where(rel)
        try:
            meta = self.api.parse_safetensors_file_metadata(self.repo_id, rel, revision=self.revision)
        except SafetensorsParsingError as exc:
            return (), PLN404.problem(where, f"not a valid safetensors header: {exc}")
        except Exception as exc:  # noqa: BLE001 - see list_files
            return (), self._failure(exc, where)
        header = {name: {"dtype": t.dtype, "shape": t.shape, "data_offsets": list(t.data_offsets)}
                  for name, t in meta.tensors.items()}
        tensors, _, why = _entries({**header, "__metadata__": meta.metadata or {}})
        return tensors, PLN404.problem(where, f"not a valid safetensors header: {why}") if why else None

    def _failure(self, exc: Exception, where: str) -> Problem:
        from huggingface_hub import errors

        if isinstance(exc, errors.GatedRepoError):
            return PLN408.problem(where, f"{self.repo_id} is gated: accept its terms on the hub",
                                  "accept the terms on the model page, then log in: hf auth login")
        if isinstance(exc, errors.RepositoryNotFoundError):
            return PLN401.problem(where, f"{self.repo_id} is neither a folder nor a model repository on "
                                  f"{self.endpoint} (or it is private)",
                                  "check the path or the id, or log in: hf auth login")
        network = "check the network and HF_ENDPOINT, or download the model and name its folder"
        if isinstance(exc, (errors.OfflineModeIsEnabled, errors.LocalEntryNotFoundError)):
            return PLN408.problem(where, f"cannot reach {self.endpoint}: offline, or no network", network)
        if isinstance(exc, errors.HfHubHTTPError):
            status = getattr(exc.response, "status_code", "?")
            return PLN408.problem(where, f"{self.endpoint} answered HTTP {status} for {where}", network)
        detail = str(exc).splitlines()[0][:200] if str(exc) else "no detail"
        return PLN408.problem(where, f"cannot reach {self.endpoint}: {type(exc).__name__}: {detail}", network)


# --- a plan against a pipeline read here --------------------------------------------------------------------------


def check_plans(source: str | os.PathLike, plans: list[Plan]) -> tuple[list[ModelSizes], list[Problem]]:
    """`planner validate --model`: the pipeline at `source` read once per variant the plans load (once as it is
    when there is no plan), and each plan checked against it (`check_plan`). Returns the sizes (one per variant
    and torch_dtype the plans ask for, in their order) and the problems: the folder's own, each once, then the
    plans'. A variant that no component has is the plan's problem, located at its `pipeline.variant`."""
    reads: dict[str | None, tuple[ModelSizes | None, list[Problem]]] = {}
    tables: dict[tuple, ModelSizes] = {}
    problems: list[Problem] = []
    for plan in plans or [None]:
        variant = plan.variant if plan is not None else None
        if variant not in reads:
            reads[variant] = read(source, variant=variant)
        found, read_problems = reads[variant]
        if found is None and plan is not None and any(p.rule == PLN407.id for p in read_problems):
            problems.append(plan.problem("pipeline.variant", PLN407, f"no component of the model folder "
                                         f"{os.fsdecode(source)} has files of the variant {variant!r}"))
        if found is None:
            continue
        dtype = plan.torch_dtype if plan is not None else None
        tables.setdefault((variant, dtype), replace(found, torch_dtype=dtype))
        if plan is not None:
            problems += check_plan(plan, found)
    own = [p for _, found in reads.values() for p in found if p.rule != PLN407.id]
    return list(tables.values()), list(dict.fromkeys(own)) + problems


def check_plan(plan: Plan, model: ModelSizes) -> list[Problem]:
    """The problems of `plan` against the pipeline `model` (from `read`), located at the plan's keys, under the
    rules `planner apply` uses for the same mistakes once the weights are loaded:
    - PLN304: `pipeline.class` is neither the folder's class nor one diffusers loads from the folder (a class
      taking the same components, such as StableDiffusionImg2ImgPipeline from a StableDiffusionPipeline folder);
    - PLN301: a name offloaded, excluded or hooked apart that is not a model of the folder (a tokenizer), or no
      component at all. A component the class has and the folder leaves out is fine: it is None once loaded, and
      skipped, as diffusers skips it. A model whose weights cannot be read is the folder's problem (`read`'s);
    - PLN409: a `policy: budget` plan's budget below what one use needs: the excluded components (resident) plus
      the largest offloaded one its call order uses, at the plan's torch_dtype.
    The index of diffusers pipelines answers which components a class takes; a class it lacks is not judged."""
    found = []
    mismatch = _class_mismatch(plan, model)
    if mismatch:
        found.append(mismatch)
    declared = _declared(model.class_name if mismatch or not plan.pipeline_class else plan.pipeline_class)
    said = _said_by_the_index(plan)
    models = [*model.components, *model.unread, *model.absent]
    for key, names in (("components", plan.sequence), ("exclude", sorted(plan.exclude)),
                       ("own_hook", sorted(plan.own_hook))):
        for name in names:
            if name in models or name in said or (name not in model.others and (declared is None or
                                                                               name in declared)):
                continue  # a model of the folder, a component the class has and the folder leaves out, or PLN50x
            found.append(_component_problem(plan, model, f"{key}.{name}", name))
    short = _budget_problem(plan, model)
    return found + [short] if short else found


def _budget_problem(plan: Plan, model: ModelSizes) -> Problem | None:
    """PLN409 when the plan's budget cannot hold its resident components beside the largest offloaded one it
    uses (what the scheduler's `BudgetTooSmall` refuses at apply time), with the numbers; None otherwise."""
    if plan.policy != "budget" or plan.budget is None:
        return None
    dtype = plan.torch_dtype or model.torch_dtype
    if plan.granularity == "block":
        return _block_budget_problem(plan, model, dtype)
    sizes = {name: c.bytes_at(dtype) for name, c in model.components.items()}
    resident = {name: sizes[name] for name in sorted(plan.exclude) if name in sizes}
    used = [name for name in dict.fromkeys(plan.call_order) if name in sizes and name not in plan.exclude]
    largest = max(used, key=lambda name: sizes[name], default=None)
    needed = sum(resident.values()) + (sizes[largest] if largest else 0)
    if needed <= plan.budget:
        return None
    what = [f"{largest} ({human(sizes[largest])}), the largest component it offloads"] if largest else []
    if resident:
        what.append(f"the excluded {', '.join(f'{n} ({human(b)})' for n, b in resident.items())}, resident "
                    "throughout")
    return plan.problem("budget", PLN409, f"a budget of {human(plan.budget)} ({plan.budget} bytes) cannot hold "
                        f"{' beside '.join(what)}: the model folder {model.source} at {dtype or 'its stored dtype'} "
                        f"needs at least {human(needed)} ({needed} bytes)",
                        f"raise budget to at least {needed} bytes ({human(needed)}), or leave budget out to use the "
                        "free memory minus reserve")


def _block_budget_problem(plan: Plan, model: ModelSizes, dtype: str | None) -> Problem | None:
    """PLN409 for `granularity: block`: a budget below the least any block schedule needs (`blocks.Model.
    least_budget`: the exclusions, and the worst pass's REST with its blocks held or in flight)."""
    from planner import blocks  # the block model; its solver (scipy) is imported only when solving

    found = blocks.model_for(plan, {name: c.blocks(dtype) for name, c in model.components.items()}, plan.budget)
    needed, component = found.least_budget()
    if needed <= plan.budget:
        return None
    return plan.problem("budget", PLN409, f"a budget of {human(plan.budget)} ({plan.budget} bytes) cannot run "
                        f"{component} block by block (its other parts held, room for "
                        f"{'two blocks' if found.prefetch else 'one block'} in flight) beside the exclusions: the "
                        f"model folder {model.source} at {dtype or 'its stored dtype'} needs at least "
                        f"{human(needed)} ({needed} bytes)",
                        f"raise budget to at least {needed} bytes ({human(needed)})")


def _said_by_the_index(plan: Plan) -> frozenset[str]:
    """The plan's names that validate's check of its class against the index reports already: those the class
    does not have (PLN503) or declares as no model (PLN504). The folder adds nothing to those."""
    record = _record(plan.pipeline_class)
    if record is None:
        return frozenset()
    return frozenset(name for name in (*plan.sequence, *plan.exclude, *plan.own_hook)
                     if name not in record.components or record.components[name].model is False)


def _class_mismatch(plan: Plan, model: ModelSizes) -> Problem | None:
    wanted, held = plan.pipeline_class, model.class_name
    if not wanted or wanted == held:
        return None
    ours, theirs = _declared(wanted), _declared(held)
    if ours is None or theirs is None or ours == theirs:
        return None  # the index cannot tell (apply checks the installed diffusers), or diffusers loads it from here
    only = [f"only {cls} takes {', '.join(sorted(names))}" for cls, names in ((wanted, ours - theirs),
                                                                             (held, theirs - ours)) if names]
    return plan.problem("pipeline.class", PLN304, f"{wanted!r} does not match the model folder {model.source}, "
                        f"which holds a {held} (its model_index.json): {'; '.join(only)}",
                        f"write class: {held}, or leave class out to read it from model_index.json")


def _component_problem(plan: Plan, model: ModelSizes, key: str, name: str) -> Problem:
    if name in model.others:
        return plan.problem(key, PLN301, f"{name} of the model folder {model.source} is a {model.others[name][1]}, "
                            "not a model: only torch modules are offloaded", f"remove {name!r}")
    models = [*model.components, *model.unread]
    hint = difflib.get_close_matches(name, models, n=1)
    return plan.problem(key, PLN301, f"the model folder {model.source} has no component {name!r} (its models: "
                        f"{some(models) or 'none'})", did_you_mean(hint) if hint else "remove it from the plan")


def _declared(class_name: str) -> frozenset[str] | None:
    """The components the pipeline class `class_name` takes (the index's), or None when the index lacks it."""
    record = _record(class_name)
    return frozenset(record.components) if record is not None else None


def _record(class_name: str | None) -> index.Pipeline | None:
    """The index's record of a pipeline class, or None: no class, one the index lacks, or an index that cannot
    be read (validate's own check of the class says so)."""
    try:
        return index.load().get(class_name) if class_name else None
    except (OSError, ValueError):
        return None


def has_variant(folder: str | os.PathLike, variant: str) -> bool:
    """Whether a component folder that the pipeline folder's model_index.json names holds files of `variant`:
    the test `from_pretrained` makes before it refuses a variant ("no such modeling files are available"). True
    when model_index.json cannot be read: `read` says what is wrong with it, and diffusers will too."""
    root = Path(folder)
    doc, why = _read_json(root / "model_index.json")
    parsed, _ = (None, None) if why else _pipeline_index(doc, str(root))
    if parsed is None:
        return True
    source = _Folder(root)
    return any(_has_variant(source.listing(name) or (), variant) for name in parsed[1])


# --- text --------------------------------------------------------------------------------------------------------


def human(n: int) -> str:
    """Bytes in binary units with two decimals, up to GiB: 5134927368 -> '4.78 GiB' (`planner.units.human`)."""
    return units.human(n, largest="GiB")


def render_text(sizes: ModelSizes) -> str:
    """The `planner inspect` table: one line per model component (class, stored size and dtype, size as loaded,
    repeated blocks and the largest), a total, then the components without weights and the absent ones."""
    dtype = sizes.torch_dtype
    title = f"{sizes.class_name}  {sizes.source}" + (f"  variant {sizes.variant}" if sizes.variant else "")
    loaded = f"at {dtype}" if dtype else "loaded"
    rows = [("component", "class", "stored", "dtype", loaded, "blocks", "largest block")]
    for name, c in sizes.components.items():
        blocks = {b: n for b, n in c.blocks(dtype).items() if b != REST}
        largest = max(blocks.values(), default=0)
        rows.append((name + ("" if c.variant == sizes.variant else " (no variant)"), c.class_name, human(c.bytes),
                     c.dtype or "-", human(c.bytes_at(dtype)), str(len(blocks)), human(largest) if blocks else "-"))
    total = sizes.loaded_bytes()
    rows.append(("total", "", human(sum(c.bytes for c in sizes.components.values())), "",
                 human(sum(total.values())), "", ""))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [title, ""] + ["  ".join(cell.rjust(w) if i >= 2 else cell.ljust(w)
                                     for i, (cell, w) in enumerate(zip(row, widths, strict=True))).rstrip()
                           for row in rows]
    if sizes.others:
        lines.append("without weights: " + ", ".join(f"{n} ({cls})" for n, (_, cls) in sizes.others.items()))
    if sizes.unread:
        lines.append("not read (see the problems): " + ", ".join(sizes.unread))
    if sizes.absent:
        lines.append("absent: " + ", ".join(sizes.absent))
    return "\n".join(lines) + "\n"
