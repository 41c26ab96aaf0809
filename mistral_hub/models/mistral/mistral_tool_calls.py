"""Mistral function calling: reading the tool calls of a generated reply.

An instruct model that decides to call tools answers with the
`[TOOL_CALLS]` control token followed by a JSON list of
`{"name": ..., "arguments": {...}}` objects (the format
`mistral_chat_template` encodes for the v3, v7 and Tekken conventions).
`parse_reply()` turns generated ids into an OpenAI-style assistant message
whose `tool_calls` can be executed and sent back in the conversation.
"""

import json
import re
import secrets
import string
from collections.abc import Mapping

TOOL_CALLS_TOKEN = "[TOOL_CALLS]"
_ID_ALPHABET = string.ascii_letters + string.digits
_ID = re.compile(r"^[a-zA-Z0-9]{9}$")


def is_tool_call_id(value):
    """Whether `value` is a Mistral tool call id (9 of a-z, A-Z, 0-9)."""
    return isinstance(value, str) and _ID.match(value) is not None


def new_tool_call_id():
    """A random tool call id: 9 characters among a-z, A-Z and 0-9.

    The format mistral-common requires of the ids in a conversation.
    """
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(9))


def tool_calls_token_id(tokenizer):
    """The id of `[TOOL_CALLS]` in a Mistral tokenizer, or None."""
    return tokenizer._control_token_id(TOOL_CALLS_TOKEN)


def parse_tool_calls(text):
    """Parses the JSON a model wrote after `[TOOL_CALLS]`.

    Args:
        text: a JSON list of `{"name": str, "arguments": dict | str,
            "id": str (optional)}` objects, or one such object.

    Returns:
        A list of OpenAI-style tool calls `{"id": ..., "type": "function",
        "function": {"name": ..., "arguments": <JSON string>}}`; calls
        without a valid id get a new one.

    Raises:
        ValueError: if `text` is not valid JSON or not in that format.

    Example:
    >>> calls = parse_tool_calls('[{"name": "f", "arguments": {"x": 1}}]')
    >>> calls[0]["function"]
    {'name': 'f', 'arguments': '{"x": 1}'}
    """
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(
            f"The tool calls the model wrote after {TOOL_CALLS_TOKEN} are not "
            f"valid JSON ({error.msg} at character {error.pos}): {text!r}"
        ) from None
    if isinstance(value, Mapping):
        value = [value]
    if not isinstance(value, list) or not value:
        raise ValueError(
            f"The model wrote {text!r} after {TOOL_CALLS_TOKEN}; expected a "
            'JSON list of {"name": ..., "arguments": {...}} objects.'
        )
    calls = []
    for call in value:
        if not isinstance(call, Mapping) or not isinstance(call.get("name"), str):
            raise ValueError(
                f"The model wrote the tool call {call!r} after "
                f'{TOOL_CALLS_TOKEN}; expected {{"name": ..., "arguments": '
                "{...}}."
            )
        arguments = call.get("arguments", {})
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments)
            except json.JSONDecodeError:
                raise ValueError(
                    f"The arguments of the tool call to {call['name']!r} are "
                    f"not valid JSON: {arguments!r}"
                ) from None
        call_id = call.get("id")
        if not is_tool_call_id(call_id):
            call_id = new_tool_call_id()
        calls.append(
            {
                "id": call_id,
                "type": "function",
                "function": {
                    "name": call["name"],
                    "arguments": json.dumps(arguments, ensure_ascii=False),
                },
            }
        )
    return calls


def parse_reply(tokenizer, token_ids):
    """Splits generated ids into the reply text and its tool calls.

    Args:
        tokenizer: a `MistralTokenizer` or `MistralTekkenTokenizer`.
        token_ids: the generated ids (without the prompt); ids after the
            first end token are ignored.

    Returns:
        `{"role": "assistant", "content": str or None, "tool_calls": list
        or None}`: the text before `[TOOL_CALLS]` (None if blank) and the
        parsed calls after it (None without `[TOOL_CALLS]`).

    Raises:
        ValueError: if the tool calls are malformed (see
            `parse_tool_calls`).
    """
    ids = [int(i) for i in token_ids]
    if tokenizer.end_token_id in ids:
        ids = ids[: ids.index(tokenizer.end_token_id)]
    marker = tool_calls_token_id(tokenizer)
    if marker is None or marker not in ids:
        return {"role": "assistant", "content": _decode(tokenizer, ids), "tool_calls": None}
    split = ids.index(marker)
    content = _decode(tokenizer, ids[:split])
    return {
        "role": "assistant",
        "content": content if content.strip() else None,
        "tool_calls": parse_tool_calls(_decode(tokenizer, ids[split + 1 :])),
    }


def _decode(tokenizer, ids):
    return tokenizer.detokenize([ids])[0] if ids else ""
