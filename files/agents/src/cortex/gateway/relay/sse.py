"""A neuron's event stream, read: the gateway's one SSE scanner and its one usage reader.

Every stream the gateway reads from a neuron goes through `Scanner` (whole events, the
bytes kept for relaying) and `Reading` (what the events said: the end, the usage, the
prompt's size, how many content events came). Every token billed comes from `usage_of`,
applied to a parsed JSON object: a whole reply, or one event's data. The end of a stream
is an event whose data is `[DONE]`; the same text inside a delta (a model can write it)
is content at no event boundary, never an end.

Kept by hand: SSE libraries parse for a client, line by line into objects; a relay needs
the bytes as they came and a boundary check, about two `find`s an event on its hot path.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cortex.core import fastjson

DONE = b"[DONE]"
# Only an event whose data holds one of these as a JSON key is parsed on the relay's fast
# path (a key of a JSON object, quoted: inside a string the quotes would be escaped).
_PROMPT, _USAGE, _ERROR = b'"helexa_prompt_tokens"', b'"usage"', b'"error"'


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int

    @property
    def total(self) -> int:
        return self.prompt_tokens + self.completion_tokens


def _count(value: Any) -> int:
    return value if type(value) is int and value >= 0 else 0


def usage_of(obj: Any) -> Usage | None:
    """The usage a neuron's reply or stream chunk reports, or None if it reports none."""
    usage = obj.get("usage") if isinstance(obj, dict) else None
    if not isinstance(usage, dict):
        return None
    return Usage(_count(usage.get("prompt_tokens")), _count(usage.get("completion_tokens")))


def error_code_of(obj: Any) -> str | None:
    """The code of the error a neuron's reply or stream chunk carries, or None."""
    err = obj.get("error") if isinstance(obj, dict) else None
    if not isinstance(err, dict):
        return None
    return str(err.get("code") or err.get("kind") or "upstream_error")


class Scanner:
    """Cuts a byte stream into whole events, each ending in its blank line. Line ends may
    be LF, CR LF or CR (they come out as LF); the neuron writes LF."""

    __slots__ = ("_cr", "_tail")

    def __init__(self) -> None:
        self._tail = b""  # the start of an event not yet whole
        self._cr = False  # the last piece ended in CR: an LF starting the next is its pair

    def feed(self, piece: bytes) -> bytes:
        """The whole events `piece` completes, as one run of bytes (b"" if none yet)."""
        if self._cr:
            self._cr = False
            if piece.startswith(b"\n"):
                piece = piece[1:]
        if b"\r" in piece:
            self._cr = piece.endswith(b"\r")
            piece = piece.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        data = self._tail + piece if self._tail else piece
        end = data.rfind(b"\n\n") + 2
        if end < 2:
            self._tail = data
            return b""
        self._tail = data[end:]
        return data if end == len(data) else data[:end]

    @property
    def pending(self) -> bool:
        """Bytes of an unfinished event are held (a stream cut there ended mid-event)."""
        return bool(self._tail.strip())


def events(run: bytes) -> list[bytes]:
    """The events in a run of whole events (`Scanner.feed`), without their blank lines."""
    if run.find(b"\n\n") == len(run) - 2:  # one event: the common case
        return [run[:-2]]
    return [e for e in run.split(b"\n\n") if e]


def data_of(event: bytes) -> bytes | None:
    """An event's data (its `data:` lines joined by LF), or None if it has none (a comment:
    a keep-alive, a queued request's notice)."""
    if event.startswith(b"data: ") and b"\n" not in event:  # the neuron's one line
        return event[6:]
    lines = [line[5:] for line in event.split(b"\n") if line.startswith(b"data:")]
    if not lines:
        return None
    return b"\n".join(line[1:] if line.startswith(b" ") else line for line in lines)


class Reading:
    """What a neuron's stream has said so far, for billing: whether it ended ([DONE]), its
    usage, the prompt's size from its first chunk (`helexa_prompt_tokens`), the content
    events relayed (a floor on the tokens generated: the neuron may merge several tokens
    into one event), and the error it ended with."""

    __slots__ = ("done", "error", "events", "prompt_tokens", "seen", "usage")

    def __init__(self) -> None:
        self.done = False
        self.usage: Usage | None = None
        self.prompt_tokens: int | None = None
        self.seen = 0  # chunks with data, of any kind
        self.events = 0  # of which content
        self.error: str | None = None

    def take(self, run: bytes) -> None:
        """Note the events of a run of whole events (the relay's bytes): only an event that
        may carry the prompt's size, usage or an error is parsed."""
        for event in events(run):
            data = data_of(event)
            if data is None:
                continue
            if data == DONE:
                self.done = True
            elif _PROMPT in data or _USAGE in data or _ERROR in data:
                self.chunk(fastjson.parse(data))
            else:
                self.seen += 1
                self.events += 1

    def chunk(self, chunk: Any) -> None:
        """Note one parsed chunk (what a converter gets, an event `take` parsed, or a
        whole reply)."""
        self.seen += 1
        if not isinstance(chunk, dict):
            return
        prompt = chunk.get("helexa_prompt_tokens")
        usage, error = usage_of(chunk), error_code_of(chunk)
        if type(prompt) is int and prompt >= 0:
            self.prompt_tokens = prompt
        if usage is not None:
            self.usage = usage
        if error is not None:
            self.error = error
        if prompt is None and usage is None and error is None:
            self.events += 1


def billed(reading: Reading, answered: bool, prompt_estimate: Callable[[], int]) -> Usage:
    """What a request is billed: the neuron's usage where it said it; else, once its answer
    began, what was relayed (the prompt, by the neuron's first chunk or the gateway's
    estimate, and a token a content event); nothing for a request the neuron refused or
    never answered."""
    if reading.usage is not None:
        return reading.usage
    if not answered or not reading.seen:
        return Usage(0, 0)
    prompt = reading.prompt_tokens
    return Usage(prompt_estimate() if prompt is None else prompt, reading.events)
