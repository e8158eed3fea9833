"""Real responses checked against the shipped OpenAPI documents (openapi-core, jsonschema).

JSON responses go through openapi-core (status, headers, body). An SSE stream is checked
event by event against the component schema of its events, since no validator reads
`text/event-stream` bodies.
"""

from __future__ import annotations

import json
import re
from typing import Any

import requests
from jsonschema import Draft202012Validator
from openapi_core import OpenAPI
from openapi_core.contrib.requests import RequestsOpenAPIRequest, RequestsOpenAPIResponse
from openapi_core.validation.response.validators import V31ResponseHeadersValidator

from cortex.core import openapi


class Contract:
    """One server's document; `check` raises if a response breaks it."""

    def __init__(self, package: str) -> None:
        self.doc = openapi.document(package)
        self.spec = OpenAPI.from_dict(self.doc)
        self.checked: set[tuple[str, str, int]] = set()  # (method, path template, status)
        self._paths = [(re.compile("^" + re.sub(r"\{[^}]+\}", "[^/]+", p) + "$"), p)
                       for p in self.doc["paths"]]

    def template(self, path: str) -> str:
        for rx, template in self._paths:
            if rx.match(path):
                return template
        raise AssertionError(f"{path} is not in the document")

    def response_doc(self, method: str, path: str, status: int) -> dict[str, Any]:
        op = self.doc["paths"][self.template(path)].get(method.lower())
        assert op is not None, f"{method} {path} is not in the document"
        resp = op["responses"].get(str(status)) or op["responses"].get("default")
        assert resp is not None, f"{method} {path}: status {status} is not documented"
        return resp

    def check(self, r: requests.Response) -> requests.Response:
        """Validate `r`: status, headers and body (each event of a stream); and, if it was
        accepted, the request (what a server takes must be what its document allows)."""
        req = r.request
        if r.status_code < 400:
            self.spec.validate_request(RequestsOpenAPIRequest(req))
        path = requests.utils.urlparse(req.url).path
        ctype = r.headers.get("Content-Type", "").partition(";")[0]
        if ctype == "text/event-stream":
            resp = self.response_doc(req.method, path, r.status_code)
            media = resp.get("content", {}).get("text/event-stream")
            assert media, f"{req.method} {path} {r.status_code}: SSE is not documented"
            event_schema = self.resolve(media["schema"])
            V31ResponseHeadersValidator(self.spec.spec).validate(
                RequestsOpenAPIRequest(req), RequestsOpenAPIResponse(r))
            for event in parse_sse(r.text):
                self.validate_schema(event, event_schema)
                self.validate_schema(json.loads(event["data"]), _payload_schema(event_schema))
        else:
            self.spec.validate_response(RequestsOpenAPIRequest(req), RequestsOpenAPIResponse(r))
        self.checked.add((req.method, self.template(path), r.status_code))
        return r

    def resolve(self, schema: dict[str, Any]) -> dict[str, Any]:
        while "$ref" in schema:
            schema = self.doc["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
        return schema

    def validate_schema(self, instance: Any, schema: dict[str, Any]) -> None:
        root = dict(schema, components=self.doc["components"])
        errors = list(Draft202012Validator(root).iter_errors(instance))
        assert not errors, f"{instance!r}: {errors[0].message}"


def _payload_schema(event_schema: dict[str, Any]) -> dict[str, Any]:
    """The contentSchema of an event's JSON `data`."""
    for alt in event_schema["properties"]["data"]["anyOf"]:
        if "contentSchema" in alt:
            return alt["contentSchema"]
    raise AssertionError("the event schema has no contentSchema for its data")


def parse_sse(text: str) -> list[dict[str, str]]:
    """The events of an SSE body with JSON data ({event?, data}); comments and OpenAI's
    closing [DONE] left out."""
    out = []
    for block in text.split("\n\n"):
        event: dict[str, str] = {}
        for line in block.split("\n"):
            name, _, value = line.partition(": ")
            if name in ("event", "data", "id") and not line.startswith(":"):
                event[name] = value
        if event.get("data") not in (None, "[DONE]"):
            out.append(event)
    assert out, "an empty stream"
    return out
