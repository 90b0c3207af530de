"""Which files of a hub repository a load needs, with their sizes: what there is to download.

The files are given as the hub client's patterns: for a pipeline, diffusers' own choice
(model_server.engine.pipeline_files); the sizes come from the hub's file tree.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from huggingface_hub import HfApi, try_to_load_from_cache
from huggingface_hub.hf_api import RepoFile
from huggingface_hub.utils import filter_repo_objects

# The hub's repo names: letters, digits, "-", "_" and ".", not starting with "." or "-" (so "./x" is a path).
_HUB_ID = re.compile(r"^\w[\w.-]*/\w[\w.-]*$")


def is_hub_id(source: str) -> bool:
    """A hub repository id (``org/name``), not a local path."""
    return bool(_HUB_ID.match(source)) and not Path(source).exists()


@dataclasses.dataclass
class RemoteFile:
    path: str
    size: int
    sha256: str | None  # LFS files (the weights): their content hash, which names the blob in the cache
    cached: bool


@dataclasses.dataclass
class Plan:
    """The files of ``repo`` at ``revision`` (resolved to ``commit``) that a load needs."""

    repo: str
    revision: str | None
    commit: str
    files: list[RemoteFile]
    allow_patterns: list[str] | None = None
    ignore_patterns: list[str] | None = None

    @property
    def missing(self) -> list[RemoteFile]:
        return [f for f in self.files if not f.cached]

    @property
    def missing_bytes(self) -> int:
        return sum(f.size for f in self.missing)


def plan(repo: str, revision: str | None, token: str | None, allow_patterns=None, ignore_patterns=None) -> Plan:
    """The files of ``repo`` matching the patterns, with sizes, and which are already cached."""
    api = HfApi(token=token)
    commit = api.repo_info(repo, revision=revision, token=token).sha
    entries = {f.path: f for f in api.list_repo_tree(repo, revision=commit, recursive=True, token=token)
               if isinstance(f, RepoFile)}
    wanted = filter_repo_objects(entries, allow_patterns=allow_patterns, ignore_patterns=ignore_patterns)
    files = [RemoteFile(path, entries[path].size, entries[path].lfs.sha256 if entries[path].lfs else None,
                        isinstance(try_to_load_from_cache(repo, path, revision=commit), str))
             for path in sorted(wanted)]
    return Plan(repo, revision, commit, files, allow_patterns, ignore_patterns)
