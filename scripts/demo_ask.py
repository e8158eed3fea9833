"""Ask the lab fleet a real question through the gateway, with the official OpenAI client."""

from __future__ import annotations

import sys
import time

from openai import APIConnectionError, OpenAI

GATEWAY = sys.argv[1] if len(sys.argv) > 1 else "http://10.213.0.21:31313"
# The lab gateway's client key (inventories/lab/group_vars/gateways.yml): it requires one.
API_KEY = sys.argv[2] if len(sys.argv) > 2 else "lab-client-key"
QUESTION = "What is the capital of France?"


def main() -> int:
    client = OpenAI(base_url=f"{GATEWAY}/v1", api_key=API_KEY, timeout=120)
    deadline = time.monotonic() + 60
    while True:
        try:
            models = [m.id for m in client.models.list()]
            break
        except APIConnectionError:
            if time.monotonic() > deadline:
                print(f"the gateway at {GATEWAY} does not answer", file=sys.stderr)
                return 1
            time.sleep(1)
    started = time.monotonic()
    reply = client.chat.completions.create(
        model="gpt-4o-mini", temperature=0, max_tokens=48,
        messages=[{"role": "system", "content": "Answer in English."},
                  {"role": "user", "content": QUESTION}])
    took = time.monotonic() - started
    print(f"\ncatalogue: {', '.join(models)}")
    print(f"Q: {QUESTION}\nA: {reply.choices[0].message.content}")
    print(f"   ({reply.usage.completion_tokens} tokens in {took:.2f} s, model {reply.model})\n")
    print(f"The fleet: gateway {GATEWAY} (OpenAI: {GATEWAY}/v1, metrics :31314/metrics),")
    print("neurons 10.213.0.11 and 10.213.0.12 (:13131). Try:")
    print(f"  .venv/bin/cortex status --url {GATEWAY} --admin-key lab-admin-key")
    print(f"  curl -s {GATEWAY}/v1/models -H 'Authorization: Bearer {API_KEY}'")
    print("Tear it down: make lab-down")
    return 0


if __name__ == "__main__":
    sys.exit(main())
