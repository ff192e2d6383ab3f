"""Moving a module's weights between the host and the device by swapping each tensor's `.data` (the Parameter objects
stay, as peft and optimisers hold them), and finding what changed on the device so that it is never lost.

With host copies kept, an eviction drops the device copy and copies nothing back, unless the tensor changed while
resident: its version counter moved (an in-place op on the parameter), its data was replaced (`weight.data = ...`),
or its bits differ (an integer checksum of its words, computed on the device at load and compared later: peft's
`fuse_lora` adds to `weight.data`, which no version counter sees). A changed tensor is copied back into its host
copy. The first two checks are free; the checksum comparison makes the host wait for the device, so the residency
asks for it only where something outside the pipeline can have changed the weights (`check`: once per call for
everything resident across the call boundary, batched); an eviction `trusted` by its caller (loaded within the
call it leaves in, or checked since) compares no checksum.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch

from planner.executor import compat
from planner.executor.reasons import COPIED_BACK

_WORDS = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


HOST = torch.device("cpu")


def fingerprint(data: torch.Tensor) -> torch.Tensor | None:
    """An integer checksum of the tensor's bits, computed where it lives (nothing moves): the sum of its words, as
    a 0-d int64 tensor. None when it cannot be read so (the tensor then counts as changed)."""
    word = _WORDS.get(data.element_size())
    if word is None or not data.is_contiguous():
        return None
    try:
        return data.reshape(-1).view(word).sum(dtype=torch.int64)
    except (RuntimeError, TypeError):  # a dtype that cannot be viewed as integers
        return None


@dataclass
class _Kept:
    """A tensor put on the device: its host data (None: no host copy), and how it looked right after the load."""

    tensor: torch.Tensor
    host: torch.Tensor | None
    version: int
    pointer: int
    fingerprint: torch.Tensor | None
    dirty: bool = False  # a `check` found its bits changed: copied back when it leaves the device


class Weights:
    """One component's parameters and buffers (each tensor once), moved by swapping each tensor's data. `pin`
    True pins its kept host copies on a CUDA device (what `pin_choice` chose within the host's spare memory);
    False keeps them pageable."""

    pin: bool = False

    def __init__(self, module: torch.nn.Module):
        self.module = module
        self.kept: list[_Kept] = []
        self.pinned: dict[int, torch.Tensor] = {}  # tensors whose host copy `load` pinned, by id

    def unpin(self) -> None:
        """The host copies `load` pinned back in pageable memory (a page-locked buffer is freed once nothing
        holds it): what the plan pinned does not outlive it."""
        for tensor in self.pinned.values():
            if tensor.device == HOST and tensor.data.is_pinned():
                tensor.data = tensor.data.clone()
        self.pinned = {}

    def tensors(self) -> list[torch.Tensor]:
        seen: dict[int, torch.Tensor] = {}
        for tensor in itertools.chain(self.module.parameters(), self.module.buffers()):
            seen.setdefault(id(tensor), tensor)
        return list(seen.values())

    def host_tensors(self) -> list[torch.Tensor]:
        """Each tensor's host copy: the one kept while the tensor is on a device, else its data on the host."""
        kept = {id(k.tensor): k.host for k in self.kept if k.host is not None}
        found = [kept.get(id(t), t.data) for t in self.tensors()]
        return [t for t in found if t.device == HOST]

    def home(self) -> None:
        """Every tensor on the host (a module the pipeline had put on a device before the plan came)."""
        for tensor in self.tensors():
            if tensor.device != HOST:
                tensor.data = tensor.data.to(HOST)

    def intact(self) -> bool:
        """The device copies the last load made are still the tensors' data (nobody moved the module since)."""
        return all(k.tensor.data_ptr() == k.pointer for k in (self.kept[:1] + self.kept[-1:]))

    def forget(self) -> None:
        """Drop what the last load kept, leaving the tensors as they are now."""
        self.kept = []

    def load(self, device: torch.device, keep_host: bool) -> None:
        """A device copy of every host tensor (also when `device` is the host: a dry run copies as a device
        would); tensors already on `device` stay as they are, without a host copy. With `pin`, a kept host copy
        of a CUDA device is pinned the first time (it then moves at full bandwidth, and asynchronously: it never
        changes while the copy runs); without host copies nothing is pinned."""
        kept = []
        pin = keep_host and device.type == "cuda" and self.pin
        for tensor in self.tensors():
            data = tensor.data
            if data.device != HOST:
                if data.device != device:
                    tensor.data = data = data.to(device)
                kept.append(_Kept(tensor, None, compat.version_of(tensor), data.data_ptr(), None))
                continue
            if pin and not data.is_pinned():
                data = data.pin_memory()
                self.pinned[id(tensor)] = tensor
            copy = data.to(device, copy=True, non_blocking=pin)
            tensor.data = copy
            host = data if keep_host else None
            kept.append(_Kept(tensor, host, compat.version_of(tensor), copy.data_ptr(),
                              fingerprint(copy) if host is not None else None))
        self.kept = kept

    def evict(self, device: torch.device, trusted: bool = False) -> int:
        """Every tensor back on the host; returns the bytes copied back (changed or without a host copy).
        `trusted`: nothing but the pipeline can have changed the bits since the load or the last `check`, so
        only the free checks run (version counter, replaced data)."""
        kept, self.kept = self.kept, []
        changed = _changed(kept, trusted)
        back = 0
        for entry, dirty in zip(kept, changed, strict=True):
            tensor, data = entry.tensor, entry.tensor.data
            if data.data_ptr() != entry.pointer:  # its data was replaced: the new data is the truth
                if data.device == device or data.device != HOST:  # (in a dry run the device is the host)
                    tensor.data = data.to(HOST, copy=True)
                    back += data.nbytes
            elif entry.host is not None and not dirty:
                tensor.data = entry.host
            elif entry.host is not None:
                entry.host.copy_(data)
                tensor.data = entry.host
                back += data.nbytes
            else:
                tensor.data = data.to(HOST, copy=True)
                back += data.nbytes
        for tensor in self.tensors():  # added while resident (a LoRA adapter loaded onto the device copy)
            if tensor.device != HOST:
                back += tensor.nbytes
                tensor.data = tensor.data.to(HOST)
        return back


def _suspect(entry: _Kept) -> bool:
    """Changed by what the free checks see, or already found changed (or never fingerprinted)."""
    return entry.host is None or entry.fingerprint is None or entry.dirty \
        or compat.version_of(entry.tensor) != entry.version or entry.tensor.data_ptr() != entry.pointer


def _differ(entries: list[_Kept]) -> list[bool]:
    """Per entry: whether its bits differ from its fingerprint at load (True where they cannot be read), with one
    device synchronisation for all of them, none for no entry."""
    result = [True] * len(entries)
    indexes, before, after = [], [], []
    for i, entry in enumerate(entries):
        now = fingerprint(entry.tensor.data)
        if now is not None:
            indexes.append(i)
            before.append(entry.fingerprint)
            after.append(now)
    if indexes:
        same = (torch.stack(before) == torch.stack(after)).tolist()
        for i, unchanged in zip(indexes, same, strict=True):
            result[i] = not unchanged
    return result


def _changed(kept: list[_Kept], trusted: bool = False) -> list[bool]:
    """Per kept tensor: whether it changed since its load (version counter, replaced data, a `check`'s finding,
    or, unless `trusted`, its checksum: one device synchronisation for all of them)."""
    result = [_suspect(entry) for entry in kept]
    if trusted:
        return result
    indexes = [i for i, suspect in enumerate(result) if not suspect]
    for i, differs in zip(indexes, _differ([kept[i] for i in indexes]), strict=True):
        result[i] = differs
    return result


def check(found: list[Weights]) -> None:
    """Compare the checksums of every device copy in `found` with those taken at their load, in one device
    synchronisation (none when there is nothing to compare): the changed ones are marked, and copied back when
    they leave the device. After it, their evictions may be `trusted` until something else can change them."""
    entries = [entry for weights in found for entry in weights.kept if not _suspect(entry)]
    for entry, differs in zip(entries, _differ(entries), strict=True):
        entry.dirty = entry.dirty or differs


def evict(weights: Weights, device: torch.device, trace, key: str, reason: str | None,
          copied_back: dict[int, int], trusted: bool = False) -> None:
    """`weights` leave the device; what changed there is copied back to the host (its bytes added to
    `copied_back` for the trace's call, and said in the offload's reason), and the trace records the offload.
    `trusted`: see `Weights.evict`."""
    back = weights.evict(device, trusted)
    if back:
        call = trace.call
        copied_back[call] = copied_back.get(call, 0) + back
        reason = f"{reason}; {COPIED_BACK}" if reason else COPIED_BACK
    trace.offload(key, reason)


def finish_call(trace, copied_back: dict[int, int], now: float) -> None:
    """The trace closes the call; bytes copied back are kept for as many calls as the trace keeps."""
    trace.end_call(now)
    oldest = trace.call - trace.keep_calls
    for call in [c for c in copied_back if c < oldest]:
        del copied_back[call]


class BlockWeights(Weights):
    """One block's tensors, moved as `budget.Weights` moves a whole component: found in its submodule when they
    move (a LoRA adapter loaded into a resident block leaves the device with it), but for those its component's
    partition gave to REST (`foreign`: tied to a tensor outside the block)."""

    def __init__(self, module: torch.nn.Module, foreign: frozenset[int], pin: bool):
        super().__init__(module)
        self.foreign, self.pin = foreign, pin

    def tensors(self) -> list[torch.Tensor]:
        return [t for t in super().tensors() if id(t) not in self.foreign]


class RestWeights(Weights):
    """A component's REST: its tensors outside every block, found when they move."""

    def __init__(self, module: torch.nn.Module, parts: list[BlockWeights], pin: bool):
        super().__init__(module)
        self.parts, self.pin = parts, pin

    def tensors(self) -> list[torch.Tensor]:
        inside = {id(t) for part in self.parts for t in part.tensors()}
        return [t for t in super().tensors() if id(t) not in inside]
