"""A hub repo read through huggingface_hub, as `planner.folder.pipeline` reads it: its file list, small JSON files and
the headers of its weights (range requests of the first bytes of each file): no weights are downloaded. Offline, or
with the hub unreachable, one PLN408 problem says so.
"""

from __future__ import annotations

import os
from pathlib import Path

from planner.folder.files import read_json
from planner.folder.pipeline import read_pipeline
from planner.folder.safetensors import header_entries
from planner.folder.sizes import Tensor
from planner.plan import Problem
from planner.rules import PLN401, PLN404, PLN408, Rule


def read_hub(repo_id: str, variant, torch_dtype, revision):
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
    return read_pipeline(hub, repo_id, variant, torch_dtype)


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
        """As `Folder.json`, the file downloaded (and cached) by hf_hub_download; a download that fails is a
        hub problem (PLN408), not a `rule` one."""
        from huggingface_hub import hf_hub_download

        try:
            path = hf_hub_download(self.repo_id, rel, revision=self.revision, endpoint=self.endpoint)
        except Exception as exc:  # noqa: BLE001 - see list_files
            return None, self._failure(exc, self.where(rel))
        doc, why = read_json(Path(path))
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
        tensors, _, why = header_entries({**header, "__metadata__": meta.metadata or {}})
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
