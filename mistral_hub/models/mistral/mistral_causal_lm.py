import keras
from keras import ops

from mistral_hub.models.causal_lm import CausalLM
from mistral_hub.models.mistral.mistral_backbone import MistralBackbone
from mistral_hub.models.mistral.mistral_causal_lm_preprocessor import (
    MistralCausalLMPreprocessor,
)
from mistral_hub.models.mistral.mistral_transformer_decoder import (
    compute_attention_mask,
)
from mistral_hub.samplers.logits_processors import chain
from mistral_hub.utils.tensor_utils import host_callback


@keras.saving.register_keras_serializable(package="mistral_hub")
class MistralCausalLM(CausalLM):
    """Mistral for causal language modeling: `generate()`, `fit()`, `score()`.

    Logits come from the backbone's untied output embedding. Generation keeps
    one KV cache per layer, bounded by the sliding window when there is one
    (a rolling buffer), prefills only up to the shortest prompt (rounded to a
    bucket) and runs the whole decode loop compiled: `jax.jit` on JAX,
    `tf.function` on TensorFlow, and in-place cache updates on torch.

    Args:
        backbone: A `MistralBackbone`.
        preprocessor: A `MistralCausalLMPreprocessor`, or None to feed token
            tensors directly.
        **kwargs: `name`, and `compile=False` to skip default compilation.

    Example:
    >>> import numpy as np
    >>> backbone = MistralBackbone(
    ...     vocabulary_size=64, num_layers=1, num_query_heads=2,
    ...     hidden_dim=16, intermediate_dim=32, num_key_value_heads=1,
    ...     sliding_window=8,
    ... )
    >>> causal_lm = MistralCausalLM(backbone)
    >>> prompt = {
    ...     "token_ids": np.array([[1, 5, 9, 0, 0, 0]], "int32"),
    ...     "padding_mask": np.array([[1, 1, 1, 0, 0, 0]], "int32"),
    ... }
    >>> output = causal_lm.generate(prompt, stop_token_ids=None)
    >>> output["token_ids"].shape
    (1, 6)
    """

    backbone_cls = MistralBackbone
    preprocessor_cls = MistralCausalLMPreprocessor

    def __init__(self, backbone, preprocessor=None, **kwargs):
        self.backbone = backbone
        self.preprocessor = preprocessor
        inputs = backbone.input
        hidden_states = backbone(inputs)
        logits = backbone.token_embedding(hidden_states, reverse=True)
        super().__init__(inputs=inputs, outputs=logits, **kwargs)

    def call_with_cache(self, token_ids, cache, cache_update_index):
        """Runs `token_ids` through the model, reading and writing the cache.

        Args:
            token_ids: `(batch, T)` ids at absolute positions
                `cache_update_index ... cache_update_index + T - 1` (`T` is 1
                when decoding).
            cache: tuple with one `(batch, 2, cache_length, kv_heads,
                head_dim)` tensor per layer. Position `p` lives in slot
                `p % cache_length`, so the cache can be shorter than the
                sequence (a rolling buffer at least as long as the window).
            cache_update_index: int or 0-d tensor.

        Returns:
            `(logits, hidden_states, cache)`.
        """
        x = self.backbone.token_embedding(token_ids)
        attention_mask = compute_attention_mask(
            ops.shape(token_ids)[1],
            ops.shape(cache[0])[2],
            start_index=cache_update_index,
            sliding_window=self.backbone.sliding_window,
        )
        updated_cache = []
        for layer, layer_cache in zip(self.backbone.transformer_layers, cache):
            x, layer_cache = layer(
                x,
                decoder_attention_mask=attention_mask,
                self_attention_cache=layer_cache,
                self_attention_cache_update_index=cache_update_index,
            )
            updated_cache.append(layer_cache)
        hidden_states = self.backbone.layer_norm(x)
        logits = self.backbone.token_embedding(hidden_states, reverse=True)
        return logits, hidden_states, tuple(updated_cache)

    def cache_length(self, sequence_length):
        """KV cache slots needed to generate up to `sequence_length` tokens."""
        window = self.backbone.sliding_window
        return sequence_length if window is None else min(window, sequence_length)

    def _build_cache(self, token_ids, index, cache_length):
        """Prefills the cache from `token_ids`, keeping positions `< index`.

        Runs the prefix once with full causal/window attention and no logits,
        then gathers the keys/values of the last `cache_length` positions
        before `index` into their rolling-buffer slots.

        Args:
            token_ids: `(batch, P)` prefix ids, `P >= index`.
            index: 0-d int tensor, the first position decoding will write.
            cache_length: int, slots per layer.

        Returns:
            `(hidden_states (batch, P, hidden), cache)`.
        """
        batch_size, prefill_length = ops.shape(token_ids)[0], ops.shape(token_ids)[1]
        backbone = self.backbone
        shape = (
            batch_size,
            2,
            prefill_length,
            backbone.num_key_value_heads,
            backbone.resolved_head_dim,
        )
        x = backbone.token_embedding(token_ids)
        attention_mask = compute_attention_mask(
            prefill_length,
            prefill_length,
            sliding_window=backbone.sliding_window,
        )
        # Slot s of a rolling buffer holds the latest position p < index with
        # p % cache_length == s; negative positions are never attended to.
        last = index - 1
        positions = last - ops.mod(last - ops.arange(cache_length, dtype="int32"), cache_length)
        positions = ops.clip(positions, 0, prefill_length - 1)
        cache = []
        for layer in backbone.transformer_layers:
            x, prefill_cache = layer(
                x,
                decoder_attention_mask=attention_mask,
                self_attention_cache=ops.zeros(shape, dtype=self.compute_dtype),
                self_attention_cache_update_index=0,
            )
            cache.append(ops.take(prefill_cache, positions, axis=2))
        return backbone.layer_norm(x), tuple(cache)

    def generate_step(
        self,
        inputs,
        stop_token_ids=None,
        sampler=None,
        seed=None,
        prefill_length=None,
        stream_callback=None,
        logits_processors=(),
        stop_condition=None,
    ):
        """Generates one batch of token ids; the compiled part of `generate()`.

        Args:
            inputs: dict of `(batch, T)` right-padded `token_ids` and
                `padding_mask`.
            stop_token_ids: None or a tuple of ids that end a row.
            sampler: the sampler (defaults to the compiled one).
            seed: optional `(2,)` int seed tensor for the sampler.
            prefill_length: int, how many leading positions to prefill in
                one pass (at least the shortest prompt); defaults to `T`.
            stream_callback: optional Python `fn(position, token_ids)`
                called from inside the loop with each position's `(batch,)`
                ids as soon as they are final (all but the last position;
                `generate()` reports that one after the loop).
            logits_processors: callables
                `(logits, token_ids, index, prompt_mask) -> logits` applied
                in order at every step.
            stop_condition: optional `fn(token_ids, index) -> (batch,) bool`
                evaluated after each step; True ends that row (used for stop
                strings).

        Returns:
            A dict of `token_ids` and a bool `padding_mask` that is True up
            to and including each row's first generated stop token.
        """
        sampler = sampler or self.sampler
        token_ids = ops.convert_to_tensor(inputs["token_ids"], "int32")
        padding_mask = ops.cast(inputs["padding_mask"], "bool")
        batch_size, max_length = ops.shape(token_ids)[0], ops.shape(token_ids)[1]
        prefill_length = prefill_length or max_length
        index = ops.min(ops.sum(ops.cast(padding_mask, "int32"), axis=-1))

        hidden_states, cache = self._build_cache(
            token_ids[:, :prefill_length], index, self.cache_length(max_length)
        )
        if prefill_length < max_length:
            hidden_states = ops.pad(
                hidden_states, ((0, 0), (0, max_length - prefill_length), (0, 0))
            )

        def next(prompt, cache, index):
            cache_update_index = index - 1
            prompt = ops.slice(prompt, [0, cache_update_index], [batch_size, 1])
            if stream_callback is not None:
                host_callback(stream_callback, cache_update_index, prompt[:, 0])
            logits, hidden_states, cache = self.call_with_cache(
                prompt, cache, cache_update_index
            )
            return ops.squeeze(logits, axis=1), ops.squeeze(hidden_states, axis=1), cache

        extra = {}
        if logits_processors:
            extra["logits_processor"] = chain(logits_processors, padding_mask)
        if stop_condition is not None:
            extra["stop_condition"] = stop_condition
        token_ids = sampler(
            next=next,
            prompt=token_ids,
            cache=cache,
            index=index,
            mask=padding_mask,
            stop_token_ids=stop_token_ids,
            hidden_states=hidden_states,
            model=self,
            seed=seed,
            **extra,
        )
        if isinstance(token_ids, tuple):
            raise ValueError(
                "`generate()` returns one sequence per prompt; use a "
                "`BeamSampler` with `return_all_beams=False`."
            )

        if stop_token_ids is not None:
            stop_ids = ops.convert_to_tensor(list(stop_token_ids), dtype="int32")
            is_stop = ops.any(ops.equal(token_ids[:, :, None], stop_ids), axis=-1)
            is_stop = ops.logical_and(is_stop, ops.logical_not(padding_mask))
            is_stop = ops.cast(is_stop, "int32")
            after_stop = ops.cumsum(is_stop, axis=-1) - is_stop
            padding_mask = ops.equal(after_stop, 0)
        else:
            padding_mask = ops.ones_like(token_ids, dtype="bool")
        return {"token_ids": token_ids, "padding_mask": padding_mask}

    def score(
        self,
        token_ids,
        padding_mask=None,
        scoring_mode="logits",
        layer_intercept_fn=None,
        target_ids=None,
    ):
        """Scores token sequences, as keras_hub's `score()`.

        Args:
            token_ids: `(batch, T)` int ids.
            padding_mask: `(batch, T)` mask; defaults to all ones.
            scoring_mode: `"logits"` for `(batch, T, vocab)` logits or
                `"loss"` for the `(batch, T)` per-token cross-entropy of
                `target_ids`.
            layer_intercept_fn: optional `fn(x, i)` applied to the embeddings
                (`i = -1`) and to the output of every decoder layer `i`; its
                return value replaces `x`.
            target_ids: `(batch, T)` int ids, required for `"loss"`.

        Returns:
            Logits or per-token losses.
        """
        if scoring_mode not in ("logits", "loss"):
            raise ValueError(
                '`scoring_mode` must be "logits" or "loss". '
                f"Received: {scoring_mode!r}"
            )
        if scoring_mode == "loss" and target_ids is None:
            raise ValueError('`scoring_mode="loss"` needs `target_ids`.')
        token_ids = ops.convert_to_tensor(token_ids, "int32")
        if padding_mask is None:
            padding_mask = ops.ones_like(token_ids)
        intercept = layer_intercept_fn or (lambda x, i: x)
        x = intercept(self.backbone.token_embedding(token_ids), -1)
        for i, layer in enumerate(self.backbone.transformer_layers):
            x = intercept(layer(x, decoder_padding_mask=padding_mask), i)
        logits = self.backbone.token_embedding(self.backbone.layer_norm(x), reverse=True)
        if scoring_mode == "logits":
            return logits
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None)
        return loss(ops.convert_to_tensor(target_ids, "int32"), logits)
