"""A neuron's event stream, relayed: as bytes (`relay`, the OpenAI routes) or as parsed
chunks (`chunks`, for a converter to another dialect).

Both read through the one scanner and reading (`relay.sse`): whole events only reach the
client (a cut never relays half an event), the end is a `[DONE]` event, and what the
events said is noted on the exchange for its bill. A stream that breaks ends with an error
(an error event, or ApiError for a converter), never a clean end. A client that goes away
leaves the stream read on for a little (`DRAIN_BYTES`, `DRAIN_S`) for its usage.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from typing import Any

from cortex.core import fastjson
from cortex.core.errors import BadGateway
from cortex.core.wire import sse_event
from cortex.gateway.http1 import HttpError
from cortex.gateway.relay.send import Exchange
from cortex.gateway.relay.sse import DONE, Reading, Scanner, data_of, events

log = logging.getLogger(__name__)

# A client that hangs up mid-stream: read on this long (bytes, seconds) for the usage chunk,
# so what the neuron generated is billed exactly; past it, the stream is cut (the neuron
# stops) and what was relayed is billed.
DRAIN_BYTES, DRAIN_S = 1 << 18, 2.0


def relay(ex: Exchange) -> Iterator[bytes]:
    """The neuron's SSE bytes as they come, a run of whole events at a time."""
    reading = ex.reading
    with _runs(ex) as runs:
        try:
            for run in runs:
                if run:
                    reading.take(run)
                    yield run
            if not reading.done:
                raise HttpError("the stream ended without [DONE]")
        except (HttpError, OSError) as exc:
            yield sse_event(_broke(ex, exc).body())


def chunks(ex: Exchange) -> Iterator[dict[str, Any] | None]:
    """The neuron's SSE chunks, parsed, for a converter; None stands for a keep-alive. A
    broken stream raises ApiError (502)."""
    reading = ex.reading
    with _runs(ex) as runs:
        try:
            for run in runs:
                for event in events(run) if run else ():
                    data = data_of(event)
                    if data is None:
                        yield None
                    elif data == DONE:
                        reading.done = True
                    else:
                        chunk = fastjson.loads(data)
                        reading.chunk(chunk)
                        yield chunk
            if not reading.done:
                raise HttpError("the stream ended without [DONE]")
        except (HttpError, OSError, ValueError) as exc:
            raise _broke(ex, exc) from None


@contextlib.contextmanager
def _runs(ex: Exchange) -> Iterator[Iterator[bytes]]:
    """The stream's runs of whole events (the one scanner's), for a relay's loop; around
    it, one rule for how the stream ends: a client that goes away (the server closes the
    generator) is still billed what the neuron generated (`_drain`), and the exchange ends
    however the stream does."""
    scanner, pieces = Scanner(), _pieces(ex)
    try:
        yield (scanner.feed(piece) for piece in pieces)
    except GeneratorExit:
        ex.code = "client_closed"
        _drain(ex, pieces, scanner, ex.reading)
        raise
    finally:
        ex.end()


def _pieces(ex: Exchange) -> Iterator[bytes]:
    for piece in ex.response.stream():
        if piece:
            if ex.first_chunk_at is None:
                ex.first_chunk_at = time.monotonic()
            yield piece


def _broke(ex: Exchange, exc: Exception) -> BadGateway:
    ex.broke(502, "upstream_stream_error")
    log.warning("stream from %s broke: %s", ex.node.name, exc)
    return BadGateway(f"the neuron's stream broke off: {exc}", code="upstream_stream_error")


def _drain(ex: Exchange, pieces: Iterator[bytes], scanner: Scanner, reading: Reading
           ) -> None:
    """Read a little more of a stream nobody listens to (`pieces`: where the relay left
    off), for its usage: up to its end, DRAIN_BYTES or DRAIN_S, whichever comes first. The
    neuron is asked to stop (it ends the stream with what it generated and its usage), and
    one that sends nothing meanwhile (a queued request's) does not hold it longer."""
    deadline, left = time.monotonic() + DRAIN_S, DRAIN_BYTES
    ex.response.stop(DRAIN_S)
    try:
        while not reading.done and left > 0 and time.monotonic() < deadline:
            piece = next(pieces, None)
            if piece is None:
                break
            left -= len(piece)
            reading.take(scanner.feed(piece))
    except (HttpError, OSError):
        pass
