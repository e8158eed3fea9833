"""What reading a model's output costs, per family: the streaming parser's time per token.

Each family's parser reads a turn written its way (a thought, a few words, three calls
with a ~2 KB argument each), fed as a model streams it: a piece of ~4 characters a token.
The baseline, measured in the same run, is the loop that hands the pieces over and
collects them with no parsing at all. Figures: microseconds a token, and what a 50 tok/s
stream loses to parsing (percent of one core).

    PYTHONPATH=files/agents/src .venv/bin/python bench/families_parse.py [--turns 200]
"""

from __future__ import annotations

import argparse
import time

from cortex.neuron.families import FAMILIES, Tools

CODE = "print('hello')\n" * 140  # ~2 KB of argument
TOOLS = Tools.of([{"type": "function", "function": {"name": "python", "parameters": {
    "type": "object", "properties": {"code": {"type": "string"}}}}}])
ESCAPED = CODE.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
JSON_ARGS = '{"code": "' + ESCAPED + '"}'


def turn(family: str) -> tuple[str, bool]:
    """A turn as `family` writes it; whether the prompt opened the thought."""
    think = "<think>Let me run it three times.</think>\n\nRunning it now.\n"
    if family in ("hermes", "generic"):
        call = '<tool_call>\n{"name": "python", "arguments": ' + JSON_ARGS + "}\n</tool_call>\n"
        return think + call * 3, False
    if family == "qwen3_coder":
        call = ("<tool_call>\n<function=python>\n<parameter=code>\n" + CODE
                + "</parameter>\n</function>\n</tool_call>\n")
        return think + call * 3, False
    if family == "glm":
        call = ("<tool_call>python<arg_key>code</arg_key><arg_value>" + CODE
                + "</arg_value></tool_call>")
        return think + call * 3, False
    if family == "minimax_m2":
        call = ('<invoke name="python"><parameter name="code">' + CODE
                + "</parameter></invoke>\n")
        return "Let me run it.</think>\n<minimax:tool_call>\n" + call * 3 + (
            "</minimax:tool_call>"), True
    if family in ("deepseek_r1", "deepseek_v3_1"):
        one = ("function<｜tool▁sep｜>python\n```json\n" + JSON_ARGS + "\n```"  # noqa: RUF001
               if family == "deepseek_r1" else "python<｜tool▁sep｜>" + JSON_ARGS)  # noqa: RUF001
        calls = "".join(f"<｜tool▁call▁begin｜>{one}<｜tool▁call▁end｜>" for _ in range(3))  # noqa: RUF001
        return "Let me run it.</think>Running.<｜tool▁calls▁begin｜>" + calls + (  # noqa: RUF001
            "<｜tool▁calls▁end｜>"), True  # noqa: RUF001
    if family == "deepseek_v3_2":
        d = "｜DSML｜"  # noqa: RUF001
        call = (f'<{d}invoke name="python">\n<{d}parameter name="code" string="true">' + CODE
                + f"</{d}parameter>\n</{d}invoke>\n")
        return (f"Let me run it.</think>Running.\n<{d}function_calls>\n" + call * 3
                + f"</{d}function_calls>", True)
    if family == "kimi_k2":
        calls = "".join(f"<|tool_call_begin|>functions.python:{i}<|tool_call_argument_begin|>"
                        + JSON_ARGS + "<|tool_call_end|>" for i in range(3))
        return think + "<|tool_calls_section_begin|>" + calls + "<|tool_calls_section_end|>", False
    if family == "mistral":
        return "[THINK]Let me run it.[/THINK]Running." + (
            "[TOOL_CALLS]python[ARGS]" + JSON_ARGS) * 3, False
    if family == "llama3":
        return '{"name": "python", "parameters": ' + JSON_ARGS + "}", False
    if family == "harmony":
        return ("<|channel|>analysis<|message|>Let me run it.<|end|><|start|>assistant"
                "<|channel|>commentary to=functions.python <|constrain|>json<|message|>"
                + JSON_ARGS), False
    raise ValueError(family)


def pieces(text: str) -> list[str]:
    return [text[i:i + 4] for i in range(0, len(text), 4)]


def run(family: str | None, chunks: list[str], in_reasoning: bool, turns: int) -> float:
    """Seconds for `turns` turns (family None: the baseline, no parser)."""
    t0 = time.perf_counter()
    for _ in range(turns):
        out = []
        if family is None:
            for c in chunks:
                out.append(c)
            continue
        p = FAMILIES[family].parser(tools=TOOLS, in_reasoning=in_reasoning, parse_tools=True)
        for c in chunks:
            out += p.feed(c)
        out += p.finish()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--turns", type=int, default=200)
    args = ap.parse_args()
    print(f"{'family':15} {'tokens':>7} {'calls':>5} {'us/token':>9} {'base us/tok':>11} "
          f"{'% core at 50 tok/s':>19}")
    for family in sorted(FAMILIES):
        text, in_reasoning = turn(family)
        chunks = pieces(text)
        p = FAMILIES[family].parser(tools=TOOLS, in_reasoning=in_reasoning, parse_tools=True)
        calls = sum(x.kind == "tool_call" for c in chunks for x in p.feed(c))
        calls += sum(x.kind == "tool_call" for x in p.finish())
        base = run(None, chunks, in_reasoning, args.turns)
        took = run(family, chunks, in_reasoning, args.turns)
        us = took / (args.turns * len(chunks)) * 1e6
        base_us = base / (args.turns * len(chunks)) * 1e6
        print(f"{family:15} {len(chunks):7d} {calls:5d} {us:9.2f} {base_us:11.3f} "
              f"{us * 50 / 1e4:19.3f}")


if __name__ == "__main__":
    main()
