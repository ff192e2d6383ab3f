"""The safetensors header parser: the tensors a file holds, from its header alone, checked as safetensors checks them,
within the folder's bounds (`planner.folder.bounds`: the header's bytes and its tensors count against the folder's).

Raises nothing for a bad file: each function returns the tensors and the first problem (PLN404 a damaged header or
one past a bound, PLN405 a truncated or oversized file, or a Git LFS pointer).
"""

from __future__ import annotations

import json
import os
import struct

from planner.folder import bounds
from planner.folder.bounds import MAX_HEADER_BYTES, PAST_A_BOUND, Budget, Past, cut, shown
from planner.folder.files import open_regular, unreadable
from planner.folder.sizes import DTYPE_BITS, Tensor
from planner.plan import Problem
from planner.rules import PLN404, PLN405

__all__ = ["MAX_FILE_BYTES", "MAX_HEADER_BYTES", "header_entries", "parse_header", "read_header"]

# The largest file a system can hold (off_t): a tensor ending past it is a damaged header, not a truncated download.
MAX_FILE_BYTES = 2**63 - 1
# safetensors reads shapes and offsets as 64-bit unsigned integers: a larger one is no safetensors header.
_MAX_U64 = 2**64 - 1


_LFS_POINTER = b"version "  # a Git LFS pointer file starts "version https://git-lfs.github.com/spec/v1"


def read_header(path: str | os.PathLike, budget: Budget | None = None) -> tuple[tuple[Tensor, ...], Problem | None]:
    """The tensors of the safetensors file at `path`, from its header alone (at most 8 + MAX_HEADER_BYTES bytes
    read, and no more than is left of the folder's `budget`), and the first problem found: unreadable, a header
    that is not valid or is past a bound, or a file length that disagrees with the header (the bytes missing or
    extra are named). No tensors when there is a problem."""
    budget = Budget() if budget is None else budget
    where = os.fsdecode(path)
    try:
        f, size = open_regular(where)
        with f:
            prefix = f.read(8)
            found = _prefix_problem(prefix, size, where) or _past(budget, prefix, where)
            raw = b"" if found else f.read(struct.unpack("<Q", prefix)[0])
    except OSError as exc:
        return (), PLN404.problem(where, f"cannot read it: {unreadable(where, exc)}", "check the file and its "
                                  "permissions")
    if found:
        return (), found
    if len(raw) != struct.unpack("<Q", prefix)[0]:  # it shrank while read
        return (), _prefix_problem(prefix, 8 + len(raw), where)
    return parse_header(raw, where, size, budget)


def parse_header(raw: bytes, where: str, size: int | None = None,
                 budget: Budget | None = None) -> tuple[tuple[Tensor, ...], Problem | None]:
    """The tensors a safetensors header (the JSON after the 8-byte length) describes, checked as safetensors
    checks them: a UTF-8 JSON object (a name given twice keeps its last entry), known dtypes, shapes and offsets
    of non-negative integers, each tensor's bytes matching its shape, tensors packed end to end from 0; no more JSON
    values (counted before decoding) and tensors (counted before any is built) than are left of the folder's
    `budget` (a fresh one for a header alone; past it nothing more is read). With the file's `size`, also that the
    file ends where the last tensor does."""
    budget = Budget() if budget is None else budget
    past = budget.decode(raw, "its header")
    if past:
        return (), budget.note(PLN404.problem(where, f"refused: {past}", PAST_A_BOUND))
    header, why = _decode(raw)
    tensors, end, why = ((), 0, why) if why else header_entries(header, budget.tensors)
    if isinstance(why, Past):
        return (), budget.note(PLN404.problem(where, f"refused: {why}", PAST_A_BOUND))
    if why:
        return (), PLN404.problem(where, f"not a valid safetensors header: {why}")
    budget.tensors -= len(tensors)
    declared = 8 + len(raw) + end
    if declared > MAX_FILE_BYTES:
        return (), PLN404.problem(where, f"not a valid safetensors header: its tensors end at byte {declared:,}, "
                                  f"beyond any file ({MAX_FILE_BYTES:,} bytes at most)")
    if size is not None and size != declared:
        return (), _length_problem(where, size, declared)
    return tensors, None


def _past(budget: Budget, prefix: bytes, where: str) -> Problem | None:
    """The problem of a header (its length field checked already) that the folder's budget cannot take, else None:
    the bytes taken are the 8-byte length and the header."""
    why = budget.take(8 + struct.unpack("<Q", prefix)[0], "its header")
    return budget.note(PLN404.problem(where, f"not read: {why}", PAST_A_BOUND)) if why else None


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


def _the_bound(tensors: int) -> str:
    """The tensor bound, for a header that `tensors` are left for."""
    before = bounds.MAX_TENSORS - tensors
    if before:
        return (f"the {tensors:,} left of the {bounds.MAX_TENSORS:,} read from one model folder's headers together "
                f"({before:,} in the headers read before it)")
    return f"the {bounds.MAX_TENSORS:,} read from one model folder's headers (a real model has a few thousand)"


def header_entries(header: dict, limit: int | None = None) -> tuple[tuple[Tensor, ...], int, str | None]:
    """(tensors, end of the last one, None) of a decoded header, or ((), 0, why it is not valid); more than `limit`
    tensors (MAX_TENSORS by default) are refused before any is built."""
    limit = bounds.MAX_TENSORS if limit is None else limit
    count = len(header) - ("__metadata__" in header)
    if count > limit:
        return (), 0, Past(f"it declares {count:,} tensors, more than {_the_bound(limit)}: nothing more is read")
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
            return (), 0, (f"tensor {shown(name)} starts at byte {begin:,} of the data where {end:,} was "
                           "expected: tensors overlap or leave a gap")
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
    if type(shape) is not list or type(begin) is not int or type(end) is not int or not 0 <= begin <= end or \
            end > MAX_FILE_BYTES:
        return None
    numel = _numel(shape, (end - begin) * 8)
    if numel is None or numel * bits != (end - begin) * 8:
        return None
    return Tensor(name, dtype, tuple(shape), end - begin), begin


def _numel(shape: list, cap: int) -> int | None:
    """The elements of `shape`, or None when it is not a list of integers from 0 to 2**64 - 1 (safetensors'
    usize); a product past `cap` stops growing (it can only grow, or drop to 0), so an absurd shape costs no
    huge multiplication."""
    numel = 1
    for d in shape:
        if type(d) is not int or not 0 <= d <= _MAX_U64:
            return None
        if numel <= cap or d == 0:
            numel *= d
    return numel


def _entry_problem(name: str, entry) -> str:
    """Why an entry that `_entry` refused is not valid."""
    tensor = f"tensor {shown(name)}"
    if not isinstance(entry, dict):
        return f"{tensor} is not described by an object"
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in DTYPE_BITS:
        if isinstance(dtype, str) and dtype.upper() in DTYPE_BITS:
            return f"{tensor} has the unknown dtype {shown(dtype)} (did you mean {dtype.upper()!r}?)"
        return f"{tensor} has the unknown dtype {shown(dtype)} (known: {', '.join(DTYPE_BITS)})"
    if type(shape) is not list or _numel(shape, 0) is None:
        return f"{tensor} has a shape that is not a list of integers from 0 to 2**64 - 1"
    if not _naturals(offsets) or len(offsets) != 2 or offsets[0] > offsets[1]:
        return f"{tensor} has data_offsets that are not [begin, end] with 0 <= begin <= end"
    if offsets[1] > MAX_FILE_BYTES:
        return f"{tensor} has data_offsets ending past byte {MAX_FILE_BYTES:,}, beyond any file"
    span = offsets[1] - offsets[0]
    numel = _numel(shape, span * 8)
    bits = numel * DTYPE_BITS[dtype]
    needs = f"{bits // 8:,}" if numel <= span * 8 else f"more than {span:,}"
    return f"{tensor} ({dtype} {cut(str(shape))}) needs {needs} bytes, its data_offsets span {span:,}"


def _naturals(value) -> bool:
    return type(value) is list and all(type(v) is int and v >= 0 for v in value)
