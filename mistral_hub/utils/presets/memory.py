"""Memory while loading: skipping random initial values, returning freed heap."""

import contextlib
import sys
import threading

import keras

_SKIP_INIT = threading.local()
_PATCHED_INITIALIZERS = []
_PATCH_LOCK = threading.Lock()


def _patch_initializers():
    # Wraps the random Keras initializers once; the wrapper only differs
    # from the original while `skip_random_initialization()` is active in
    # the calling thread.
    with _PATCH_LOCK:
        if _PATCHED_INITIALIZERS:
            return
        for name in ("RandomNormal", "RandomUniform", "TruncatedNormal",
                     "VarianceScaling", "Orthogonal"):
            klass = getattr(keras.initializers, name, None)
            original = getattr(klass, "__dict__", {}).get("__call__")
            if original is None:
                continue

            def call(self, shape, dtype=None, _original=original):
                if getattr(_SKIP_INIT, "depth", 0):
                    return keras.ops.zeros(shape, dtype=dtype)
                return _original(self, shape, dtype=dtype)

            klass.__call__ = call
            _PATCHED_INITIALIZERS.append(klass)


@contextlib.contextmanager
def skip_random_initialization():
    """Makes Keras' random initializers return zeros in this thread.

    Used while building a model whose every weight is about to be loaded:
    drawing random values costs time (most of a JAX `from_preset` on CPU)
    and float32 temporaries, and the values are overwritten anyway. Other
    threads are unaffected.
    """
    _patch_initializers()
    _SKIP_INIT.depth = getattr(_SKIP_INIT, "depth", 0) + 1
    try:
        yield
    finally:
        _SKIP_INIT.depth -= 1


def maybe_skip_initialization(load_weights):
    return skip_random_initialization() if load_weights else contextlib.nullcontext()


_MALLOC_TRIM = []


def trim_memory():
    """Returns freed heap memory to the OS (glibc `malloc_trim`).

    Loading frees many tensor-sized buffers between long-lived ones; glibc
    keeps them in its heap, so the process would look (and, for the OOM
    killer, be) larger than the model.
    """
    if not sys.platform.startswith("linux"):
        return
    if not _MALLOC_TRIM:
        try:
            import ctypes

            _MALLOC_TRIM.append(ctypes.CDLL("libc.so.6").malloc_trim)
        except (OSError, AttributeError):
            _MALLOC_TRIM.append(None)
    if _MALLOC_TRIM[0] is not None:
        _MALLOC_TRIM[0](0)
