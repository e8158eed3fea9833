"""Request-body checks that need no web framework: shared by Flask routes and the WSGI
data plane, so both refuse a bad body with the same 4xx."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

from cortex.core import fastjson
from cortex.core.errors import ApiError, BadRequest

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def check_json_type(mimetype: str) -> None:
    """Only a JSON body is read. A missing Content-Type is refused too: it is what a
    browser's no-cors POST (which needs no preflight) sends, and a page on any site could
    otherwise spend an open gateway's tokens from its visitors' machines."""
    if mimetype != "application/json" and not mimetype.endswith("+json"):
        got = f"Content-Type {mimetype!r} is" if mimetype else "a body without a Content-Type is"
        raise ApiError(f"{got} not supported; send Content-Type: application/json",
                       code="unsupported_media_type", status=415,
                       type="invalid_request_error")


# Deeper than any real request (tool schemas nest a few levels); bounded so that nothing
# after parsing (templates, json.dumps, translation) can hit the recursion limit.
MAX_JSON_DEPTH = 64
# Only a \uD800-\uDFFF escape can produce a lone surrogate (raw ones are invalid UTF-8).
# With the valid pairs taken out, any such escape left may be lone (or follow an escaped
# backslash: the exact check then finds nothing).
_SURROGATE_PAIR = re.compile(rb"\\u[dD][89abAB][0-9a-fA-F]{2}\\u[dD][c-fC-F][0-9a-fA-F]{2}")
_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F]")


class _NonFinite(ValueError):
    pass


def _non_finite(name: str) -> Any:
    raise _NonFinite(name)


class _Constant(str):
    """NaN, Infinity or -Infinity where a body held one: parsed only to name its field."""


def parse_json_object(raw: bytes) -> dict[str, Any]:
    """A JSON object as RFC 8259 has it: no NaN or Infinity (Python's json takes them and
    a sampler would get garbage), no lone surrogates (they cannot be encoded back), and
    nested at most MAX_JSON_DEPTH deep. Each refusal is a 400 naming the problem."""
    # orjson takes RFC 8259 alone (no NaN, Infinity or lone surrogate). What it refuses,
    # and a body where it read an integer past 64 bits as a float, go through json: to be
    # refused with a 400 that names the problem, or to keep the integer whole.
    body = fastjson.parse(raw)
    depth, lossy = shape(body, MAX_JSON_DEPTH)
    exact = body is not None and not lossy
    if not exact:
        body = _json_loads(raw)
        depth, _ = shape(body, MAX_JSON_DEPTH)
    if not isinstance(body, dict):
        raise ApiError("the body must be a JSON object", code="invalid_request_body",
                       status=422, type="invalid_request_error")
    if depth > MAX_JSON_DEPTH:
        raise _too_deep()
    # The walk to name the field runs only for a likely surrogate (a scan in C).
    if (not exact and (b"\\ud" in raw or b"\\uD" in raw)
            and _SURROGATE.search(_SURROGATE_PAIR.sub(b"", raw))):
        _check_tree(body)
    return body


def _finite(text: str) -> float:
    """A JSON number as a float, refused where it overflows one (1e400: inf, which would
    reach a sampler as garbage, or go out again as null)."""
    value = float(text)
    if value - value != 0:  # inf or -inf
        raise _NonFinite(text)
    return value


def _json_loads(raw: bytes) -> Any:
    # Only bodies orjson refused (or read a long integer of) come here: the hooks that
    # refuse NaN, Infinity and numbers past a double's range cost nothing on the fast path.
    try:
        return json.loads(raw, parse_constant=_non_finite, parse_float=_finite)
    except _NonFinite as exc:
        raise _non_finite_at(raw, str(exc)) from None
    except RecursionError:
        raise _too_deep() from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"the body is not valid JSON: {exc}", code="malformed_json") from None


def shape(body: Any, limit: int) -> tuple[int, bool]:
    """How deep a parsed body nests (each object or array one level, counted no further
    than past `limit`), and whether it holds a float of fastjson.LOSSY_FLOAT or more. One
    walk over the parsed values: ~50 us for Claude Code's 82 KB request, where a scan of
    the raw bytes for the depth alone took 330 us."""
    deepest, lossy = 0, False
    stack = [(body, 1)] if type(body) is dict or type(body) is list else []
    big = fastjson.LOSSY_FLOAT
    while stack:
        node, depth = stack.pop()
        if depth > deepest:
            deepest = depth
            if depth > limit:
                break
        for value in node.values() if type(node) is dict else node:
            kind = type(value)
            if kind is dict or kind is list:
                stack.append((value, depth + 1))
            elif kind is float and (value >= big or value <= -big):
                lossy = True
    return deepest, lossy


def _too_deep() -> BadRequest:
    return BadRequest(f"the body nests objects and arrays more than {MAX_JSON_DEPTH} deep",
                      code="invalid_request_body")


def _walk(body: Any) -> Iterator[tuple[Any, str]]:
    """Every value in a parsed body with where it is (`messages[0].content`); each object
    key too, as a string at its object's place."""
    stack: list[tuple[Any, str]] = [(body, "")]
    while stack:
        node, where = stack.pop()
        yield node, where
        if isinstance(node, dict):
            for k, v in node.items():
                yield k, where or "the body's keys"
                stack.append((v, f"{where}.{k}" if where else str(k)))
        elif isinstance(node, list):
            stack.extend((v, f"{where}[{i}]") for i, v in enumerate(node))


def _check_tree(body: Any) -> None:
    """Find the string that holds a lone surrogate, to name it."""
    for node, where in _walk(body):
        if isinstance(node, str):
            _check_text(node, where)


def _float_or_constant(text: str) -> float | _Constant:
    value = float(text)
    return _Constant(text) if value - value != 0 else value


def _non_finite_at(raw: bytes, name: str) -> BadRequest:
    """The 400 for a NaN, an Infinity or a number too large for a double, naming the field
    that holds it where it can."""
    where = ""
    try:
        for node, at in _walk(json.loads(raw, parse_constant=_Constant,
                                          parse_float=_float_or_constant)):
            if isinstance(node, _Constant):
                name, where = str(node), at
                break
    except (ValueError, RecursionError):
        pass
    what = (f"{name} is not a JSON number (JSON has no NaN or Infinity)"
            if name in ("NaN", "Infinity", "-Infinity") else
            f"{name[:40]} is past the range of a double (it would read as infinity)")
    if not where:
        return BadRequest(f"the body is not valid JSON: {what}; send a finite number",
                          code="malformed_json")
    where = where.encode(errors="backslashreplace").decode()
    return BadRequest(f"{where}: {what}; send a finite number", code="malformed_json",
                      param=where)


def _check_text(text: str, where: str) -> None:
    try:
        text.encode()
    except UnicodeEncodeError:
        where = where.encode(errors="backslashreplace").decode()
        raise BadRequest(f"{where}: the string holds a lone UTF-16 surrogate (an unpaired "
                         "\\uD800-\\uDFFF escape); send valid Unicode", code="malformed_json",
                         param=where) from None


def too_large(limit: int | None) -> ApiError:
    return ApiError(f"the body is larger than the {limit}-byte limit",
                    code="request_too_large", status=413, type="invalid_request_error")


def parse_bearer(authorization: str) -> str:
    scheme, _, token = authorization.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def sse_event(data: Any, event: str | None = None) -> bytes:
    payload = data.encode() if isinstance(data, str) else fastjson.dumps(data)
    head = f"event: {event}\n".encode() if event else b""
    return b"%sdata: %s\n\n" % (head, payload)
