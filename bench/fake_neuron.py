"""A fast fake neuron for benchmarks: the parts of the neuron API the gateway uses.

aiohttp on 127.0.0.1, one process, no model. `GET /health` and `GET /models` report one
loaded model (`file:fake`); `POST /v1/chat/completions` answers a fixed reply, or with
`"stream": true` a stream of `--chunks` chunks `--interval` seconds apart, then a usage
chunk and `data: [DONE]`; `POST /v1/embeddings` answers OpenAI's embeddings shape. Each
chunk's content is `T<time.monotonic() at send>` so a
client on the same machine can tell how long the chunk took to arrive (CLOCK_MONOTONIC
is the same in every process).

    .venv/bin/python bench/fake_neuron.py --port 18000   # prints "READY 18000"
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import time

from aiohttp import web

MODEL = "file:fake"
REPLY = json.dumps({
    "id": "chatcmpl-fake", "object": "chat.completion", "created": 0, "model": MODEL,
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello from fake."},
                 "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9},
}, separators=(",", ":")).encode()

# One content chunk, split around the send time so writing it costs one format.
_HEAD = (b'data: {"id":"chatcmpl-fake","object":"chat.completion.chunk","created":0,'
         b'"model":"' + MODEL.encode() + b'","choices":[{"index":0,"delta":{"content":"T')
_TAIL = b'"},"finish_reason":null}]}\n\n'


def _tail_events(chunks: int) -> bytes:
    stop = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 0,
            "model": MODEL, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
    usage = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 0,
             "model": MODEL, "choices": [],
             "usage": {"prompt_tokens": 5, "completion_tokens": chunks,
                       "total_tokens": 5 + chunks}}
    return (b"data: " + json.dumps(stop, separators=(",", ":")).encode() + b"\n\n"
            + b"data: " + json.dumps(usage, separators=(",", ":")).encode() + b"\n\n"
            + b"data: [DONE]\n\n")


def make_app(chunks: int, interval: float) -> web.Application:
    tail = _tail_events(chunks)
    started = time.time()

    async def health(_: web.Request) -> web.Response:
        return web.json_response({
            "status": "ok", "drained": False,
            "devices": [{"index": 0, "name": "cpu", "kind": "cpu", "vram_total_mb": 16000,
                         "vram_free_mb": 15900, "vram_used_mb": 100}],
            "activation": {"state": "ready", "failed": []},
            "models": [{"id": MODEL, "in_flight": 0, "queue_depth": 0,
                        "last_used": time.time(), "loaded_at": started}],
        })

    async def models(_: web.Request) -> web.Response:
        return web.json_response([{"id": MODEL, "status": "loaded", "vram_used_mb": 100,
                                   "harness": "llama_cpp", "quant": ""}])

    async def chat(request: web.Request) -> web.StreamResponse:
        body = json.loads(await request.read() or b"{}")
        if body.get("stream") is not True:
            return web.Response(body=REPLY, content_type="application/json")
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                           "Cache-Control": "no-cache"})
        await resp.prepare(request)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        try:
            for i in range(chunks):
                await resp.write(_HEAD + b"%.6f" % time.monotonic() + _TAIL)
                delay = t0 + (i + 1) * interval - loop.time()
                if i + 1 < chunks and delay > 0:
                    await asyncio.sleep(delay)
            await resp.write(tail)
            await resp.write_eof()
        except (ConnectionResetError, ConnectionError):
            pass  # the client went away
        return resp

    async def embeddings(request: web.Request) -> web.Response:
        body = json.loads(await request.read() or b"{}")
        inputs = body.get("input") if isinstance(body.get("input"), list) else [body.get("input")]
        return web.json_response({
            "object": "list", "model": MODEL,
            "data": [{"object": "embedding", "index": i, "embedding": [0.25] * 8}
                     for i in range(len(inputs))],
            "usage": {"prompt_tokens": 3 * len(inputs), "total_tokens": 3 * len(inputs)}})

    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_get("/models", models)
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_post("/v1/embeddings", embeddings)
    return app


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--chunks", type=int, default=64)
    p.add_argument("--interval", type=float, default=0.02)
    p.add_argument("--backlog", type=int, default=4096)
    a = p.parse_args()
    runner = web.AppRunner(make_app(a.chunks, a.interval), access_log=None,
                           handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", a.port, backlog=a.backlog)
    await site.start()
    print(f"READY {a.port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


if __name__ == "__main__":
    asyncio.run(main())
