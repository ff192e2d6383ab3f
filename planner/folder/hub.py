"""A hub repo read through huggingface_hub, as `planner.folder.pipeline` reads it: its file list, small JSON files and
the headers of its weights (range requests of the first bytes of each file): no weights are downloaded. Offline, or
with the hub unreachable, one PLN408 problem says so.

The folder's bounds hold here too (`planner.folder.bounds`): the JSON files count against MAX_FOLDER_BYTES, the
headers' tensors against MAX_TENSORS, and the headers are fetched eight at a time, none after a bound is met.
huggingface_hub bounds each header itself (SAFETENSORS_MAX_HEADER_LENGTH, 25 MB) and does not say how long it was,
so the headers' bytes are not counted.
"""

from __future__ import annotations

import os
from pathlib import Path

from planner.folder.bounds import PAST_A_BOUND, Budget, Past, cut
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
        self.budget = Budget()

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

    def what(self, rel: str) -> str | None:
        """Nothing but files is in a repo's file list: what is not listed is missing."""
        return None

    def json(self, rel: str, rule: Rule) -> tuple[object, Problem | None]:
        """As `Folder.json`, the file downloaded (and cached) by hf_hub_download; a download that fails is a
        hub problem (PLN408), not a `rule` one."""
        from huggingface_hub import hf_hub_download

        try:
            path = hf_hub_download(self.repo_id, rel, revision=self.revision, endpoint=self.endpoint)
        except Exception as exc:  # noqa: BLE001 - see list_files
            return None, self._failure(exc, self.where(rel))
        doc, why = read_json(Path(path), self.budget)
        if isinstance(why, Past):
            return None, self.budget.note(rule.problem(self.where(rel), why, PAST_A_BOUND))
        return doc, rule.problem(self.where(rel), why) if why else None

    def headers(self, rels: list[str]) -> list:
        """Each header's (tensors, problem), fetched eight at a time and checked in order; None for those not
        fetched once a bound is met."""
        from concurrent.futures import ThreadPoolExecutor

        found = []
        with ThreadPoolExecutor(max_workers=8) as pool:
            for start in range(0, len(rels), 8):
                batch = rels[start:start + 8]
                if self.budget.spent:
                    found += [None] * (len(rels) - start)
                    break
                found += [None if self.budget.spent else self._entries(rel, got)
                          for rel, got in zip(batch, pool.map(self._fetch, batch), strict=True)]
        return found

    def _fetch(self, rel: str):
        """The parsed header of `rel` (huggingface_hub's), or the problem of fetching it."""
        from huggingface_hub.errors import SafetensorsParsingError

        try:
            return self.api.parse_safetensors_file_metadata(self.repo_id, rel, revision=self.revision)
        except SafetensorsParsingError as exc:
            return PLN404.problem(self.where(rel), f"not a valid safetensors header: {cut(str(exc))}")
        except Exception as exc:  # noqa: BLE001 - see list_files
            return self._failure(exc, self.where(rel))

    def _entries(self, rel: str, meta) -> tuple[tuple[Tensor, ...], Problem | None]:
        """The tensors of a fetched header, checked as a local one is, its tensors counted against the budget."""
        if isinstance(meta, Problem):
            return (), meta
        where = self.where(rel)
        header = {name: {"dtype": t.dtype, "shape": t.shape, "data_offsets": list(t.data_offsets)}
                  for name, t in meta.tensors.items()} if len(meta.tensors) <= self.budget.tensors else meta.tensors
        tensors, _, why = header_entries({**header, "__metadata__": meta.metadata or {}}, self.budget.tensors)
        if isinstance(why, Past):
            return (), self.budget.note(PLN404.problem(where, f"refused: {why}", PAST_A_BOUND))
        self.budget.tensors -= len(tensors)
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
