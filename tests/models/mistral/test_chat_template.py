import re

import pytest

from mistral_hub.models.mistral.mistral_tekken_tokenizer import (
    MistralTekkenTokenizer,
)
from mistral_hub.models.mistral.mistral_tokenizer import MistralTokenizer
from tests.test_data import TEKKEN_240911_MODEL
from tests.test_data import TEKKEN_MODEL
from tests.test_data import V1_MODEL
from tests.test_data import V3_MODEL
from tests.test_data import V7_MODEL
from tests.test_data import mistral_test_proto


def system(content):
    return {"role": "system", "content": content}


def user(content):
    return {"role": "user", "content": content}


def assistant(content):
    return {"role": "assistant", "content": content}


CONVERSATION = [
    system("Be brief."),
    user("Hello"),
    assistant("Hi there!"),
    user("How are you?"),
]

# Conversations that must encode exactly like mistral-common.
CONVERSATIONS = {
    "single_turn": [user("Hello")],
    "multi_turn": [user("Hello"), assistant("Hi there!"), user("How are you?")],
    "system": CONVERSATION,
    "system_three_user_turns": [
        system("Answer in French."),
        user("One"),
        assistant("Un"),
        user("Two"),
        assistant("Deux"),
        user("Three"),
    ],
    "two_system_messages": [system("S1"), system("S2"), user("Question?")],
    "empty_system_message": [system(""), user("Question?")],
    "consecutive_user_turns": [user("A"), user("B"), assistant("C"), user("D")],
    "consecutive_assistant_turns": [
        user("A"),
        assistant("B"),
        assistant("C"),
        user("D"),
    ],
    "spaces": [user("  A  "), assistant(" B  "), user("C ")],
    "empty_user": [user("")],
    "newlines_and_code": [
        user("def f():\n    return 1\n\nExplain."),
        assistant("It returns 1.\n"),
        user("Thanks!\n"),
    ],
    "unicode": [system("Réponds en français 🇫🇷"), user("日本語？ naïve")],
    "control_token_text": [user("[INST] hi [/INST] </s> [SYSTEM_PROMPT]")],
}

# One vocabulary per chat convention (the two Tekken files both use v3).
FILES = {
    "v1": V1_MODEL,
    "v3": V3_MODEL,
    "v7": V7_MODEL,
    "tekken": TEKKEN_MODEL,
    "tekken_240911": TEKKEN_240911_MODEL,
}


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
    """`encode(convention, messages, training=False)` with mistral-common."""
    mistral = pytest.importorskip("mistral_common.tokens.tokenizers.mistral")
    from mistral_common.protocol.instruct import messages as mc_messages
    from mistral_common.protocol.instruct.request import ChatCompletionRequest
    from mistral_common.protocol.instruct.validator import ValidationMode

    classes = {
        "system": mc_messages.SystemMessage,
        "user": mc_messages.UserMessage,
        "assistant": mc_messages.AssistantMessage,
    }
    serving = {
        "v1": mistral.MistralTokenizer.v1(),
        "v3": mistral.MistralTokenizer.v3(),
        "v7": mistral.MistralTokenizer.v7(),
        "tekken": mistral.MistralTokenizer.from_file(TEKKEN_MODEL),
        "tekken_240911": mistral.MistralTokenizer.from_file(TEKKEN_240911_MODEL),
    }

    def encode(name, messages, training=False):
        tokenizer = serving[name]
        if training:  # Finetuning mode accepts an assistant message last.
            tokenizer = mistral.MistralTokenizer.from_file(
                FILES[name], mode=ValidationMode.finetuning
            )
        request = ChatCompletionRequest(
            messages=[classes[m["role"]](content=m["content"]) for m in messages]
        )
        return tokenizer.encode_chat_completion(request)

    return encode


# --- parity with mistral-common ---------------------------------------------


@pytest.mark.parametrize("conversation", list(CONVERSATIONS))
@pytest.mark.parametrize("convention", list(FILES))
def test_matches_mistral_common(ours, mistral_common, convention, conversation):
    messages = CONVERSATIONS[conversation]
    expected = mistral_common(convention, messages).tokens
    assert ours[convention].apply_chat_template(messages) == expected


@pytest.mark.parametrize("convention", list(FILES))
def test_training_example_matches_mistral_common(
    ours, mistral_common, convention
):
    messages = CONVERSATION + [assistant("Fine, thanks.  ")]
    expected = mistral_common(convention, messages, training=True).tokens
    ids = ours[convention].apply_chat_template(
        messages, add_generation_prompt=False
    )
    assert ids == expected
    assert ids[-1] == 2


@pytest.mark.parametrize("convention", list(FILES))
def test_prompt_string_matches_mistral_common_text(
    ours, mistral_common, convention
):
    # mistral-common spells SentencePiece pieces out ("▁", "<0x0A>"); with
    # them mapped back to text the strings must agree.
    for name in ["system", "consecutive_user_turns", "spaces", "empty_user"]:
        messages = CONVERSATIONS[name]
        expected = mistral_common(convention, messages).text
        expected = expected.replace("\u2581", " ").replace("<0x0A>", "\n")
        prompt = ours[convention].apply_chat_template(messages, tokenize=False)
        assert prompt == expected


def test_prompt_strings(ours):
    hello = [user("Hello")]
    assert ours["v1"].apply_chat_template(hello, tokenize=False) == (
        "<s> [INST] Hello [/INST]"
    )
    assert ours["v3"].apply_chat_template(hello, tokenize=False) == (
        "<s>[INST] Hello[/INST]"
    )
    assert ours["tekken"].apply_chat_template(hello, tokenize=False) == (
        "<s>[INST]Hello[/INST]"
    )
    assert ours["v7"].apply_chat_template(CONVERSATION, tokenize=False) == (
        "<s>[SYSTEM_PROMPT] Be brief.[/SYSTEM_PROMPT][INST] Hello[/INST]"
        " Hi there!</s>[INST] How are you?[/INST]"
    )


def test_documented_formats(ours):
    # The formats of the reference notes, piece by piece.
    v1 = ours["v1"].apply_chat_template(CONVERSATION)
    assert [ours["v1"].id_to_token(i) for i in v1][:10] == [
        "<s>", "\u2581[", "INST", "]", "\u2581Be", "\u2581brief", ".",
        "<0x0A>", "<0x0A>", "Hello",
    ]  # fmt: skip
    v3 = ours["v3"].apply_chat_template(CONVERSATION)
    assert v3[:4] == [1, 3, 23325, 4]  # The system prompt joins the LAST turn.
    assert v3.count(1) == 1 and v3.count(2) == 1


# --- which convention -------------------------------------------------------


def test_convention_is_inferred_from_the_vocabulary(ours):
    messages = [system("S"), user("Hi")]
    assert ours["v1"].apply_chat_template(messages)[1:4] == [733, 16289, 28793]
    assert ours["v3"].apply_chat_template(messages)[1] == 3
    assert ours["v7"].apply_chat_template(messages)[1] == 16  # [SYSTEM_PROMPT]
    assert ours["tekken"].apply_chat_template(messages)[1] == 3
    tiny = MistralTokenizer(mistral_test_proto())
    assert tiny.apply_chat_template([user("the fox")], tokenize=False) == (
        "<s> [INST] the fox [/INST]"
    )


def test_explicit_convention_overrides_inference(ours):
    messages = [system("S"), user("Hi")]
    v7_as_v3 = MistralTokenizer(V7_MODEL, chat_template="v3")
    assert v7_as_v3.apply_chat_template(messages) == ours[
        "v3"
    ].apply_chat_template(messages)
    tekken_as_v7 = MistralTekkenTokenizer(TEKKEN_MODEL, chat_template="v7")
    assert tekken_as_v7.apply_chat_template(messages)[:2] == [1, 17]


@pytest.mark.parametrize(
    "model, chat_template, missing",
    [(V3_MODEL, "v7", "[SYSTEM_PROMPT]"), (V1_MODEL, "v3", "[INST]")],
    ids=["v7_on_v3_vocabulary", "v3_on_v1_vocabulary"],
)
def test_convention_needs_its_control_tokens(model, chat_template, missing):
    tokenizer = MistralTokenizer(model, chat_template=chat_template)
    with pytest.raises(ValueError, match=re.escape(f"control token '{missing}'")):
        tokenizer.apply_chat_template([system("S"), user("Hi")])


# --- malformed conversations ------------------------------------------------


@pytest.mark.parametrize(
    "messages, match",
    [
        ([], "non-empty list"),
        ("Hello", "non-empty list"),
        (user("Hello"), "non-empty list"),
        (["Hello"], r"messages\[0\].*must be a dict"),
        ([{"role": "user"}], "keys 'role' and 'content'"),
        ([{"role": "function", "content": "x"}], "unknown role.*'system', 'user'"),
        ([{"role": "tool", "content": "x"}], "a tool message must follow an assistant"),
        ([{"role": "User", "content": "x"}], "unknown role"),
        ([user(None)], r"messages\[0\]` content must be a str"),
        ([user(["a"])], "content must be a str"),
        ([user("a"), assistant(3)], r"messages\[1\]` content must be a str"),
        ([assistant("Hi"), user("Hello")], "must start with a user message"),
        ([system("S"), assistant("Hi")], "must start with a user message"),
        ([user("A"), system("S"), user("B")], "system messages must come"),
        ([system("S")], "at least one user message"),
        ([user("A"), assistant("")], "must not be empty"),
        ([user("A"), assistant("B")], "nothing to generate"),
    ],
)
@pytest.mark.parametrize("convention", ["v1", "v3", "tekken"])
def test_malformed_conversations_raise(ours, convention, messages, match):
    with pytest.raises(ValueError, match=match):
        ours[convention].apply_chat_template(messages)


def test_add_generation_prompt_false_with_user_last_is_a_prompt(ours):
    messages = [user("Hello")]
    assert ours["v3"].apply_chat_template(
        messages, add_generation_prompt=False
    ) == ours["v3"].apply_chat_template(messages)


def test_needs_a_vocabulary():
    with pytest.raises(ValueError, match="No vocabulary has been set"):
        MistralTokenizer(None).apply_chat_template([user("Hi")])
