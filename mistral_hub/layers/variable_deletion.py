"""Deleting a layer's variable without a garbage collection each time.

Keras' `Layer.__delattr__` runs a full `gc.collect()` after it deletes a
variable attribute, so that buffers held in reference cycles are freed
promptly. `quantize()` deletes the float kernel of every layer it converts:
one full collection per layer, about 0.2 s each once torch is imported.
That was 5.6 of the 5.7 s that quantizing the 1.3M-parameter demo model to
int8 took on torch, and a 7B model has 225 such layers.
`collect_garbage_after` runs the collection once instead, when a whole model
is done.
"""

import contextlib
import gc

import keras


class DeferredVariableDeletion:
    """Mixin for a Keras layer: deletes variables without `gc.collect()`.

    The variable is untracked and removed exactly as Keras' `Layer` does;
    `quantize()` of a model made of these layers collects once at the end
    (see `collect_garbage_after`).
    """

    def __delattr__(self, name):
        value = getattr(self, name, None)
        if not isinstance(value, keras.Variable):
            super().__delattr__(name)
            return
        self._untrack_variable(value)
        # What `Layer.__delattr__` does after untracking, but its collection.
        super(keras.layers.Layer, self).__delattr__(name)


@contextlib.contextmanager
def collect_garbage_after():
    """Runs one `gc.collect()` when the block ends, even if it fails."""
    try:
        yield
    finally:
        gc.collect()
