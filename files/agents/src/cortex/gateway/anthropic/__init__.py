"""Anthropic's Messages API over the same fleet, translated to and from the OpenAI shape."""
