"""Downloads a model's files into the Hugging Face cache, resumably, with progress.

The hub client (huggingface_hub 2.x) downloads each file to a temporary name unique to its
process and deletes it when the download fails, so a start cut off after 3 of a UNet's 3.4 GB
begins again from zero. The weights (the hub's LFS files, which are all but a few KB of a model)
are fetched here instead: into ``blobs/SHA256.partial`` in the hub's own cache layout, continued
with an HTTP ``Range`` request by the next attempt or start, checked against their sha256, then
renamed to the blob the hub client looks for and linked from the snapshot. The hub client then
fetches the small files and records the revision, and finds the weights already there; loading
goes on through diffusers as for any cached model. The hub client's lock per blob is taken, so
the hub client or a second process never writes the same file at once.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Callable

import httpx2
from filelock import FileLock
from huggingface_hub import constants, hf_hub_url, snapshot_download
from huggingface_hub.errors import GatedRepoError, LocalEntryNotFoundError, RepositoryNotFoundError
from huggingface_hub.utils import build_hf_headers, get_session

from model_server.errors import PipelineLoadError, load_error, redact_paths
from model_server.loading.hub_files import Plan, RemoteFile, plan
from model_server.loading.progress import LoadProgress, human_bytes

log = logging.getLogger(__name__)
CHUNK = 1 << 20
# A dropped connection is retried from where it stopped, ATTEMPTS times in all, waiting 1, 2, 4 s...:
# a blip is ridden out; a hub that stays away fails the load within seconds, with what to do.
ATTEMPTS = 4
TIMEOUT = httpx2.Timeout(30.0, connect=10.0)


class _Corrupt(Exception):
    """A finished download whose bytes do not hash to what the hub says."""


def storage_folder(repo: str) -> Path:
    return Path(constants.HF_HUB_CACHE) / f"models--{repo.replace('/', '--')}"


def _partial(repo: str, f: RemoteFile) -> Path:
    return storage_folder(repo) / "blobs" / f"{f.sha256}.partial"


def _partial_bytes(repo: str, files: list[RemoteFile]) -> int:
    return sum(min(p.stat().st_size, f.size) for f in files if f.sha256 and (p := _partial(repo, f)).exists())


def check_disk(folder: Path, needed: int, margin_mb: int, what: str) -> None:
    """Refuse a download the disk cannot hold (with ``margin_mb`` to spare) before it starts."""
    folder.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder).free
    margin = margin_mb * 1_000_000
    if needed + margin > free:
        raise load_error(
            f"not enough disk space to download {what}: it needs {human_bytes(needed)} and "
            f"{human_bytes(margin)} must stay free (SD_DOWNLOAD_FREE_MARGIN_MB), but only {human_bytes(free)} is free "
            f"where the hub cache is",
            "Free some space (or point HF_HOME at a larger disk), then restart the model server; files already "
            "downloaded are kept.")


def _link(repo: str, commit: str, f: RemoteFile, blob: Path) -> None:
    """The snapshot's entry for ``f``: a relative link to its blob, as the hub client makes them."""
    pointer = storage_folder(repo) / "snapshots" / commit / f.path
    pointer.parent.mkdir(parents=True, exist_ok=True)
    if not pointer.exists():
        pointer.unlink(missing_ok=True)  # a dangling link
        os.symlink(os.path.relpath(blob, pointer.parent), pointer)


def _fetch_blob(p: Plan, f: RemoteFile, token: str | None, progress: LoadProgress) -> None:
    """One LFS file, continued from its ``.partial`` if an earlier attempt left one."""
    blobs = storage_folder(p.repo) / "blobs"
    blob, partial = blobs / f.sha256, _partial(p.repo, f)
    locks = Path(constants.HF_HUB_CACHE) / ".locks" / storage_folder(p.repo).name
    locks.mkdir(parents=True, exist_ok=True)
    blobs.mkdir(parents=True, exist_ok=True)
    with FileLock(str(locks / f"{f.sha256}.lock")):
        if not blob.exists():
            _download(hf_hub_url(p.repo, f.path, revision=p.commit), partial, f, token, progress)
            partial.chmod(0o644)
            os.replace(partial, blob)
        _link(p.repo, p.commit, f, blob)


def _download(url: str, partial: Path, f: RemoteFile, token: str | None, progress: LoadProgress) -> None:
    digest = hashlib.sha256()
    if partial.exists() and partial.stat().st_size > f.size:
        partial.unlink()
    if partial.exists():  # resuming: the bytes already here go into the hash first
        with open(partial, "rb") as fh:
            while block := fh.read(CHUNK * 8):
                digest.update(block)
        log.info("resuming %s at %s of %s", f.path, human_bytes(partial.stat().st_size), human_bytes(f.size))
    for attempt in range(ATTEMPTS):
        done = partial.stat().st_size if partial.exists() else 0
        try:
            if done < f.size:
                digest = _get(url, partial, done, digest, token, progress)
            break
        except (httpx2.TransportError, httpx2.HTTPStatusError, OSError) as exc:
            if attempt + 1 == ATTEMPTS or isinstance(exc, httpx2.HTTPStatusError) and exc.response.status_code < 500:
                raise
            log.warning("download of %s interrupted (%s: %s); retrying in %d s", f.path, type(exc).__name__,
                        str(exc)[:200], 2 ** attempt)
            time.sleep(2 ** attempt)
    if partial.stat().st_size != f.size or digest.hexdigest() != f.sha256:
        partial.unlink()  # its bytes are wrong somewhere: start this file over next time
        raise _Corrupt(f"{f.path} did not match its sha256 after downloading; it was deleted")


def _get(url: str, partial: Path, offset: int, digest, token: str | None, progress: LoadProgress):
    """Append the rest of the file from ``offset``; the running sha256 (a new one if the server
    ignored the range and sent the whole file)."""
    headers = build_hf_headers(token=token)
    headers["Accept-Encoding"] = "identity"
    if offset:
        headers["Range"] = f"bytes={offset}-"
    with get_session().stream("GET", url, headers=headers, follow_redirects=True, timeout=TIMEOUT) as response:
        response.raise_for_status()
        if offset and response.status_code != 206:  # the server ignored the range: start the file over
            progress.add(-offset)
            offset, digest = 0, hashlib.sha256()
        with open(partial, "r+b" if offset else "wb") as fh:
            fh.seek(offset)
            fh.truncate()
            for chunk in response.iter_bytes():  # as they arrive, so progress moves on a slow link
                fh.write(chunk)
                digest.update(chunk)
                progress.add(len(chunk))
    return digest


def download(p: Plan, token: str | None, progress: LoadProgress, margin_mb: int) -> None:
    """Everything ``p`` lists that is not cached yet; progress through ``progress``."""
    missing = p.missing
    if not missing:
        return
    resumed = _partial_bytes(p.repo, missing)
    total = p.missing_bytes
    what = f"{p.repo} ({len(missing)} files, {human_bytes(total)})"
    check_disk(storage_folder(p.repo), total - resumed, margin_mb, what)
    progress.start("downloading", f"{p.repo}: {len(missing)} files", total_bytes=total, done_bytes=resumed)
    try:
        for f in sorted(missing, key=lambda f: f.size):  # small first: a failure shows early
            if f.sha256:
                _fetch_blob(p, f, token, progress)
        # The small files, through the hub client, which also records the revision; the weights
        # are found in place.
        small = sum(f.size for f in missing if not f.sha256)
        snapshot_download(p.repo, revision=p.revision, token=token, allow_patterns=p.allow_patterns,
                          ignore_patterns=p.ignore_patterns)
        progress.add(small)
    except (httpx2.HTTPError, OSError, _Corrupt) as exc:
        progress.halt()
        raise _interrupted(p, exc, token) from None
    progress.end()


def _interrupted(p: Plan, exc: Exception, token: str | None) -> PipelineLoadError:
    still = [f for f in p.missing if not (storage_folder(p.repo) / "snapshots" / p.commit / f.path).exists()]
    fetched = p.missing_bytes - sum(f.size for f in still) + _partial_bytes(p.repo, still)
    names = ", ".join(f"{f.path} ({human_bytes(f.size)})" for f in still[:6]) + (" ..." if len(still) > 6 else "")
    reason = redact_paths(f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}")
    return load_error(
        f"downloading {p.repo} stopped ({reason}): {human_bytes(fetched)} of {human_bytes(p.missing_bytes)} "
        f"fetched and kept; still missing: {names}",
        _network_hint(token) + " Restart the model server (or run `python -m model_server fetch`): the download "
        "continues where it stopped.")


def _network_hint(token: str | None) -> str:
    return (f"Check the network to {constants.ENDPOINT} (HTTPS_PROXY if you need a proxy)"
            + ("." if token else "; a gated or private model needs HF_TOKEN."))


def _unreachable(repo: str, exc: BaseException) -> PipelineLoadError:
    # diffusers re-raises the hub's answer as the cause of its own error
    causes = [e for e in (exc, exc.__cause__, exc.__context__) if e is not None]
    status = {getattr(getattr(e, "response", None), "status_code", None) for e in causes}
    if any(isinstance(e, GatedRepoError) for e in causes) or status & {401, 403}:
        return load_error(f"{repo} is gated or private and the hub refused access",
                          "Set HF_TOKEN (or HF_TOKEN_FILE) to a token that has accepted the model's terms.")
    if any(isinstance(e, RepositoryNotFoundError) for e in causes) or 404 in status:
        return load_error(f"{repo} was not found on the hub ({constants.ENDPOINT})",
                          "Check SD_MODEL (org/name), or set it to a local diffusers directory.")
    if constants.HF_HUB_OFFLINE:
        return load_error(f"{repo} is not (completely) in the local cache and HF_HUB_OFFLINE is set",
                          "Download it once with network access (`python -m model_server fetch`), unset "
                          "HF_HUB_OFFLINE, or set SD_MODEL to a local diffusers directory.")
    return load_error(f"could not reach the hub ({constants.ENDPOINT}) and {repo} is not (completely) in the "
                      f"local cache ({type(causes[-1]).__name__})",
                      _network_hint(None) + " Or pre-fill the cache with `python -m model_server fetch` where "
                      "there is network, or set SD_MODEL to a local diffusers directory.")


def ensure_pipeline(repo: str, revision: str | None, token: str | None, progress: LoadProgress, margin_mb: int,
                    choose_files: Callable[[str, str | None, str | None], tuple | None]) -> None:
    """Make a hub pipeline complete in the cache (downloading what is missing), or say why not.
    ``choose_files`` gives the (allow, ignore) patterns of the files the pipeline loads, None when the
    cache has them all (model_server.engine.pipeline_files.pipeline_patterns)."""
    try:
        patterns = choose_files(repo, revision, token)
    except (LocalEntryNotFoundError, OSError, httpx2.HTTPError, ValueError) as exc:
        raise _unreachable(repo, exc) from None
    if patterns is None:
        return  # complete in the cache
    try:
        p = plan(repo, revision, token, *patterns)
    except (OSError, httpx2.HTTPError) as exc:
        raise _unreachable(repo, exc) from None
    download(p, token, progress, margin_mb)


def ensure_files(repo: str, revision: str | None, token: str | None, progress: LoadProgress, margin_mb: int,
                 allow_patterns: list[str]) -> None:
    """The files of ``repo`` matching ``allow_patterns`` (an adapter, a decoder, one component)."""
    try:
        p = plan(repo, revision, token, allow_patterns)
    except (OSError, httpx2.HTTPError) as exc:
        if _cached(repo, revision, allow_patterns):
            return
        raise _unreachable(repo, exc) from None
    download(p, token, progress, margin_mb)


def _cached(repo: str, revision: str | None, allow_patterns: list[str]) -> bool:
    try:
        snapshot_download(repo, revision=revision, allow_patterns=allow_patterns, local_files_only=True)
        return True
    except (LocalEntryNotFoundError, OSError, ValueError):
        return False
