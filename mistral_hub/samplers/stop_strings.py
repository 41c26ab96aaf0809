"""Stop strings matched on decoded bytes inside the compiled decode loop."""

import numpy as np
from keras import ops


class StopStringMatcher:
    """Detects when the newest token completes one of `stop_strings`.

    Works on the UTF-8 bytes each token decodes to (SentencePiece `▁` as a
    space, byte-fallback pieces as their byte, control tokens as nothing),
    so a stop string spanning several tokens is found, as with
    transformers' `StopStringCriteria`: generation stops at the token in
    which a stop string ends, even when that token continues past it.

    Args:
        token_bytes: list with the bytes of every token id.
        stop_strings: list of non-empty str.

    Example:
    >>> matcher = StopStringMatcher([b"", b" a", b"b", b"c\\n"], ["ab"])
    >>> import numpy as np
    >>> token_ids = np.array([[1, 2, 3]], "int32")  # " a", "b", "c\\n"
    >>> matcher(token_ids, 1).tolist()  # " ab" ends in token 2, "b".
    [True]
    >>> matcher(token_ids, 2).tolist()  # Not in the newest token, "c\\n".
    [False]
    """

    def __init__(self, token_bytes, stop_strings):
        if isinstance(stop_strings, str):
            stop_strings = [stop_strings]
        if not stop_strings or any(
            not isinstance(s, str) or not s for s in stop_strings
        ):
            raise ValueError(
                "`stop_strings` must be a non-empty list of non-empty strings. "
                f"Received: {stop_strings!r}"
            )
        self.stop_strings = list(stop_strings)
        encoded = [s.encode("utf-8") for s in self.stop_strings]
        self._max_token_length = max(1, max(len(b) for b in token_bytes))
        table = np.full((len(token_bytes), self._max_token_length), -1, "int32")
        for i, piece in enumerate(token_bytes):
            table[i, : len(piece)] = list(piece)
        self._token_table = table
        self._token_lengths = np.array([len(b) for b in token_bytes], "int32")
        self._stops = encoded

    def __call__(self, token_ids, index):
        """Whether the token at position `index` completes a stop string.

        Args:
            token_ids: `(batch, length)` int tensor; positions `<= index` are
                final.
            index: int or 0-d int tensor.

        Returns:
            A `(batch,)` bool tensor.
        """
        matched = None
        for stop in self._stops:
            hit = self._ends_with_stop(token_ids, index, stop)
            matched = hit if matched is None else ops.logical_or(matched, hit)
        return matched

    def _ends_with_stop(self, token_ids, index, stop):
        stop_length = len(stop)
        max_token_length = self._max_token_length
        # Each token that contributes to the match adds at least one byte,
        # so the stop string lies within the last `stop_length` tokens.
        lookback = stop_length
        tail_length = stop_length + max_token_length - 1

        offsets = ops.arange(lookback, dtype="int32") - (lookback - 1)
        positions = index + offsets
        valid = positions >= 0
        ids = ops.take(token_ids, ops.maximum(positions, 0), axis=1)
        table = ops.convert_to_tensor(self._token_table)
        lengths = ops.take(ops.convert_to_tensor(self._token_lengths), ids, axis=0)
        lengths = ops.where(valid[None, :], lengths, 0)
        pieces = ops.take(table, ids, axis=0)

        # Bytes after token k (counting from the end of the sequence).
        after = ops.flip(ops.cumsum(ops.flip(lengths, axis=1), axis=1), axis=1) - lengths
        from_end = ops.arange(tail_length, dtype="int32")[None, :, None]
        start = after[:, None, :]
        covers = ops.logical_and(from_end >= start, from_end < start + lengths[:, None, :])
        within = lengths[:, None, :] - 1 - (from_end - start)
        within = ops.clip(within, 0, max_token_length - 1)
        candidates = ops.take_along_axis(
            ops.broadcast_to(
                pieces[:, None, :, :],
                (ops.shape(pieces)[0], tail_length, lookback, max_token_length),
            ),
            within[..., None],
            axis=3,
        )[..., 0]
        tail = ops.max(ops.where(covers, candidates, -2), axis=2)

        # The stop string must end inside the newest token: at from-end byte
        # offset e < length of that token.
        ends = np.arange(max_token_length)[:, None]
        reversed_stop = np.frombuffer(stop[::-1], dtype=np.uint8).astype("int32")
        gather = ends + np.arange(stop_length)[None, :]
        window = ops.take(tail, ops.convert_to_tensor(gather.astype("int32")), axis=1)
        equal = ops.all(ops.equal(window, reversed_stop[None, None, :]), axis=-1)
        in_last_token = ops.arange(max_token_length, dtype="int32")[None, :] < lengths[:, -1:]
        return ops.any(ops.logical_and(equal, in_last_token), axis=-1)


def cut_at_stop_strings(text, stop_strings, keep_stop_string=False):
    """Cuts `text` at the first occurrence of any stop string.

    Args:
        text: the generated text (without the prompt).
        stop_strings: list of str.
        keep_stop_string: bool, keep the stop string itself.

    Returns:
        The text up to (or through) the earliest stop string.
    """
    best = None
    for stop in stop_strings:
        position = text.find(stop)
        if position >= 0 and (best is None or position < best[0]):
            best = (position, len(stop))
    if best is None:
        return text
    return text[: best[0] + (best[1] if keep_stop_string else 0)]
