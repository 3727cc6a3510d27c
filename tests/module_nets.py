"""Small nets as researchers write them in Flax Linen, Flax NNX and Equinox, each with
batch norm and dropout, for the tests of `funcnets.bridges` (test_bridges.py, the
kill-and-resume runs of resume_run.py, the 8-device checks of parallel_devices.py)."""

import equinox as eqx
import flax.linen as nn
import jax
from flax import nnx

import funcnets as fn


class LinenBN(nn.Module):
    """Flax's conventions: ``train`` switches dropout and batch statistics on."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.Conv(4, (3, 3), padding="VALID")(x)
        x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9)(x))
        x = nn.max_pool(x, (2, 2), (2, 2)).reshape(x.shape[0], -1)
        x = nn.Dropout(0.2, deterministic=not train)(x)
        return nn.log_softmax(nn.Dense(10)(x))


class NNXBN(nnx.Module):
    """The NNX MNIST tutorial's conventions: ``rngs`` passed at the call for one
    dropout; a second dropout holds its own stream (``nnx.Dropout(rngs=...)``)."""

    def __init__(self, *, rngs: nnx.Rngs):
        self.conv = nnx.Conv(1, 4, kernel_size=(3, 3), padding="VALID", rngs=rngs)
        self.bn = nnx.BatchNorm(4, momentum=0.9, rngs=rngs)
        self.drop_call = nnx.Dropout(0.2)
        self.drop_held = nnx.Dropout(0.2, rngs=rngs)
        self.fc = nnx.Linear(4 * 13 * 13, 10, rngs=rngs)

    def __call__(self, x, rngs: nnx.Rngs | None = None):
        x = nnx.relu(self.bn(self.conv(x)))
        x = nnx.max_pool(x, (2, 2), (2, 2)).reshape(x.shape[0], -1)
        return nnx.log_softmax(self.fc(self.drop_held(self.drop_call(x, rngs=rngs))))


class EqxBN(eqx.Module):
    """Equinox's conventions: one example ``(C, H, W)``, ``state`` for batch norm, ``key`` for dropout."""

    conv: eqx.nn.Conv2d
    bn: eqx.nn.BatchNorm
    pool: eqx.nn.MaxPool2d
    drop: eqx.nn.Dropout
    fc: eqx.nn.Linear

    def __init__(self, key):
        conv_key, fc_key = jax.random.split(key)
        self.conv = eqx.nn.Conv2d(1, 4, 3, key=conv_key)
        self.bn = eqx.nn.BatchNorm(4, axis_name="batch", momentum=0.9, mode="batch")
        self.pool = eqx.nn.MaxPool2d(2, 2)
        self.drop = eqx.nn.Dropout(0.2)
        self.fc = eqx.nn.Linear(4 * 13 * 13, 10, key=fc_key)

    def __call__(self, x, state, *, key=None):
        x, state = self.bn(self.conv(x), state)
        x = self.drop(self.pool(jax.nn.relu(x)).reshape(-1), key=key)
        return jax.nn.log_softmax(self.fc(x)), state


def model_of(name: str) -> fn.models.Model:
    """``linen_bn``, ``nnx_bn`` or ``eqx_bn`` as a funcnets model of 28x28x1 images."""
    if name == "linen_bn":
        return fn.models.from_flax(LinenBN(), input_shape=(28, 28, 1), outputs="log_probs")
    if name == "nnx_bn":
        return fn.models.from_flax(NNXBN(rngs=nnx.Rngs(0)), input_shape=(28, 28, 1), outputs="log_probs")
    if name == "eqx_bn":
        module, state = eqx.nn.make_with_state(EqxBN)(jax.random.key(0))
        return fn.models.from_equinox(module, state, input_shape=(28, 28, 1), outputs="log_probs")
    raise ValueError(name)


NAMES = ("linen_bn", "nnx_bn", "eqx_bn")
