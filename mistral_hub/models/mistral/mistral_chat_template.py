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
"""

from collections.abc import Mapping

CHAT_TEMPLATES = ("v1", "v3", "v7", "tekken")
_ROLES = ("system", "user", "assistant")


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


def _normalize(messages, add_generation_prompt):
    """Validates `messages`; returns `(system_prompts, turns)`.

    `turns` is a list of `(role, content)` that alternates user/assistant,
    starting with a user turn. Consecutive messages of one role are joined
    with a blank line, as mistral-common does. Stricter than mistral-common,
    system messages must precede all other messages and a conversation
    needs a user message before any assistant message.
    """
    if not isinstance(messages, (list, tuple)) or not messages:
        raise ValueError(
            "`messages` must be a non-empty list of dicts with keys 'role' "
            f"and 'content'. Received: {messages!r}"
        )
    system_prompts, turns = [], []
    for index, message in enumerate(messages):
        where = f"`messages[{index}]`"
        if not isinstance(message, Mapping) or not {"role", "content"} <= set(
            message
        ):
            raise ValueError(
                f"{where} must be a dict with keys 'role' and 'content'. "
                f"Received: {message!r}"
            )
        role, content = message["role"], message["content"]
        if role not in _ROLES:
            raise ValueError(
                f"{where} has an unknown role; expected one of "
                f"{list(_ROLES)}. Received: role={role!r}"
            )
        if not isinstance(content, str):
            raise ValueError(
                f"{where} content must be a str. Received: "
                f"{type(content).__name__} {content!r}"
            )
        if role == "system":
            if turns:
                raise ValueError(
                    f"{where}: system messages must come before all user "
                    "and assistant messages."
                )
            system_prompts.append(content)
            continue
        if role == "assistant" and not turns:
            raise ValueError(
                f"{where}: the conversation must start with a user message "
                "(after any system messages), not an assistant message."
            )
        if role == "assistant" and not content:
            raise ValueError(f"{where}: assistant content must not be empty.")
        if turns and turns[-1][0] == role:
            turns[-1] = (role, turns[-1][1] + "\n\n" + content)
        else:
            turns.append((role, content))
    if not turns:
        raise ValueError("`messages` must contain at least one user message.")
    if add_generation_prompt and turns[-1][0] == "assistant":
        raise ValueError(
            "The last message is an assistant message, so there is nothing "
            "to generate. Pass `add_generation_prompt=False` to encode a "
            "complete conversation (e.g. a training example)."
        )
    return system_prompts, turns


def _control(token):
    return (True, token)


def _text(text):
    return (False, text)


def _v1_segments(system_prompts, turns):
    system = "\n\n".join(prompt for prompt in system_prompts if prompt)
    segments = []
    first_user = True
    for role, content in turns:
        if role == "user":
            if first_user and system:
                content = f"{system}\n\n{content}"
            first_user = False
            segments.append(_text(f"[INST] {content} [/INST]"))
        else:
            segments += [_text(content), _control("</s>")]
    return segments


def _v3_segments(system_prompts, turns):
    system = "\n\n".join(prompt for prompt in system_prompts if prompt)
    last_user = max(i for i, (role, _) in enumerate(turns) if role == "user")
    segments = []
    for i, (role, content) in enumerate(turns):
        if role == "user":
            if i == last_user and system:
                content = f"{system}\n\n{content}"
            segments += [_control("[INST]"), _text(content), _control("[/INST]")]
        else:
            segments += [_text(content.rstrip(" ")), _control("</s>")]
    return segments


def _v7_segments(system_prompts, turns):
    segments = []
    for prompt in system_prompts:
        segments += [
            _control("[SYSTEM_PROMPT]"),
            _text(prompt),
            _control("[/SYSTEM_PROMPT]"),
        ]
    return segments + _v3_segments([], turns)


_SEGMENT_BUILDERS = {
    "v1": _v1_segments,
    "v3": _v3_segments,
    "v7": _v7_segments,
    "tekken": _v3_segments,
}


def apply_chat_template(
    tokenizer, messages, chat_template, add_generation_prompt, tokenize
):
    """Encodes a conversation with one of the Mistral chat conventions.

    Args:
        tokenizer: A `MistralTokenizer` or `MistralTekkenTokenizer`; used
            through `_control_token_id(token)` (an id or None),
            `_encode_plain(text)` (ids without BOS/EOS) and `_text_prefix`
            (what the tokenizer prepends to each text: `" "` for
            SentencePiece's dummy prefix, else `""`).
        messages: list of `{"role": ..., "content": str}` dicts, roles in
            `"system"`, `"user"`, `"assistant"`.
        chat_template: One of `CHAT_TEMPLATES`.
        add_generation_prompt: bool. If True, the conversation must end
            with a user message. If False, it may end with an assistant
            message, which is then closed with `</s>`.
        tokenize: bool. Return token ids (True) or the prompt as a string
            with the control tokens spelled out (False).

    Returns:
        A `list[int]`, or a `str` when `tokenize=False`.
    """
    system_prompts, turns = _normalize(messages, add_generation_prompt)
    segments = [_control("<s>")]
    segments += _SEGMENT_BUILDERS[chat_template](system_prompts, turns)
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
