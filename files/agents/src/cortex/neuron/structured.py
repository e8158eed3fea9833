"""`response_format` -> a GBNF grammar, enforced by a grammar sampler in the sequence's chain.

Accepted: {"type": "text"}, {"type": "json_object"} (optionally with llama.cpp's "schema"),
OpenAI's {"type": "json_schema", "json_schema": {"name", "schema", "strict"}} and llama.cpp's
{"type": "json_schema", "schema": {...}}. Chosen: llama.cpp's own GBNF via llama-cpp-python's
JSON-schema converter: no extra dependency, and its grammar sampler sits in the same
per-sequence chain as the other samplers (llguidance/xgrammar are faster on big vocabularies
and cover more of JSON Schema, but llama-cpp-python 0.3.x has no sampler hook for them).
"""

from __future__ import annotations

import json
from typing import Any

from llama_cpp.llama_grammar import JSON_GBNF, PRIMITIVE_RULES, json_schema_to_gbnf

from cortex.core.errors import ApiError, BadRequest

FIELD = "response_format"
# llama-cpp-python's port of the converter lets raw control characters into strings, which
# is not JSON; llama.cpp's own converter (and JSON_GBNF) have since excluded them.
_CHAR = f"char ::= {PRIMITIVE_RULES['char'].content}"
_STRICT_CHAR = r'char ::= [^"\\\x7F\x00-\x1F] | "\\" (["\\/bfnrt] | "u" [0-9a-fA-F]{4})'
# Its exponents run to 16 digits: 1e999 parses as infinity, which JSON cannot carry back.
# Two digits keep every number inside a double.
_NUMBER = f"number ::= {PRIMITIVE_RULES['number'].content}"
_FINITE_NUMBER = _NUMBER.replace("([eE] [-+]? integral-part)", "([eE] [-+]? [0-9]{1,2})")


class SchemaError(ValueError):
    """A JSON Schema that cannot be turned into a grammar; the message says why."""


def schema_gbnf(schema: Any) -> str:
    """The GBNF grammar (rule `root`) of the JSON values that `schema` admits."""
    if not isinstance(schema, dict | bool):
        raise SchemaError("the schema must be a JSON Schema object")
    try:
        gbnf = json_schema_to_gbnf(json.dumps(schema))
    except RecursionError:
        raise SchemaError("the schema nests too deeply") from None
    except Exception as exc:  # the converter reports errors as assertions and KeyErrors
        raise SchemaError(f"the schema cannot be enforced: {exc}"[:500]) from None
    return gbnf.replace(_CHAR, _STRICT_CHAR).replace(_NUMBER, _FINITE_NUMBER)


def _bad(message: str) -> ApiError:
    return BadRequest(f"{FIELD}: {message}", code="invalid_response_format", param=FIELD)


def grammar_for(body: dict) -> str | None:
    """The grammar that `body["response_format"]` asks for, or None for free text."""
    rf: Any = body.get(FIELD)
    if rf is None:
        return None
    if not isinstance(rf, dict):
        raise _bad('expected an object such as {"type": "json_object"}')
    kind = rf.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        schema = rf.get("schema")
        return JSON_GBNF if schema is None else _from_schema(schema)
    if kind == "json_schema":
        spec = rf.get("json_schema")
        if spec is not None:
            if not isinstance(spec, dict):
                raise _bad("'json_schema' must be an object {name, schema, strict}")
            if "strict" in spec and not isinstance(spec["strict"], bool | None):
                raise _bad("'json_schema.strict' must be true or false")
            schema = spec.get("schema")
        else:
            schema = rf.get("schema")
        if schema is None:
            raise _bad("type json_schema needs a schema: {\"type\": \"json_schema\", "
                       "\"json_schema\": {\"name\": ..., \"schema\": {...}}}")
        return _from_schema(schema)
    raise _bad(f"unsupported type {kind!r}: use 'text', 'json_object' or 'json_schema'")


def _from_schema(schema: Any) -> str:
    try:
        return schema_gbnf(schema)
    except SchemaError as exc:
        raise _bad(str(exc)) from None
