"""The output parser: reasoning, content and tool calls out of a token stream."""

from __future__ import annotations

from cortex.neuron.outputs import OutputParser


def test_output_parser_handles_markers_split_across_chunks():
    p = OutputParser(parse_tools=True)
    text = ('<thi', 'nk>plan</th', 'ink>\n\nHi <tool', '_call>{"name": "f", "arguments": ',
            '{"a": 1}}</tool_call>')
    parts = [part for chunk in text for part in p.feed(chunk)] + p.finish()
    kinds = [(x.kind, x.text or x.name) for x in parts]
    assert kinds == [("reasoning", "plan"), ("content", "Hi "), ("tool_call", "f")]
    assert parts[-1].arguments == '{"a": 1}'


def test_output_parser_keeps_invalid_tool_calls_as_text():
    p = OutputParser(parse_tools=True)
    parts = p.feed("<tool_call>not json</tool_call>") + p.finish()
    assert [x.kind for x in parts] == ["content"]
    assert parts[0].text == "<tool_call>not json</tool_call>"
    p = OutputParser(parse_tools=True)
    parts = p.feed("<tool_call>{\"name\": ") + p.finish()  # cut off by max_tokens
    assert parts[0].kind == "content" and parts[0].text.startswith("<tool_call>")


def test_output_parser_starts_in_reasoning_when_template_opened_think():
    p = OutputParser(in_reasoning=True)
    parts = p.feed("hmm</think>Yes") + p.finish()
    assert [(x.kind, x.text) for x in parts] == [("reasoning", "hmm"), ("content", "Yes")]
