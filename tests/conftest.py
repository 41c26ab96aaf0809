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


@pytest.fixture(autouse=True, scope="session")
def traced_torch_decoding():
    """On torch, every decode step runs as a traced graph from its first call.

    By default a step signature's first steps run eagerly (see
    `mistral_hub.utils.backend`), and the tests' short generations would
    rarely reach the graph that longer ones run on; the eager path is the
    one `run_eagerly=True` takes, which tests cover on their own.
    """
    from mistral_hub.utils import backend

    previous = backend._EAGER_STEPS_BEFORE_TRACING
    backend._EAGER_STEPS_BEFORE_TRACING = 0
    yield
    backend._EAGER_STEPS_BEFORE_TRACING = previous
