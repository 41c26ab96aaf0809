import keras
import pytest


@pytest.fixture(autouse=True, scope="session")
def cheap_xla_compilation():
    """Skips XLA's LLVM optimisations for the test session on JAX.

    The tests compile many tiny models and decode loops and run each a few
    times, so LLVM's passes dominate the suite's time; HLO-level rewrites
    still apply, and numerics stay within the parity tolerances.
    """
    if keras.config.backend() != "jax":
        yield
        return
    import jax

    previous = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", previous)
