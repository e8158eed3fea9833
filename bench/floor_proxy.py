"""The floor of the stack: the least a gunicorn + gevent WSGI proxy can do.

It forwards the body to the neuron and streams the reply back, nothing else (no auth,
routing, parsing or accounting). `FLOOR_CLIENT` picks the HTTP client to the neuron:
`geventhttpclient` (the default) or `http1` (the gateway's own), so the two clients are
compared with all else equal.

    UPSTREAM=http://127.0.0.1:18000 gunicorn -k gevent -b 127.0.0.1:18100 floor_proxy:app
"""

import os
from urllib.parse import urlsplit

UP = urlsplit(os.environ["UPSTREAM"])
KIND = os.environ.get("FLOOR_CLIENT", "geventhttpclient")
if KIND == "http1":
    from cortex.gateway.http1 import Client

    http1 = Client(pool_size=256)
else:
    from geventhttpclient import HTTPClient

    ghc = HTTPClient(UP.hostname, UP.port, concurrency=256, network_timeout=60)


def app(environ, start_response):
    body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
    headers = {"Content-Type": "application/json"}
    if KIND == "http1":
        r = http1.request("POST", f"{UP.scheme}://{UP.netloc}{environ['PATH_INFO']}", body,
                          headers)
        start_response(f"{r.status} OK", [("Content-Type", r.headers["content-type"])])
        return r.stream()
    r = ghc.request("POST", environ["PATH_INFO"], body=body, headers=headers)
    kind = r["content-type"]
    start_response(f"{r.status_code} OK", [("Content-Type", kind)])
    if kind.startswith("text/event-stream"):
        return _lines(r)
    data = r.read()
    r.release()
    return [data]


def _lines(r):
    try:
        yield from iter(lambda: r.readline(b"\n"), b"")  # read(n) would wait for n bytes
    finally:
        r.release()
