from collections.abc import Mapping
from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data"
ROOT = Path(__file__).parent.parent


class TinyBuilds(Mapping):
    """Every tiny build of `planner.tiny.KINDS`, kind -> folder, each built on first use and once per test run:
    a test pays only for the kinds it reads (iterating builds them all). A kind the installed diffusers cannot
    build skips the test that asks for it."""

    def __init__(self, root: Path):
        self.root = root
        self.folders: dict[str, Path] = {}

    def __getitem__(self, kind: str) -> Path:
        from planner import tiny

        if kind not in tiny.KINDS:
            raise KeyError(kind)
        if kind not in self.folders:
            try:
                self.folders[kind] = tiny.build(kind, self.root / kind)
            except tiny.Unavailable as exc:  # the floors' diffusers predates the family
                pytest.skip(str(exc))
        return self.folders[kind]

    def available(self) -> list[str]:
        """The kinds the installed diffusers can build."""
        from planner import tiny

        return [kind for kind in tiny.KINDS if tiny.unavailable(kind) is None]

    def __iter__(self):
        from planner import tiny

        return iter(tiny.KINDS)

    def __len__(self) -> int:
        from planner import tiny

        return len(tiny.KINDS)


@pytest.fixture(scope="session")
def tiny_builds(tmp_path_factory) -> TinyBuilds:
    """Tiny random-weight pipelines of every library family `planner tiny` knows, built lazily, once per run."""
    return TinyBuilds(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def tiny_pipelines(tiny_builds):
    """The three original tiny pipelines (sd, sdxl, controlnet) saved once per test run; a dict kind -> folder."""
    return {kind: tiny_builds[kind] for kind in ("sd", "sdxl", "controlnet")}


@pytest.fixture(scope="session")
def real_sized(tmp_path_factory):
    """Header-only folders of real size (`tests/headers.py`: the published configs' tensors, holes for weights),
    built once per run: {"sdxl": folder with fp16 and float32 files, "flux": a sharded FLUX.1 dev folder}."""
    import headers

    root = tmp_path_factory.mktemp("real-sized")
    return {"sdxl": headers.sdxl(root / "sdxl"), "flux": headers.flux(root / "flux")}


@pytest.fixture
def fired(monkeypatch):
    """The components whose budget hook fired, in order (the real hook runs too): the budget and block
    executors' tests read the call order from it."""
    from planner.executor import hooks

    seen = []
    original = hooks.BudgetHook.pre_forward

    def logged(hook, module, *args, **kwargs):
        seen.append(hook.config.component)
        return original(hook, module, *args, **kwargs)

    monkeypatch.setattr(hooks.BudgetHook, "pre_forward", logged)
    return seen
