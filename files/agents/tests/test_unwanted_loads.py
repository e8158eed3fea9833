"""A cold load whose every waiting client gave up still finishes (others may come for it),
but is counted as unwanted: cortex_unwanted_loads_total{model, node}."""

from __future__ import annotations

from cortex.gateway.coldwait import Waiting, route_waiting
from cortex.gateway.config import ModelEntry
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

        left = route_waiting(gw, "acme/left-GGUF", tick=0.2)
        assert isinstance(next(left), Waiting)
        left.close()  # its client went away: the load goes on, wanted by nobody
        wait_for(lambda: loaded_on(n1, "hf:acme/left-GGUF"), "the abandoned load", 60)
        wait_for(lambda: unwanted(gw, "acme/left-GGUF") == 1, "the unwanted load counted")

        kept = route_waiting(gw, "acme/kept-GGUF", tick=0.2)
        assert isinstance(next(kept), Waiting)
        target = [w for w in kept if not isinstance(w, Waiting)]  # waits to the end
        assert target[0].node.name == "n1" and loaded_on(n1, "hf:acme/kept-GGUF")
        assert unwanted(gw, "acme/kept-GGUF") == 0 and unwanted(gw, "acme/left-GGUF") == 1
