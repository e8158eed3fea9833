"""Keeping tests off the Hugging Face hub: every hub call goes to a closed local port.

huggingface_hub reads its endpoint and token once, at import: `isolate_hub()` must run
before anything imports it (the pytest plugin calls it when pytest loads it). Processes a
test starts (`neuron serve`, `cortex serve`) get `OFFLINE_ENV` in their environment.
"""

from __future__ import annotations

import os
from typing import Any

OFFLINE_ENV = {
    "HF_ENDPOINT": "http://127.0.0.1:9",  # discard: nothing listens there
    "HF_HUB_DISABLE_TELEMETRY": "1",
}
TOKEN_ENV = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")


def isolate_hub() -> None:
    """Point this process's hub client at a closed port and drop any hub token."""
    os.environ.update(OFFLINE_ENV)
    for name in TOKEN_ENV:
        os.environ.pop(name, None)


def offline_env(**extra: str) -> dict[str, str]:
    """This process's environment for a child that must never reach the hub."""
    env = {k: v for k, v in os.environ.items() if k not in TOKEN_ENV}
    return {**env, **OFFLINE_ENV, **extra}


def quiet_client(monkeypatch: Any) -> None:
    """The client fetches an "agent harness" registry once per process to build its
    user-agent; seed it empty so no test waits on that call."""
    from huggingface_hub.utils import _detect_agent

    monkeypatch.setattr(_detect_agent, "_registry", {"standardEnvVars": [], "harnesses": {}})
