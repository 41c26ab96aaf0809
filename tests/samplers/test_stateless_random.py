import numpy as np
from keras import ops

from mistral_hub.samplers import stateless_random


def draw(seed, index, shape=(4, 1000)):
    step_seed = stateless_random.make_seed(seed)
    step_seed = stateless_random.fold_in(step_seed, index)
    return ops.convert_to_numpy(
        stateless_random.uniform(ops.zeros(shape), step_seed)
    )


def test_uniform_is_deterministic_and_in_range():
    seed = np.array([1, 2], "int32")
    noise = draw(seed, 3)
    np.testing.assert_array_equal(noise, draw(seed, 3))
    assert noise.dtype == np.float32
    assert (noise > 0).all() and (noise < 1).all()
    assert abs(noise.mean() - 0.5) < 0.02


def test_steps_and_seeds_give_different_noise():
    seed = np.array([1, 2], "int32")
    noise = draw(seed, 3)
    assert not np.allclose(noise, draw(seed, 4))
    assert not np.allclose(noise, draw(np.array([1, 3], "int32"), 3))
    assert not np.allclose(noise, draw(np.array([-1, 2], "int32"), 3))


def test_categorical_never_samples_impossible_tokens():
    log_probs = np.array([[-np.inf, 0.0, -np.inf, 0.0]] * 256, "float32")
    seed = stateless_random.fold_in(
        stateless_random.make_seed(np.array([0, 9], "int32")), 0
    )
    samples = stateless_random.categorical(log_probs, seed)
    samples = ops.convert_to_numpy(samples)
    assert samples.dtype == np.int32
    assert set(np.unique(samples)) == {1, 3}
