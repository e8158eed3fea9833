"""A neuron-API stand-in on loopback: the neuron's HTTP contract with no model behind it.

For what a real neuron cannot be made to do on cue (answer 500, speak an API it does not
have yet, report cached tokens): it answers `/health`, `/models`, `/models/load`,
`/models/unload`, `/drain`, `/tokenize`, `/v1/chat/completions` (OpenAI's shape, streaming
or not) and `/v1/embeddings` (OpenAI's shape), and records every body it was sent.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

from flask import Flask, Response, request

from cortex.core.recent_sessions import HEADER, RecentSessions
from cortex.testing.costmodel import CostModel, Full, SimReplica
from cortex.testing.served import Served

CHAT = {"id": "chatcmpl-standin", "object": "chat.completion", "created": 0,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello."},
                     "finish_reason": "stop"}]}


class StandIn:
    def __init__(self, models: tuple[str, ...] = ("file:standin",), *, loaded: bool = True,
                 chat_status: int = 200, cached_tokens: int = 0, slots: int = 0,
                 max_queue_depth: int = 4, load_secs: float = 0.0,
                 vram_free_mb: int = 15000, cost: CostModel | None = None,
                 record: bool = True, host: str = "127.0.0.1") -> None:
        """`slots`: report that many slots and `max_queue_depth` for every model (0: say
        nothing of them); `load_secs`: a load takes this long, listed as loading. `cost`:
        serve chat in simulated time (cortex.testing.costmodel), slots and queue included;
        `record`: keep every body sent (a long simulation does not)."""
        self.loaded = {m: loaded for m in models}
        self.cost, self.record = cost, record
        self.sims: dict[str, SimReplica] = {}
        if cost is not None:
            slots, max_queue_depth = cost.slots, cost.max_queue_depth
            load_secs = cost.load_secs / cost.speed
            self.sims = {m: SimReplica(cost) for m, up in self.loaded.items() if up}
        self.chat_status = chat_status
        self.cached_tokens = cached_tokens
        self.slots, self.max_queue_depth = slots, max_queue_depth
        self.load_secs = load_secs
        self.vram_free_mb = vram_free_mb
        # Cleared, chat requests wait for it once recorded (requests held in flight).
        self.gate = threading.Event()
        self.gate.set()
        self.full = False  # refuse chat requests as a neuron whose queue is full does
        self.in_flight = 0
        self.live = 0  # chat requests inside the stand-in now (held at the gate, say)
        self.queue_depth = 0  # what /health says of every loaded model (set by a test)
        self.last_used: dict[str, float] = {}  # a model's last use (absent: just now)
        self.loading: set[str] = set()
        self.sessions: dict[str, RecentSessions] = {}  # per model: tags of chats it took
        self.drained = False
        self.polls = 0  # /health reads (a gateway's worker polls each node once a round)
        self.received: list[tuple[str, dict[str, Any]]] = []
        self.lock = threading.Lock()
        self.served = Served(self._app(), host=host)
        self.url = self.served.url

    def hits(self, path: str) -> list[dict[str, Any]]:
        return [body for p, body in self.received if p == path]

    def close(self) -> None:
        for sim in self.sims.values():
            sim.stop()
        self.served.close()

    def _app(self) -> Flask:
        app = Flask("standin")

        @app.get("/health")
        def health() -> Any:
            with self.lock:
                self.polls += 1
            return {"status": "ok", "drained": self.drained,
                    "devices": [{"index": 0, "name": "cpu", "kind": "cpu",
                                 "vram_total_mb": 16000, "vram_free_mb": self.vram_free_mb}],
                    "activation": {"state": "ready", "failed": []},
                    "loading": sorted(self.loading),
                    "models": [self._health(m) for m, up in self.loaded.items() if up]}

        @app.get("/models")
        def models() -> Any:
            return Response(json.dumps([
                {"id": m, "status": "loading" if m in self.loading else
                 "loaded" if up else "available", "vram_used_mb": 100}
                for m, up in self.loaded.items()]), mimetype="application/json")

        @app.post("/models/load")
        def load() -> Any:
            body = self._record()
            model = body["model_id"]
            with self.lock:  # one load of a model at a time, as a neuron single-flights
                owner = not self.loaded.get(model) and model not in self.loading
                if owner:
                    self.loaded.setdefault(model, False)
                    self.loading.add(model)
            if owner:
                time.sleep(self.load_secs)
                if self.cost is not None:
                    self.sims[model] = SimReplica(self.cost)
                self.loaded[model] = True
                self.loading.discard(model)
            while model in self.loading:  # joined a load under way
                time.sleep(0.01)
            return {"model_id": model, "status": "loaded", "already_loaded": not owner}

        @app.post("/models/unload")
        def unload() -> Any:
            body = self._record()
            if not self.loaded.get(body["model_id"]):
                return {"error": {"message": "not loaded", "code": "model_not_found"}}, 404
            self.loaded[body["model_id"]] = False
            self.sessions.pop(body["model_id"], None)  # (a new load holds no session)
            sim = self.sims.pop(body["model_id"], None)
            if sim is not None:
                sim.stop()
            return {"model_id": body["model_id"], "status": "unloaded"}

        @app.post("/drain")
        def drain() -> Any:
            self.drained = bool(self._record().get("drained", True))
            return {"drained": self.drained, "in_flight": self.in_flight}

        @app.post("/tokenize")
        def tokenize() -> Any:
            body = self._record()
            return {"tokens": len(json.dumps(body["messages"])) // 4}

        @app.post("/v1/chat/completions")
        def chat() -> Any:
            body = self._record()
            if self.drained and request.headers.get("X-Helexa-Routed"):
                # As a neuron: a gateway whose view is a poll old goes elsewhere.
                return unavailable("this neuron is drained", "node_drained")
            if self.cost is not None:
                return self._simulated(body)
            if self.full:
                return unavailable("model file:standin is busy: 2 running, 2 queued "
                                   "(max_queue_depth=2); retry shortly",
                                   "rate_limit_exceeded", retry_after=3)
            self._served(body)
            with self.lock:
                self.live += 1  # (reported in /health beside the in_flight a test sets)
            try:
                self.gate.wait(30)
            finally:
                with self.lock:
                    self.live -= 1
            if self.chat_status != 200:
                return {"error": {"message": "the stand-in failed on this request",
                                  "type": "server_error", "code": "internal_error"}
                        }, self.chat_status
            prompt = len(json.dumps(body["messages"])) // 4
            usage = {"prompt_tokens": prompt, "completion_tokens": 2,
                     "total_tokens": prompt + 2,
                     "prompt_tokens_details": {"cached_tokens": self.cached_tokens}}
            if not body.get("stream"):
                return dict(CHAT, model=body["model"], usage=usage)
            chunk = {"id": "chatcmpl-standin", "object": "chat.completion.chunk",
                     "created": 0, "model": body["model"]}
            events = [dict(chunk, choices=[{"index": 0, "delta": {"role": "assistant",
                                                                   "content": ""}}],
                           helexa_prompt_tokens=prompt),
                      dict(chunk, choices=[{"index": 0, "delta": {"content": "Hello."}}]),
                      dict(chunk, choices=[{"index": 0, "delta": {},
                                            "finish_reason": "stop"}]),
                      dict(chunk, choices=[], usage=usage)]
            data = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"
            return Response(data, mimetype="text/event-stream")

        @app.post("/v1/embeddings")
        def embeddings() -> Any:
            body = self._record()
            inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
            tokens = sum(len(str(i).split()) for i in inputs)
            return {"object": "list", "model": body["model"],
                    "data": [{"object": "embedding", "index": i,
                              "embedding": [float(len(str(x))), 0.5, -0.5, 1.0]}
                             for i, x in enumerate(inputs)],
                    "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}

        return app

    def _simulated(self, body: dict[str, Any]) -> Any:
        """A chat request served by the model's simulated replica (cost model)."""
        sim = self.sims.get(body["model"])
        if sim is None:
            return {"error": {"message": f"model {body['model']!r} is not loaded",
                              "code": "model_not_found"}}, 404
        try:
            job = sim.submit(render(body), int(body.get("max_tokens") or 16))
        except Full:
            return unavailable("the stand-in's queue is full", "rate_limit_exceeded")
        self._served(body)
        chunk = {"id": "chatcmpl-sim", "object": "chat.completion.chunk", "created": 0,
                 "model": body["model"]}

        def usage() -> dict[str, Any]:
            n = job.completion_tokens
            return {"prompt_tokens": job.prompt_tokens, "completion_tokens": n,
                    "total_tokens": job.prompt_tokens + n,
                    "prompt_tokens_details": {"cached_tokens": job.cached_tokens}}

        if not body.get("stream"):
            text = "".join("tok " * n for n in sim.tokens(job))
            return dict(CHAT, id="chatcmpl-sim", model=body["model"], usage=usage(),
                        choices=[{"index": 0, "message": {"role": "assistant",
                                                          "content": text},
                                  "finish_reason": "length"}])

        def events() -> Any:
            for n in sim.tokens(job):
                delta = {"index": 0, "delta": {"content": "tok " * n}}
                yield f"data: {json.dumps(dict(chunk, choices=[delta]))}\n\n"
            end = {"index": 0, "delta": {}, "finish_reason": "length"}
            yield f"data: {json.dumps(dict(chunk, choices=[end]))}\n\n"
            yield f"data: {json.dumps(dict(chunk, choices=[], usage=usage()))}\n\n"
            yield "data: [DONE]\n\n"

        return Response(events(), mimetype="text/event-stream")

    def _served(self, body: dict[str, Any]) -> None:
        """A chat request taken: its session tag, listed in /health as a neuron lists it."""
        with self.lock:
            seen = self.sessions.setdefault(body["model"], RecentSessions())
        seen.served(request.headers.get(HEADER))

    def _health(self, model: str) -> dict[str, Any]:
        out = self._figures(model)
        seen = self.sessions.get(model)
        return out | {"sessions": seen.report()} if seen is not None else out

    def _figures(self, model: str) -> dict[str, Any]:
        sim = self.sims.get(model)
        if sim is not None:
            return {"id": model, "in_flight": sim.in_flight, "queue_depth": sim.queue_depth,
                    "last_used": sim.last_used, "queue_wait_secs": sim.queue_wait(),
                    "slots": {"busy": sim.in_flight, "total": self.cost.slots},
                    "max_in_flight": self.cost.slots,
                    "max_queue_depth": self.cost.max_queue_depth}
        running = self.in_flight + self.live
        out = {"id": model, "in_flight": running, "queue_depth": self.queue_depth,
               "last_used": self.last_used.get(model, time.time())}
        if self.slots:
            out.update(slots={"busy": min(running, self.slots), "total": self.slots},
                       max_in_flight=self.slots, max_queue_depth=self.max_queue_depth)
        return out

    def _record(self) -> dict[str, Any]:
        body = request.get_json()
        if not self.record:
            return body
        with self.lock:
            self.received.append((request.path, body))
        return body


def unavailable(message: str, code: str, retry_after: int = 1) -> Response:
    """A neuron's 503 refusal (its envelope and Retry-After)."""
    return Response(json.dumps({"error": {"message": message, "type": "service_unavailable",
                                          "code": code}}),
                    status=503, mimetype="application/json",
                    headers={"Retry-After": str(retry_after)})


def render(body: dict[str, Any]) -> str:
    """A chat body's prompt as text, in the order a template renders it: tools, then each
    message with its role (what the simulated cache matches prefixes on)."""
    parts = [json.dumps(body.get("tools") or [], sort_keys=True)]
    for m in body.get("messages") or []:
        content = m.get("content")
        if not isinstance(content, str):
            content = json.dumps(content, sort_keys=True)
        parts.append(f"<|{m.get('role')}|>{content}")
    return "".join(parts)
