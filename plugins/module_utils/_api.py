# -*- coding: utf-8 -*-
# Copyright: helexa
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The collection's private HTTP client for neurons and gateways.

Private (``_api``): its API is for this collection's plugins only. Modules build a client
with :func:`client_from_module` and turn :class:`CortexApiError` into ``fail_json`` with
:func:`fail`; the inventory plugin catches the same exception and raises its own error.

The agents' package cannot be imported here (AnsiballZ ships only module_utils), so the
neuron and gateway HTTP contract is pinned by a contract test against the real apps.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import socket

from ansible.module_utils.common.text.converters import to_native, to_text
from ansible.module_utils.six.moves.urllib.error import HTTPError, URLError
from ansible.module_utils.six.moves.urllib.parse import quote
from ansible.module_utils.urls import open_url

USER_AGENT = "helexa.cortex-ansible"
DEFAULT_TIMEOUT = 60


def api_argument_spec():
    """The options every module shares (see the ``helexa.cortex._api`` doc fragment)."""
    return dict(
        url=dict(type="str", required=True),
        token=dict(type="str", no_log=True),
        timeout=dict(type="float", default=DEFAULT_TIMEOUT),
        validate_certs=dict(type="bool", default=True),
    )


class CortexApiError(Exception):
    """An HTTP call that failed: ``status`` is None when no HTTP answer came back."""

    def __init__(self, message, status=None, body=None, url=None):
        super(CortexApiError, self).__init__(message)
        self.message = message
        self.status = status
        self.body = body
        self.url = url

    @property
    def error(self):
        """The ``error`` object of a cortex error body ({} when there is none)."""
        if isinstance(self.body, dict) and isinstance(self.body.get("error"), dict):
            return self.body["error"]
        return {}

    @property
    def kind(self):
        """The error's kind (a preflight ``kind`` or an OpenAI-style ``code``), or None."""
        err = self.error
        return err.get("kind") or err.get("code") or err.get("type")

    def to_result(self):
        """The fields a module adds to its failure result."""
        out = dict(status=self.status, url=self.url)
        if self.body is not None:
            out["body"] = self.body
        if self.kind:
            out["kind"] = self.kind
        if "nearest" in self.error:
            out["nearest"] = self.error.get("nearest")
        return out

    def __str__(self):
        return self.message


def _error_message(method, url, status, body):
    err = body.get("error") if isinstance(body, dict) else None
    if isinstance(err, dict):
        detail = err.get("detail") or err.get("message") or json.dumps(err, sort_keys=True)
        kind = err.get("kind") or err.get("code")
        msg = "%s %s: HTTP %s%s: %s" % (method, url, status, " %s" % kind if kind else "", detail)
        nearest = err.get("nearest")
        if nearest and "did you mean" not in to_text(detail):
            msg += " (did you mean %r?)" % (nearest,)
        return msg
    text = body if isinstance(body, str) else json.dumps(body)
    return "%s %s: HTTP %s: %s" % (method, url, status, (text or "")[:500])


class ApiClient:
    """JSON over HTTP(S) with an optional bearer token."""

    def __init__(self, url, token=None, timeout=DEFAULT_TIMEOUT, validate_certs=True):
        self.url = (url or "").rstrip("/")
        self.token = token
        self.timeout = timeout
        self.validate_certs = validate_certs

    def request(self, method, path, data=None, timeout=None, token=None):
        """Call ``path`` and return the decoded JSON body; raise CortexApiError otherwise."""
        url = self.url + path
        headers = {"Accept": "application/json"}
        token = token if token is not None else self.token
        if token:
            headers["Authorization"] = "Bearer %s" % token
        payload = None
        if data is not None:
            payload = json.dumps(data)
            headers["Content-Type"] = "application/json"
        try:
            # A token never follows a redirect: the next host could be anyone's.
            resp = open_url(url, data=payload, method=method, headers=headers,
                            timeout=timeout or self.timeout,
                            validate_certs=self.validate_certs, http_agent=USER_AGENT,
                            follow_redirects="none" if token else "safe")
            raw = resp.read()
        except HTTPError as e:
            try:
                raw = e.read()
            except Exception:
                raw = b""
            body = _decode(raw)
            message = _error_message(method, url, e.code, body)
            location = e.headers.get("Location") if e.headers is not None else None
            if 300 <= e.code < 400 and location:
                message = ("%s %s: redirected (HTTP %s) to %s; the token is not sent across a "
                           "redirect: use that URL" % (method, url, e.code, location))
            raise CortexApiError(message, status=e.code, body=body, url=url)
        except (URLError, socket.timeout, socket.error, ValueError) as e:
            raise CortexApiError("%s %s: %s" % (method, url, to_native(getattr(e, "reason", e))),
                                 url=url)
        return _decode(raw)

    def get(self, path, **kw):
        return self.request("GET", path, **kw)

    def post(self, path, data=None, **kw):
        return self.request("POST", path, data=data if data is not None else {}, **kw)


def _decode(raw):
    text = to_text(raw or b"", errors="surrogate_or_strict")
    if not text.strip():
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text


class NeuronClient(ApiClient):
    """One neuron's HTTP API (``/health`` and ``/version`` need no token)."""

    def health(self):
        return self.get("/health")

    def version(self):
        return self.get("/version")

    def discovery(self):
        return self.get("/discovery")

    def models(self):
        """Every model the neuron knows, each with ``status`` loaded|loading|available."""
        return self.get("/models")

    def loaded_models(self):
        """{id: model} of the models with status ``loaded``."""
        return dict((m["id"], m) for m in self.models() if m.get("status") == "loaded")

    def load(self, model_id, quant=None, harness=None, devices=None, timeout=None):
        body = {"model_id": model_id}
        if quant:
            body["quant"] = quant
        if harness:
            body["harness"] = harness
        if devices:
            body["devices"] = list(devices)
        return self.post("/models/load", body, timeout=timeout)

    def unload(self, model_id, timeout=None):
        return self.post("/models/unload", {"model_id": model_id}, timeout=timeout)

    def drain(self, drained=True):
        return self.post("/drain", {"drained": bool(drained)})


class GatewayClient(ApiClient):
    """A gateway's HTTP API; the admin routes want an admin key as the token."""

    def health(self):
        return self.get("/health")

    def models(self):
        """The catalogue (``/v1/models``): the list under ``data``."""
        body = self.get("/v1/models")
        return body.get("data", []) if isinstance(body, dict) else body

    def nodes(self, token=None):
        """``/admin/nodes``: ``{"nodes": [...], "health": {...}}``."""
        return self.get("/admin/nodes", token=token)

    def node(self, name, token=None):
        """One node's summary from ``/admin/nodes``, or None when the gateway has none."""
        for n in self.nodes(token=token).get("nodes", []):
            if n.get("name") == name:
                return n
        return None

    def drain(self, name, token=None):
        return self.post("/admin/nodes/%s/drain" % quote(name, safe=""), token=token)

    def undrain(self, name, token=None):
        return self.post("/admin/nodes/%s/undrain" % quote(name, safe=""), token=token)


def client_from_module(module, cls=NeuronClient):
    """A client from the shared module options (url, token, timeout, validate_certs)."""
    p = module.params
    return cls(p["url"], token=p.get("token"), timeout=p.get("timeout") or DEFAULT_TIMEOUT,
               validate_certs=p.get("validate_certs", True))


def fail(module, exc, **result):
    """End a module with the API error: its message, status, kind and body in the result."""
    out = dict(result)
    out.update(exc.to_result())
    module.fail_json(msg=exc.message, **out)
