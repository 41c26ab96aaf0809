"""Mistral's Tekken tokenizer: tiktoken-style byte-level BPE (`tekken.json`).

Used by Mistral NeMo, Pixtral, Magistral and later models. Encoding runs on
`tiktoken`, the library `mistral_common` itself uses, so ids match it
exactly.
"""

import base64
import binascii
import itertools
import json
import os

import keras

from mistral_hub.models.mistral import mistral_chat_template
from mistral_hub.models.mistral import mistral_tool_calls
from mistral_hub.tokenizers.tokenizer import Tokenizer
from mistral_hub.tokenizers.tokenizer import _is_id

TEKKEN_FILENAME = "tekken.json"

# Chat convention of each tekken.json `version`; later versions use "v7".
_VERSION_CHAT_TEMPLATES = {"v1": "v1", "v2": "tekken", "v3": "tekken"}

# What mistral-common assumes for tekken.json files (up to v7) that do not
# list their special tokens; the rest of the reserved ids are fillers.
_DEFAULT_SPECIAL_TOKENS = (
    "<unk>", "<s>", "</s>", "[INST]", "[/INST]", "[AVAILABLE_TOOLS]",
    "[/AVAILABLE_TOOLS]", "[TOOL_RESULTS]", "[/TOOL_RESULTS]", "[TOOL_CALLS]",
    "[IMG]", "<pad>", "[IMG_BREAK]", "[IMG_END]", "[PREFIX]", "[MIDDLE]",
    "[SUFFIX]", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]", "[TOOL_CONTENT]",
)  # fmt: skip


def _byte_to_unicode():
    """GPT-2's reversible map from bytes to printable characters.

    Token strings (`get_vocabulary()`, `id_to_token()`) use it, as Hugging
    Face and keras_hub byte-level BPE vocabularies do, so that every token,
    even a partial UTF-8 sequence, has a unique printable name.
    """
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    others = (b for b in range(256) if b not in printable)
    mapping = {b: chr(b) for b in printable}
    mapping.update({b: chr(256 + n) for n, b in enumerate(others)})
    return mapping


_BYTE_TO_UNICODE = _byte_to_unicode()
_UNICODE_TO_BYTE = {c: b for b, c in _BYTE_TO_UNICODE.items()}


def _import_tiktoken():
    try:
        import tiktoken
    except ImportError:
        raise ImportError(
            "MistralTekkenTokenizer requires the `tiktoken` package: "
            "`pip install tiktoken`."
        ) from None
    return tiktoken


def _read_tekken(vocabulary):
    """Returns `(raw_json_bytes, parsed_dict)` of a tekken.json argument."""
    if isinstance(vocabulary, (str, os.PathLike)):
        if not os.path.isfile(vocabulary):
            raise ValueError(
                "`vocabulary` must be a path to a tekken.json file. No file "
                f"found at: vocabulary={vocabulary!r}"
            )
        with open(vocabulary, "rb") as f:
            raw = f.read()
    else:
        raw = bytes(vocabulary)
    try:
        return raw, json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ValueError(
            "`vocabulary` is not a tekken.json file (not valid JSON)."
        ) from None


def _tekken_from_keras_hub_vocabulary(vocabulary, merges, split_pattern):
    """Builds tekken.json contents from keras_hub style BPE arguments."""
    if not isinstance(split_pattern, str):
        raise ValueError(
            "A `vocabulary` dict needs `split_pattern`, the pre-tokenization "
            f"regex. Received: split_pattern={split_pattern!r}"
        )
    tokens = sorted(vocabulary, key=vocabulary.get)
    if [vocabulary[t] for t in tokens] != list(range(len(tokens))):
        raise ValueError(
            "`vocabulary` ids must be exactly 0, 1, ..., len(vocabulary) - 1."
        )
    # Single bytes are the first regular tokens; before them are specials.
    num_special = vocabulary.get(_BYTE_TO_UNICODE[0])
    if num_special is None or tokens[num_special : num_special + 256] != [
        _BYTE_TO_UNICODE[b] for b in range(256)
    ]:
        raise ValueError(
            "`vocabulary` must contain the 256 single-byte tokens in byte "
            "order, right after the special tokens."
        )
    if merges is not None:
        for merge in merges:
            parts = merge.split(" ")
            if len(parts) != 2 or not all(
                p in vocabulary for p in (*parts, "".join(parts))
            ):
                raise ValueError(
                    "Every merge in `merges` must be two tokens of "
                    f"`vocabulary` whose concatenation is a token. "
                    f"Received: {merge!r}"
                )
    specials = tokens[:num_special]
    vocab = []
    for rank, token in enumerate(tokens[num_special:]):
        try:
            token_bytes = bytes(_UNICODE_TO_BYTE[c] for c in token)
        except KeyError:
            raise ValueError(
                f"`vocabulary` token {token!r} (id {rank + num_special}) is "
                "not a byte-level token string."
            ) from None
        vocab.append(
            {
                "rank": rank,
                "token_bytes": base64.b64encode(token_bytes).decode("ascii"),
                "token_str": token_bytes.decode("utf-8", errors="replace"),
            }
        )
    version = mistral_chat_template.infer_chat_template(
        lambda token: token in specials
    )
    return {
        "config": {
            "pattern": split_pattern,
            "num_vocab_tokens": len(vocab),
            "default_vocab_size": len(tokens),
            "default_num_special_tokens": num_special,
            "version": version,
        },
        "vocab": vocab,
        "special_tokens": [
            {"rank": i, "token_str": t, "is_control": True}
            for i, t in enumerate(specials)
        ],
    }


class _TekkenModel:
    """A loaded tekken.json: the tiktoken encoding and the special tokens.

    A plain object so that Keras does not track its large containers.
    """

    def __init__(self, data):
        config = data["config"]
        self.num_special = config["default_num_special_tokens"]
        self.size = config["default_vocab_size"]
        self.version = config.get("version")
        listed = data.get("special_tokens")
        if listed is None:
            specials = list(_DEFAULT_SPECIAL_TOKENS)
        else:
            if [t["rank"] for t in listed] != list(range(len(listed))):
                raise ValueError("special token ranks must be 0, 1, 2, ...")
            specials = [t["token_str"] for t in listed]
        specials += [
            f"<SPECIAL_{i}>" for i in range(len(specials), self.num_special)
        ]
        if len(specials) != self.num_special:
            raise ValueError("more special tokens than reserved ids")
        self.special_tokens = specials
        self.special_ids = {token: i for i, token in enumerate(specials)}
        ranks = {}
        for entry in data["vocab"][: self.size - self.num_special]:
            ranks[base64.b64decode(entry["token_bytes"])] = entry["rank"]
        if sorted(ranks.values()) != list(range(self.size - self.num_special)):
            raise ValueError("vocab ranks must be 0, 1, 2, ...")
        self.encoding = _import_tiktoken().Encoding(
            name="tekken",
            pat_str=config["pattern"],
            mergeable_ranks=ranks,
            special_tokens={},
        )
        self._token_ids = None

    def token(self, token_id):
        if token_id < self.num_special:
            return self.special_tokens[token_id]
        token_bytes = self.encoding.decode_single_token_bytes(
            token_id - self.num_special
        )
        return "".join(_BYTE_TO_UNICODE[b] for b in token_bytes)

    def token_to_id(self, token):
        if token in self.special_ids:
            return self.special_ids[token]
        if self._token_ids is None:
            self._token_ids = {
                self.token(i): i for i in range(self.num_special, self.size)
            }
        return self._token_ids.get(token)

    def encode(self, text):
        offset = self.num_special
        return [i + offset for i in self.encoding.encode_ordinary(text)]

    def decode(self, ids):
        # Like mistral-common: special tokens decode to nothing, and each run
        # of regular tokens between them is decoded on its own.
        pieces = []
        for special, run in itertools.groupby(ids, lambda i: i < self.num_special):
            if not special:
                pieces.append(
                    self.encoding.decode([i - self.num_special for i in run])
                )
        return "".join(pieces)


@keras.saving.register_keras_serializable(package="mistral_hub")
class MistralTekkenTokenizer(Tokenizer):
    """Mistral Tekken tokenizer layer (byte-level BPE from `tekken.json`).

    Token ids equal `mistral_common`'s `Tekkenizer` (`encode(text,
    bos=False, eos=False)`): special tokens take ids `[0,
    num_special_tokens)` and regular tokens follow. Special tokens are never
    produced from text, and decode to nothing. Token strings
    (`get_vocabulary()`, `id_to_token()`, `token_to_id()`) are the token
    bytes in GPT-2's byte-to-unicode alphabet (e.g. `"Ġthe"` for `b" the"`),
    as in keras_hub and Hugging Face byte-level vocabularies.

    The vocabulary is not part of `get_config()`: `save_assets()` writes it
    as `tekken.json` and `load_assets()` reads it back.

    Args:
        vocabulary: A path to a `tekken.json` file, its contents as
            `bytes`, a keras_hub style dict mapping byte-level token strings
            to ids (special tokens first, then the 256 single bytes, then
            merged tokens by rank), or None to call `load_assets()` later.
        merges: Only with a `vocabulary` dict (keras_hub compatibility):
            the BPE merges, checked against `vocabulary`. Token ranks alone
            define Tekken's BPE, so they are not otherwise used.
        split_pattern: str. Only with a `vocabulary` dict: the
            pre-tokenization regex (kept in `get_config()` so that a
            keras_hub style config can be completed with its assets).
        sequence_length: int or None. If set, outputs are padded with
            `pad_token_id` or truncated to this length.
        dtype: The integer dtype of the ids. Defaults to `"int32"`.
        add_bos: bool. Prepend `<s>` to every sequence.
        add_eos: bool. Append `</s>` to every sequence.
        chat_template: The chat convention of `apply_chat_template()`: one
            of `"v1"`, `"v3"`, `"v7"`, `"tekken"`, or None to infer it from
            the file's version (`"tekken"` for v2/v3, `"v7"` from v7 on).
            A `vocabulary` dict has no version: it is then inferred from
            the special tokens, as `MistralTokenizer` does (`"v7"` if there
            is a `[SYSTEM_PROMPT]` token).
        **kwargs: `config_file` and standard `keras.layers.Layer` arguments.

    Example:
    Mistral NeMo's `tekken.json`, as shipped in `mistral-common`:
    >>> import pathlib, mistral_common
    >>> data = pathlib.Path(mistral_common.__file__).parent / "data"
    >>> tokenizer = MistralTekkenTokenizer(str(data / "tekken_240718.json"))
    >>> tokenizer("Hello world")
    [22177, 4304]
    >>> tokenizer.detokenize([22177, 4304])
    'Hello world'
    >>> tokenizer.apply_chat_template([{"role": "user", "content": "Hello"}])
    [1, 3, 22177, 4]
    """

    file_assets = (TEKKEN_FILENAME,)
    # keras_hub saves Tekken vocabularies as byte-level BPE files.
    keras_hub_file_assets = ("vocabulary.json", "merges.txt")

    def __init__(
        self,
        vocabulary=None,
        merges=None,
        split_pattern=None,
        sequence_length=None,
        dtype="int32",
        add_bos=False,
        add_eos=False,
        chat_template=None,
        **kwargs,
    ):
        # keras_hub's Tekken configs carry its byte-pair tokenizer's
        # `add_prefix_space` (False); Tekken never adds a prefix space.
        add_prefix_space = kwargs.pop("add_prefix_space", False)
        if add_prefix_space is not False:
            raise ValueError(
                "`add_prefix_space` must be False: Tekken never adds a prefix "
                f"space. Received: add_prefix_space={add_prefix_space!r}"
            )
        super().__init__(sequence_length=sequence_length, dtype=dtype, **kwargs)
        self.add_bos = add_bos
        self.add_eos = add_eos
        self.split_pattern = split_pattern
        self.chat_template = mistral_chat_template.check_chat_template(
            chat_template
        )
        self._add_special_token("<s>", "start_token")
        self._add_special_token("</s>", "end_token")
        self._model = None
        self._raw = None
        if isinstance(vocabulary, dict):
            data = _tekken_from_keras_hub_vocabulary(
                vocabulary, merges, split_pattern
            )
            self._set_tekken(json.dumps(data).encode("utf-8"), data)
        elif vocabulary is not None:
            self.set_vocabulary(vocabulary)

    def set_vocabulary(self, vocabulary):
        """Sets the vocabulary from a tekken.json path or its `bytes`."""
        if not isinstance(vocabulary, (str, os.PathLike, bytes, bytearray)):
            raise ValueError(
                "`vocabulary` must be a path to a tekken.json file, its "
                "contents as bytes, or a keras_hub style dict. Received: "
                f"{type(vocabulary).__name__}"
            )
        self._set_tekken(*_read_tekken(vocabulary))

    def _set_tekken(self, raw, data):
        try:
            model = _TekkenModel(data)
        except (KeyError, TypeError, ValueError, IndexError, binascii.Error) as e:
            raise ValueError(
                f"`vocabulary` is not a valid tekken.json ({type(e).__name__}: "
                f"{e})."
            ) from None
        self._model = model
        self._raw = raw
        self._update_special_token_ids()

    def save_assets(self, dir_path):
        self._check_vocabulary()
        with open(os.path.join(dir_path, TEKKEN_FILENAME), "wb") as f:
            f.write(self._raw)

    def load_assets(self, dir_path):
        self.set_vocabulary(os.path.join(dir_path, TEKKEN_FILENAME))

    def load_keras_hub_assets(self, dir_path):
        """Reads the `vocabulary.json` and `merges.txt` keras_hub writes."""
        with open(os.path.join(dir_path, "vocabulary.json"), encoding="utf-8") as f:
            vocabulary = json.load(f)
        with open(os.path.join(dir_path, "merges.txt"), encoding="utf-8") as f:
            merges = [line.rstrip("\n") for line in f if line.strip()]
        data = _tekken_from_keras_hub_vocabulary(vocabulary, merges, self.split_pattern)
        self._set_tekken(json.dumps(data).encode("utf-8"), data)

    def _check_vocabulary(self):
        if self._model is None:
            raise ValueError(
                f"No vocabulary has been set for {type(self).__name__}. Pass "
                "`vocabulary` when creating the layer, or call "
                "`set_vocabulary()` or `load_assets()`."
            )

    def token_bytes(self):
        """The bytes each id decodes to, as a list (special tokens: none).

        Used to match stop strings on bytes.
        """
        self._check_vocabulary()
        model = self._model
        return [b""] * model.num_special + [
            model.encoding.decode_single_token_bytes(i)
            for i in range(model.size - model.num_special)
        ]

    @property
    def num_special_tokens(self):
        """The number of ids reserved for special tokens."""
        self._check_vocabulary()
        return self._model.num_special

    def vocabulary_size(self):
        """Returns the number of ids, special tokens included."""
        self._check_vocabulary()
        return self._model.size

    def get_vocabulary(self):
        """Returns the token strings, indexed by id."""
        self._check_vocabulary()
        return [self._model.token(i) for i in range(self._model.size)]

    def id_to_token(self, id):
        """Returns the token string of an id.

        Raises:
            ValueError: if `id` is not an int in `[0, vocabulary_size())`.
        """
        size = self.vocabulary_size()
        if not _is_id(id) or not 0 <= id < size:
            raise ValueError(
                f"`id` must be an int in [0, {size - 1}]. Received: id={id!r}"
            )
        return self._model.token(int(id))

    def token_to_id(self, token):
        """Returns the id of a token string.

        Raises:
            ValueError: if `token` is not in the vocabulary.
        """
        self._check_vocabulary()
        token_id = self._model.token_to_id(token)
        if token_id is None:
            raise ValueError(
                f"`token` {token!r} is not in the vocabulary. Token strings "
                "use GPT-2's byte-to-unicode alphabet, e.g. 'Ġthe' for ' the'."
            )
        return token_id

    def _special_token_id_or_none(self, token):
        return self._model.special_ids.get(token)

    # Hooks of `mistral_chat_template.apply_chat_template()`. Every Tekken
    # special token is a control token.

    _control_token_id = _special_token_id_or_none
    _text_prefix = ""  # No dummy prefix, unlike SentencePiece.

    def _encode_plain(self, text):
        return self._model.encode(text)

    def _encode_strings(self, texts):
        start = [self.start_token_id] if self.add_bos else []
        end = [self.end_token_id] if self.add_eos else []
        return [start + self._model.encode(text) + end for text in texts]

    def _decode_ids(self, ids):
        return [self._model.decode(seq) for seq in ids]

    def apply_chat_template(
        self, messages, add_generation_prompt=True, tokenize=True, tools=None
    ):
        """Encodes a conversation as a Mistral instruct prompt.

        Matches `mistral_common`'s `encode_chat_completion(...).tokens`,
        function calling (`tools`, tool calls and tool results) included;
        see `MistralTokenizer.apply_chat_template()` for the arguments. With
        `tokenize=False` the prompt reads e.g. `"<s>[INST]Hello[/INST]"`.
        """
        self._check_vocabulary()
        chat_template = self.chat_template or self._default_chat_template()
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

    def _default_chat_template(self):
        version = self._model.version or mistral_chat_template.infer_chat_template(
            lambda token: token in self._model.special_ids
        )
        return _VERSION_CHAT_TEMPLATES.get(version, "v7")

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                # The vocabulary travels as the tekken.json asset.
                "vocabulary": None,
                "merges": None,
                "split_pattern": self.split_pattern,
                "add_bos": self.add_bos,
                "add_eos": self.add_eos,
                "chat_template": self.chat_template,
            }
        )
        return config
