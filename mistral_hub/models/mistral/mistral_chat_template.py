"""Mistral chat formats: turn a conversation into prompt token ids.

The ground truth is `mistral_common`'s `encode_chat_completion`, which the
tests compare against token for token. Control tokens (`<s>`, `[INST]`,
...) are inserted as ids, never produced from text, so user text that
spells `"[INST]"` stays plain text.

Conventions:
- `"v1"` (Mistral 7B v0.1/v0.2, Mixtral 8x7B): `[INST]`/`[/INST]` are plain
  text around each user turn; the system prompt is prepended to the FIRST
  user turn, followed by a blank line.
- `"v3"` (Mistral 7B v0.3 and other v2/v3 vocabularies): `[INST]`/`[/INST]`
  are control tokens; the system prompt is prepended to the LAST user turn;
  assistant turns lose trailing spaces.
- `"v7"`: like `"v3"`, but each system message is its own
  `[SYSTEM_PROMPT]...[/SYSTEM_PROMPT]` block at the start.
- `"tekken"`: the `"v3"` layout, as used with Tekken vocabularies whose file
  declares version v2/v3 (Mistral NeMo, Pixtral).

Every assistant turn ends with `</s>`; there is one `<s>`, at the start.

Function calling (`"v3"`, `"v7"`, `"tekken"`; messages and tools in the
OpenAI format): the tool definitions are a JSON list between
`[AVAILABLE_TOOLS]` and `[/AVAILABLE_TOOLS]` right before the last user
turn; an assistant's tool calls are `[TOOL_CALLS]` and a JSON list of
`{"name", "arguments", "id"}`, closed with `</s>`; a tool result is
`[TOOL_RESULTS]{"content": ..., "call_id": ...}[/TOOL_RESULTS]`, or in
`"v7"` `[TOOL_RESULTS]id[TOOL_CONTENT]content[/TOOL_RESULTS]`.
"""

import json
import re
from collections.abc import Mapping

from mistral_hub.models.mistral.mistral_tool_calls import is_tool_call_id
from mistral_hub.tokenizers.tokenizer import check_text

CHAT_TEMPLATES = ("v1", "v3", "v7", "tekken")
_ROLES = ("system", "user", "assistant", "tool")
# mistral-common's rule for function names.
_FUNCTION_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


def check_chat_template(chat_template):
    """Returns `chat_template` if it is None or a known convention name."""
    if chat_template is not None and chat_template not in CHAT_TEMPLATES:
        raise ValueError(
            f"`chat_template` must be None or one of {list(CHAT_TEMPLATES)}. "
            f"Received: chat_template={chat_template!r}"
        )
    return chat_template


def infer_chat_template(has_control_token):
    """Picks the convention from the control tokens a vocabulary has."""
    if has_control_token("[SYSTEM_PROMPT]"):
        return "v7"
    if has_control_token("[INST]"):
        return "v3"
    return "v1"


def _parse_json_or_text(text):
    """mistral-common's reading of tool arguments and results: the JSON
    value when `text` is JSON, else the text itself; empty means `{}`."""
    if not text:
        return {}
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _check_function_name(where, name):
    if not isinstance(name, str) or not _FUNCTION_NAME.match(name):
        raise ValueError(
            f"{where} function name must be 1 to 64 characters among a-z, "
            f"A-Z, 0-9, '_' and '-'. Received: {name!r}"
        )
    return name


def _normalize_tools(tools):
    """Checks OpenAI-style tool definitions; returns them as mistral-common
    serializes them (`type`, then `name`, `description`, `parameters`)."""
    if tools is None:
        return None
    if not isinstance(tools, (list, tuple)):
        raise ValueError(
            "`tools` must be a list of OpenAI-style tool dicts "
            "(`{'type': 'function', 'function': {'name': ..., "
            f"'description': ..., 'parameters': {{...}}}}}}`). Received: {tools!r}"
        )
    normalized = []
    for index, tool in enumerate(tools):
        where = f"`tools[{index}]`"
        if not isinstance(tool, Mapping) or not isinstance(tool.get("function"), Mapping):
            raise ValueError(
                f"{where} must be a dict with a 'function' dict (OpenAI tool "
                f"format). Received: {tool!r}"
            )
        if tool.get("type", "function") != "function":
            raise ValueError(
                f"{where} has type {tool.get('type')!r}; only 'function' tools "
                "are supported."
            )
        function = tool["function"]
        name = _check_function_name(where, function.get("name"))
        description = function.get("description")
        description = "" if description is None else description
        parameters = function.get("parameters")
        parameters = {} if parameters is None else parameters
        if not isinstance(description, str):
            raise ValueError(
                f"{where} function description must be a str. Received: "
                f"{description!r}"
            )
        if not isinstance(parameters, Mapping):
            raise ValueError(
                f"{where} function parameters must be a JSON schema dict. "
                f"Received: {parameters!r}"
            )
        normalized.append(
            {
                "type": "function",
                "function": {
                    "name": name,
                    "description": description,
                    "parameters": dict(parameters),
                },
            }
        )
    return normalized


def _normalize_tool_calls(where, tool_calls):
    """OpenAI-style `tool_calls` -> list of `(name, arguments, id)`."""
    if not isinstance(tool_calls, (list, tuple)):
        raise ValueError(
            f"{where} tool_calls must be a list of OpenAI-style tool calls. "
            f"Received: {tool_calls!r}"
        )
    calls = []
    for index, call in enumerate(tool_calls):
        call_where = f"{where} tool_calls[{index}]"
        function = call.get("function") if isinstance(call, Mapping) else None
        if not isinstance(function, Mapping):
            raise ValueError(
                f"{call_where} must be a dict with 'id' and a 'function' dict "
                f"with 'name' and 'arguments'. Received: {call!r}"
            )
        name = _check_function_name(call_where, function.get("name"))
        call_id = call.get("id")
        if not is_tool_call_id(call_id):
            raise ValueError(
                f"{call_where} id must be 9 characters among a-z, A-Z and 0-9 "
                f"(Mistral's tool call ids). Received: {call_id!r}"
            )
        arguments = function.get("arguments")
        if isinstance(arguments, Mapping):
            arguments = json.dumps(arguments)
        elif arguments is not None and not isinstance(arguments, str):
            raise ValueError(
                f"{call_where} arguments must be a JSON string or a dict. "
                f"Received: {arguments!r}"
            )
        calls.append((name, _parse_json_or_text(arguments), call_id))
    return calls


def _join(first, second):
    # mistral-common joins the texts of consecutive messages of one role
    # with a blank line, skipping empty ones.
    return "\n\n".join(text for text in (first, second) if text)


def _normalize(messages, add_generation_prompt):
    """Validates `messages`; returns `(system_prompts, turns)`.

    `turns` is a list of `("user", content)`, `("assistant", content,
    calls)` and `("tool", call_id, content)` tuples; `calls` is a list of
    `(name, arguments, id)`. Consecutive user messages, and consecutive
    assistant messages, are joined as mistral-common does; tool messages
    stay separate. Stricter than mistral-common, system messages must
    precede all other messages and a conversation needs a user message
    before any assistant message.
    """
    if not isinstance(messages, (list, tuple)) or not messages:
        raise ValueError(
            "`messages` must be a non-empty list of dicts with keys 'role' "
            f"and 'content'. Received: {messages!r}"
        )
    system_prompts, turns = [], []
    pending_ids = []  # Tool calls still waiting for their result.
    for index, message in enumerate(messages):
        where = f"`messages[{index}]`"
        if not isinstance(message, Mapping) or "role" not in message:
            raise ValueError(
                f"{where} must be a dict with keys 'role' and 'content'. "
                f"Received: {message!r}"
            )
        role = message["role"]
        if role not in _ROLES:
            raise ValueError(
                f"{where} has an unknown role; expected one of "
                f"{list(_ROLES)}. Received: role={role!r}"
            )
        has_calls = role == "assistant" and message.get("tool_calls")
        if "content" not in message and not has_calls:
            raise ValueError(
                f"{where} must be a dict with keys 'role' and 'content'. "
                f"Received: {message!r}"
            )
        content = message.get("content")
        if has_calls and content is None:
            content = ""
        if not isinstance(content, str):
            raise ValueError(
                f"{where} content must be a str. Received: "
                f"{type(content).__name__} {content!r}"
            )
        check_text(f"messages[{index}]['content']", content)
        previous = turns[-1][0] if turns else None
        if role == "system":
            if turns:
                raise ValueError(
                    f"{where}: system messages must come before all user, "
                    "assistant and tool messages."
                )
            system_prompts.append(content)
        elif role == "user":
            if previous == "user":
                turns[-1] = ("user", _join(turns[-1][1], content))
            else:
                turns.append(("user", content))
        elif role == "assistant":
            if not turns:
                raise ValueError(
                    f"{where}: the conversation must start with a user message "
                    "(after any system messages), not an assistant message."
                )
            if pending_ids and previous != "assistant":
                raise ValueError(
                    f"{where}: {len(pending_ids)} tool call(s) of the previous "
                    "assistant message have no tool message with their result."
                )
            calls = _normalize_tool_calls(where, message["tool_calls"]) if has_calls else []
            if not content and not calls:
                raise ValueError(f"{where}: assistant content must not be empty.")
            pending_ids += [call_id for _, _, call_id in calls]
            if previous == "assistant":
                _, earlier_content, earlier_calls = turns[-1]
                turns[-1] = ("assistant", _join(earlier_content, content), earlier_calls + calls)
            else:
                turns.append(("assistant", content, calls))
        else:
            call_id = message.get("tool_call_id")
            if previous not in ("assistant", "tool"):
                raise ValueError(
                    f"{where}: a tool message must follow an assistant message "
                    "with tool_calls (or another tool message)."
                )
            if call_id not in pending_ids:
                raise ValueError(
                    f"{where} tool_call_id must be the id of a tool call of the "
                    f"preceding assistant message without a result yet "
                    f"({pending_ids}). Received: tool_call_id={call_id!r}"
                )
            pending_ids.remove(call_id)
            turns.append(("tool", call_id, content))
    if not any(turn[0] == "user" for turn in turns):
        raise ValueError("`messages` must contain at least one user message.")
    if add_generation_prompt:
        if turns[-1][0] == "assistant":
            raise ValueError(
                "The last message is an assistant message, so there is nothing "
                "to generate. Pass `add_generation_prompt=False` to encode a "
                "complete conversation (e.g. a training example)."
            )
        if pending_ids:
            raise ValueError(
                f"{len(pending_ids)} tool call(s) have no tool message with "
                f"their result: {pending_ids}."
            )
    return system_prompts, turns


def _control(token):
    return (True, token)


def _text(text):
    return (False, text)


def _v1_segments(system_prompts, turns, tools):
    if tools or any(
        turn[0] == "tool" or (turn[0] == "assistant" and turn[2]) for turn in turns
    ):
        raise ValueError(
            'chat_template="v1" has no function calling: `tools`, tool calls '
            'and tool messages need the "v3", "v7" or "tekken" convention.'
        )
    system = "\n\n".join(prompt for prompt in system_prompts if prompt)
    segments = []
    first_user = True
    for role, content, *_ in turns:
        if role == "user":
            if first_user and system:
                content = f"{system}\n\n{content}"
            first_user = False
            segments.append(_text(f"[INST] {content} [/INST]"))
        else:
            segments += [_text(content), _control("</s>")]
    return segments


def _dumps(value):
    return json.dumps(value, ensure_ascii=False)


def _tool_calls_json(calls):
    return _dumps(
        [
            {"name": name, "arguments": arguments, "id": call_id}
            for name, arguments, call_id in calls
        ]
    )


def _v3_segments(system_prompts, turns, tools, v7=False):
    system = "\n\n".join(prompt for prompt in system_prompts if prompt)
    last_user = max(i for i, turn in enumerate(turns) if turn[0] == "user")
    segments = []
    for i, turn in enumerate(turns):
        role = turn[0]
        if role == "user":
            content = turn[1]
            if i == last_user:
                # Tool definitions go right before the last user message.
                if tools:
                    segments += [
                        _control("[AVAILABLE_TOOLS]"),
                        _text(_dumps(tools)),
                        _control("[/AVAILABLE_TOOLS]"),
                    ]
                if system:
                    content = f"{system}\n\n{content}"
            segments += [_control("[INST]"), _text(content), _control("[/INST]")]
        elif role == "assistant":
            _, content, calls = turn
            if content and calls and not v7:
                raise ValueError(
                    "An assistant message cannot have both content and "
                    "tool_calls before the v7 convention."
                )
            if content:
                segments.append(_text(content.rstrip(" ")))
            if calls:
                segments += [_control("[TOOL_CALLS]"), _text(_tool_calls_json(calls))]
            segments.append(_control("</s>"))
        elif v7:
            _, call_id, content = turn
            segments += [
                _control("[TOOL_RESULTS]"),
                _text(call_id),
                _control("[TOOL_CONTENT]"),
                _text(content),
                _control("[/TOOL_RESULTS]"),
            ]
        else:
            _, call_id, content = turn
            result = {"content": _parse_json_or_text(content), "call_id": call_id}
            segments += [
                _control("[TOOL_RESULTS]"),
                _text(_dumps(result)),
                _control("[/TOOL_RESULTS]"),
            ]
    return segments


def _v7_segments(system_prompts, turns, tools):
    segments = []
    for prompt in system_prompts:
        segments += [
            _control("[SYSTEM_PROMPT]"),
            _text(prompt),
            _control("[/SYSTEM_PROMPT]"),
        ]
    return segments + _v3_segments([], turns, tools, v7=True)


_SEGMENT_BUILDERS = {
    "v1": _v1_segments,
    "v3": _v3_segments,
    "v7": _v7_segments,
    "tekken": _v3_segments,
}


def apply_chat_template(
    tokenizer, messages, chat_template, add_generation_prompt, tokenize, tools=None
):
    """Encodes a conversation with one of the Mistral chat conventions.

    Args:
        tokenizer: A `MistralTokenizer` or `MistralTekkenTokenizer`; used
            through `_control_token_id(token)` (an id or None),
            `_encode_plain(text)` (ids without BOS/EOS) and `_text_prefix`
            (what the tokenizer prepends to each text: `" "` for
            SentencePiece's dummy prefix, else `""`).
        messages: list of OpenAI-style message dicts: `{"role": "system" |
            "user", "content": str}`, `{"role": "assistant", "content":
            str, "tool_calls": [...]}` (`tool_calls` optional, `content`
            then optional) and `{"role": "tool", "tool_call_id": str,
            "content": str}`.
        chat_template: One of `CHAT_TEMPLATES`.
        add_generation_prompt: bool. If True, the conversation must end
            with a user or tool message. If False, it may end with an
            assistant message, which is then closed with `</s>`.
        tokenize: bool. Return token ids (True) or the prompt as a string
            with the control tokens spelled out (False).
        tools: None or a list of OpenAI-style tool definitions
            (`{"type": "function", "function": {"name", "description",
            "parameters"}}`), listed before the last user message.

    Returns:
        A `list[int]`, or a `str` when `tokenize=False`.
    """
    tools = _normalize_tools(tools)
    system_prompts, turns = _normalize(messages, add_generation_prompt)
    segments = [_control("<s>")]
    segments += _SEGMENT_BUILDERS[chat_template](system_prompts, turns, tools)
    ids, pieces = [], []
    for is_control, text in segments:
        if is_control:
            token_id = tokenizer._control_token_id(text)
            if token_id is None:
                raise ValueError(
                    f"chat_template={chat_template!r} needs the control "
                    f"token {text!r}, which this vocabulary does not define."
                )
            ids.append(token_id)
            pieces.append(text)
        elif tokenize:
            ids += tokenizer._encode_plain(text)
        elif text:
            pieces.append(tokenizer._text_prefix + text)
    return ids if tokenize else "".join(pieces)
