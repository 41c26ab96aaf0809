"""A tokenizer layer backed by a SentencePiece model."""

import os

import keras
import sentencepiece

from mistral_hub.tokenizers.tokenizer import Tokenizer
from mistral_hub.tokenizers.tokenizer import _is_id

VOCAB_FILENAME = "vocabulary.spm"


def _read_proto(proto):
    """Returns the serialized model bytes of a `proto` argument."""
    if isinstance(proto, (bytes, bytearray, memoryview)):
        return bytes(proto)
    if isinstance(proto, (str, os.PathLike)):
        if not os.path.isfile(proto):
            raise ValueError(
                "`proto` must be a path to a SentencePiece model file or the "
                f"serialized model bytes. No file found at: proto={proto!r}"
            )
        with open(proto, "rb") as f:
            return f.read()
    raise ValueError(
        "`proto` must be a path to a SentencePiece model file or the "
        f"serialized model bytes. Received: {type(proto).__name__}"
    )


def _load_processor(proto_bytes, proto):
    processor = sentencepiece.SentencePieceProcessor()
    try:
        processor.LoadFromSerializedProto(proto_bytes)
    except RuntimeError as e:
        is_path = isinstance(proto, (str, os.PathLike))
        source = repr(os.fspath(proto)) if is_path else "the given bytes"
        raise ValueError(
            f"`proto` is not a valid SentencePiece model: could not load "
            f"{source} ({e})."
        ) from None
    return processor


@keras.saving.register_keras_serializable(package="mistral_hub")
class SentencePieceTokenizer(Tokenizer):
    """Tokenizes text with a SentencePiece model.

    Eager calls run the `sentencepiece` package directly and return python
    lists; inside `tf.data` the same code runs through `tf.numpy_function`
    (no `tensorflow-text`). See `mistral_hub.tokenizers.Tokenizer` for the
    input and output formats.

    The model is not part of `get_config()`: it is saved as the asset
    `vocabulary.spm` by `save_assets()` and read back by `load_assets()`.

    Args:
        proto: A path to a SentencePiece model file, the serialized model
            as `bytes`, or None to set it later with `set_proto()` or
            `load_assets()`.
        sequence_length: int or None. If set, outputs are padded with
            `pad_token_id` or truncated to this length.
        dtype: The integer dtype of the ids. Defaults to `"int32"`.
        add_bos: bool. Prepend the model's BOS id to every sequence.
        add_eos: bool. Append the model's EOS id to every sequence.
        **kwargs: `config_file` and standard `keras.layers.Layer` arguments.

    Example:
    >>> from importlib import resources
    >>> proto = (resources.files("mistral_hub") / "presets/mistral_hub_demo"
    ...     / "assets/tokenizer/vocabulary.spm").read_bytes()
    >>> tokenizer = SentencePieceTokenizer(proto)
    >>> tokenizer(["the fox", "def f(x):"])
    [[270, 288, 1957, 1980], [385, 288, 1978, 1980, 833]]
    >>> tokenizer.detokenize([270, 288, 1957, 1980])
    'the fox'
    >>> SentencePieceTokenizer(proto, sequence_length=6)("the fox").tolist()
    [270, 288, 1957, 1980, 0, 0]
    """

    file_assets = (VOCAB_FILENAME,)

    def __init__(
        self,
        proto=None,
        sequence_length=None,
        dtype="int32",
        add_bos=False,
        add_eos=False,
        **kwargs,
    ):
        super().__init__(sequence_length=sequence_length, dtype=dtype, **kwargs)
        self.add_bos = add_bos
        self.add_eos = add_eos
        self._proto = None
        self._processor = None
        if proto is not None:
            self.set_proto(proto)

    @property
    def proto(self):
        """The serialized SentencePiece model (`bytes`), or None."""
        return self._proto

    def set_proto(self, proto):
        """Sets the SentencePiece model.

        Args:
            proto: A path to a SentencePiece model file or the serialized
                model as `bytes`.
        """
        proto_bytes = _read_proto(proto)
        processor = _load_processor(proto_bytes, proto)
        self._proto = proto_bytes
        self._processor = processor
        self._update_special_token_ids()

    def save_assets(self, dir_path):
        self._check_vocabulary()
        with open(os.path.join(dir_path, VOCAB_FILENAME), "wb") as f:
            f.write(self._proto)

    def load_assets(self, dir_path):
        self.set_proto(os.path.join(dir_path, VOCAB_FILENAME))

    def _check_vocabulary(self):
        if self._processor is None:
            raise ValueError(
                f"No vocabulary has been set for {type(self).__name__}. Pass "
                "`proto` when creating the layer, or call `set_proto()` or "
                "`load_assets()`."
            )

    def token_bytes(self):
        """The UTF-8 bytes each id decodes to inside a text, as a list.

        `▁` becomes a space, byte-fallback pieces their byte, and control
        or unknown pieces nothing. Used to match stop strings on bytes.
        """
        self._check_vocabulary()
        processor = self._processor
        table = []
        for i in range(processor.GetPieceSize()):
            piece = processor.IdToPiece(i)
            if processor.IsControl(i) or processor.IsUnknown(i):
                table.append(b"")
            elif processor.IsByte(i):
                table.append(bytes([int(piece[3:5], 16)]))
            else:
                table.append(piece.replace("\u2581", " ").encode("utf-8"))
        return table

    def vocabulary_size(self):
        """Returns the number of pieces of the model."""
        self._check_vocabulary()
        return self._processor.get_piece_size()

    def get_vocabulary(self):
        """Returns the list of pieces, indexed by id."""
        self._check_vocabulary()
        size = self.vocabulary_size()
        return [self._processor.id_to_piece(i) for i in range(size)]

    def id_to_token(self, id):
        """Returns the piece of an id.

        Raises:
            ValueError: if `id` is not an int in `[0, vocabulary_size())`.
        """
        self._check_vocabulary()
        size = self.vocabulary_size()
        if not _is_id(id) or not 0 <= id < size:
            raise ValueError(
                f"`id` must be an int in [0, {size - 1}]. Received: id={id!r}"
            )
        return self._processor.id_to_piece(int(id))

    def token_to_id(self, token):
        """Returns the id of a piece; the unknown id for unknown pieces."""
        self._check_vocabulary()
        if isinstance(token, bytes):
            token = token.decode("utf-8")
        return self._processor.piece_to_id(token)

    def _special_token_id_or_none(self, token):
        token_id = self._processor.piece_to_id(token)
        if self._processor.id_to_piece(token_id) != token:
            return None
        return token_id

    def _encode_strings(self, texts):
        return self._processor.encode(
            texts, add_bos=self.add_bos, add_eos=self.add_eos
        )

    def _decode_ids(self, ids):
        return self._processor.decode(ids)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "proto": None,  # The model travels as the asset file.
                "add_bos": self.add_bos,
                "add_eos": self.add_eos,
            }
        )
        return config
