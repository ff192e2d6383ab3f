"""The safetensors header parser: the tensors a file holds, from its header alone, checked as safetensors checks them.

Raises nothing for a bad file: each function returns the tensors and the first problem (PLN404 a damaged header,
PLN405 a truncated or oversized file, or a Git LFS pointer).
"""

from __future__ import annotations

import json
import math
import os
import struct

from planner.folder.files import open_regular
from planner.folder.sizes import DTYPE_BITS, Tensor
from planner.plan import Problem
from planner.rules import PLN404, PLN405

# safetensors' own bound on a header (MAX_HEADER_SIZE in its reader): a larger length is not a safetensors file.
MAX_HEADER_BYTES = 100_000_000


_LFS_POINTER = b"version "  # a Git LFS pointer file starts "version https://git-lfs.github.com/spec/v1"


def read_header(path: str | os.PathLike) -> tuple[tuple[Tensor, ...], Problem | None]:
    """The tensors of the safetensors file at `path`, from its header alone (at most 8 + MAX_HEADER_BYTES bytes
    read), and the first problem found: unreadable, a header that is not valid, or a file length that disagrees
    with the header (the bytes missing or extra are named). No tensors when there is a problem."""
    where = os.fsdecode(path)
    try:
        f, size = open_regular(where)
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
    tensors, end, why = ((), 0, why) if why else header_entries(header)
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


def header_entries(header: dict) -> tuple[tuple[Tensor, ...], int, str | None]:
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
