"""Mistral tokenizers stored as a Hugging Face `tokenizer.json`.

Recent transformers versions save Mistral tokenizers as a `tokenizer.json`
(plus `tokenizer_config.json`) only, without `tokenizer.model` or
`tekken.json`. This tokenizer runs that file on the `tokenizers` library,
the engine behind transformers' tokenizers, so ids equal transformers'.
"""

import json
import os
import re

import keras

from mistral_hub.models.mistral import mistral_chat_template
from mistral_hub.models.mistral import mistral_tool_calls
from mistral_hub.models.mistral.mistral_tekken_tokenizer import _UNICODE_TO_BYTE
from mistral_hub.tokenizers.tokenizer import Tokenizer
from mistral_hub.tokenizers.tokenizer import _is_id

HF_TOKENIZER_FILENAME = "tokenizer.json"

_BYTE_PIECE = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


def _import_tokenizers():
    try:
        import tokenizers
    except ImportError:
        raise ImportError(
            "MistralHFTokenizer requires the `tokenizers` package: "
            "`pip install tokenizers`."
        ) from None
    return tokenizers


def _flatten_steps(step):
    """The steps of a (possibly nested `Sequence`) decoder's JSON config."""
    if not step:
        return []
    if step.get("type") == "Sequence":
        return [s for inner in step.get("decoders", []) for s in _flatten_steps(inner)]
    return [step]


class _HFModel:
    """A loaded `tokenizer.json` and what is derived from it.

    A plain object so that Keras does not track its containers.
    """

    def __init__(self, raw):
        tokenizers = _import_tokenizers()
        try:
            self.tokenizer = tokenizers.Tokenizer.from_str(raw.decode("utf-8"))
        except Exception as e:  # noqa: BLE001 (`tokenizers` raises plain Exceptions)
            raise ValueError(
                "`vocabulary` is not a valid Hugging Face tokenizer.json "
                f"({type(e).__name__}: {e})."
            ) from None
        self.size = self.tokenizer.get_vocab_size(with_added_tokens=True)
        self.special_ids = {
            token.content: token_id
            for token_id, token in self.tokenizer.get_added_tokens_decoder().items()
            if token.special
        }
        self._plain = None

    @property
    def plain(self):
        """The same tokenizer, reading special tokens in text as text.

        mistral-common never turns text into control tokens; the chat
        template inserts them as ids.
        """
        if self._plain is None:
            tokenizers = _import_tokenizers()
            self._plain = tokenizers.Tokenizer.from_str(self.tokenizer.to_str())
            self._plain.encode_special_tokens = True
        return self._plain

    def token_bytes(self):
        decoder = self.tokenizer.decoder
        # A decoder pickles as its tokenizer.json config.
        steps = _flatten_steps(json.loads(decoder.__getstate__()) if decoder else None)
        kinds = {step.get("type") for step in steps}
        replacements = [
            (step["pattern"]["String"], step["content"])
            for step in steps
            if step.get("type") == "Replace" and "String" in (step.get("pattern") or {})
        ]
        special = set(self.special_ids.values())
        table = []
        for token_id in range(self.size):
            token = self.tokenizer.id_to_token(token_id)
            if token is None or token_id in special:
                table.append(b"")
            elif "ByteLevel" in kinds and all(c in _UNICODE_TO_BYTE for c in token):
                table.append(bytes(_UNICODE_TO_BYTE[c] for c in token))
            elif "ByteFallback" in kinds and _BYTE_PIECE.match(token):
                table.append(bytes([int(token[3:5], 16)]))
            else:
                for pattern, content in replacements:
                    token = token.replace(pattern, content)
                table.append(token.encode("utf-8"))
        return table


@keras.saving.register_keras_serializable(package="mistral_hub")
class MistralHFTokenizer(Tokenizer):
    """Mistral tokenizer layer from a Hugging Face `tokenizer.json`.

    For transformers checkpoints that ship only `tokenizer.json` (what
    `save_pretrained` writes in recent transformers versions, for both
    SentencePiece-derived and Tekken-derived Mistral vocabularies). The
    file runs on the `tokenizers` library as written: `tokenize()` equals
    transformers' `tokenizer(text, add_special_tokens=False).input_ids` and
    `detokenize()` its `decode(ids, skip_special_tokens=True)`. As in
    transformers, a special token spelled in the text (e.g. `"[INST]"` in a
    v3 vocabulary) is read as that token; `apply_chat_template()`, like
    mistral-common, reads message text as plain text and inserts control
    tokens as ids.

    The start and end tokens (`<s>`, `</s>` unless the checkpoint's
    `tokenizer_config.json` names others) must be in the vocabulary.
    `pad_token_id` is 0, as for `MistralTokenizer`. In a Keras preset the
    file is stored unchanged as the asset `tokenizer.json` (in
    `assets/tokenizer/`), next to the layer config.

    Args:
        vocabulary: A path to a `tokenizer.json` file, its contents as
            `bytes`, or None to call `load_assets()` later.
        start_token: str. The beginning-of-sequence token.
        end_token: str. The end-of-sequence token.
        sequence_length: int or None. If set, outputs are padded with
            `pad_token_id` or truncated to this length.
        dtype: The integer dtype of the ids. Defaults to `"int32"`.
        add_bos: bool. Prepend the start token to every sequence.
        add_eos: bool. Append the end token to every sequence.
        chat_template: The chat convention of `apply_chat_template()`: one
            of `"v1"`, `"v3"`, `"v7"`, `"tekken"`, or None to infer it from
            the special tokens (`"v7"` with `[SYSTEM_PROMPT]`, `"v3"` with
            `[INST]`, else `"v1"`). A tokenizer.json does not record the
            Tekken version, and NeMo-era vocabularies reserve an unused
            `[SYSTEM_PROMPT]`: from a transformers checkpoint whose Jinja
            chat template has no `[SYSTEM_PROMPT]`, `"tekken"` (or `"v3"`)
            is set instead.
        **kwargs: `config_file` and standard `keras.layers.Layer` arguments.

    Example:
    >>> import tokenizers
    >>> from tokenizers.models import BPE
    >>> hf = tokenizers.Tokenizer(BPE(
    ...     {"<unk>": 0, "<s>": 1, "</s>": 2, "h": 3, "i": 4, "hi": 5},
    ...     [("h", "i")], unk_token="<unk>"))
    >>> _ = hf.add_special_tokens(["<unk>", "<s>", "</s>"])
    >>> tokenizer = MistralHFTokenizer(hf.to_str().encode("utf-8"))
    >>> tokenizer(["hi", "ih"])
    [[5], [4, 3]]
    >>> tokenizer.detokenize([1, 5, 2])
    'hi'
    >>> tokenizer.start_token_id, tokenizer.end_token_id
    (1, 2)
    """

    file_assets = (HF_TOKENIZER_FILENAME,)

    def __init__(
        self,
        vocabulary=None,
        start_token="<s>",
        end_token="</s>",
        sequence_length=None,
        dtype="int32",
        add_bos=False,
        add_eos=False,
        chat_template=None,
        **kwargs,
    ):
        super().__init__(sequence_length=sequence_length, dtype=dtype, **kwargs)
        for name, value in (("start_token", start_token), ("end_token", end_token)):
            if not isinstance(value, str) or not value:
                raise ValueError(
                    f"`{name}` must be a non-empty string. Received: {name}={value!r}"
                )
        self.add_bos = add_bos
        self.add_eos = add_eos
        self.chat_template = mistral_chat_template.check_chat_template(chat_template)
        self._add_special_token(start_token, "start_token")
        self._add_special_token(end_token, "end_token")
        self._model = None
        self._raw = None
        if vocabulary is not None:
            self.set_vocabulary(vocabulary)

    def set_vocabulary(self, vocabulary):
        """Sets the vocabulary from a `tokenizer.json` path or its `bytes`."""
        if isinstance(vocabulary, (str, os.PathLike)):
            if not os.path.isfile(vocabulary):
                raise ValueError(
                    "`vocabulary` must be a path to a tokenizer.json file. No "
                    f"file found at: vocabulary={vocabulary!r}"
                )
            with open(vocabulary, "rb") as f:
                raw = f.read()
        elif isinstance(vocabulary, (bytes, bytearray)):
            raw = bytes(vocabulary)
        else:
            raise ValueError(
                "`vocabulary` must be a path to a tokenizer.json file or its "
                f"contents as bytes. Received: {type(vocabulary).__name__}"
            )
        model = _HFModel(raw)
        for name in self._special_token_names:
            token = getattr(self, name)
            if model.tokenizer.token_to_id(token) is None:
                raise ValueError(
                    f"`{name}` {token!r} is not in the vocabulary of this "
                    "tokenizer.json. Pass the checkpoint's token as "
                    f"`{name}=`."
                )
        self._model, self._raw = model, raw
        self._update_special_token_ids()

    def save_assets(self, dir_path):
        self._check_vocabulary()
        with open(os.path.join(dir_path, HF_TOKENIZER_FILENAME), "wb") as f:
            f.write(self._raw)

    def load_assets(self, dir_path):
        self.set_vocabulary(os.path.join(dir_path, HF_TOKENIZER_FILENAME))

    def _check_vocabulary(self):
        if self._model is None:
            raise ValueError(
                f"No vocabulary has been set for {type(self).__name__}. Pass "
                "`vocabulary` when creating the layer, or call "
                "`set_vocabulary()` or `load_assets()`."
            )

    def token_bytes(self):
        """The UTF-8 bytes each id decodes to inside a text, as a list.

        Special tokens give none; a SentencePiece-style `▁` is a space and
        a byte-fallback piece `<0xNN>` its byte; byte-level tokens map back
        through GPT-2's byte alphabet. Used to match stop strings on bytes.
        """
        self._check_vocabulary()
        return self._model.token_bytes()

    def vocabulary_size(self):
        """Returns the number of ids, added tokens included."""
        self._check_vocabulary()
        return self._model.size

    def get_vocabulary(self):
        """Returns the token strings, indexed by id."""
        self._check_vocabulary()
        tokenizer = self._model.tokenizer
        return [tokenizer.id_to_token(i) or "" for i in range(self._model.size)]

    def id_to_token(self, id):
        """Returns the token string of an id.

        Raises:
            ValueError: if `id` is not an int in `[0, vocabulary_size())`.
        """
        size = self.vocabulary_size()
        if not _is_id(id) or not 0 <= id < size:
            raise ValueError(f"`id` must be an int in [0, {size - 1}]. Received: id={id!r}")
        return self._model.tokenizer.id_to_token(int(id))

    def token_to_id(self, token):
        """Returns the id of a token string.

        Raises:
            ValueError: if `token` is not in the vocabulary.
        """
        self._check_vocabulary()
        token_id = self._model.tokenizer.token_to_id(token)
        if token_id is None:
            raise ValueError(f"`token` {token!r} is not in the vocabulary.")
        return token_id

    def _special_token_id_or_none(self, token):
        return self._model.tokenizer.token_to_id(token)

    def _encode_strings(self, texts):
        start = [self.start_token_id] if self.add_bos else []
        end = [self.end_token_id] if self.add_eos else []
        encodings = self._model.tokenizer.encode_batch(texts, add_special_tokens=False)
        return [start + encoding.ids + end for encoding in encodings]

    def _decode_ids(self, ids):
        return self._model.tokenizer.decode_batch(ids, skip_special_tokens=True)

    # Hooks of `mistral_chat_template.apply_chat_template()`.

    def _control_token_id(self, token):
        """Returns the id of a special token such as `"[INST]"`, or None."""
        return self._model.special_ids.get(token)

    def _encode_plain(self, text):
        return self._model.plain.encode(text, add_special_tokens=False).ids

    @property
    def _text_prefix(self):
        # A SentencePiece-style pipeline turns "x" into the piece "▁x".
        first = self._model.tokenizer.encode("x", add_special_tokens=False).tokens
        return " " if first and first[0].startswith("\u2581") else ""

    def apply_chat_template(
        self, messages, add_generation_prompt=True, tokenize=True, tools=None
    ):
        """Encodes a conversation as a Mistral instruct prompt.

        Uses mistral-common's conventions (see
        `MistralTokenizer.apply_chat_template()` for the arguments), chosen
        by `chat_template` or inferred from the special tokens. A Jinja
        `chat_template` of the checkpoint's `tokenizer_config.json` is not
        used.
        """
        self._check_vocabulary()
        chat_template = self.chat_template or mistral_chat_template.infer_chat_template(
            lambda token: self._control_token_id(token) is not None
        )
        return mistral_chat_template.apply_chat_template(
            self, messages, chat_template, add_generation_prompt, tokenize, tools
        )

    def parse_reply(self, token_ids):
        """Reads a generated reply: its text and its `[TOOL_CALLS]`.

        See `MistralTokenizer.parse_reply()`.
        """
        self._check_vocabulary()
        return mistral_tool_calls.parse_reply(self, token_ids)

    def tool_calls_token_id(self):
        """The id of `[TOOL_CALLS]`, which starts function calls, or None."""
        return mistral_tool_calls.tool_calls_token_id(self)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                # The vocabulary travels as the tokenizer.json asset.
                "vocabulary": None,
                "start_token": self.start_token,
                "end_token": self.end_token,
                "add_bos": self.add_bos,
                "add_eos": self.add_eos,
                "chat_template": self.chat_template,
            }
        )
        return config
