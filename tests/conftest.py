from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data"
ROOT = Path(__file__).parent.parent


@pytest.fixture(scope="session")
def tiny_pipelines(tmp_path_factory):
    """Tiny random-weight pipelines (sd, sdxl, controlnet) saved once per test run; a dict kind -> folder."""
    from planner.executor import tiny

    root = tmp_path_factory.mktemp("tiny")
    return {kind: tiny.build(kind, root / kind) for kind in tiny.KINDS}
