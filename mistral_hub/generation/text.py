"""Generated ids back to text, cut at stop strings.

Example:
>>> from mistral_hub.samplers.stop_strings import cut_at_stop_strings
>>> cut_at_stop_strings("a cat.\\nand", ["\\n"])
'a cat.'
"""

import numpy as np

from mistral_hub.samplers.stop_strings import cut_at_stop_strings


def generated_texts(preprocessor, token_ids, output_mask, prompt_lengths, options, unbatched):
    """Decodes one generated batch as `generate()` returns it.

    Args:
        preprocessor: the task's preprocessor.
        token_ids, output_mask: `(batch, length)` generated ids and the
            mask of the positions to keep (prompt rolled out with
            `strip_prompt`).
        prompt_lengths: `(batch,)` prompt lengths.
        options: the call's `GenerationOptions`.
        unbatched: bool. Return a str (or one list of samples) rather than a
            list.

    Returns:
        A str or a list of str; with `num_return_sequences > 1`, a list of
        that many str per prompt.
    """
    if options.stop_condition is not None:
        texts = _cut_at_stop_strings(
            preprocessor, token_ids, output_mask, prompt_lengths, options
        )
    else:
        texts = preprocessor.generate_postprocess(
            {"token_ids": token_ids, "padding_mask": output_mask}
        )
    per_prompt = options.num_return_sequences
    if per_prompt > 1:
        texts = [texts[i : i + per_prompt] for i in range(0, len(texts), per_prompt)]
    return texts[0] if unbatched else texts


def _cut_at_stop_strings(preprocessor, token_ids, output_mask, prompt_lengths, options):
    # Cut the completion (not the prompt) at its first stop string; the
    # decode loop already stopped at the token that completed it.
    stop_strings, keep = options.stop_strings, options.keep_stop_strings
    if options.strip_prompt:
        completions = preprocessor.generate_postprocess(
            {"token_ids": token_ids, "padding_mask": output_mask}
        )
        return [cut_at_stop_strings(c, stop_strings, keep) for c in completions]
    in_prompt = np.arange(token_ids.shape[1])[None, :] < prompt_lengths[:, None]
    wholes, prompts, completions = (
        preprocessor.generate_postprocess(
            {"token_ids": token_ids, "padding_mask": output_mask & mask}
        )
        for mask in (True, in_prompt, ~in_prompt)
    )
    texts = []
    for whole, prompt, completion in zip(wholes, prompts, completions):
        cut = cut_at_stop_strings(completion, stop_strings, keep)
        if whole.endswith(completion):
            texts.append(whole[: len(whole) - len(completion) + len(cut)])
        else:
            texts.append(prompt + cut)
    return texts
