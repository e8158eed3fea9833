"""Which family a model belongs to: read off its chat template, or named by the operator
(`chat_format` in the load request) for a template we do not recognise."""

from __future__ import annotations

from cortex.core.errors import BadRequest
from cortex.neuron.families.deepseek import DeepSeekR1, DeepSeekV31, DeepSeekV32
from cortex.neuron.families.family import Family
from cortex.neuron.families.glm import Glm
from cortex.neuron.families.harmony import Harmony
from cortex.neuron.families.hermes import Generic, Hermes
from cortex.neuron.families.kimi import Kimi
from cortex.neuron.families.llama3 import Llama3
from cortex.neuron.families.minimax import MiniMax
from cortex.neuron.families.mistral import Mistral
from cortex.neuron.families.qwen3_coder import Qwen3Coder

# Checked in this order: the first whose markers the template holds. Markers that others
# share come late (`<tool_call>` is GLM's and Qwen3-Coder's too; DeepSeek V3.2's templates
# still name V3's markers).
ORDER: tuple[type[Family], ...] = (
    Harmony, Kimi, DeepSeekV32, DeepSeekV31, DeepSeekR1, MiniMax, Glm, Qwen3Coder, Mistral,
    Llama3, Hermes, Generic,
)
FAMILIES: dict[str, Family] = {cls.name: cls() for cls in ORDER}


def detect(template: str | None) -> Family:
    """The family of a model whose chat template is `template` (None: the GGUF has none)."""
    source = template or ""
    for cls in ORDER:
        if cls.detect(source):
            return FAMILIES[cls.name]
    return FAMILIES["generic"]


def named(name: str) -> Family:
    """The family an operator names (`chat_format`); 400 naming the known ones."""
    family = FAMILIES.get(name)
    if family is None:
        raise BadRequest(f"chat_format {name!r} is unknown; known formats: "
                         f"{', '.join(sorted(FAMILIES))}", code="invalid_chat_format",
                         param="chat_format")
    return family


def resolve(template: str | None, chat_format: str = "") -> Family:
    """The family for a model: the operator's `chat_format` if set, else detected."""
    return named(chat_format) if chat_format else detect(template)
