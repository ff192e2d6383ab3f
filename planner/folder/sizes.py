"""What a model folder holds, as values: each component's tensors (name, dtype, shape, bytes as stored), its bytes
once loaded at a torch dtype, and its bytes per repeated block (`planner.blocknames`).

The sizes are the weights: parameters and persistent buffers, what the safetensors files hold. A model can also
build non-persistent buffers when it is made (CLIP's `position_ids`, rotary tables); they move with the model, so
the executor's trace, which measures the loaded modules, counts them too, and nothing here can see them.
"""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from types import MappingProxyType
from typing import Mapping, NamedTuple

from planner import units
from planner.blocknames import REST, block_order, piece_of

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

    def blocks(self, torch_dtype: str | None = None, splits: frozenset[str] = frozenset()) -> dict[str, int]:
        """Bytes per repeated block once loaded at `torch_dtype` (see `block_of`), in natural name order, then
        REST; they sum to `bytes_at(torch_dtype)`. With `splits`, per piece (`piece_of`: the blocks in `splits`
        split into the pieces below them)."""
        totals: dict[str, int] = {}
        for name, size in self._loaded_sizes(torch_dtype).items():
            block = piece_of(name, splits)
            totals[block] = totals.get(block, 0) + size
        rest = totals.pop(REST, 0)
        return {**{b: totals[b] for b in sorted(totals, key=block_order)}, REST: rest}

    def tensor_bytes(self, torch_dtype: str | None = None) -> dict[str, int]:
        """Bytes of each tensor once loaded at `torch_dtype`, by name: what nesting splits blocks by."""
        return dict(self._loaded_sizes(torch_dtype))

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


def human(n: int) -> str:
    """Bytes in binary units with two decimals, up to GiB: 5134927368 -> '4.78 GiB' (`planner.units.human`)."""
    return units.human(n, largest="GiB")
