"""Function calling: tools in the chat templates, tool-call parsing, chat()."""

import functools
import json
import re

import pytest

from mistral_hub.models.mistral import mistral_tool_calls
from mistral_hub.models.mistral.mistral_tekken_tokenizer import (
    MistralTekkenTokenizer,
)
from mistral_hub.models.mistral.mistral_tokenizer import MistralTokenizer
from tests.models.mistral import tool_calling_helpers as helpers
from tests.models.mistral.test_chat_template import FILES
from tests.models.mistral.test_chat_template import assistant
from tests.models.mistral.test_chat_template import system
from tests.models.mistral.test_chat_template import user
from tests.test_data import TEKKEN_240911_MODEL
from tests.test_data import TEKKEN_MODEL
from tests.test_data import V1_MODEL
from tests.test_data import V3_MODEL
from tests.test_data import V7_MODEL

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "City name"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city"],
        },
        "strict": True,
    },
}
# No description nor parameters (mistral-common fills in "" and {}).
BARE = {"type": "function", "function": {"name": "list-files_2"}}


def call(call_id, name="get_weather", arguments='{"city": "Paris"}'):
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def calls(*tool_calls, content=None):
    return {"role": "assistant", "content": content, "tool_calls": list(tool_calls)}


def result(call_id, content):
    return {"role": "tool", "tool_call_id": call_id, "name": "get_weather", "content": content}


# Conversations with tools that must encode exactly like mistral-common.
TOOL_CONVERSATIONS = {
    "tools_listed": ([system("Be brief."), user("Weather in Paris?")], [WEATHER, BARE]),
    "call_and_result": (
        [
            system("Be brief."),
            user("Weather in Paris?"),
            calls(call("abcdefghi")),
            result("abcdefghi", '{"temperature": 21, "sky": "clear"}'),
        ],
        [WEATHER],
    ),
    "two_calls_two_results": (
        [
            user("Paris and Tōkyō?"),
            calls(
                call("abcdefghi"),
                call("ABC123xyz", arguments={"city": "Tōkyō", "unit": "celsius"}),
            ),
            result("abcdefghi", "21"),
            result("ABC123xyz", "rainy, 18 °C"),
        ],
        [WEATHER],
    ),
    "history_then_new_question": (
        [
            user("Weather in Paris?"),
            calls(call("abcdefghi")),
            result("abcdefghi", ""),
            assistant("It is 21 degrees."),
            user("And in Rome?"),
        ],
        [WEATHER, BARE],
    ),
    "empty_and_odd_arguments": (
        [
            user("List the files."),
            calls(call("zzzzzzzz1", name="list-files_2", arguments="")),
            result("zzzzzzzz1", '["a.txt", "b.txt"]'),
            calls(call("zzzzzzzz2", name="list-files_2", arguments="not json")),
            result("zzzzzzzz2", "[INST] not a control token"),
        ],
        [BARE],
    ),
    "tool_calls_without_tools": (
        [user("Weather?"), calls(call("abcdefghi")), result("abcdefghi", "{}")],
        None,
    ),
}
CONVENTIONS = ["v3", "v7", "tekken", "tekken_240911"]


@pytest.fixture(scope="module")
def ours():
    return {
        "v1": MistralTokenizer(V1_MODEL),
        "v3": MistralTokenizer(V3_MODEL),
        "v7": MistralTokenizer(V7_MODEL),
        "tekken": MistralTekkenTokenizer(TEKKEN_MODEL),
        "tekken_240911": MistralTekkenTokenizer(TEKKEN_240911_MODEL),
    }


@pytest.fixture(scope="module")
def mistral_common():
    """`encode(convention, messages, tools, training)` with mistral-common."""
    mistral = pytest.importorskip("mistral_common.tokens.tokenizers.mistral")
    from mistral_common.protocol.instruct.request import ChatCompletionRequest
    from mistral_common.protocol.instruct.validator import ValidationMode

    @functools.lru_cache(maxsize=None)
    def load(name, mode):
        return mistral.MistralTokenizer.from_file(FILES[name], mode=mode)

    def encode(name, messages, tools=None, training=False):
        mode = ValidationMode.finetuning if training else ValidationMode.test
        tokenizer = load(name, mode)
        request = ChatCompletionRequest.from_openai(messages, tools=tools)
        return tokenizer.encode_chat_completion(request)

    return encode


# --- encoding: parity with mistral-common -----------------------------------


@pytest.mark.parametrize("conversation", list(TOOL_CONVERSATIONS))
@pytest.mark.parametrize("convention", CONVENTIONS)
def test_tools_match_mistral_common(ours, mistral_common, convention, conversation):
    messages, tools = TOOL_CONVERSATIONS[conversation]
    expected = mistral_common(convention, messages, tools).tokens
    assert ours[convention].apply_chat_template(messages, tools=tools) == expected


@pytest.mark.parametrize("convention", CONVENTIONS)
def test_tool_call_training_example_matches_mistral_common(ours, mistral_common, convention):
    messages = [user("Weather in Paris?"), calls(call("abcdefghi"), call("bcdefghij"))]
    expected = mistral_common(convention, messages, [WEATHER], training=True).tokens
    ids = ours[convention].apply_chat_template(
        messages, tools=[WEATHER], add_generation_prompt=False
    )
    assert ids == expected
    assert ids[-1] == 2


def test_v7_content_and_tool_calls_match_mistral_common(ours, mistral_common):
    messages = [
        user("Weather?"),
        calls(call("abcdefghi"), content="Let me check."),
        result("abcdefghi", "21"),
    ]
    expected = mistral_common("v7", messages, [WEATHER]).tokens
    assert ours["v7"].apply_chat_template(messages, tools=[WEATHER]) == expected


@pytest.mark.parametrize("convention", ["v3", "v7", "tekken"])
def test_prompt_string_matches_mistral_common_text(ours, mistral_common, convention):
    messages, tools = TOOL_CONVERSATIONS["call_and_result"]
    expected = mistral_common(convention, messages, tools).text
    expected = expected.replace("\u2581", " ").replace("<0x0A>", "\n")
    assert ours[convention].apply_chat_template(messages, tools=tools, tokenize=False) == expected


def test_tool_formats(ours):
    messages, tools = TOOL_CONVERSATIONS["call_and_result"]
    prompt = ours["tekken"].apply_chat_template(messages, tools=tools, tokenize=False)
    assert prompt.startswith(
        '<s>[AVAILABLE_TOOLS][{"type": "function", "function": {"name": "get_weather"'
    )
    assert '"strict"' not in prompt
    assert "[/AVAILABLE_TOOLS][INST]Be brief.\n\nWeather in Paris?[/INST]" in prompt
    assert prompt.endswith(
        '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}, '
        '"id": "abcdefghi"}]</s>[TOOL_RESULTS]{"content": {"temperature": 21, '
        '"sky": "clear"}, "call_id": "abcdefghi"}[/TOOL_RESULTS]'
    )
    v7 = ours["v7"].apply_chat_template(messages, tools=tools, tokenize=False)
    assert v7.endswith(
        "[TOOL_RESULTS] abcdefghi[TOOL_CONTENT] " + messages[-1]["content"] + "[/TOOL_RESULTS]"
    )


def test_empty_tool_list_is_no_tools(ours):
    messages = [user("Hi")]
    assert ours["v3"].apply_chat_template(messages, tools=[]) == ours["v3"].apply_chat_template(
        messages
    )
    assert ours["v1"].apply_chat_template(messages, tools=[]) == ours["v1"].apply_chat_template(
        messages
    )


# --- encoding: errors --------------------------------------------------------


@pytest.mark.parametrize(
    "messages, tools, match",
    [
        ([user("Hi")], "get_weather", "`tools` must be a list"),
        ([user("Hi")], [{"name": "get_weather"}], r"`tools\[0\]` must be a dict with a 'function'"),
        ([user("Hi")], [{"type": "retrieval", "function": {"name": "f"}}], "only 'function' tools"),
        ([user("Hi")], [{"function": {"name": "get weather"}}], "function name must be 1 to 64"),
        (
            [user("Hi")],
            [{"function": {"name": "f", "parameters": "{}"}}],
            "parameters must be a JSON schema",
        ),
        ([user("Hi"), calls(call("short"))], None, r"tool_calls\[0\] id must be 9 characters"),
        ([user("Hi"), calls({"id": "abcdefghi"})], None, "a 'function' dict"),
        (
            [user("Hi"), calls(call("abcdefghi", arguments=3))],
            None,
            "arguments must be a JSON string or a dict",
        ),
        (
            [user("Hi"), calls(call("abcdefghi")), user("?")],
            None,
            r"1 tool call\(s\) have no tool message",
        ),
        (
            [user("Hi"), result("abcdefghi", "x")],
            None,
            "a tool message must follow an assistant message",
        ),
        (
            [user("Hi"), calls(call("abcdefghi")), result("bbbbbbbbb", "x")],
            None,
            r"tool_call_id must be the id of a tool call.*'bbbbbbbbb'",
        ),
        (
            [
                user("Hi"),
                calls(call("abcdefghi")),
                result("abcdefghi", "x"),
                result("abcdefghi", "y"),
            ],
            None,
            "tool_call_id must be the id",
        ),
        (
            [user("Hi"), calls(call("abcdefghi")), user("?"), assistant("Done"), user("?")],
            None,
            "have no tool message with their result",
        ),
        (
            [user("Hi"), calls(call("abcdefghi"), content="Sure."), result("abcdefghi", "x")],
            None,
            "both content and tool_calls",
        ),
        ([user("Hi"), {"role": "tool", "content": "x"}], None, "a tool message must follow"),
        ([user("Hi"), {"role": "assistant", "tool_calls": []}], None, "keys 'role' and 'content'"),
    ],
)
def test_malformed_tool_conversations_raise(ours, messages, tools, match):
    with pytest.raises(ValueError, match=match):
        ours["v3"].apply_chat_template(messages, tools=tools)


@pytest.mark.parametrize(
    "messages, tools",
    [
        ([user("Hi")], [WEATHER]),
        ([user("Hi"), calls(call("abcdefghi")), result("abcdefghi", "x")], None),
    ],
    ids=["tools", "tool_messages"],
)
def test_v1_has_no_function_calling(ours, messages, tools):
    with pytest.raises(ValueError, match='chat_template="v1" has no function calling'):
        ours["v1"].apply_chat_template(messages, tools=tools)


# --- parsing replies ----------------------------------------------------------


def test_parse_tool_calls_formats():
    parsed = mistral_tool_calls.parse_tool_calls(
        '[{"name": "f", "arguments": {"x": "é"}, "id": "abcdefghi"},'
        ' {"name": "g", "arguments": "{\\"y\\": [1, 2]}"}, {"name": "h"}]'
    )
    assert parsed[0] == {
        "id": "abcdefghi",
        "type": "function",
        "function": {"name": "f", "arguments": '{"x": "é"}'},
    }
    assert json.loads(parsed[1]["function"]["arguments"]) == {"y": [1, 2]}
    assert parsed[2]["function"]["arguments"] == "{}"
    for generated in parsed[1:]:
        assert re.fullmatch("[a-zA-Z0-9]{9}", generated["id"])
    assert parsed[1]["id"] != parsed[2]["id"]
    single = mistral_tool_calls.parse_tool_calls('{"name": "f", "arguments": {}, "id": "bad id"}')
    assert single[0]["function"]["name"] == "f" and single[0]["id"] != "bad id"


@pytest.mark.parametrize(
    "text, match",
    [
        ('[{"name": "f", "arguments": {"x": 1}', "not valid JSON .*at character"),
        ("[]", "expected a JSON list"),
        ('"f"', "expected a JSON list"),
        ('[{"arguments": {}}]', 'expected {"name"'),
        (
            '[{"name": "f", "arguments": "{oops"}]',
            "arguments of the tool call to 'f' are not valid JSON",
        ),
    ],
)
def test_parse_tool_calls_errors(text, match):
    with pytest.raises(ValueError, match=match):
        mistral_tool_calls.parse_tool_calls(text)


@pytest.mark.parametrize("convention", ["v3", "v7", "tekken"])
def test_parse_reply_reads_what_mistral_common_encodes(ours, mistral_common, convention):
    # The tokens mistral-common writes for an assistant tool call turn are
    # what a model trained on them generates.
    prompt = mistral_common(convention, [user("Weather?")], [WEATHER]).tokens
    turn = [
        user("Weather?"),
        calls(call("abcdefghi"), call("bcdefghij", arguments={"city": "Nice"})),
    ]
    full = mistral_common(convention, turn, [WEATHER], training=True).tokens
    reply = ours[convention].parse_reply(full[len(prompt) :])
    assert reply["content"] is None
    assert [c["id"] for c in reply["tool_calls"]] == ["abcdefghi", "bcdefghij"]
    assert [json.loads(c["function"]["arguments"]) for c in reply["tool_calls"]] == [
        {"city": "Paris"},
        {"city": "Nice"},
    ]
    # Fed back, the parsed reply encodes to the same tokens.
    again = ours[convention].apply_chat_template(
        [user("Weather?"), reply], tools=[WEATHER], add_generation_prompt=False
    )
    assert again == full


def test_parse_reply_text_and_v7_content_before_calls(ours):
    tokenizer = ours["v7"]
    text_ids = tokenizer.tokenize("Hello there") + [tokenizer.end_token_id]
    assert tokenizer.parse_reply(text_ids) == {
        "role": "assistant",
        "content": "Hello there",
        "tool_calls": None,
    }
    marker = mistral_tool_calls.tool_calls_token_id(tokenizer)
    ids = (
        tokenizer.tokenize("Checking.")
        + [marker]
        + tokenizer.tokenize('[{"name": "f", "arguments": {}}]')
    )
    reply = tokenizer.parse_reply(ids)
    assert reply["content"] == "Checking." and reply["tool_calls"][0]["function"]["name"] == "f"
    with pytest.raises(ValueError, match="not valid JSON"):
        tokenizer.parse_reply([marker] + tokenizer.tokenize('[{"name": "f", '))


# --- chat() with a model that calls tools -----------------------------------


@pytest.fixture(scope="module")
def tool_lm():
    return helpers.tool_calling_causal_lm()


def test_chat_returns_tool_calls_then_the_answer(tool_lm):
    reply = tool_lm.chat(helpers.WEATHER_QUESTION, tools=helpers.TOOLS, max_new_tokens=48)
    assert reply["role"] == "assistant" and reply["content"] is None
    (tool_call,) = reply["tool_calls"]
    assert tool_call["id"] == helpers.CALL_ID and tool_call["type"] == "function"
    assert tool_call["function"]["name"] == "get_weather"
    assert json.loads(tool_call["function"]["arguments"]) == {"city": "Paris"}

    # The reply goes back into the conversation as it is, with the result.
    conversation = helpers.WEATHER_QUESTION + [reply, helpers.TOOL_RESULT]
    answer = tool_lm.chat(conversation, tools=helpers.TOOLS, max_new_tokens=48)
    assert answer == {"role": "assistant", "content": helpers.ANSWER, "tool_calls": None}
    # Several conversations at once; without tools the reply is text.
    both = tool_lm.chat(
        [helpers.WEATHER_QUESTION, conversation], tools=helpers.TOOLS, max_new_tokens=48
    )
    assert both == [reply, answer]
    assert tool_lm.chat(conversation, max_new_tokens=48) == helpers.ANSWER


def test_chat_reports_malformed_tool_calls(tool_lm):
    # Cut after a few tokens, the JSON of the call is incomplete.
    with pytest.raises(ValueError, match=r"after \[TOOL_CALLS\] are not valid JSON"):
        tool_lm.chat(helpers.WEATHER_QUESTION, tools=helpers.TOOLS, max_new_tokens=6)


def test_chat_tools_need_a_tool_convention(tool_lm):
    with pytest.raises(ValueError, match="`tools` must be a list"):
        tool_lm.chat(helpers.WEATHER_QUESTION, tools={"name": "get_weather"})
