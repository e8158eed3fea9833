"""Calls to a neuron beside the relay, shared by the API families' routes: a prompt counted
by the model's own template and tokenizer on a replica that has it loaded (`POST
/tokenize`); a count never loads a model (nor evicts one for it).
"""

from __future__ import annotations

from typing import Any

from cortex.core.errors import BadGateway, NotFound, Unavailable
from cortex.gateway.dataplane import Call
from cortex.gateway.upstream import UpstreamError, neuron_error

CHAT = "/v1/chat/completions"


def count_on_loaded(call: Call, req: dict[str, Any]) -> int:
    """The size of `req` (a chat body) by the neuron's own template and tokenizer, on the
    replica the request would go to."""
    model = call.model
    node = call.gw.dispatcher.loaded(call.outbound(CHAT, req))
    if node is None:
        if model.entry is None:
            raise NotFound(f"model {model.name!r} is not in the catalogue and not loaded on "
                           "any node", code="model_not_found", param="model")
        raise Unavailable(f"{model.public_id} is not loaded: counting uses a loaded model's "
                          "tokenizer and does not load one; send a request first, or retry "
                          "once it is loaded", code="model_not_loaded", retry_after=5)
    try:
        status, reply = call.gw.upstream.post_json(
            f"{node.endpoint}/tokenize", dict(req, model=model.load_id), read=60)
    except UpstreamError as exc:
        raise BadGateway(f"could not reach {node.name} to count tokens: {exc}",
                         code="upstream_connection_error") from None
    if status != 200:
        raise neuron_error(status, reply, node.name)
    return int(reply["tokens"])
