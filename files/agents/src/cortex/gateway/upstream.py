"""HTTP to neurons: one pooled keep-alive client with explicit timeouts and the neuron token."""

from __future__ import annotations

import json
from typing import Any

from cortex.core.errors import ApiError
from cortex.gateway.http1 import Client, HttpError, Response, Stop

# No relayed exchange lasts longer than this, however steadily the neuron sends (each
# read has the read timeout): a neuron dribbling bytes cannot hold a stream for ever.
STREAM_DEADLINE_S = 3600.0


class UpstreamError(Exception):
    """A neuron could not be reached or answered with a transport failure; `timed_out`:
    it had the request and gave no reply within the read timeout."""

    def __init__(self, message: str, *, timed_out: bool = False) -> None:
        super().__init__(message)
        self.timed_out = timed_out


class Upstream:
    def __init__(self, token: str, connect: float, read: float, pool: int = 64,
                 max_reply: int = 64 * 2**20) -> None:
        # Kept connections per neuron: past this, extra connections are opened and dropped.
        self.http = Client(pool_size=pool, connect_timeout=connect, read_timeout=read,
                           max_body=max_reply)
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}

    def get_json(self, url: str, read: float = 5.0) -> Any:
        try:
            r = self.http.request("GET", url, headers=self.headers, read_timeout=read,
                                  deadline=read)  # a poll never outlasts its timeout
            data = r.read()
        except HttpError as exc:
            raise UpstreamError(str(exc)) from None
        if r.status != 200:
            raise UpstreamError(f"{url}: HTTP {r.status}")
        return json.loads(data)

    def post_json(self, url: str, body: dict, read: float | None = None) -> tuple[int, Any]:
        headers = {**self.headers, "Content-Type": "application/json"}
        try:
            r = self.http.request("POST", url, json.dumps(body).encode(), headers,
                                  read_timeout=read, deadline=read or self.http.read_timeout)
            data = r.read()
        except HttpError as exc:
            raise UpstreamError(str(exc)) from None
        try:
            return r.status, json.loads(data)
        except ValueError:
            return r.status, {"error": {"message": data[:200].decode(errors="replace")}}

    def open(self, method: str, url: str, body: bytes, headers: dict[str, str],
             read: float | None = None, stop: Stop | None = None) -> Response:
        """A relayed request: the caller reads the body, or releases or closes it; `stop`
        lets a hang-up watch stop it while its reply is awaited."""
        try:
            return self.http.request(method, url, body, {**headers, **self.headers},
                                     read_timeout=read, deadline=STREAM_DEADLINE_S,
                                     stop=stop)
        except HttpError as exc:
            raise UpstreamError(str(exc), timed_out=exc.timed_out) from None


def neuron_error(status: int, body: Any, node: str) -> ApiError:
    """A neuron's refusal, kept recognisable for the router (kind/code) and the client."""
    err = body.get("error", {}) if isinstance(body, dict) else {}
    code = err.get("code") or err.get("kind") or "upstream_error"
    message = err.get("message") or err.get("detail") or f"HTTP {status}"
    extra = {k: v for k, v in err.items() if k not in ("message", "code", "type", "param")}
    return ApiError(f"{node}: {message}", code=code, status=status,
                    type=err.get("type") or "upstream_error", **extra)
