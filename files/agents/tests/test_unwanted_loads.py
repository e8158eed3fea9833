"""A cold load whose every waiting client gave up still finishes (others may come for it),
but is counted as unwanted: cortex_unwanted_loads_total{model, node}."""

from __future__ import annotations

import pytest

from cortex.gateway.auth import ANONYMOUS
from cortex.gateway.config import ModelEntry
from cortex.gateway.relay.coldload import Waiting
from cortex.gateway.relay.dispatch import Outbound
from cortex.neuron.config import HubConfig
from cortex.testing.fake_hub import FakeHub
from cortex.testing.tiny_gguf import SCRIPT_HELLO, build_tiny_gguf
from cortex.testing.waiting import wait_for


def unwanted(gw, model: str) -> float:
    return gw.metrics.registry.get_sample_value(
        "cortex_unwanted_loads_total", {"model": model, "node": "n1"}) or 0.0


def loaded_on(neuron, model_id: str) -> bool:
    return any(m["id"] == model_id and m["status"] == "loaded"
               for m in neuron.get("/models").json())


def route(gw, model: str):
    """The relay's routing of a streaming request: `Waiting` ticks while a cold load runs."""
    gw.dispatcher.tick = 0.2
    req = Outbound("/v1/chat/completions", {"stream": True}, gw.catalogue.lookup(model), {},
                   ANONYMOUS)
    return gw.dispatcher.route(req, progress=True)


def test_a_load_nobody_waits_for_any_more_is_counted_unwanted(
        neuron_factory, gateway_factory, tmp_path, small_hub_chunks):
    repos = {}
    for name in ("left", "kept"):
        weights = build_tiny_gguf(tmp_path / f"{name}.Q8_0.gguf", script=SCRIPT_HELLO,
                                  ftype="Q8_0")
        repos[f"acme/{name}-GGUF"] = {f"{name}.Q8_0.gguf": weights}
    # About two seconds a download: the first tick of the wait comes while it runs.
    with FakeHub(repos, rate=weights.stat().st_size / 2) as hub:
        n1 = neuron_factory(hf=HubConfig(endpoint=hub.url))
        gw = gateway_factory({"n1": n1}, [ModelEntry(id=r, source="hf") for r in repos]).gw

        left = route(gw, "acme/left-GGUF")
        assert isinstance(next(left), Waiting)
        left.close()  # its client went away: the load goes on, wanted by nobody
        wait_for(lambda: loaded_on(n1, "hf:acme/left-GGUF"), "the abandoned load", 60)
        wait_for(lambda: unwanted(gw, "acme/left-GGUF") == 1, "the unwanted load counted")

        kept = route(gw, "acme/kept-GGUF")
        assert isinstance(next(kept), Waiting)
        with pytest.raises(StopIteration) as end:  # waits to the end
            while True:
                assert isinstance(next(kept), Waiting)
        assert end.value.value[0].node.name == "n1" and loaded_on(n1, "hf:acme/kept-GGUF")
        assert unwanted(gw, "acme/kept-GGUF") == 0 and unwanted(gw, "acme/left-GGUF") == 1
