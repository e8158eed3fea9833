"""Model sources: where a model id's GGUF files come from.

`file:NAME` is `<models_dir>/NAME.gguf` or the GGUF files inside `<models_dir>/NAME/`;
`hf:org/name` (or a bare `org/name`) is a Hugging Face hub repository. Ids are checked
before anything touches the disk or the network: nothing may leave `models_dir`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cortex.core.errors import BadRequest
from cortex.neuron.config import HubConfig

log = logging.getLogger(__name__)

_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}"
_FILE_RE = re.compile(rf"^{_NAME}$")
_REPO_RE = re.compile(rf"^{_NAME}/{_NAME}$")


@dataclass(frozen=True)
class Source:
    scheme: str  # "file" | "hf"
    name: str  # file name or repo id

    @property
    def canonical(self) -> str:
        return f"{self.scheme}:{self.name}"


def parse_model_id(model_id: object) -> Source:
    """Classify a model id, refusing anything that could escape `models_dir`."""
    if not isinstance(model_id, str) or not model_id.strip():
        raise BadRequest("model_id must be a non-empty string such as 'file:NAME' or "
                         "'hf:org/name'", code="invalid_model_id", param="model_id")
    scheme, sep, rest = model_id.partition(":")
    if not sep:
        scheme, rest = "hf", model_id
    elif "://" in model_id:
        raise _bad_id(model_id, "URLs are not model ids")
    if ".." in rest or rest.startswith(("/", "\\")) or "\\" in rest or "\0" in rest:
        raise _bad_id(model_id, "paths that leave the models directory are not allowed")
    if scheme == "file" and _FILE_RE.match(rest):
        return Source("file", rest)
    if scheme == "hf" and _REPO_RE.match(rest):
        return Source("hf", rest)
    if scheme not in ("file", "hf"):
        raise _bad_id(model_id, f"unknown source {scheme!r}")
    raise _bad_id(model_id, "names are letters, digits, '.', '_' and '-' "
                  "(hf ids are 'org/name')")


def _bad_id(model_id: str, why: str) -> BadRequest:
    return BadRequest(f"invalid model id {model_id!r}: {why}. Use 'file:NAME' for "
                      "<models_dir>/NAME.gguf or 'hf:org/name' for a hub repository.",
                      code="invalid_model_id", param="model_id")


def list_local(models_dir: Path, src: Source) -> tuple[Path, list[str]] | None:
    """(base directory, relative file names) for a `file:` source, or None if absent."""
    single = models_dir / f"{src.name}.gguf"
    if single.is_file():
        return models_dir, [single.name]
    folder = models_dir / src.name
    if folder.is_dir():
        files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
        return folder, files
    return None


class Hub:
    """The few hub calls a neuron makes, with the endpoint, token and cache it is given.

    The endpoint is passed explicitly to every call: huggingface_hub reads HF_ENDPOINT
    once at import, so setting it later in the environment would be ignored.
    """

    def __init__(self, cfg: HubConfig, cache_dir: Path) -> None:
        self.endpoint = (cfg.endpoint or os.environ.get("HF_ENDPOINT") or "").rstrip("/") or None
        if self.endpoint and "huggingface_hub" not in sys.modules:
            # The client's own side calls (user-agent registry) use the import-time
            # endpoint: make it ours too, so a private mirror means no other traffic.
            os.environ["HF_ENDPOINT"] = self.endpoint
        os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
        self.token = cfg.token or None
        self.offline = cfg.offline or os.environ.get("HF_HUB_OFFLINE", "") in ("1", "true")
        self.cache_dir = cache_dir / "hub"

    def list_files(self, repo: str) -> list[str]:
        if self.offline:
            return self._cached_files(repo)
        from huggingface_hub import HfApi

        return HfApi(endpoint=self.endpoint, token=self.token).list_repo_files(repo)

    def _cached_files(self, repo: str) -> list[str]:
        snapshots = self.cache_dir / f"models--{repo.replace('/', '--')}" / "snapshots"
        names: set[str] = set()
        for snap in snapshots.glob("*"):
            names.update(str(p.relative_to(snap)) for p in snap.rglob("*") if p.is_file())
        return sorted(names)

    def remote_size(self, repo: str, filename: str) -> int | None:
        """The file's size in bytes, or None if it is cached already (or cannot be known):
        what a download of it will move."""
        from huggingface_hub import get_hf_file_metadata, hf_hub_url, try_to_load_from_cache

        if self.offline or isinstance(
                try_to_load_from_cache(repo, filename, cache_dir=str(self.cache_dir)), str):
            return None
        try:
            url = hf_hub_url(repo, filename, endpoint=self.endpoint)
            return get_hf_file_metadata(url, token=self.token).size
        except Exception as exc:  # the download itself will say what is wrong
            log.debug("size of %s/%s unknown: %s", repo, filename, exc)
            return None

    def download(self, repo: str, filename: str,
                 on_bytes: Callable[[int], None] | None = None) -> Path:
        """Fetch one file into the cache; `on_bytes` hears how many bytes are on disk."""
        from huggingface_hub import hf_hub_download

        blobs = self.cache_dir / f"models--{repo.replace('/', '--')}" / "blobs"
        with _Progress(blobs, f"{repo}/{filename}", on_bytes):
            # The catalogue names the repository (its default branch, as the hub serves it);
            # a GGUF is data, read by our own header parser before llama.cpp sees it.
            path = hf_hub_download(repo, filename, cache_dir=str(self.cache_dir),  # nosec B615
                                   endpoint=self.endpoint, token=self.token,
                                   local_files_only=self.offline)
        return Path(path)


class _Progress:
    """Watches the partial file grow (the hub's own progress bars go to a terminal a
    service does not have): tells `on_bytes` often and the log now and then."""

    def __init__(self, blobs: Path, label: str, on_bytes: Callable[[int], None] | None,
                 tick: float = 0.25, log_every: float = 5.0) -> None:
        self.blobs, self.label, self.on_bytes = blobs, label, on_bytes
        self.tick, self.log_every = tick, log_every
        self._done = threading.Event()

    def __enter__(self) -> _Progress:
        log.info("download %s: started", self.label)
        threading.Thread(target=self._watch, daemon=True, name="hub-progress").start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        log.info("download %s: %s", self.label, "failed" if exc[0] else "done")

    def _watch(self) -> None:
        last_log = time.monotonic()
        while not self._done.wait(self.tick):
            size = 0
            for p in self.blobs.glob("*.incomplete"):
                with contextlib.suppress(OSError):  # renamed into place meanwhile
                    size += p.stat().st_size
            if self.on_bytes is not None and size:
                self.on_bytes(size)
            if size and time.monotonic() - last_log >= self.log_every:
                last_log = time.monotonic()
                log.info("download %s: %.1f MB so far", self.label, size / 2**20)
