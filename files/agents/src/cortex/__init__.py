"""helexa.cortex: a fleet manager and OpenAI/Anthropic-compatible gateway for local LLMs."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("helexa-cortex")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0.0.0+src"
