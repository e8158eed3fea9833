"""The gateway's gunicorn worker: gevent, with a reply's head and body in one write.

gunicorn writes the status line and headers in one send and the body in another: for a
small JSON reply that is two syscalls, two TCP segments and two wake-ups of the client,
~0.1 ms of the gateway's added latency here. This worker holds the head back and sends it
with the first body bytes (`_emit_body` is gunicorn's hook for framing the body).
"""

from __future__ import annotations

from gunicorn.http import wsgi
from gunicorn.workers.ggevent import GeventWorker


class OneWriteResponse(wsgi.Response):
    _held = b""

    def send_headers(self) -> None:
        if self.headers_sent:
            return
        lines = self.default_headers()
        lines.extend(f"{k}: {v}\r\n" for k, v in self.headers)
        self._held = ("".join(lines) + "\r\n").encode("latin-1")
        self.headers_sent = True

    def _emit_body(self, data: bytes) -> None:
        head, self._held = self._held, b""
        if self.chunked:
            data = b"%X\r\n%s\r\n" % (len(data), data)
        self.sock.sendall(head + data)

    def can_sendfile(self) -> bool:
        return False  # sendfile would put the body on the wire ahead of the held head

    def close(self) -> None:
        self.send_headers()
        if self._held:  # no body at all (HEAD, 204, an empty reply): the head alone
            head, self._held = self._held, b""
            self.sock.sendall(head)
        super().close()


class GatewayWorker(GeventWorker):
    def handle_exit(self, sig, frame) -> None:
        # A graceful stop (SIGTERM: a restart, or a reload's old workers) waits for open
        # requests; a dashboard's event stream never ends by itself, so end it now.
        super().handle_exit(sig, frame)
        live = getattr(self.wsgi, "extensions", {}).get("cortex_ui")
        if live is not None:
            import gevent

            gevent.spawn(live.close)  # not from inside the signal handler

    def init_process(self) -> None:
        # wsgi.create() builds each HTTP/1 response from this module attribute; the patch
        # lives in this worker process only (the neuron's workers are untouched).
        wsgi.Response = OneWriteResponse
        super().init_process()
