import keras
import pytest


@pytest.fixture(params=[False, True], ids=["eager", "compiled"])
def compiled(request):
    """Runs a test both eagerly and inside the backend's compiler."""
    return request.param


@pytest.fixture(autouse=True)
def cheap_xla_compilation():
    """Skips XLA's LLVM optimisations while these tests run on JAX.

    Each test compiles tiny decoding loops and runs them once, so LLVM's
    passes dominate the suite's time; HLO-level rewrites still apply.
    """
    if keras.config.backend() != "jax":
        yield
        return
    import jax

    previous = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", previous)
