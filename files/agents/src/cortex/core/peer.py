"""The client's side of a request's connection, for both servers: whether it hung up.

gunicorn and werkzeug put the connection in the WSGI environ (`gunicorn.socket`,
`werkzeug.socket`); nothing else in the agents reads it. A peek that neither waits nor
consumes tells a closed (or half-closed) side, which reads as end of file, from one that
is open and quiet: the request's body has been read by then, so nothing is taken from it.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any


def client_socket(environ: dict[str, Any]) -> socket.socket | None:
    """The client's connection, where the server tells it (gunicorn, werkzeug)."""
    return environ.get("gunicorn.socket") or environ.get("werkzeug.socket")


def hung_up(sock: socket.socket) -> bool:
    """Whether the client closed its connection: a peek that neither waits nor consumes."""
    try:
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except (BlockingIOError, InterruptedError):
        return False  # open, nothing sent
    except ValueError:
        return False  # a TLS socket takes no flags: it cannot be told
    except OSError:
        return True  # reset


def hang_up_check(environ: dict[str, Any]) -> Callable[[], bool] | None:
    """A check of whether this request's client has hung up (None: the server does not
    say where its connection is)."""
    sock = client_socket(environ)
    if sock is None:
        return None
    return lambda: hung_up(sock)
