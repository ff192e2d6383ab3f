"""How a block's prefetch copy is made: on a CUDA side stream from pinned memory (`StreamCopier`), so that the next
block arrives while the current one computes, or where the caller runs (`SyncCopier`: a dry run, a CPU, a device
without streams), the same copy at the same point, so that the trace is the same."""

from __future__ import annotations

from typing import Callable

import torch


class SyncCopier:
    """Copies made where the caller runs (a dry run, a CPU, a device without streams): a prefetch is the same
    load made at the same point, synchronously."""

    def copy(self, load: Callable[[], list[torch.Tensor]]):
        load()
        return None

    def wait(self, event) -> None:
        """Nothing to wait for: the copy is done."""


class StreamCopier:
    """Copies on a CUDA side stream, so that the next block arrives while the current one computes. `copy` runs
    the load with the side stream current (its allocations and copies are ordered there) and returns an event
    recorded after it; every tensor it put on the device is marked as used by the compute stream
    (`record_stream`), so the allocator never hands its memory to a later copy while a kernel may still read it.
    `wait` makes the compute stream wait for that event before the block runs (or is dropped). `cuda` stands in
    for `torch.cuda` in tests."""

    def __init__(self, device: torch.device, cuda=None):
        self.cuda = cuda if cuda is not None else torch.cuda
        self.device = device
        self.stream = self.cuda.Stream(device=device)

    def copy(self, load: Callable[[], list[torch.Tensor]]):
        with self.cuda.stream(self.stream):
            tensors = load()
            event = self.cuda.Event()
            event.record(self.stream)
        compute = self.cuda.current_stream(self.device)
        for tensor in tensors:
            self.record(tensor, compute)
        return event

    def record(self, tensor: torch.Tensor, stream) -> None:
        tensor.record_stream(stream)

    def wait(self, event) -> None:
        if event is not None:
            self.cuda.current_stream(self.device).wait_event(event)


def copier_for(device: torch.device, prefetch: bool):
    """A `StreamCopier` where prefetch can overlap (a CUDA device torch reaches), else `SyncCopier`."""
    if prefetch and device.type == "cuda" and torch.cuda.is_available():
        return StreamCopier(device)
    return SyncCopier()
