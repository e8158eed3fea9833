"""The streaming parser most families share: content, reasoning between two markers, and
blocks of tool calls, read as the model's text arrives in pieces.

A marker may arrive split across tokens, so a tail of the text that could still become one
is held back. A block (`<tool_call>…</tool_call>`, `[TOOL_CALLS]name[ARGS]{…}`) is kept
whole until it ends, then read by its family's `parse`; what does not read as calls goes
out as the model's own words. Every search resumes where the last one stopped, so a long
call costs time in proportion to its length, not its square.

A stream's parser (`stream_args`) sends a call's JSON arguments as they come where its block
says how its head reads (`Block.head`: the name, then the arguments' `{`): a `call_start`
part, then `call_args` parts. Such a call is announced before it ends, so it cannot turn
back into words: one cut short, or whose arguments then fail to read, ends as written
(logged). A block whose head does not read that way waits whole, as without streaming.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from cortex.neuron.families.base import JsonEnd, Malformed, Part, Tools, new_call_id
from cortex.neuron.families.steps import MAX_BLOCK_CHARS, StepParser

log = logging.getLogger(__name__)

MAX_HEADER_CHARS = 4096  # a name and its markers before a call's JSON arguments


@dataclass
class Block:
    """Where calls are written: from `open` to `close` (or, with close None, to the end of
    the JSON value that follows `json_after`, or `open` itself when `keep_open`)."""

    open: str
    parse: Callable[[str], list[Part]]  # the block's text (without its markers) -> calls
    close: str | None = None
    json_after: tuple[str, ...] = ()  # close None: the JSON starts after one of these
    keep_open: bool = False  # `open` belongs to the block's text (`<function=`, `{`)
    at_start: bool = False  # only as the reply's first words (Llama's bare JSON)
    expect: tuple[str, ...] = ()  # what must follow `open` (else it is plain text)
    swallow: tuple[str, ...] = ()  # dropped right after the block (a stray `</tool_call>`)
    complete_at_end: bool = True  # at the end of output an unclosed block may still read
    to_end: bool = False  # the block runs to the end of the output (`<|python_tag|>`)
    # The block's text so far -> (name, call id, where its JSON arguments start) once its
    # head is whole, None until then; Malformed: this call's arguments cannot stream.
    head: Callable[[str], tuple[str, str, int] | None] | None = None


def json_head(pattern: re.Pattern, tools: Tools, new_id: Callable[[], str] = new_call_id
              ) -> Callable[[str], tuple[str, str, int] | None]:
    """A `Block.head` out of a pattern whose match ends where the arguments start, with
    groups `name` and, optionally, `id`."""

    def head(text: str) -> tuple[str, str, int] | None:
        m = pattern.match(text)
        if m is None:
            return None
        return tools.check(m["name"]), m.groupdict().get("id") or new_id(), m.end()

    return head


@dataclass
class _Open:
    """A block being read: its text so far kept in pieces (joined once, at its end), and
    where the search for its end stands."""

    block: Block
    pieces: list[str] = field(default_factory=list)
    size: int = 0
    tail: str = ""  # the last characters, where a close marker may have begun
    head: str = ""  # close None: the text before the JSON starts (a name, `[ARGS]`)
    json: JsonEnd | None = None
    checked: bool = False
    args: JsonEnd | None = None  # streamed arguments: where they end
    args_state: str = "head"  # head (not started) | open | done | whole (will not stream)
    name: str = ""  # the streamed call's

    def text(self) -> str:
        return "".join(self.pieces)

    def add(self, piece: str) -> None:
        self.pieces.append(piece)
        self.size += len(piece)
        keep = len(self.block.close or "") - 1
        if keep > 0:
            self.tail = (self.tail + piece)[-keep:]


@dataclass
class Syntax:
    """A family's markers, for the parser."""

    reasoning: tuple[str, str] | None = None
    blocks: list[Block] = field(default_factory=list)
    calls_in_reasoning: bool = False


class Parser(StepParser):
    """Content, reasoning between the syntax's two markers, and its blocks of calls."""

    def __init__(self, syntax: Syntax, *, in_reasoning: bool = False,
                 stream_args: bool = False) -> None:
        super().__init__()
        self.syntax = syntax
        self.stream_args = stream_args
        self.blocks = syntax.blocks
        self._state = "reasoning" if in_reasoning and syntax.reasoning else "content"
        self._open: _Open | None = None
        self._said = False  # any non-blank content yet (for blocks only at the start)
        self._after = False  # just after a block or a thought: drop blank lines, strays

    def _finish(self, parts: list[Part]) -> None:
        if self._open is not None:
            self._end_block(self._open, parts, self._open.text() + self._buf, "", at_end=True)
        else:
            self._emit(parts, "reasoning" if self._state == "reasoning" else "content",
                       self._buf)

    # -- states ----------------------------------------------------------------------
    def _step(self, parts: list[Part], final: bool) -> bool:
        if self._open is not None:
            return self._in_block(self._open, parts, final)
        if self._after and not self._drop_strays(final):
            return False
        if self._state == "reasoning" and self.syntax.reasoning:
            return self._in_reasoning(self.syntax.reasoning[1], parts, final)
        return self._in_content(parts, final)

    def _openers(self) -> dict[str, Block | None]:
        out: dict[str, Block | None] = {}
        for b in self.blocks:
            if b.at_start and self._said:
                continue
            out.setdefault(b.open, b)
        if self.syntax.reasoning and self._state == "content":
            out.setdefault(self.syntax.reasoning[0], None)
        return out

    def _in_content(self, parts: list[Part], final: bool) -> bool:
        openers = self._openers()
        if not self._said and any(b.at_start for b in self.blocks):
            head = self._buf.lstrip()
            if not head and not final:
                return False  # leading blanks: the reply may still start with a call
        at, marker = self._emit_until(parts, "content", openers, final)
        if marker is None:
            return False
        block = openers[marker]
        if block is not None and block.at_start and self._buf[:at].strip():
            # `{` after words is no call: let it through as text
            self._emit(parts, "content", self._buf[: at + len(marker)])
            self._buf = self._buf[at + len(marker):]
            return True
        if not (block is not None and block.at_start):  # blanks before a first call go
            self._emit(parts, "content", self._buf[:at])
        self._buf = self._buf[at:] if block is not None and block.keep_open else (
            self._buf[at + len(marker):])
        if block is None:
            self._state = "reasoning"
        else:
            self._state = "block"
            self._open = _Open(block)
        return True

    def _in_reasoning(self, close: str, parts: list[Part], final: bool) -> bool:
        markers: dict[str, Block | None] = {close: None}
        if self.syntax.calls_in_reasoning:
            for b in self.blocks:
                markers.setdefault(b.open, b)
        at, marker = self._emit_until(parts, "reasoning", markers, final)
        if marker is None:
            return False
        self._emit(parts, "reasoning", self._buf[:at])
        block = markers[marker]
        if block is None:
            self._buf = self._buf[at + len(marker):]
            self._state = "content"
            self._after = True  # "</think>\n\nAnswer" -> "Answer"
        else:  # a call while thinking ends the thought
            self._buf = self._buf[at:] if block.keep_open else self._buf[at + len(marker):]
            self._state = "block"
            self._open = _Open(block)
        return True

    def _in_block(self, o: _Open, parts: list[Part], final: bool) -> bool:
        b = o.block
        new, self._buf = self._buf, ""
        if b.expect and not o.checked:
            seen = o.text() + new  # the block's first words: short
            head = (seen[len(b.open):] if b.keep_open else seen).lstrip()
            if not any(e.startswith(head) or head.startswith(e) for e in b.expect):
                return self._not_a_block(o, parts, new)
            if not any(head.startswith(e) for e in b.expect):
                if final:
                    return self._not_a_block(o, parts, new)
                o.add(new)
                return False
            o.checked = True
        if not new:
            return False
        try:
            end = self._find_end(o, new)
        except Malformed:
            return self._not_a_block(o, parts, new)
        if end is None:
            self._stream_args(o, parts, new)
            o.add(new)
            if o.size > MAX_BLOCK_CHARS:
                return self._not_a_block(o, parts, "")
            return False
        body_end, rest_at = end  # in the block's text with `new` appended
        self._stream_args(o, parts, new[: max(0, body_end - o.size)])
        whole = o.text() + new
        self._end_block(o, parts, whole[:body_end], whole[body_end:rest_at])
        self._buf = whole[rest_at:]
        return True

    def _find_end(self, o: _Open, new: str) -> tuple[int, int] | None:
        """Where the block ends, as (end of its text, start of what follows) in its text
        with `new` appended; None while it goes on. Only `new` is searched (with the few
        characters before it where a marker may have begun)."""
        b = o.block
        if b.to_end:
            return None
        if b.close is not None:
            window = o.tail + new
            at = window.find(b.close)
            if at < 0:
                return None
            body_end = o.size - len(o.tail) + at
            return body_end, body_end + len(b.close)
        if o.json is None:
            o.head = o.text() + new  # short: a name and a marker or two
            start = _json_start(o.head, b.json_after)
            if start < 0:
                if len(o.head) > MAX_HEADER_CHARS:
                    raise Malformed("no JSON where a call's arguments should be")
                return None
            o.json = JsonEnd()
            before = o.size + len(new) - len(o.head)  # where `head` begins in the text
            end = o.json.feed(o.head[start:])
            return None if end is None else (before + start + end,) * 2
        end = o.json.feed(new)
        return None if end is None else (o.size + end,) * 2

    def _stream_args(self, o: _Open, parts: list[Part], new: str) -> None:
        """Sends what `new` (the block's next text, up to its end) adds to the arguments
        of a call whose head has been read."""
        if not self.stream_args or o.block.head is None or o.args_state in ("done", "whole"):
            return
        if o.args_state == "head":
            if o.size > MAX_HEADER_CHARS:
                o.args_state = "whole"
                return
            seen = o.text() + new  # short: a name and a marker or two
            try:
                head = o.block.head(seen)
            except Malformed:
                head, o.args_state = None, "whole"
            if head is None:
                return
            o.name, call_id, at = head
            new = seen[at:].lstrip()
            if not new:
                return
            args = JsonEnd()
            try:
                if new[0] != "{":  # arguments as a string, or a list
                    raise Malformed("not an object")
                end = args.feed(new)
            except Malformed:  # they go whole (and read as words)
                o.args_state = "whole"
                return
            o.args, o.args_state = args, "open"
            self.tool_calls += 1
            parts.append(Part("call_start", name=o.name, call_id=call_id))
        else:
            try:
                end = o.args.feed(new)
            except Malformed:  # nested past the bound: the arguments end here
                end, o.args_state = 0, "done"
        if end is not None:
            new, o.args_state = new[:end], "done"
        self._emit(parts, "call_args", new)

    def _end_block(self, o: _Open, parts: list[Part], body: str, close: str,
                   at_end: bool = False) -> None:
        b = o.block
        self._open = None
        self._state = "content"
        self._after = True
        if o.args is not None:
            self._end_streamed(o, parts, body)
            return
        raw = body if b.keep_open else b.open + body
        try:
            if at_end and not b.complete_at_end:
                raise Malformed("cut short")
            calls = b.parse(body)
            if not calls:
                raise Malformed("no call in the block")
        except Malformed:
            # Not calls after all: the model's words, as it wrote them.
            self._emit(parts, "content", raw + close)
            return
        except Exception:  # a parser bug must not cost the client its reply
            self._emit(parts, "content", raw + close)
            return
        self.tool_calls += len(calls)
        parts.extend(calls)

    def _end_streamed(self, o: _Open, parts: list[Part], body: str) -> None:
        """A block whose first call went out as it came: the calls after it (a block of
        several) go whole; a block that no longer reads stays as the call was written."""
        try:
            calls = o.block.parse(body)
        except Exception:  # Malformed, or a parser bug
            calls = []
        if o.args_state != "done" or not calls or calls[0].name != o.name:
            log.warning("a streamed %s call ended without reading as one (cut short, or "
                        "its arguments malformed); it stands as written", o.name)
            return
        self.tool_calls += len(calls) - 1
        parts.extend(calls[1:])

    def _not_a_block(self, o: _Open, parts: list[Part], new: str) -> bool:
        if o.args is not None:  # a streamed call cannot turn back into words: it ends,
            self._end_block(o, parts, o.text(), "")  # and what is left is read again
            self._buf = new
            return True
        text = o.text() + new
        raw = text if o.block.keep_open else o.block.open + text
        self._open = None
        self._state = "content"
        # The opener is text now; what follows it is read again (it may hold a real call).
        self._emit(parts, "content", o.block.open)
        self._buf = raw[len(o.block.open):]
        return True

    def _drop_strays(self, final: bool) -> bool:
        """After a block or a thought: drop the newlines, and a stray closing marker that
        some models repeat (`</function></tool_call>`). False: wait for more text."""
        stripped = self._buf.lstrip("\n")
        if self._state == "content":
            swallow = [s for b in self.blocks for s in b.swallow]
            for s in swallow:
                if stripped.startswith(s):
                    stripped = stripped[len(s):].lstrip("\n")
                    break
                if s.startswith(stripped) and stripped and not final:
                    self._buf = stripped
                    return False
        self._buf = stripped
        if not stripped and not final:
            return False
        self._after = False
        return True

    def _emit(self, parts: list[Part], kind: str, text: str) -> None:
        if kind == "content":
            self._said = self._said or bool(text.strip())
        super()._emit(parts, kind, text)


def _json_start(buf: str, after: tuple[str, ...]) -> int:
    """Where the JSON of a block starts: right away if it opens with `[`/`{`, else after
    the first of `after`; -1 while unknown."""
    head = buf.lstrip()
    if head[:1] in ("[", "{") or not after:
        return len(buf) - len(head) if head else -1
    hits = [(buf.find(a), a) for a in after if a in buf]
    if not hits:
        return -1
    at, marker = min(hits)
    return at + len(marker)
