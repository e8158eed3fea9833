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

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cortex.core import fastjson

DONE = b"[DONE]"
_DONE_EVENT = b"data: [DONE]\n\n"
TAIL = 4  # the last chunks a stream's reading keeps unparsed: its usage and error are there


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0  # of the prompt, taken from the neuron's cache

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
    details = usage.get("prompt_tokens_details")
    cached = _count(details.get("cached_tokens")) if isinstance(details, dict) else 0
    return Usage(_count(usage.get("prompt_tokens")), _count(usage.get("completion_tokens")),
                 cached)


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
    into one event), and the error it ended with. `on_usage` hears the usage's total as
    soon as it is read (the key's hold shrinks to it before the client has the end, and
    may send its next request).

    On the relay's path (`take`) no event is parsed as it passes: the neuron sends its
    usage and its error last, just before [DONE], so the first event and the last `TAIL`
    are kept as they came and parsed when the end comes or a figure is asked for (an event
    parsed per token cost more than the rest of the relay's work on it). A converter,
    which parses every chunk anyway, hands them over parsed (`chunk`).
    """

    __slots__ = ("_content", "_error", "_opening", "_prompt", "_tail", "_usage", "done",
                 "on_usage", "seen")

    def __init__(self) -> None:
        self.on_usage: Callable[[int], None] | None = None
        self.done = False
        self.seen = 0  # chunks with data, of any kind
        self._content = 0  # of which content, among those read
        self._usage: Usage | None = None
        self._prompt: int | None = None
        self._error: str | None = None
        self._opening: bytes | None = None  # the first chunk's data, not read yet
        self._tail: deque[bytes] = deque()  # the last chunks' data, not read yet

    @property
    def usage(self) -> Usage | None:
        self._read()
        return self._usage

    @property
    def prompt_tokens(self) -> int | None:
        """The prompt's size as the neuron's first chunk said it (None if it did not)."""
        self._read()
        return self._prompt

    @property
    def events(self) -> int:
        self._read()
        return self._content

    @property
    def error(self) -> str | None:
        self._read()
        return self._error

    def take(self, run: bytes) -> None:
        """Note the events of a run of whole events (the relay's bytes)."""
        if run.startswith(b"data: ") and run.find(b"\n") == len(run) - 2:
            # One event of one data line, as the neuron writes them.
            if run == _DONE_EVENT:
                self._done()
            else:
                self._keep(run[6:-2])
            return
        for event in events(run):
            data = data_of(event)
            if data == DONE:
                self._done()
            elif data is not None:
                self._keep(data)

    def chunk(self, chunk: Any) -> None:
        """Note one parsed chunk (what a converter gets, or a whole reply)."""
        self.seen += 1
        self._note(chunk)

    def _keep(self, data: bytes) -> None:
        self.seen += 1
        if self.seen == 1:
            self._opening = data
            return
        tail = self._tail
        if len(tail) == TAIL:  # older than the last few: content, by the neuron's order
            tail.popleft()
            self._content += 1
        tail.append(data)

    def _done(self) -> None:
        self.done = True
        self._read()  # the usage, before the client has the end

    def _read(self) -> None:
        """Parse what `take` kept: the first chunk, and the last few."""
        if self._opening is not None:
            opening, self._opening = self._opening, None
            self._note(fastjson.parse(opening))
        while self._tail:
            self._note(fastjson.parse(self._tail.popleft()))

    def _note(self, chunk: Any) -> None:
        if not isinstance(chunk, dict):
            self._content += 1  # (not the neuron API's: counted, as relayed)
            return
        prompt = chunk.get("helexa_prompt_tokens")
        usage, error = usage_of(chunk), error_code_of(chunk)
        if type(prompt) is int and prompt >= 0:
            self._prompt = prompt
        if usage is not None:
            first, self._usage = self._usage is None, usage
            if first and self.on_usage is not None:
                self.on_usage(usage.total)
        if error is not None:
            self._error = error
        if prompt is None and usage is None and error is None:
            self._content += 1


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
