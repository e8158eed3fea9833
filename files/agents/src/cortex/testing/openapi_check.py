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

    def check(self, r: requests.Response, events: str | None = None) -> requests.Response:
        """Validate `r`; a stream's events against the component schema `events`."""
        req = r.request
        path = requests.utils.urlparse(req.url).path
        ctype = r.headers.get("Content-Type", "").partition(";")[0]
        if ctype == "text/event-stream":
            assert events, f"{req.method} {path} streamed but no event schema was given"
            resp = self.response_doc(req.method, path, r.status_code)
            assert "text/event-stream" in resp.get("content", {}), \
                f"{req.method} {path} {r.status_code}: SSE is not documented"
            for event in parse_sse(r.text):
                self.validate(event, events, also="OpenAIError")
        else:
            self.spec.validate_response(RequestsOpenAPIRequest(req), RequestsOpenAPIResponse(r))
        self.checked.add((req.method, self.template(path), r.status_code))
        return r

    def validate(self, instance: Any, schema: str, also: str | None = None) -> None:
        """`instance` against components/schemas/`schema` (or `also`, e.g. an error event)."""
        names = [schema] + ([also] if also else [])
        root = {"anyOf": [{"$ref": f"#/components/schemas/{n}"} for n in names],
                "components": self.doc["components"]}
        errors = list(Draft202012Validator(root).iter_errors(instance))
        assert not errors, f"{instance!r} is not a {schema}: {errors[0].message}"


def parse_sse(text: str) -> list[Any]:
    """The JSON `data:` payloads of an SSE body (comments and [DONE] left out)."""
    out = []
    for line in text.split("\n"):
        if line.startswith("data: ") and line != "data: [DONE]":
            out.append(json.loads(line[6:]))
    assert out, "an empty stream"
    return out
