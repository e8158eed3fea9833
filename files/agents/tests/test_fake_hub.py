"""The real huggingface_hub client against FakeHub: the hub calls a neuron makes, over HTTP.

How a neuron should configure the client (checked below against the installed version):

- endpoint: pass ``endpoint=`` to ``HfApi(...)`` and ``hf_hub_download(...)`` on every call.
  huggingface_hub copies ``HF_ENDPOINT`` into ``constants.ENDPOINT`` once, at import; setting
  the variable later has no effect (test_hf_endpoint_is_read_at_import). Reading
  ``os.environ["HF_ENDPOINT"]`` yourself at call time and passing it on is reliable.
- token: pass ``token=`` explicitly too. ``None`` means "whatever HF_TOKEN or the token file
  holds"; ``False`` means anonymous.
- offline: ``local_files_only=True`` works per call. ``HF_HUB_OFFLINE`` is also read only at
  import, so it only takes effect in a process started with it set.
"""

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from huggingface_hub import HfApi, constants, hf_hub_download
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.file_download import get_hf_file_metadata, hf_hub_url, http_get

from cortex.testing.fake_hub import FakeHub

REPO = "acme/tiny-GGUF"
GATED = "acme/gated-GGUF"
TOKEN = "hf_fake_token_for_tests"
WEIGHTS = b"GGUF" + bytes(range(256)) * 64  # LFS by suffix: served through the "CDN"
README = b"# tiny\n"  # a plain git blob: served by the hub itself
BIG = 5 * 1024 * 1024


@pytest.fixture
def big_file(tmp_path: Path) -> Path:
    path = tmp_path / "big.gguf"
    path.write_bytes(os.urandom(BIG))
    return path


@pytest.fixture
def hub(big_file: Path) -> Iterator[FakeHub]:
    repos = {
        REPO: {"README.md": README, "tiny.gguf": WEIGHTS, "big.gguf": big_file,
               "extra/config.json": b"{}"},
        GATED: {"model.gguf": WEIGHTS},
    }
    with FakeHub(repos, gated={GATED}, token=TOKEN) as fake:
        yield fake


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "cache"


def download(hub: FakeHub, cache: Path, filename: str, repo: str = REPO, **kw: object) -> Path:
    kw.setdefault("token", False)
    return Path(hf_hub_download(repo, filename, cache_dir=cache, endpoint=hub.url, **kw))


def calls(hub: FakeHub, since: int = 0) -> list[tuple[str, str]]:
    return [(r.server, r.method) for r in hub.requests[since:]]


def test_list_repo_files_and_tree(hub: FakeHub) -> None:
    api = HfApi(endpoint=hub.url, token=False)
    assert sorted(api.list_repo_files(REPO)) == [
        "README.md", "big.gguf", "extra/config.json", "tiny.gguf"]
    assert hub.requests[-1].path == f"/api/models/{REPO}/tree/main"
    assert "recursive=true" in hub.requests[-1].query

    top = {entry.path: type(entry).__name__ for entry in api.list_repo_tree(REPO)}
    assert top == {"README.md": "RepoFile", "big.gguf": "RepoFile", "tiny.gguf": "RepoFile",
                   "extra": "RepoFolder"}
    assert [e.path for e in api.list_repo_tree(REPO, "extra")] == ["extra/config.json"]


def test_model_info_reports_sizes_and_lfs(hub: FakeHub) -> None:
    info = HfApi(endpoint=hub.url, token=False).model_info(REPO, files_metadata=True)
    assert info.id == REPO
    assert info.sha == hub.commit(REPO)
    sizes = {s.rfilename: s.size for s in info.siblings or []}
    assert sizes == {"README.md": len(README), "big.gguf": BIG, "extra/config.json": 2,
                     "tiny.gguf": len(WEIGHTS)}
    lfs = {s.rfilename: s.lfs for s in info.siblings or []}
    assert lfs["tiny.gguf"] is not None
    assert lfs["tiny.gguf"].sha256 == hashlib.sha256(WEIGHTS).hexdigest()
    assert lfs["README.md"] is None
    assert hub.requests[-1].query == "blobs=true"


def test_download_then_cache_hit(hub: FakeHub, cache: Path) -> None:
    path = download(hub, cache, "tiny.gguf")
    assert path.read_bytes() == WEIGHTS
    assert path.parts[-3:] == ("snapshots", hub.commit(REPO), "tiny.gguf")
    assert path.resolve().name == hashlib.sha256(WEIGHTS).hexdigest()  # the cached blob
    # LFS: metadata from the hub's 302, body from the "CDN" origin.
    assert calls(hub) == [("hub", "HEAD"), ("cdn", "GET")]
    assert hub.downloads[(REPO, "tiny.gguf")] == 1

    before = len(hub.requests)
    assert download(hub, cache, "tiny.gguf") == path
    assert calls(hub, before) == [("hub", "HEAD")]  # revalidated, body not fetched again
    assert hub.downloads[(REPO, "tiny.gguf")] == 1


def test_plain_git_file_is_served_by_the_hub(hub: FakeHub, cache: Path) -> None:
    path = download(hub, cache, "README.md")
    assert path.read_bytes() == README
    assert calls(hub) == [("hub", "HEAD"), ("hub", "GET")]
    assert path.resolve().name == hub.etag(REPO, "README.md")


def test_local_files_only_uses_the_cache_without_requests(hub: FakeHub, cache: Path) -> None:
    path = download(hub, cache, "tiny.gguf")
    before = len(hub.requests)
    assert download(hub, cache, "tiny.gguf", local_files_only=True) == path
    with pytest.raises(LocalEntryNotFoundError):
        download(hub, cache, "README.md", local_files_only=True)
    assert len(hub.requests) == before


def test_hf_hub_offline_env_uses_the_cache(hub: FakeHub, cache: Path, tmp_path: Path) -> None:
    path = download(hub, cache, "tiny.gguf")
    before = len(hub.requests)
    out = run_client(f"""
        print(json.dumps([constants.HF_HUB_OFFLINE,
                          hf_hub_download({REPO!r}, "tiny.gguf", cache_dir={str(cache)!r},
                                          endpoint={hub.url!r})]))
    """, tmp_path, HF_HUB_OFFLINE="1")
    assert out == [True, str(path)]
    assert len(hub.requests) == before


def test_unknown_repo(hub: FakeHub, cache: Path) -> None:
    with pytest.raises(RepositoryNotFoundError) as err:
        download(hub, cache, "x.gguf", repo="acme/nope")
    assert not isinstance(err.value, GatedRepoError)
    assert err.value.response.status_code == 401  # anonymous, like the hub
    with pytest.raises(RepositoryNotFoundError) as err:
        HfApi(endpoint=hub.url, token=TOKEN).list_repo_files("acme/nope")
    assert err.value.response.status_code == 404
    with pytest.raises(RepositoryNotFoundError):
        HfApi(endpoint=hub.url, token=False).model_info("acme/nope", files_metadata=True)


def test_private_repo_is_hidden_without_the_token(hub: FakeHub, cache: Path) -> None:
    hub.add_repo("acme/private", {"m.gguf": WEIGHTS}, private=True)
    with pytest.raises(RepositoryNotFoundError):
        HfApi(endpoint=hub.url, token=False).model_info("acme/private")
    with pytest.raises(RepositoryNotFoundError):
        download(hub, cache, "m.gguf", repo="acme/private")
    assert HfApi(endpoint=hub.url, token=TOKEN).list_repo_files("acme/private") == ["m.gguf"]
    assert download(hub, cache, "m.gguf", repo="acme/private", token=TOKEN).read_bytes() == WEIGHTS


def test_missing_file(hub: FakeHub, cache: Path) -> None:
    with pytest.raises(RemoteEntryNotFoundError):
        download(hub, cache, "missing.gguf")
    # The client remembers the miss under the commit the hub reported.
    repo_dir = cache / f"models--{REPO.replace('/', '--')}"
    assert (repo_dir / ".no_exist" / hub.commit(REPO) / "missing.gguf").exists()


def test_revisions(hub: FakeHub, cache: Path) -> None:
    with pytest.raises(RevisionNotFoundError):
        download(hub, cache, "tiny.gguf", revision="v9")
    with pytest.raises(RevisionNotFoundError):
        HfApi(endpoint=hub.url, token=False).list_repo_files(REPO, revision="v9")
    path = download(hub, cache, "tiny.gguf", revision=hub.commit(REPO))
    assert path.read_bytes() == WEIGHTS


def test_gated_repo_needs_the_token(hub: FakeHub, cache: Path) -> None:
    api = HfApi(endpoint=hub.url, token=False)
    assert api.model_info(GATED).gated == "auto"  # visible to anyone, like on the hub
    assert api.list_repo_files(GATED) == ["model.gguf"]
    with pytest.raises(GatedRepoError):
        download(hub, cache, "model.gguf", repo=GATED)
    with pytest.raises(HfHubHTTPError) as err:
        download(hub, cache, "model.gguf", repo=GATED, token="hf_wrong")
    assert not isinstance(err.value, RepositoryNotFoundError)
    assert err.value.response.status_code == 401

    before = len(hub.requests)
    path = download(hub, cache, "model.gguf", repo=GATED, token=TOKEN)
    assert path.read_bytes() == WEIGHTS
    head, body = hub.requests[before:]
    assert (head.server, head.authorization) == ("hub", f"Bearer {TOKEN}")
    # The client drops the token when the hub redirects it to another origin (the CDN).
    assert (body.server, body.authorization) == ("cdn", None)


def test_big_file_streams_intact(hub: FakeHub, cache: Path, big_file: Path) -> None:
    path = download(hub, cache, "big.gguf")
    assert path.stat().st_size == BIG
    assert hashlib.sha256(path.read_bytes()).digest() == hashlib.sha256(
        big_file.read_bytes()).digest()


def test_interrupted_download_resumes_with_range(hub: FakeHub, tmp_path: Path,
                                                 big_file: Path) -> None:
    # http_get is the client's own resume path (used after a dropped connection).
    url = hf_hub_url(REPO, "big.gguf", endpoint=hub.url)
    meta = get_hf_file_metadata(url, token=False, endpoint=hub.url)
    assert meta.location.startswith(hub.cdn_url)
    assert meta.size == BIG
    assert meta.etag == hub.etag(REPO, "big.gguf")
    partial = tmp_path / "partial"
    partial.write_bytes(big_file.read_bytes()[:1000])
    with partial.open("r+b") as f:
        f.seek(1000)
        http_get(meta.location, f, resume_size=1000, expected_size=BIG)
    assert partial.read_bytes() == big_file.read_bytes()


def test_hf_endpoint_is_read_at_import(hub: FakeHub, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    # Too late: both still point at the import-time endpoint, so a neuron passes endpoint=.
    assert hub.url not in (constants.ENDPOINT, HfApi().endpoint)


def test_hf_endpoint_set_before_import(hub: FakeHub, tmp_path: Path) -> None:
    out = run_client(f"""
        path = hf_hub_download({REPO!r}, "README.md", cache_dir={str(tmp_path / "c")!r})
        print(json.dumps([open(path).read(), HfApi().list_repo_files({REPO!r})]))
    """, tmp_path, HF_ENDPOINT=hub.url)
    assert out[0] == README.decode()
    assert "tiny.gguf" in out[1]
    assert {r.path for r in hub.requests} >= {f"/{REPO}/resolve/main/README.md",
                                              f"/api/models/{REPO}/tree/main"}


def run_client(code: str, tmp_path: Path, **env: str) -> object:
    """Run `code` in a fresh interpreter (for variables the client reads at import)."""
    prelude = "import json\nfrom huggingface_hub import HfApi, constants, hf_hub_download\n"
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith(("HF_", "HUGGING_FACE_"))}
    # A fresh HF_HOME: no token file, and a cold agent-harness registry cache, which the
    # client then fetches from HF_ENDPOINT (the fake hub) or skips when offline.
    clean |= {"HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_DISABLE_PROGRESS_BARS": "1", **env}
    result = subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code)], env=clean,
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])
