"""Reading a server-sent event stream the way a client does, for tests of streamed replies."""

from __future__ import annotations

import json
from typing import Any

import requests


def named_events(resp: requests.Response) -> list[tuple[str | None, Any]]:
    """(event name, its JSON data) for each event of a stream with named events (Anthropic
    Messages, OpenAI Responses), read to its end; `[DONE]` (which these never send) is kept
    as the string, for the test to refuse."""
    events, name = [], None
    for line in resp.iter_lines(decode_unicode=True):
        if line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: "):
            data = line[6:]
            events.append((name, data if data == "[DONE]" else json.loads(data)))
    return events
