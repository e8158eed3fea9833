"""The gateway's admin API as the `cortex` fleet commands call it (requests, an admin key)."""

from __future__ import annotations

from typing import Any

import requests


class CliError(Exception):
    """What a fleet command prints (after `cortex: `) before it exits with status 1."""


class Admin:
    def __init__(self, url: str, admin_key: str) -> None:
        self.base = url.rstrip("/")
        self.http = requests.Session()
        if admin_key:
            self.http.headers["Authorization"] = f"Bearer {admin_key}"

    def get(self, path: str, timeout: float = 15) -> Any:
        try:
            return _json(self.http.get(self.base + path, timeout=timeout))
        except requests.RequestException as exc:
            raise CliError(f"cannot reach the gateway at {self.base}: {exc}") from None

    def post(self, path: str, body: Any = None, timeout: float | None = 30) -> Any:
        try:
            return _json(self.http.post(self.base + path, json=body, timeout=timeout))
        except requests.RequestException as exc:
            raise CliError(f"cannot reach the gateway at {self.base}: {exc}") from None


def _json(r: requests.Response) -> Any:
    try:
        body = r.json()
    except ValueError:
        raise CliError(f"HTTP {r.status_code} from {r.url}") from None
    if r.status_code != 200:
        err = body.get("error", {}) if isinstance(body, dict) else {}
        if not isinstance(err, dict):
            err = {"message": str(err)}
        message = err.get("message") or err.get("detail") or r.status_code
        hint = " (set --admin-key or CORTEX_ADMIN_KEY)" if r.status_code == 401 else ""
        raise CliError(f"{message}{hint}")
    return body
