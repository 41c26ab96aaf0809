"""Mistral's SentencePiece tokenizer (Mistral 7B, Mixtral)."""

import keras

from mistral_hub.models.mistral import mistral_chat_template
from mistral_hub.models.mistral import mistral_tool_calls
from mistral_hub.tokenizers.sentence_piece_tokenizer import (
    SentencePieceTokenizer,
)


@keras.saving.register_keras_serializable(package="mistral_hub")
class MistralTokenizer(SentencePieceTokenizer):
    """Mistral tokenizer layer based on SentencePiece.

    Checks that the vocabulary has the special tokens Mistral models need
    (`start_token` `"<s>"`, `end_token` `"</s>"`) and encodes chat
    conversations exactly like `mistral_common`. `pad_token_id` is 0 (the
    `<unk>` piece, as in keras_hub; Mistral vocabularies have no padding
    piece and padded positions are masked anyway).

    Control pieces of v2+ vocabularies (`[INST]`, `[/INST]`,
    `[TOOL_CALLS]`, ...) are never produced from text: `tokenize("[INST]")`
    encodes the characters. `apply_chat_template()` inserts them as ids.

    Args:
        proto: A path to a SentencePiece model file, the serialized model
            as `bytes`, or None to set it later with `load_assets()`.
        chat_template: The chat convention of `apply_chat_template()`: one
            of `"v1"`, `"v3"`, `"v7"`, `"tekken"`, or None to infer it from
            the vocabulary (`"v7"` if it has a `[SYSTEM_PROMPT]` control
            piece, else `"v3"` if it has `[INST]`, else `"v1"`).
        **kwargs: `sequence_length`, `dtype`, `add_bos`, `add_eos` of
            `SentencePieceTokenizer`, and `keras.layers.Layer` arguments.

    Example:
    >>> tokenizer = MistralTokenizer.from_preset("mistral_hub_demo")
    >>> tokenizer(["the fox", "def f(x):"])
    [[270, 288, 1957, 1980], [385, 288, 1978, 1980, 833]]
    >>> tokenizer.start_token_id, tokenizer.end_token_id, tokenizer.pad_token_id
    (1, 2, 0)

    Mistral's v3 instruct vocabulary, as shipped in `mistral-common`:
    >>> import pathlib, mistral_common
    >>> data = pathlib.Path(mistral_common.__file__).parent / "data"
    >>> v3 = MistralTokenizer(str(data / "mistral_instruct_tokenizer_240323.model.v3"))
    >>> v3.apply_chat_template([{"role": "user", "content": "Hello"}])
    [1, 3, 23325, 4]
    """

    def __init__(self, proto, chat_template=None, **kwargs):
        super().__init__(proto=None, **kwargs)
        self._add_special_token("<s>", "start_token")
        self._add_special_token("</s>", "end_token")
        self.chat_template = mistral_chat_template.check_chat_template(
            chat_template
        )
        if proto is not None:
            self.set_proto(proto)

    # Hooks of `mistral_chat_template.apply_chat_template()`.

    def _control_token_id(self, token):
        """Returns the id of a control piece such as `"[INST]"`, or None."""
        token_id = self._special_token_id_or_none(token)
        if token_id is None or not self._processor.is_control(token_id):
            return None
        return token_id

    def _encode_plain(self, text):
        return self._processor.encode(text)

    @property
    def _text_prefix(self):
        # SentencePiece's dummy prefix turns "x" into the piece "▁x".
        first_piece = self._processor.encode("x", out_type=str)[0]
        return " " if first_piece.startswith("\u2581") else ""

    def apply_chat_template(
        self, messages, add_generation_prompt=True, tokenize=True, tools=None
    ):
        """Encodes a conversation as a Mistral instruct prompt.

        Matches `mistral_common`'s `encode_chat_completion(...).tokens`.
        Consecutive messages of one role are joined with a blank line.

        Args:
            messages: list of OpenAI-style messages: `{"role": "system" |
                "user" | "assistant", "content": str}`, assistant messages
                with `"tool_calls"` (`[{"id": <9 letters or digits>,
                "type": "function", "function": {"name": ..., "arguments":
                <JSON str or dict>}}]`) and tool results `{"role": "tool",
                "tool_call_id": ..., "content": str}`. System messages come
                first; then the conversation starts with a user message.
            add_generation_prompt: bool. If True (for generation) the last
                message must be a user or tool message. If False, the
                conversation may end with an assistant message, closed with
                `</s>` (a training example).
            tokenize: bool. If False, return the prompt as a string with
                the control tokens spelled out, e.g. `"<s>[INST] Hello[/INST]"`
                (for reading only: control tokens are never re-created from
                text).
            tools: None or a list of OpenAI-style tool definitions
                (`{"type": "function", "function": {"name": ...,
                "description": ..., "parameters": <JSON schema>}}`) the
                model may call; needs the v3, v7 or Tekken convention.

        Returns:
            A `list[int]` of token ids, or a `str` if `tokenize=False`.

        Raises:
            ValueError: for malformed conversations, or a `chat_template`
                whose control tokens the vocabulary lacks.
        """
        self._check_vocabulary()
        chat_template = self.chat_template or (
            mistral_chat_template.infer_chat_template(
                lambda token: self._control_token_id(token) is not None
            )
        )
        return mistral_chat_template.apply_chat_template(
            self, messages, chat_template, add_generation_prompt, tokenize, tools
        )

    def parse_reply(self, token_ids):
        """Reads a generated reply: its text and its `[TOOL_CALLS]`.

        Args:
            token_ids: the generated ids, without the prompt.

        Returns:
            An OpenAI-style assistant message `{"role": "assistant",
            "content": str or None, "tool_calls": list or None}`, ready to
            be appended to the conversation.

        Raises:
            ValueError: if the tool calls are not valid JSON.
        """
        self._check_vocabulary()
        return mistral_tool_calls.parse_reply(self, token_ids)

    def tool_calls_token_id(self):
        """The id of `[TOOL_CALLS]`, which starts function calls, or None."""
        return mistral_tool_calls.tool_calls_token_id(self)

    def get_config(self):
        config = super().get_config()
        config["chat_template"] = self.chat_template
        return config
