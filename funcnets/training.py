"""Train state and the pure, jit-compiled training and evaluation steps.

>>> import jax, jax.numpy as jnp, funcnets as fn
>>> model = fn.models.get("mnist_mlp")
>>> state = fn.create_train_state(model, fn.optim.sgd(lr=0.01), jax.random.key(0))
>>> images, labels = jnp.zeros((64, 28, 28, 1)), jnp.zeros((64,), jnp.int32)
>>> state, metrics = fn.train_step(state, (images, labels))
>>> sorted(metrics)
['accuracy', 'loss']

One step is ``loss, grads = value_and_grad(loss_fn . model.apply)(params)``
then ``updates, opt_state = tx.update(grads, opt_state, params)`` and
``params = params + updates``. Everything it needs travels in the state (the
model and optimizer as static fields), so ``train_step(state, batch)`` is a
pure function, compiled once per batch shape and dtype.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from flax.training import train_state

from funcnets import losses
from funcnets.models import Model, Params, _check_key

Batch = tuple[Any, Any]
Metrics = dict[str, jax.Array]


class TrainState(train_state.TrainState):
    """Flax's ``TrainState`` (``step``, ``params``, ``opt_state``, static
    ``apply_fn`` and ``tx``) plus:

    rng: PRNG key for dropout. Step ``t`` draws its masks from
      ``fold_in(rng, t)``, so the key never changes and a run restarted from a
      saved state draws the same masks as one that never stopped.
    model: the `funcnets.models.Model` (static).
    """

    rng: jax.Array
    model: Model = struct.field(pytree_node=False)


def create_train_state(model: Model, tx: optax.GradientTransformation, key: jax.Array, *,
                       params: Params | None = None, dtype=jnp.float32) -> TrainState:
    """A fresh state: ``params`` from ``model.init`` (PyTorch's init, in
    ``dtype``) unless given (e.g. ported with `funcnets.interop.params_from_torch`),
    the optimizer state from ``tx.init(params)``, and a dropout key, all from ``key``.
    """
    if not isinstance(model, Model):
        raise TypeError(f"model must be a funcnets Model (funcnets.models.get(name)), got {model!r}")
    if not isinstance(tx, optax.GradientTransformation):
        raise TypeError(f"tx must be an optax.GradientTransformation (e.g. funcnets.optim.sgd(lr=0.01)), "
                        f"got {type(tx).__name__}")
    _check_key(key, "key")
    if not jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.wrap_key_data(key)
    init_key, dropout_key = jax.random.split(key)
    if params is None:
        params = model.init(init_key, dtype)
    else:
        _check_params(model, params)
    return TrainState(step=jnp.zeros((), jnp.int32), apply_fn=model.apply, params=params, tx=tx,
                      opt_state=tx.init(params), rng=dropout_key, model=model)


def _check_params(model: Model, params) -> None:
    expected = jax.eval_shape(model.init, jax.random.key(0))
    got = jax.tree.map(lambda a: tuple(np.shape(a)), params)
    want = jax.tree.map(lambda a: a.shape, expected)
    if got != want:
        raise ValueError(f"params do not fit {model.name}: expected shapes {want}, got {got}")


def _check_batch(state: TrainState, batch, *, class_labels: bool) -> tuple[Any, Any]:
    if not isinstance(state, TrainState):
        raise TypeError(f"state must be a funcnets TrainState (funcnets.create_train_state), "
                        f"got {type(state).__name__}")
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        raise TypeError("batch must be a pair (images, labels)")
    images, labels = batch
    state.model.check_images(images, "images")
    label_shape = getattr(labels, "shape", None)
    label_dtype = getattr(labels, "dtype", None)
    if label_shape is None or label_dtype is None:
        raise TypeError(f"labels must be an array, got {type(labels).__name__}")
    if len(label_shape) < 1 or label_shape[0] != images.shape[0]:
        raise ValueError(f"labels must have one row per image: images have batch size "
                         f"{images.shape[0]}, labels have shape {tuple(label_shape)}")
    if class_labels:
        if not jnp.issubdtype(label_dtype, jnp.integer):
            raise TypeError(f"labels must be integer class indices, got dtype {label_dtype} "
                            "(for other targets pass your own loss to funcnets.make_train_step)")
        if len(label_shape) != 1:
            raise ValueError(f"labels must have shape (B,), got {tuple(label_shape)}")
        if isinstance(labels, np.ndarray) and labels.size and (
                labels.min() < 0 or labels.max() >= state.model.num_classes):
            raise ValueError(f"labels must lie in [0, {state.model.num_classes}), "
                             f"got values from {labels.min()} to {labels.max()}")
    return images, labels


def _metrics(loss, outputs, labels, class_labels: bool) -> Metrics:
    if class_labels:
        return {"loss": loss, "accuracy": losses.accuracy(outputs, labels)}
    return {"loss": loss}


def make_train_step(loss_fn: losses.LossFn | None = None) -> Callable[[TrainState, Batch],
                                                                       tuple[TrainState, Metrics]]:
    """A jitted ``train_step(state, batch) -> (state, metrics)``.

    ``loss_fn(outputs, targets) -> scalar``; by default the model's tutorial
    loss (`funcnets.losses.for_outputs`): class labels are then required, and
    the metrics are ``{"loss", "accuracy"}``. A custom loss takes any targets
    with one row per image; accuracy is reported when they are integer labels
    of shape ``(B,)``.

    The inputs are checked before tracing, so a wrong batch raises a clear
    ``ValueError``/``TypeError`` rather than an XLA error.
    """

    @jax.jit
    def step(state: TrainState, images, labels):
        objective = loss_fn or losses.for_outputs(state.model.outputs)
        dropout_key = jax.random.fold_in(state.rng, state.step)

        def loss_of(params):
            outputs = state.model.apply(params, images, train=True, rng=dropout_key)
            return objective(outputs, labels), outputs

        (loss, outputs), grads = jax.value_and_grad(loss_of, has_aux=True)(state.params)
        class_labels = labels.ndim == 1 and jnp.issubdtype(labels.dtype, jnp.integer)
        return state.apply_gradients(grads=grads), _metrics(loss, outputs, labels, class_labels)

    def train_step(state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
        images, labels = _check_batch(state, batch, class_labels=loss_fn is None)
        return step(state, images, labels)

    train_step.jitted = step
    return train_step


def make_eval_step(loss_fn: losses.LossFn | None = None) -> Callable[[TrainState, Batch], Metrics]:
    """A jitted ``eval_step(state, batch) -> metrics``: the batch's mean loss
    (and accuracy) with dropout off; ``loss_fn`` as in `make_train_step`."""

    @jax.jit
    def step(state: TrainState, images, labels):
        objective = loss_fn or losses.for_outputs(state.model.outputs)
        outputs = state.model.apply(state.params, images, train=False)
        class_labels = labels.ndim == 1 and jnp.issubdtype(labels.dtype, jnp.integer)
        return _metrics(objective(outputs, labels), outputs, labels, class_labels)

    def eval_step(state: TrainState, batch: Batch) -> Metrics:
        images, labels = _check_batch(state, batch, class_labels=loss_fn is None)
        return step(state, images, labels)

    eval_step.jitted = step
    return eval_step


train_step = make_train_step()
train_step.__doc__ = """``(state, (images, labels)) -> (state, {"loss", "accuracy"})``: one
jitted SGD-style step with the model's tutorial loss; see `make_train_step`."""
eval_step = make_eval_step()
eval_step.__doc__ = """``(state, (images, labels)) -> {"loss", "accuracy"}`` with dropout off;
see `make_eval_step`."""
