"""The pieces of structured outputs and tool calls that need no model: schema bounds, the JSON state the
closing reserve reads, tool-call parsing, the streamed content filter and the tool prompt."""

from __future__ import annotations

import json

import pytest

from experts.backends.json_state import JsonStringState
from experts.backends.structured import _CLOSE_CONTAINERS, _CLOSE_STRING, _SEPARATOR, closing_reserve
from server.chat.structured import SAFE_INTEGER, bounded_integers
from server.chat.tools import CALL_OPEN, ContentFilter, prompt_messages, tool_use_for
from server.protocol import ChatMessage, NamedToolChoice, ToolDefinition

WEATHER = ToolDefinition.model_validate({"type": "function", "function": {
    "name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}})
TIME = ToolDefinition.model_validate({"type": "function", "function": {"name": "get_time"}})


def test_unbounded_integers_get_the_interoperable_range_and_bounded_ones_keep_theirs() -> None:
    schema = {"type": "object", "properties": {
        "a": {"type": "integer"}, "b": {"type": "integer", "minimum": 0},
        "c": {"type": ["integer", "null"], "exclusiveMaximum": 10},
        "d": {"type": "array", "items": {"type": "integer"}}, "e": {"type": "number"}}}
    bounded = bounded_integers(schema)["properties"]
    assert bounded["a"] == {"type": "integer", "minimum": -SAFE_INTEGER, "maximum": SAFE_INTEGER}
    assert bounded["b"] == {"type": "integer", "minimum": 0, "maximum": SAFE_INTEGER}
    assert bounded["c"] == {"type": ["integer", "null"], "exclusiveMaximum": 10, "minimum": -SAFE_INTEGER}
    assert bounded["d"]["items"]["maximum"] == SAFE_INTEGER
    assert bounded["e"] == {"type": "number"}
    assert schema["properties"]["a"] == {"type": "integer"}  # the caller's schema is not changed


@pytest.mark.parametrize(("text", "in_string", "depth"), [
    ('{"a": [1, {"b": "x', True, 3),
    ('{"a": "say \\"hi\\"', True, 1),  # escaped quotes stay inside the string
    ('{"a": "}]"', False, 1),  # brackets inside strings do not count
    ('{"a": [1]}', False, 0),
])
def test_json_state_follows_strings_escapes_and_nesting(text: str, in_string: bool, depth: int) -> None:
    state = JsonStringState()
    for piece in (text[:5], text[5:9], text[9:]):  # token boundaries anywhere
        state.push(piece)
    assert (state.in_string, state.depth) == (in_string, depth)


def test_only_tokens_that_close_and_open_nothing_count_as_closers() -> None:
    assert [bool(_CLOSE_STRING.fullmatch(t)) for t in ['"', '"}', '"]}', '", "', '"a']] == [True] * 3 + [False] * 2
    assert [bool(_CLOSE_CONTAINERS.fullmatch(t)) for t in ["}", "]}", "},", "}\n"]] == [True, True, False, False]
    assert [bool(_SEPARATOR.fullmatch(t)) for t in [",", ", ", ',"', ', "', ",]", ", a"]] == [True] * 4 + [False] * 2
    assert closing_reserve(256, 0) == 64 and closing_reserve(20, 3) == 11


def test_forced_calls_parse_from_the_json_array_and_a_cut_answer_is_content() -> None:
    use = tool_use_for([WEATHER, TIME], "required", parallel=True)
    assert use is not None and use.forced == ("get_weather", "get_time")
    content, calls = use.parse('[{"name": "get_weather", "arguments": {"city": "Paris"}}, {"name": "get_time", '
                               '"arguments": {}}]')
    assert content is None and [c.function.name for c in calls] == ["get_weather", "get_time"]
    assert json.loads(calls[0].function.arguments) == {"city": "Paris"} and calls[0].id != calls[1].id
    assert use.parse('[{"name": "get_weather", "argu') == ('[{"name": "get_weather", "argu', [])
    schema = json.loads(use.constraint().json_schema)
    assert schema["minItems"] == 1 and "maxItems" not in schema and len(schema["items"]["anyOf"]) == 2
    named = tool_use_for([WEATHER, TIME], NamedToolChoice.model_validate(
        {"type": "function", "function": {"name": "get_time"}}), parallel=False)
    schema = json.loads(named.constraint().json_schema)
    assert schema["maxItems"] == 1 and schema["items"]["properties"]["name"] == {"const": "get_time"}
    assert tool_use_for([WEATHER], "none", parallel=True) is None and tool_use_for(None, "auto", True) is None


def test_auto_calls_parse_from_hermes_tags_and_unknown_or_broken_calls_stay_text() -> None:
    use = tool_use_for([WEATHER], "auto", parallel=False)
    assert use is not None and use.constraint() is None
    text = f'Let me check.\n{CALL_OPEN}\n{{"name": "get_weather", "arguments": {{"city": "Oslo"}}}}\n</tool_call>' \
           f'{CALL_OPEN}{{"name": "get_weather", "arguments": {{}}}}</tool_call>'
    content, calls = use.parse(text)
    assert content == "Let me check." and len(calls) == 1  # parallel_tool_calls=false: the first only
    assert use.parse(f'{CALL_OPEN}{{"name": "launch", "arguments": {{}}}}</tool_call>')[1] == []
    assert use.parse(f"{CALL_OPEN} not json")[1] == []
    assert use.parse("Sunny, probably.") == ("Sunny, probably.", [])


def test_the_content_filter_holds_back_what_may_become_a_call() -> None:
    stream = ContentFilter()
    assert stream.feed("Hello <to") == "Hello "  # "<to" may start "<tool_call>"
    assert stream.feed("ol_c") == ""
    assert stream.feed('all>{"name"') == ""
    assert stream.calling and stream.held == '<tool_call>{"name"'
    plain = ContentFilter()
    assert plain.feed("a < b") + plain.feed(" and c") == "a < b and c" and not plain.calling


def test_prompt_messages_describe_tools_and_write_calls_and_results_as_text() -> None:
    messages = [ChatMessage(role="system", content="Be brief."), ChatMessage(role="user", content="Weather?"),
                ChatMessage.model_validate({"role": "assistant", "content": None, "tool_calls": [{
                    "id": "call_1", "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}]}),
                ChatMessage(role="tool", tool_call_id="call_1", content="12 C")]
    rendered = prompt_messages(messages, tool_use_for([WEATHER], "auto", parallel=True))
    assert rendered[0]["role"] == "system" and rendered[0]["content"].startswith("Be brief.")
    assert '"name":"get_weather"' in rendered[0]["content"] and "<tools>" in rendered[0]["content"]
    assert rendered[2] == {"role": "assistant", "content": f'{CALL_OPEN}\n{{"name": "get_weather", "arguments": '
                                                           f'{{"city": "Oslo"}}}}\n</tool_call>'}
    assert rendered[3] == {"role": "user", "content": "<tool_response>\n12 C\n</tool_response>"}
    assert prompt_messages(messages[1:2], None) == [{"role": "user", "content": "Weather?"}]


def test_the_shortest_instance_writes_every_required_key_with_its_least_value() -> None:
    from server.chat.schema_analysis import shortest_instance

    schema = {"type": "object", "required": ["name", "tags", "kind", "child", "maybe"],
              "properties": {"name": {"type": "string", "minLength": 2}, "tags": {"type": "array", "minItems": 2,
                                                                                  "items": {"type": "integer"}},
                             "kind": {"enum": ["long-one", "b"]}, "child": {"$ref": "#/$defs/Child"},
                             "maybe": {"anyOf": [{"type": "string", "minLength": 5}, {"type": "null"}]},
                             "optional": {"type": "string"}},
              "$defs": {"Child": {"type": "object", "required": ["ok"], "properties": {"ok": {"type": "boolean"}}}}}
    assert shortest_instance(schema) == '{"name":"aa","tags":[0,0],"kind":"b","child":{"ok":false},"maybe":null}'
    # recursion that can end: the least derivation, found once per subschema
    tree = {"$defs": {"n": {"anyOf": [{"type": "array", "minItems": 2, "items": {"$ref": "#/$defs/n"}},
                                      {"const": "leaf"}]}}, "$ref": "#/$defs/n"}
    assert shortest_instance(tree) == '"leaf"'
    node = {"$defs": {"n": {"type": "object", "required": ["v", "kids"], "properties": {
        "v": {"type": "integer"}, "kids": {"type": "array", "items": {"$ref": "#/$defs/n"}}}}}, "$ref": "#/$defs/n"}
    assert shortest_instance(node) == '{"v":0,"kids":[]}'


def test_schemas_whose_grammar_would_explode_are_refused() -> None:
    from server.chat.structured import MAX_SCHEMA_COUNT, schema_constraint
    from server.failures import InvalidRequest

    for schema in ({"type": "string", "minLength": 10**8}, {"type": "array", "items": {"maxItems": float("inf")}},
                   {"type": "object", "properties": {"a": {"type": "array", "minItems": MAX_SCHEMA_COUNT + 1}}}):
        with pytest.raises(InvalidRequest) as caught:
            schema_constraint(schema, "response_format")
        assert caught.value.code == "schema_too_large" and caught.value.param == "response_format"
    assert schema_constraint({"type": "string", "maxLength": MAX_SCHEMA_COUNT}, "x").shortest == '""'


def _refusal(schema: dict) -> tuple[int, str]:
    from server.chat.structured import schema_constraint
    from server.errors import to_api_error
    from server.failures import RequestFailure

    with pytest.raises(RequestFailure) as caught:
        schema_constraint(schema, "response_format")
    return to_api_error(caught.value).status, caught.value.code


def _nested_arrays(count: int, depth: int) -> dict:
    schema: dict = {"type": "integer"}
    for _ in range(depth):
        schema = {"type": "array", "minItems": count, "items": schema}
    return schema


def test_the_red_team_schemas_are_refused_at_once() -> None:
    """Each once hung the engine, held the event loop for seconds, or answered 500 (issue 30's findings)."""
    poison = {"$defs": {"a": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"}
    assert _refusal(poison) == (400, "invalid_schema")  # no finite instance: its grammar allows no token
    for k in (2, 7, 12):  # recursive anyOf: k^8 work before, one pass over k options now
        assert _refusal({"$defs": {"a": {"anyOf": [{"$ref": "#/$defs/a"}] * k}}, "$ref": "#/$defs/a"}) == \
            (400, "invalid_schema")
    assert _refusal(_nested_arrays(512, 3)) == (400, "schema_too_large")  # 134 million items, never built
    for bad in ("50000000", "3", True, 2.5, -1):  # counts that are not non-negative integers
        assert _refusal({"type": "array", "minItems": bad}) == (400, "invalid_schema"), bad
    deep: dict = {"type": "object"}
    for _ in range(250):
        deep = {"type": "object", "required": ["a"], "properties": {"a": deep}}
    assert _refusal(deep) == (400, "schema_too_large")  # was a RecursionError, a 500


def test_counts_are_read_only_where_they_are_keywords() -> None:
    """A property named like a count keyword, or a const holding one, is not a count."""
    from server.chat.structured import schema_constraint

    schema = {"type": "object", "required": ["minItems"], "properties": {"minItems": {"type": "string"}},
              "$defs": {"maxLength": {"const": {"minLength": "many"}}}}
    assert schema_constraint(schema, "x").shortest == '{"minItems":""}'


def test_integral_float_counts_are_counts() -> None:
    from server.chat.structured import schema_constraint

    assert schema_constraint({"type": "array", "minItems": 2.0, "items": {"type": "boolean"}}, "x").shortest == \
        "[false,false]"


def test_the_closing_distance_is_measured_from_where_the_output_stands() -> None:
    """A forced tool call's shortest instance is about 50 characters: reserving all of it from the first
    token closed the argument at once at max_tokens 60. Measured from the output, the reserve shrinks as the
    forced part is written, and a value's own characters never count as progress."""
    from experts.backends.json_state import JsonStringState

    shortest = '[{"name":"get_weather","arguments":{"city":""}}]'
    state = JsonStringState(shortest)
    assert state.remaining == len(shortest)
    state.push('[{"name":"get_weather","arguments":{"city":"')
    assert state.remaining == 4  # `"}}]`
    state.push('Paris \\"}}] x')  # free content, even a quote and brackets inside the string, is not progress
    assert state.remaining == 4 and state.in_string
    state.push('"}}]')
    assert state.remaining == 0 and state.depth == 0
    assert closing_reserve(60, 3, 4) == 18 and closing_reserve(60, 0, 40) == 40
    two = JsonStringState('{"city":"","unit":""}')
    two.push('{"city":"Paris","unit":"')
    assert two.remaining == 2  # `"}`: the second key's forced text counted as written


def test_forced_calls_stream_name_first_then_arguments_piece_by_piece() -> None:
    from server.chat.tools import CallStream

    answer = '[{"name": "get_weather", "arguments": {"city": "Pa\\"ris", "n": [1, {"x": 2}]}}, ' \
             '{"name":"get_time", "arguments":{}}]'
    stream, deltas = CallStream(), []
    for at in range(0, len(answer), 3):  # arbitrary token boundaries (one falls after `"arguments":`)
        deltas += stream.feed(answer[at:at + 3])
    opened = [d for d in deltas if d.id is not None]
    assert [(d.index, d.function.name, d.function.arguments) for d in opened] == [(0, "get_weather", ""),
                                                                                 (1, "get_time", "")]
    arguments = {i: "".join(d.function.arguments for d in deltas if d.index == i and d.id is None) for i in (0, 1)}
    assert json.loads(arguments[0]) == {"city": 'Pa"ris', "n": [1, {"x": 2}]} and arguments[1] == "{}"
    assert sum(d.id is None for d in deltas if d.index == 0) > 3  # in pieces, as they were written
    split = CallStream()
    pieces = [split.feed('[{"name": "f", "arguments":'), split.feed(' {"a"'), split.feed(': 1}}]')]
    assert "".join(d.function.arguments for batch in pieces for d in batch) == '{"a": 1}'


def test_a_value_closed_on_the_last_token_of_the_budget_is_a_complete_answer() -> None:
    from experts.backends.base import OutputConstraint, constrained_finish

    constraint = OutputConstraint.any_object()
    assert constrained_finish("length", '{"item": "pizza", "quantity": 3}', constraint) == "stop"
    assert constrained_finish("length", '{"item": "pizza", "quan', constraint) == "length"
    assert constrained_finish("length", '{"a": 1}', None) == "length"  # free text: cut is cut
    assert constrained_finish("stop", "", constraint) == "stop"


def test_a_value_that_must_come_in_the_last_tokens_is_one_token_not_another_object() -> None:
    """JSON mode lets a value be another object, and `{"` opens one and its first key in one token: sampled
    answers on vLLM once ran out as `{"":{"":{"":{""` at max_tokens 40, since where a value must come no
    closer is allowed. With the budget down to the open containers, a one-token value wins there."""
    from pathlib import Path

    import torch
    from transformers import AutoTokenizer

    from experts.backends.base import OutputConstraint
    from experts.backends.structured import GrammarCompiler, TokenMask
    from experts.models import EMBEDDED_BASE, resolve_base_model

    tokenizer = AutoTokenizer.from_pretrained(resolve_base_model(EMBEDDED_BASE, Path.home() / ".cache" /
                                                                 "switchyard" / "models"))
    vocab = len(tokenizer)
    compiler = GrammarCompiler(tokenizer, vocab, {tokenizer.eos_token_id})
    constraint = OutputConstraint.any_object()
    nest = tokenizer.convert_tokens_to_ids('{"')
    for prefix in ('{"a": ', '{"a": {"b": ', '{"": {"": {"": '):  # the grammar's separator is ": "
        for budget in (2, 4, 6):  # each at most the open containers, what is left of "{}", and the margin
            mask = TokenMask(compiler.compile(constraint), compiler, constraint.shortest)
            for token in tokenizer.encode(prefix):
                mask.accept(token)
            logits = torch.zeros(vocab)
            logits[nest] = 20.0  # the model wants to go deeper
            mask.apply(logits, budget, 40)
            chosen = tokenizer.convert_ids_to_tokens(int(logits.argmax()))
            assert chosen in ('""', "0", "1", "null", "true", "false") or chosen[0].isdigit(), (prefix, budget, chosen)
