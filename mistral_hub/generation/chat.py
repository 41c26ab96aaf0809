"""Chat: a conversation through the chat template, generated, read back.

Example:

```python
from mistral_hub.models.mistral.mistral_causal_lm import MistralCausalLM

causal_lm = MistralCausalLM.from_preset("mistral_hub_demo")
reply = chat(causal_lm, [{"role": "user", "content": "Hello"}], max_new_tokens=8)
```
"""

from mistral_hub.generation.prompts import TokenizedPrompts
from mistral_hub.samplers.stop_strings import cut_at_stop_strings


def chat(causal_lm, messages, tools=None, **kwargs):
    """Answers a conversation with `causal_lm`; see `CausalLM.chat`."""
    preprocessor = causal_lm.preprocessor
    if preprocessor is None or not hasattr(preprocessor.tokenizer, "apply_chat_template"):
        raise ValueError("`chat()` needs a preprocessor whose tokenizer has a chat template.")
    if "strip_prompt" in kwargs:
        raise ValueError("`chat()` always returns only the reply; drop `strip_prompt`.")
    unbatched = bool(messages) and isinstance(messages[0], dict)
    conversations = [messages] if unbatched else messages
    if not conversations:
        raise ValueError("`messages` must be a non-empty conversation.")
    tokenizer = preprocessor.tokenizer
    if tools is None:
        prompts = [tokenizer.apply_chat_template(c) for c in conversations]
        return causal_lm.generate(
            TokenizedPrompts(prompts, unbatched), strip_prompt=True, **kwargs
        )
    if not hasattr(tokenizer, "parse_reply"):
        raise ValueError(
            f"`tools` needs a tokenizer that reads tool calls; "
            f"{type(tokenizer).__name__} has no `parse_reply()`."
        )
    prompts = [tokenizer.apply_chat_template(c, tools=tools) for c in conversations]
    # Tool calls start with a control token, which decoding to text drops:
    # read the reply from its ids.
    outputs = causal_lm.generate(
        TokenizedPrompts(prompts, unbatched, return_token_ids=True),
        strip_prompt=True,
        **kwargs,
    )
    stop_strings = kwargs.get("stop_strings")
    if isinstance(stop_strings, str):
        stop_strings = [stop_strings]
    replies = []
    for ids, mask in zip(outputs["token_ids"], outputs["padding_mask"]):
        reply = tokenizer.parse_reply(ids[mask])
        if stop_strings and reply["content"] is not None:
            reply["content"] = cut_at_stop_strings(
                reply["content"], stop_strings, kwargs.get("keep_stop_strings", False)
            )
        replies.append(reply)
    per_prompt = kwargs.get("num_return_sequences", 1)
    if per_prompt > 1:
        replies = [replies[i : i + per_prompt] for i in range(0, len(replies), per_prompt)]
    return replies[0] if unbatched else replies
