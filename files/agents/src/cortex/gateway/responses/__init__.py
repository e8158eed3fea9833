"""OpenAI's Responses API (`POST /v1/responses`), stateless, over the neurons' chat API."""
