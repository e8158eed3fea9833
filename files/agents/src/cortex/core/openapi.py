"""The OpenAPI 3.1 documents shipped with the package, served at `GET /openapi.json`.

Each server's document is a data file beside its app (`cortex/<server>/openapi.json`); the
tests validate real responses against it, and the fuzz tests generate requests from it.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

from flask import Flask, Response

PATH = "/openapi.json"


@cache
def document_bytes(package: str) -> bytes:
    return resources.files(package).joinpath("openapi.json").read_bytes()


def document(package: str) -> dict[str, Any]:
    """A fresh copy of `package`'s document (callers may change it)."""
    return json.loads(document_bytes(package))


def install(app: Flask, package: str) -> None:
    """Serve `package`'s document at /openapi.json (public: it holds no secret)."""
    data = document_bytes(package)  # read at start: a missing file fails here, not later

    def openapi_json() -> Response:
        return Response(data, mimetype="application/json")

    app.add_url_rule(PATH, "openapi_json", openapi_json, methods=["GET"])
