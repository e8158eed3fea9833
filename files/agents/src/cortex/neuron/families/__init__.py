"""Model families: how each family of chat models writes tool calls and reasoning.

The chat template in the GGUF decides the family (`detect`), or the operator names it
(`chat_format`). A family (`family.Family`) shapes the conversation for its template
(`prepare`), says which special tokens its output must show (`markers`), parses the output
as it streams (`parser`: most through `stream.Parser` and their `blocks`), and writes a
forced call in its own syntax (`call_rule`, out of `grammar`'s pieces).

Modules: `base` (the parts a reply is read into, bounded JSON), `steps` (what every parser
shares), `stream` (the shared parser; a stream's calls' arguments as they come),
`xml_calls` (calls as XML-ish tags with untyped values), `grammar` (GBNF), `family` (the
interface), one module a family, `detect`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cortex.neuron.families.base import Part, Tools
from cortex.neuron.families.detect import FAMILIES, detect, named, resolve
from cortex.neuron.families.family import Family

if TYPE_CHECKING:
    from cortex.neuron.engines import LoadedModel

__all__ = ["FAMILIES", "Family", "Part", "Tools", "detect", "marker_tokens", "named",
           "resolve"]


def marker_tokens(family: Family, model: LoadedModel) -> frozenset[int]:
    """The ids of the family's markers that are single tokens in this model's vocabulary
    (special tokens the engine must render in the output, as llama.cpp's server does for a
    format's "preserved tokens")."""
    ids = set()
    for marker in family.markers:
        tokens = model.tokenize(marker, add_bos=False, special=True)
        if len(tokens) == 1:
            ids.add(tokens[0])
    return frozenset(ids)
