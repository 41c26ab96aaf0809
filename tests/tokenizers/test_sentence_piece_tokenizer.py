import io
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import sentencepiece

from mistral_hub.tokenizers import SentencePieceTokenizer
from mistral_hub.tokenizers import Tokenizer
from tests.test_data import V1_MODEL
from tests.test_data import mistral_test_proto

SENTENCES = ["the quick brown fox", "the earth is round"]
IDS = [[3, 8, 4, 6], [3, 5, 7, 9]]


@pytest.fixture()
def tokenizer():
    return SentencePieceTokenizer(mistral_test_proto())


# --- tokenize: the python workflow ------------------------------------------


def test_tokenize_batch_and_scalar(tokenizer):
    assert tokenizer.tokenize(SENTENCES) == IDS
    assert tokenizer(SENTENCES) == IDS
    assert tokenizer("the quick brown fox") == IDS[0]
    assert tokenizer("") == []
    assert tokenizer([]) == []


@pytest.mark.parametrize(
    "inputs",
    [
        tuple(SENTENCES),
        [s.encode("utf-8") for s in SENTENCES],
        np.array(SENTENCES),
        np.array([s.encode("utf-8") for s in SENTENCES]),
        np.array(SENTENCES, dtype=object),
    ],
    ids=["tuple", "bytes", "numpy_str", "numpy_bytes", "numpy_object"],
)
def test_tokenize_input_types(tokenizer, inputs):
    assert tokenizer(inputs) == IDS


def test_tokenize_scalars(tokenizer):
    assert tokenizer(b"the fox") == [3, 6]
    assert tokenizer(np.array("the fox")) == [3, 6]
    assert tokenizer(np.str_("the fox")) == [3, 6]


def test_tokenize_nested_mirrors_input(tokenizer):
    nested = [[SENTENCES[0]], [SENTENCES[1], "the fox"], []]
    assert tokenizer(nested) == [[IDS[0]], [IDS[1], [3, 6]], []]
    assert tokenizer(np.array([SENTENCES, SENTENCES])) == [IDS, IDS]


def test_tokenize_tf_eager_tensors(tokenizer):
    tf = pytest.importorskip("tensorflow")
    assert tokenizer(tf.constant(SENTENCES)) == IDS
    assert tokenizer(tf.constant("the fox")) == [3, 6]
    ragged = tf.ragged.constant([[SENTENCES[0]], [SENTENCES[1], "the fox"]])
    assert tokenizer(ragged) == [[IDS[0]], [IDS[1], [3, 6]]]


def test_tokenize_returns_python_ints(tokenizer):
    assert all(type(i) is int for i in tokenizer("the quick brown fox"))


def test_sequence_length_pads_and_truncates():
    tokenizer = SentencePieceTokenizer(mistral_test_proto(), sequence_length=3)
    outputs = tokenizer(SENTENCES + ["the"])
    assert isinstance(outputs, np.ndarray) and outputs.dtype == np.int32
    np.testing.assert_array_equal(outputs, [[3, 8, 4], [3, 5, 7], [3, 0, 0]])
    np.testing.assert_array_equal(tokenizer("the fox"), [3, 6, 0])
    assert tokenizer([]).shape == (0, 3)
    assert tokenizer([[SENTENCES[0]], [SENTENCES[1]]]).shape == (2, 1, 3)


def test_sequence_length_rejects_ragged_nesting():
    tokenizer = SentencePieceTokenizer(mistral_test_proto(), sequence_length=3)
    with pytest.raises(ValueError, match="rectangular"):
        tokenizer([["the"], ["the", "fox"]])


def test_sequence_length_respects_dtype():
    tokenizer = SentencePieceTokenizer(
        mistral_test_proto(), sequence_length=2, dtype="int64"
    )
    assert tokenizer("the fox").dtype == np.int64


def test_add_bos_and_eos():
    tokenizer = SentencePieceTokenizer(
        mistral_test_proto(), add_bos=True, add_eos=True
    )
    assert tokenizer("the fox") == [1, 3, 6, 2]
    truncated = SentencePieceTokenizer(
        mistral_test_proto(), add_eos=True, sequence_length=3
    )
    np.testing.assert_array_equal(truncated("the quick fox"), [3, 8, 6])


@pytest.mark.parametrize(
    "bad", [1, None, 2.5, [1, 2], ["the", 3], np.array([1, 2]), {"a": "b"}]
)
def test_tokenize_rejects_non_strings(tokenizer, bad):
    with pytest.raises(ValueError, match="Received"):
        tokenizer(bad)


# --- detokenize -------------------------------------------------------------


def test_detokenize(tokenizer):
    assert tokenizer.detokenize(IDS[0]) == "the quick brown fox"
    assert tokenizer.detokenize(IDS) == SENTENCES
    assert tokenizer.detokenize([]) == ""
    assert tokenizer.detokenize([[], [6]]) == ["", "fox"]
    assert tokenizer.detokenize(6) == "fox"
    assert tokenizer.detokenize([[[3], [6]], [[4]]]) == [["the", "fox"], ["brown"]]
    # Control pieces decode to nothing, like SentencePiece.
    assert tokenizer.detokenize([1, 3, 6, 2]) == "the fox"


def test_detokenize_arrays_and_tensors(tokenizer):
    array = np.array(IDS, dtype="int64")
    assert tokenizer.detokenize(array) == SENTENCES
    assert tokenizer.detokenize(array[0]) == SENTENCES[0]
    assert tokenizer.detokenize(array.astype("uint16")) == SENTENCES
    assert tokenizer.detokenize(keras.ops.convert_to_tensor(array)) == SENTENCES
    assert tokenizer.detokenize(np.int32(6)) == "fox"


def test_detokenize_tensors_of_every_framework(tokenizer):
    tf = pytest.importorskip("tensorflow")
    jnp = pytest.importorskip("jax.numpy")
    torch = pytest.importorskip("torch")
    for tensor in (tf.constant(IDS), jnp.array(IDS), torch.tensor(IDS)):
        assert tokenizer.detokenize(tensor) == SENTENCES
    assert tokenizer.detokenize(tf.ragged.constant([[3], [4, 5]])) == [
        "the",
        "brown earth",
    ]


@pytest.mark.parametrize("bad_id", [-1, 10, 100])
def test_detokenize_rejects_out_of_range_ids(tokenizer, bad_id):
    with pytest.raises(ValueError, match=f"Token id {bad_id} is out of range"):
        tokenizer.detokenize([3, bad_id])
    with pytest.raises(ValueError, match=f"Token id {bad_id}"):
        tokenizer.detokenize(np.array([[3, bad_id]]))


@pytest.mark.parametrize(
    "bad",
    ["the", [3.0, 4.0], np.array([3.0, 4.0]), [[3], 4], [True, False], None],
)
def test_detokenize_rejects_non_integers(tokenizer, bad):
    with pytest.raises(ValueError):
        tokenizer.detokenize(bad)


# --- tf.data / tf.function --------------------------------------------------


@pytest.fixture()
def tf():
    return pytest.importorskip("tensorflow")


@pytest.mark.parametrize("sequence_length", [None, 3, 6])
def test_tf_data_map_matches_eager(tf, sequence_length):
    tokenizer = SentencePieceTokenizer(
        mistral_test_proto(), sequence_length=sequence_length
    )
    sentences = SENTENCES + ["the", "", "quick quick quick quick quick"]
    expected = [np.asarray(tokenizer(s)).tolist() for s in sentences]
    dataset = tf.data.Dataset.from_tensor_slices(sentences)

    unbatched = [t.numpy().tolist() for t in dataset.map(tokenizer)]
    assert unbatched == expected

    batched = [t for t in dataset.batch(2).map(tokenizer)]
    if sequence_length is None:
        assert all(isinstance(t, tf.RaggedTensor) for t in batched)
        rows = [row for t in batched for row in t.to_list()]
    else:
        assert batched[0].shape == (2, sequence_length)
        rows = [row for t in batched for row in t.numpy().tolist()]
    assert rows == expected
    assert batched[0].dtype == tf.int32


def test_tf_function_rank_2_inputs(tf):
    tokenizer = SentencePieceTokenizer(mistral_test_proto())
    inputs = [[SENTENCES[0], "the"], [SENTENCES[1], ""]]
    outputs = tf.function(tokenizer.tokenize)(tf.constant(inputs))
    assert outputs.to_list() == tokenizer(inputs)
    padded = SentencePieceTokenizer(mistral_test_proto(), sequence_length=2)
    dense = tf.function(padded.tokenize)(tf.constant(inputs))
    np.testing.assert_array_equal(dense.numpy(), padded(inputs))


def test_tf_function_detokenize(tf):
    tokenizer = SentencePieceTokenizer(mistral_test_proto())
    detokenize = tf.function(tokenizer.detokenize)
    ragged = tf.ragged.constant(IDS + [[]])
    assert detokenize(ragged).numpy().tolist() == [
        s.encode() for s in SENTENCES + [""]
    ]
    assert detokenize(tf.constant(IDS[0])).numpy() == SENTENCES[0].encode()


def test_tf_data_round_trip(tf):
    tokenizer = SentencePieceTokenizer(mistral_test_proto())
    dataset = tf.data.Dataset.from_tensor_slices(SENTENCES).batch(2)
    dataset = dataset.map(tokenizer).map(tokenizer.detokenize)
    assert [s.decode() for s in next(iter(dataset)).numpy()] == SENTENCES


# --- vocabulary -------------------------------------------------------------


def test_vocabulary(tokenizer):
    assert tokenizer.vocabulary_size() == 10
    vocabulary = tokenizer.get_vocabulary()
    assert vocabulary[:4] == ["<unk>", "<s>", "</s>", "\u2581the"]
    assert tokenizer.id_to_token(9) == "\u2581round"
    assert tokenizer.token_to_id("\u2581round") == 9
    # Unknown pieces map to the unknown id, as in SentencePiece/keras_hub.
    assert tokenizer.token_to_id("nope") == 0


@pytest.mark.parametrize("bad_id", [-1, 10, 2.0, "3"])
def test_id_to_token_rejects_bad_ids(tokenizer, bad_id):
    with pytest.raises(ValueError, match="`id` must be an int in \\[0, 9\\]"):
        tokenizer.id_to_token(bad_id)


def test_real_vocabulary_matches_sentencepiece():
    processor = sentencepiece.SentencePieceProcessor(model_file=V1_MODEL)
    tokenizer = SentencePieceTokenizer(V1_MODEL)
    assert tokenizer.vocabulary_size() == 32000
    assert tokenizer.get_vocabulary()[13] == "<0x0A>"
    text = "Hello\n  world ✓"
    assert tokenizer(text) == processor.encode(text)


# --- construction errors ----------------------------------------------------


def test_missing_file_raises(tmp_path):
    missing = str(tmp_path / "nope.model")
    with pytest.raises(ValueError, match="proto.*No file found"):
        SentencePieceTokenizer(missing)


@pytest.mark.parametrize("bad", [b"", b"not a model", b'{"config": {}}'])
def test_corrupt_proto_raises(bad):
    with pytest.raises(ValueError, match="`proto` is not a valid SentencePiece"):
        SentencePieceTokenizer(bad)


def test_non_sentencepiece_file_raises(tmp_path):
    path = tmp_path / "tekken.json"
    path.write_text('{"vocab": []}')
    with pytest.raises(ValueError, match="`proto` is not a valid"):
        SentencePieceTokenizer(str(path))


def test_bad_proto_type_raises():
    with pytest.raises(ValueError, match="`proto` must be a path"):
        SentencePieceTokenizer(123)


def test_no_vocabulary_set_raises():
    tokenizer = SentencePieceTokenizer()
    for call in (
        lambda: tokenizer("the"),
        lambda: tokenizer.detokenize([3]),
        tokenizer.vocabulary_size,
    ):
        with pytest.raises(ValueError, match="No vocabulary has been set"):
            call()


@pytest.mark.parametrize("kwargs", [{"dtype": "float32"}, {"sequence_length": 0}])
def test_bad_arguments_raise(kwargs):
    with pytest.raises(ValueError):
        SentencePieceTokenizer(mistral_test_proto(), **kwargs)


# --- serialization ----------------------------------------------------------


def test_config_round_trip():
    tokenizer = SentencePieceTokenizer(
        mistral_test_proto(),
        sequence_length=5,
        add_bos=True,
        name="my_tokenizer",
        config_file="other.json",
    )
    config = tokenizer.get_config()
    assert config["proto"] is None
    assert config["config_file"] == "other.json"
    restored = SentencePieceTokenizer.from_config(config)
    assert restored.get_config() == config
    assert restored.proto is None
    restored.set_proto(tokenizer.proto)
    np.testing.assert_array_equal(restored("the fox"), tokenizer("the fox"))


def test_keras_serialization_round_trip():
    tokenizer = SentencePieceTokenizer(mistral_test_proto(), sequence_length=4)
    serialized = keras.saving.serialize_keras_object(tokenizer)
    assert serialized["registered_name"] == "mistral_hub>SentencePieceTokenizer"
    restored = keras.saving.deserialize_keras_object(serialized)
    assert type(restored) is SentencePieceTokenizer
    assert restored.get_config() == tokenizer.get_config()


def test_save_and_load_assets(tmp_path):
    tokenizer = SentencePieceTokenizer(mistral_test_proto())
    assert tokenizer.file_assets == ("vocabulary.spm",)
    tokenizer.save_assets(str(tmp_path))
    assert (tmp_path / "vocabulary.spm").read_bytes() == mistral_test_proto()
    restored = SentencePieceTokenizer.from_config(tokenizer.get_config())
    restored.load_assets(str(tmp_path))
    assert restored(SENTENCES) == IDS
    assert restored.proto == mistral_test_proto()


# --- the base class ---------------------------------------------------------


class CharTokenizer(Tokenizer):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._add_special_token("\x02", "start_token")
        self._add_special_token("\x03", "end_token")
        self._add_special_token("\x02", "cls_token")
        self._update_special_token_ids()

    def _encode_strings(self, texts):
        return [[ord(c) for c in text] for text in texts]

    def _decode_ids(self, ids):
        return ["".join(map(chr, seq)) for seq in ids]

    def vocabulary_size(self):
        return 128

    def get_vocabulary(self):
        return [chr(i) for i in range(128)]


def test_base_class_special_tokens():
    tokenizer = CharTokenizer()
    assert tokenizer.special_tokens == ["\x02", "\x03"]
    assert tokenizer.special_token_ids == [2, 3]
    assert tokenizer.start_token_id == 2 and tokenizer.end_token_id == 3
    assert tokenizer(["hi", "you"]) == [[104, 105], [121, 111, 117]]
    assert tokenizer.detokenize([104, 105]) == "hi"


def test_base_class_missing_special_token():
    class Bad(CharTokenizer):
        def get_vocabulary(self):
            return ["a"]

    with pytest.raises(ValueError, match="Cannot find special token"):
        Bad()


def test_base_class_is_abstract():
    tokenizer = Tokenizer()
    with pytest.raises(NotImplementedError):
        tokenizer("text")
    with pytest.raises(NotImplementedError):
        tokenizer.save_assets("/tmp")


def test_trained_vocabulary_without_special_tokens():
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(["abc"]),
        model_writer=model,
        vocab_size=5,
        pad_id=-1,
        eos_id=-1,
        bos_id=-1,
        minloglevel=2,
    )
    # The generic tokenizer registers no special tokens, so any model works.
    tokenizer = SentencePieceTokenizer(model.getvalue())
    assert tokenizer.special_tokens == [] and tokenizer.special_token_ids == []
    assert tokenizer.detokenize(tokenizer("abc")) == "abc"


def test_python_workflow_does_not_need_tensorflow():
    # A fresh interpreter in which importing TensorFlow fails.
    script = """
import sys
class BlockTensorFlow:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "tensorflow":
            raise ImportError("TensorFlow is blocked")
sys.meta_path.insert(0, BlockTensorFlow())
from mistral_hub.tokenizers import SentencePieceTokenizer
from tests.test_data import mistral_test_proto
tokenizer = SentencePieceTokenizer(mistral_test_proto(), sequence_length=5)
assert tokenizer(["the fox"]).tolist() == [[3, 6, 0, 0, 0]]
assert tokenizer.detokenize([[3, 6]]) == ["the fox"]
"""
    env = {**os.environ, "KERAS_BACKEND": "numpy"}
    root = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))
    subprocess.run([sys.executable, "-c", script], check=True, env=env, cwd=root)
