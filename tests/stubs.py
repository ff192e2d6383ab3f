"""Test helper: diffusers pipelines of any class holding stand-in modules, built without reading any config, so
that every class's offload hooks can be compared (tests/test_index.py, tests/test_scaffold.py)."""

from __future__ import annotations

import sys


def stub_type():
    import torch

    class Stub(torch.nn.Linear):
        """The smallest module diffusers' `to` and accelerate's hooks accept in place of a model."""

        def __init__(self):
            super().__init__(1, 1)

        @property
        def dtype(self):
            return self.weight.dtype

    return Stub


def bare_pipeline(cls, modules: dict):
    """An instance of `cls` holding `modules`, built without its `__init__` (which reads real configs)."""
    expected, _ = cls._get_signature_keys(cls)
    pipe = cls.__new__(cls)
    pipe.register_modules(**{name: modules.get(name) for name in expected})
    return pipe


def combined_pipeline(cls, modules: dict, base, monkeypatch):
    """`cls.__init__` run for real on `modules`, with each connected pipeline's class replaced by one that builds
    it bare from the keyword arguments `__init__` passes: the mapping comes from diffusers, not from the index."""
    scope = sys.modules[cls.__module__]
    for attr, value in vars(scope).items():
        if isinstance(value, type) and issubclass(value, base) and value not in (base, cls):
            monkeypatch.setattr(scope, attr, lambda _sub=value, **kwargs: bare_pipeline(_sub, kwargs))
    return cls(**modules)
