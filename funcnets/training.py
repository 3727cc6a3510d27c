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

import dataclasses
import functools
import threading
import warnings
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from funcnets import augment, cpu, host_memory, keys, layers, losses, optim, parallel, streams
from funcnets.models import Model, ModelState, Params, Variables

Batch = tuple[Any, Any]
Metrics = dict[str, jax.Array]


@functools.partial(jax.tree_util.register_dataclass,
                   data_fields=["step", "params", "opt_state", "rng", "model_state"],
                   meta_fields=["tx", "model", "compute_dtype"])
@dataclasses.dataclass(frozen=True)
class TrainState:
    """What a training step reads and returns (a pytree; the static fields ride
    along as metadata, so the step compiles once per model and optimizer).

    step: the number of optimizer steps taken (int32 scalar).
    params: the model's params (nested dicts of arrays).
    opt_state: ``tx``'s state.
    rng: PRNG key for dropout. Step ``t`` draws its masks from
      ``fold_in(rng, t)``, so the key never changes and a run restarted from a
      saved state draws the same masks as one that never stopped.
    tx: the ``optax.GradientTransformation`` (static).
    model: the `funcnets.models.Model` (static).
    compute_dtype: None (compute in the params' dtype), or the dtype of
      mixed-precision compute, e.g. ``jnp.bfloat16`` (static; see `create_train_state`).
    model_state: what the model keeps beside its params, not trained by the
      optimizer (batch norm's running statistics, `Model.init_state`): updated
      by each training step, read by evaluation; ``{}`` for a net without.
    """

    step: jax.Array
    params: Params
    opt_state: optax.OptState
    rng: jax.Array
    tx: optax.GradientTransformation
    model: Model
    compute_dtype: Any = None
    model_state: ModelState = dataclasses.field(default_factory=dict)

    def replace(self, **changes) -> "TrainState":
        """A copy with ``changes`` (``dataclasses.replace``)."""
        return dataclasses.replace(self, **changes)

    def apply_gradients(self, *, grads: Params) -> "TrainState":
        """``updates, opt_state = tx.update(grads, opt_state, params)``;
        ``params + updates``; ``step + 1``."""
        updates, opt_state = self.tx.update(grads, self.opt_state, self.params)
        return self.replace(step=self.step + 1, params=optax.apply_updates(self.params, updates),
                            opt_state=opt_state)


def create_train_state(model: Model, tx: optax.GradientTransformation, key: jax.Array, *,
                       params: Params | Variables | None = None, dtype=jnp.float32,
                       compute_dtype=None) -> TrainState:
    """A fresh `TrainState`: step 0, params, optimizer state, dropout key.

    ``key`` splits into the init key and the dropout key; ``params =
    model.init(init_key, dtype)`` (PyTorch's default init) unless given, and
    ``opt_state = tx.init(params)``.

    Args:
      model: a `funcnets.models.Model` (``fn.models.get(name)``, `sequential`,
        `from_flax`, `from_functions`).
      tx: an ``optax.GradientTransformation``, e.g. ``fn.optim.sgd(lr=0.01)``.
      key: a PRNG key (``jax.random.key(seed)``).
      params: start from these instead (e.g. ported with
        `funcnets.interop.params_from_torch`); their shapes are checked. For a
        net with model state, a `funcnets.models.Variables` (params and state,
        as `params_from_torch` gives for it) sets both; params alone start the
        state afresh (`Model.init_state`).
      dtype: the params' dtype when initialised here.
      compute_dtype: mixed precision: ``jnp.bfloat16`` runs the forward and
        backward passes in bfloat16 (params and images cast on the way in, the
        outputs cast back before the loss) while params, gradients and
        optimizer state stay in ``dtype``, as ``torch.autocast`` over float32
        weights does. None: compute in ``dtype``.

    Returns:
      The state; ``train_step(state, batch)`` takes it.

    >>> import jax, funcnets as fn
    >>> state = fn.create_train_state(fn.models.get("mnist_mlp"), fn.optim.sgd(lr=0.01), jax.random.key(0))
    >>> int(state.step), state.params["linear1"]["kernel"].shape
    (0, (784, 100))
    """
    if not isinstance(model, Model):
        raise TypeError(f"model must be a funcnets Model (funcnets.models.get(name)), got {model!r}")
    if not isinstance(tx, optax.GradientTransformation):
        raise TypeError(f"tx must be an optax.GradientTransformation (e.g. funcnets.optim.sgd(lr=0.01)), "
                        f"got {type(tx).__name__}")
    keys.check_key(key, "key")
    if not jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.wrap_key_data(key)
    if compute_dtype is not None:
        compute_dtype = jnp.dtype(compute_dtype)
        if not jnp.issubdtype(compute_dtype, jnp.floating):
            raise TypeError(f"compute_dtype must be a floating dtype such as jnp.bfloat16, got {compute_dtype}")
    model_state = None
    if isinstance(params, Variables):
        params, model_state = params
    if params is None:
        step, params, opt_state, dropout_key = _initial_state(model, tx, key, jnp.dtype(dtype))
    else:
        _check_params(model, params)
        step, _, opt_state, dropout_key = _initial_state(model, tx, key, None, params)
    if model_state is None:
        model_state = model.init_state(jax.tree.leaves(params)[0].dtype) if model.has_state else {}
    else:
        _check_model_state(model, model_state)
    return TrainState(step=step, params=params, opt_state=opt_state, rng=dropout_key,
                      tx=tx, model=model, compute_dtype=compute_dtype, model_state=model_state)


@functools.partial(jax.jit, static_argnums=(0, 1, 3))
def _initial_state(model: Model, tx: optax.GradientTransformation, key: jax.Array, dtype, params=None):
    """``(step 0, params, tx.init(params), dropout key)`` in one program; the params
    are ``model.init(init_key, dtype)`` unless given; ``key -> (init_key, dropout_key)``."""
    init_key, dropout_key = jax.random.split(key)
    if params is None:
        params = model.init(init_key, dtype)
    return jnp.zeros((), jnp.int32), params, tx.init(params), dropout_key


def _check_params(model: Model, params) -> None:
    expected = jax.eval_shape(model.init, jax.random.key(0))
    got = jax.tree.map(lambda a: tuple(np.shape(a)), params)
    want = jax.tree.map(lambda a: a.shape, expected)
    if got != want:
        raise ValueError(f"params do not fit {model.name}: expected shapes {want}, got {got}")


def _check_model_state(model: Model, model_state) -> None:
    expected = jax.tree.map(lambda a: a.shape, model.init_state())
    got = jax.tree.map(lambda a: tuple(np.shape(a)), model_state)
    if got != expected:
        raise ValueError(f"model state does not fit {model.name}: expected shapes {expected}, got {got}")


def check_batch(state: TrainState, batch, *, class_labels: bool) -> tuple[Any, Any]:
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


def check_transform(state: TrainState, images, labels, transform) -> None:
    """Raises a clear error, before any tracing of a step, for a ``transform`` that is
    not hashable or does not make the model's images from ``images``."""
    try:
        hash(transform)
    except TypeError:
        raise TypeError(f"transform must be hashable (it is a static argument of the compiled step), "
                        f"got {type(transform).__name__}") from None
    if not callable(transform):
        raise TypeError(f"transform must be callable, got {type(transform).__name__}")
    shape, dtype = getattr(images, "shape", None), getattr(images, "dtype", None)
    if shape is None or dtype is None or len(shape) < 1:
        raise TypeError(f"images must be an array, got {type(images).__name__}")
    made = jax.eval_shape(lambda x: augment.apply(transform, x, jax.random.key(0)),
                          jax.ShapeDtypeStruct((1, *shape[1:]), dtype))
    state.model.check_images(made, "transform(images)")
    check_batch(state, (jax.ShapeDtypeStruct((shape[0], *made.shape[1:]), made.dtype), labels), class_labels=True)


def _metrics(loss, outputs, labels, class_labels: bool) -> Metrics:
    if class_labels:
        return {"loss": loss, "accuracy": losses.accuracy(outputs, labels)}
    return {"loss": loss}


def _objective(state: TrainState, loss_fn):
    return loss_fn or losses.for_outputs(state.model.outputs)


def _has_conv(model: Model) -> bool:
    """Whether ``model`` convolves: a Conv2d layer, or (a model of one's own) a 4-D kernel."""
    if model.layers:
        return any(isinstance(spec, (layers.Conv2d, layers.ConvTranspose2d)) for _, spec in model.layers)
    return any(len(leaf.shape) == 4 for leaf in jax.tree.leaves(model.param_shapes()))


class _jit_with_options:  # noqa: N801 (used as a decorator, like jax.jit)
    """``jax.jit(fun, **jit_kwargs)``, compiled with the backend's XLA options
    (`funcnets.cpu.compiler_options`, read at each call): one jitted function per
    distinct set of options. An option this jaxlib does not know is dropped
    (for this function, with a warning)."""

    def __init__(self, fun, **jit_kwargs):
        self._fun, self._jit_kwargs = fun, jit_kwargs
        self._by_options: dict[tuple, Any] = {}
        self._unknown: set[str] = set()
        functools.update_wrapper(self, fun)

    def jitted(self, options: dict[str, str]):
        """The ``jax.jit`` of ``fun`` with these compiler options."""
        options = {k: v for k, v in options.items() if k not in self._unknown}
        key = tuple(sorted(options.items()))
        if key not in self._by_options:
            self._by_options[key] = jax.jit(self._fun, compiler_options=options or None, **self._jit_kwargs)
        return self._by_options[key]

    def lower(self, state, *args, **kwargs):
        """``jax.jit(...).lower`` with the backend's options (`compile_ahead`)."""
        return self.jitted(cpu.compiler_options()).lower(state, *args, **kwargs)

    def __call__(self, state, *args, **kwargs):
        options = cpu.compiler_options()
        try:
            return self.jitted(options)(state, *args, **kwargs)
        except Exception as error:  # an older jaxlib without the option: compile without it
            unknown = {name for name in options if name in str(error)} - self._unknown
            if not unknown:
                raise
            warnings.warn(f"this jaxlib does not know the XLA option(s) {sorted(unknown)}; compiling without",
                          RuntimeWarning, stacklevel=2)
            self._unknown |= unknown
            return self.jitted(options)(state, *args, **kwargs)


def forward(state: TrainState, params: Params, images, *, train: bool = False, rng=None) -> jax.Array:
    """``state.model.apply`` with the state's model state (`forward_with_state`), the outputs alone."""
    return forward_with_state(state, params, images, train=train, rng=rng)[0]


def forward_with_state(state: TrainState, params: Params, images, *, train: bool = False, rng=None
                       ) -> tuple[jax.Array, ModelState]:
    """``state.model.apply_with_state`` on ``state.model_state``, in ``state.compute_dtype``
    (when set; the model state stays in its own dtype, as batch norm's statistics
    stay float32 under ``torch.autocast``), the outputs returned in the params'
    dtype so that the loss is computed in it; ``(outputs, new model state)``."""
    model_state = state.model_state
    if state.compute_dtype is None:
        return state.model.apply_with_state(params, model_state, images, train=train, rng=rng)
    output_dtype = jax.tree.leaves(params)[0].dtype
    low = jax.tree.map(lambda p: p.astype(state.compute_dtype), params)
    outputs, model_state = state.model.apply_with_state(low, model_state, images.astype(state.compute_dtype),
                                                        train=train, rng=rng)
    return outputs.astype(output_dtype), model_state


def apply_step(state: TrainState, images, labels, loss_fn: losses.LossFn | None = None
               ) -> tuple[TrainState, Metrics]:
    """One training step, unjitted: the body shared by `train_step`, `train_epoch` and `fit`."""
    objective = _objective(state, loss_fn)
    dropout_key = jax.random.fold_in(state.rng, state.step)

    def loss_of(params):
        outputs, model_state = forward_with_state(state, params, images, train=True, rng=dropout_key)
        with jax.named_scope("loss"):
            return objective(outputs, labels), (outputs, model_state)

    (loss, (outputs, model_state)), grads = jax.value_and_grad(loss_of, has_aux=True)(state.params)
    class_labels = labels.ndim == 1 and jnp.issubdtype(labels.dtype, jnp.integer)
    with jax.named_scope("optimizer"):  # op names say what is the update (see funcnets.models)
        new_state = state.apply_gradients(grads=grads).replace(model_state=model_state)
    return new_state, _metrics(loss, outputs, labels, class_labels)


def make_train_step(loss_fn: losses.LossFn | str | None = None) -> Callable[[TrainState, Batch],
                                                                       tuple[TrainState, Metrics]]:
    """A jitted ``train_step(state, batch) -> (state, metrics)``.

    ``loss_fn(outputs, targets) -> scalar``; by default the model's tutorial
    loss (`funcnets.losses.for_outputs`): class labels are then required, and
    the metrics are ``{"loss", "accuracy"}``. A custom loss takes any targets
    with one row per image; accuracy is reported when they are integer labels
    of shape ``(B,)``.

    The inputs are checked before tracing, so a wrong batch raises a clear
    ``ValueError``/``TypeError`` rather than an XLA error. The state is not
    donated: the caller's old state stays usable.

    On the CPU a step changes no process-wide setting. For a loop of one's own,
    ``funcnets.host_memory.reuse_freed_blocks()`` called once gives the fast
    path that `funcnets.fit`, `train_epoch` and `evaluate` take (a conv net's
    step about 25% faster: its temporaries stop being faulted in afresh).
    """
    loss_fn = losses.resolve(loss_fn)
    step = _jit_with_options(functools.partial(apply_step, loss_fn=loss_fn))

    def train_step(state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
        images, labels = check_batch(state, batch, class_labels=loss_fn is None)
        return step(state, images, labels)

    train_step.jitted = step
    return train_step


def make_eval_step(loss_fn: losses.LossFn | str | None = None) -> Callable[[TrainState, Batch], Metrics]:
    """A jitted ``eval_step(state, batch) -> metrics``: the batch's mean loss
    (and accuracy) with dropout off; ``loss_fn`` as in `make_train_step`."""
    loss_fn = losses.resolve(loss_fn)

    @_jit_with_options
    def step(state: TrainState, images, labels):
        objective = _objective(state, loss_fn)
        outputs = forward(state, state.params, images)
        class_labels = labels.ndim == 1 and jnp.issubdtype(labels.dtype, jnp.integer)
        return _metrics(objective(outputs, labels), outputs, labels, class_labels)

    def eval_step(state: TrainState, batch: Batch) -> Metrics:
        images, labels = check_batch(state, batch, class_labels=loss_fn is None)
        return step(state, images, labels)

    eval_step.jitted = step
    return eval_step


train_step = make_train_step()
train_step.__doc__ = """``(state, (images, labels)) -> (state, {"loss", "accuracy"})``: one
jitted SGD-style step with the model's tutorial loss; see `make_train_step`."""
eval_step = make_eval_step()
eval_step.__doc__ = """``(state, (images, labels)) -> {"loss", "accuracy"}`` with dropout off;
see `make_eval_step`."""


# --- whole epochs with the data on the device ----------------------------------------

def epoch_order(num_examples: int, rng: jax.Array | None) -> jax.Array:
    """The example order of one epoch: ``jax.random.permutation(rng, n)``, or
    ``0..n-1`` when ``rng`` is None (``DataLoader(shuffle=False)``)."""
    if rng is None:
        return jnp.arange(num_examples, dtype=jnp.int32)
    return _permutation(rng, num_examples)


@functools.partial(jax.jit, static_argnums=(1,))
def _permutation(rng: jax.Array, num_examples: int) -> jax.Array:
    return jax.random.permutation(rng, num_examples).astype(jnp.int32)


def batch_index(order: jax.Array, batch_size: int, drop_last: bool = False) -> list[jax.Array]:
    """Split an epoch's order into ``[full (S, B) index matrix, ragged (r,) tail]``
    as ``DataLoader(batch_size, drop_last)`` batches it; empty parts are left out."""
    n = int(order.shape[0])
    full = n // batch_size
    parts = []
    if full:
        parts.append(order[: full * batch_size].reshape(full, batch_size))
    if n % batch_size and not drop_last:
        parts.append(order[full * batch_size:][None, :])
    return parts


def uses_scan(model: Model) -> bool:
    """Whether whole runs of steps compile into one loop program: yes,
    except where `funcnets.cpu.scan_is_slow` (conv nets on the CPU), which run a
    jitted step per batch, still without a host sync between steps."""
    return not cpu.scan_is_slow(_has_conv(model))


def _step_on_rows(state, images, labels, rows, loss_fn, transform=None):
    """`_step_on_batch` on the examples ``rows`` of a device-resident split."""
    return _step_on_batch(state, images[rows], labels[rows], loss_fn, transform)


def _step_on_batch(state, images, labels, loss_fn, transform=None):
    """`apply_step` on a batch, through ``transform`` when one is given (a random one,
    `funcnets.augment`, draws from the step's augmentation key); the metrics add
    ``"lr"``, the rate the step used, when the optimizer keeps it
    (`funcnets.optim.learning_rate`)."""
    key = augment.step_key(state.rng, state.step) if getattr(transform, "random", False) else None
    state, metrics = apply_step(state, augment.apply(transform, images, key), labels, loss_fn)
    lr = optim.learning_rate(state.opt_state)
    return state, metrics if lr is None else {**metrics, "lr": lr}


@functools.partial(_jit_with_options, static_argnames=("loss_fn", "transform"), donate_argnums=(0,))
def batch_step(state, images, labels, loss_fn=None, transform=None):
    """One training step on a batch that is already on the device (a stream's,
    `funcnets.streams`): `_step_on_batch`, jitted, the state donated."""
    return _step_on_batch(state, images, labels, loss_fn, transform)


@functools.partial(_jit_with_options, static_argnames=("loss_fn", "transform"), donate_argnums=(0,))
def _loop_steps(state, images, labels, index, count, loss_fn=None, transform=None):
    """`_step_on_rows` on each of the first ``count`` (traced) rows of ``index``, in one
    ``lax.fori_loop``: one program for every count up to ``index.shape[0]``; the
    metrics stacked per step, zeros past ``count``."""
    shapes = jax.eval_shape(lambda s, r: _step_on_rows(s, images, labels, r, loss_fn, transform)[1],
                            state, index[0])
    history = jax.tree.map(lambda m: jnp.zeros((index.shape[0], *m.shape), m.dtype), shapes)

    def body(k, carry):
        state, history = carry
        state, metrics = _step_on_rows(state, images, labels, index[k], loss_fn, transform)
        return state, jax.tree.map(lambda h, m: h.at[k].set(m), history, metrics)

    return jax.lax.fori_loop(0, count, body, (state, history))


@functools.partial(_jit_with_options, static_argnames=("loss_fn", "transform"), donate_argnums=(0,))
def _indexed_step(state, images, labels, rows, loss_fn=None, transform=None):
    return _step_on_rows(state, images, labels, rows, loss_fn, transform)


def run_steps(state: TrainState, images: jax.Array, labels: jax.Array, index: jax.Array, *,
              loss_fn: losses.LossFn | None = None, scan: bool | None = None,
              mesh: Mesh | None = None, length: int | None = None,
              transform: Callable | None = None) -> tuple[TrainState, Metrics]:
    """``index.shape[0]`` training steps, step ``k`` on the examples ``index[k]``
    of the device-resident ``images``/``labels``; metrics stacked per step
    (``"loss"``, ``"accuracy"``, and ``"lr"`` when the optimizer keeps it).

    The input state is donated (its buffers are reused): use the returned one.
    ``scan`` (default `uses_scan`) picks one loop program (``lax.fori_loop``)
    or a jitted step per row. With a ``mesh`` (state and split replicated on it, see
    `funcnets.parallel`) each step's rows are split over its ``"data"`` axis.
    ``length`` (with ``scan``): compile for runs of up to this many steps, the
    index padded to it on the host, so that runs of different lengths (an
    epoch's chunks and its shorter last one) share one program; the same steps.
    ``transform`` (hashable, traceable): applied to each step's gathered images
    inside the program, e.g. ``funcnets.data.Normalize.of(info)`` on uint8 images
    as loaded (`device_split` checks what it makes).
    """
    if scan is None:
        scan = uses_scan(state.model)
    if scan:
        count = int(index.shape[0])
        length = count if length is None else length
        state, metrics = padded_steps(state, images, labels, index, length, loss_fn=loss_fn, mesh=mesh,
                                      transform=transform)
        return state, metrics if count == length else jax.tree.map(lambda m: m[:count], metrics)
    if mesh is not None:
        # Each row placed on the mesh by itself: a row of an index already split over
        # several processes' devices could not be read here (only this process's part is).
        rows_of = np.asarray(index)
        index = [parallel.shard_rows(rows_of[k], mesh) for k in range(rows_of.shape[0])]
    history = []
    for rows in index:
        state, metrics = _indexed_step(state, images, labels, rows, loss_fn=loss_fn, transform=transform)
        history.append(metrics)
    return state, jax.tree.map(lambda *m: jnp.stack(m), *history)


def padded_steps(state: TrainState, images: jax.Array, labels: jax.Array, index, length: int, *,
                 loss_fn: losses.LossFn | None = None, mesh: Mesh | None = None,
                 transform: Callable | None = None) -> tuple[TrainState, Metrics]:
    """`run_steps` with ``scan`` and ``length``, its metrics left at ``length`` rows
    (those past ``index.shape[0]`` are zeros): for a caller that reads them on the
    host, where cutting them costs nothing (`funcnets.fit`)."""
    count = int(index.shape[0])
    if not isinstance(length, int) or isinstance(length, bool) or length < count:
        raise ValueError(f"length must be an integer >= the index's {count} rows, got {length!r}")
    rows = _pad_rows(np.asarray(index), length)
    if mesh is not None:
        rows = parallel.shard_rows(rows, mesh)
    return _loop_steps(state, images, labels, rows, np.int32(count), loss_fn=loss_fn, transform=transform)


def _pad_rows(index: np.ndarray, length: int) -> np.ndarray:
    """``index`` (steps, batch) padded to ``length`` rows with copies of its last row."""
    return np.concatenate([index, np.broadcast_to(index[-1:], (length - index.shape[0], *index.shape[1:]))])


def abstract(tree):
    """``tree``'s arrays as ``jax.ShapeDtypeStruct`` (shape, dtype, weak type; the
    default placement): what a program is compiled for, without holding the buffers."""
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, weak_type=jax.typeof(a).weak_type),
                        tree)


def compile_ahead(state_shapes: TrainState, images: jax.Array, labels: jax.Array, *,
                  ragged_rows: np.ndarray | None, length: int | None, scan: bool,
                  test: tuple[jax.Array, jax.Array] | None, test_batch_size: int,
                  transform: Callable | None = None, loss_fn: losses.LossFn | None = None) -> threading.Thread:
    """Compile, in a background thread (started; returned), the programs an epoch
    needs only at its end: the step(s) on its last, smaller batch ``ragged_rows``
    (`padded_steps` at ``length`` with ``scan``, else the jitted step) and the
    evaluation of ``test``. The calls that run them later find them compiled
    (JAX caches the traced, lowered and compiled program), as long as they run
    under the same global JAX configuration (thread-local settings, such as a
    ``with jax.default_matmul_precision(...)`` block, are not the thread's; the
    call then compiles its own). For a caller whose device is busy meanwhile
    (`funcnets.fit`, after its first chunk), which joins the thread before the
    first of these programs runs: their compilation then costs the run no wall
    time on the device's critical path. A failure here is left for the call that
    runs the program to raise."""
    work = []
    if ragged_rows is not None:
        if scan:
            padded = _pad_rows(ragged_rows, length)
            work.append(lambda: _loop_steps.lower(state_shapes, images, labels, padded, np.int32(1),
                                                  loss_fn=loss_fn, transform=transform))
        else:
            work.append(lambda: _indexed_step.lower(state_shapes, images, labels, ragged_rows[0],
                                                    loss_fn=loss_fn, transform=transform))
    if test is not None:
        work.append(lambda: _eval_split.lower(state_shapes, *test, test_batch_size, loss_fn=loss_fn,
                                              transform=transform))

    def compile_all():
        for lower in work:
            try:
                lower().compile()
            except Exception:  # noqa: BLE001 (the run's own call raises it, with its context)
                pass

    thread = threading.Thread(target=compile_all, name="funcnets-compile-ahead", daemon=True)
    thread.start()
    return thread


def device_split(state: TrainState, images, labels, batch_size: int, argument: str = "batch_size",
                  mesh: Mesh | None = None, transform: Callable | None = None):
    """``(images, labels)`` checked (`batch_size` a positive integer, the images the
    model's, or what ``transform`` makes of them, integer class labels) and put on
    the device once, or replicated on every device of ``mesh``; ``argument`` names
    the batch size in errors."""
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"{argument} must be a positive integer, got {batch_size!r}")
    if transform is not None:
        check_transform(state, images, labels, transform)
    else:
        images, labels = check_batch(state, (images, labels), class_labels=True)
    if images.shape[0] == 0:
        raise ValueError("images is empty")
    if mesh is not None:
        return parallel.replicate((images, labels), mesh)
    return jax.device_put(images), jax.device_put(labels)


def device_batch(batch, mesh: Mesh | None):
    """A host batch ``(images, labels)`` on the device: split over ``mesh``'s data axis when
    given (each process's rows its own part of the global batch), else on the default device."""
    if mesh is None:
        return jax.device_put(batch)
    shardings = (parallel.batch_sharded(mesh, batch[0].ndim), parallel.batch_sharded(mesh))
    if jax.process_count() > 1:
        return tuple(jax.make_array_from_process_local_data(s, x) for s, x in zip(shardings, batch))
    return jax.device_put(batch, shardings)


def place_state(state: TrainState, mesh: Mesh | None) -> TrainState:
    """``state`` replicated on ``mesh`` (unchanged without one)."""
    return state if mesh is None else parallel.replicate(state, mesh)


def train_epoch(state: TrainState, images, labels=None, *, batch_size: int | None = None,
                rng: jax.Array | None = None,
                drop_last: bool = False, scan: bool | None = None, mesh: Mesh | None = None,
                transform: Callable | None = None, host_malloc: str | None = None,
                loss_fn: losses.LossFn | str | None = None) -> tuple[TrainState, Metrics]:
    """One epoch over a whole split, its data put on the device once.

    Batches follow ``epoch_order(n, rng)`` as ``DataLoader(batch_size, shuffle,
    drop_last)`` cuts them: ``ceil(n / batch_size)`` steps, the last one
    smaller (``n // batch_size`` with ``drop_last``).

    Args:
      state: the train state; donated (use the returned one).
      images, labels: the split: normalised float images (NHWC) and int labels
        (or images as loaded, with ``transform``); or ``images`` a stream of
        batches and no ``labels`` (`funcnets.streams`: one pass, in its order,
        each batch put on the device a step ahead; ``rng``, ``drop_last`` and
        ``scan`` are the arrays path's).
      batch_size: examples per step (a stream's batches set their own).
      rng: the key of this epoch's order; None: ``0..n-1`` (``shuffle=False``).
      drop_last: leave out the last, smaller batch.
      scan: one loop program (True) or a jitted step per batch (False);
        default `uses_scan`.
      mesh: data-parallel over this mesh's devices (`funcnets.parallel.data_mesh`),
        the same batches as on one device; ``batch_size`` must divide by the
        device count.
      transform: applied to each batch of images inside the compiled step, e.g.
        ``funcnets.data.Normalize.of(info)`` for uint8 images as loaded (hashable).
      host_malloc: on the CPU, None or ``"reuse"`` keeps freed blocks in the
        process for the next step (`funcnets.host_memory`; process-wide, said
        once on standard error); ``"system"`` leaves ``malloc`` alone.
      loss_fn: the loss on class labels, a function or a name with its options bound
        (`funcnets.losses.create`, e.g. ``cross_entropy`` with ``label_smoothing``);
        default the model's (`funcnets.losses.for_outputs`).

    Returns:
      ``(state, metrics)``: per-step ``"loss"`` and ``"accuracy"`` arrays, and
      ``"lr"`` when the optimizer keeps it (`run_steps`).

    >>> import jax, jax.numpy as jnp, funcnets as fn
    >>> state = fn.create_train_state(fn.models.get("mnist_mlp"), fn.optim.sgd(lr=0.01), jax.random.key(0))
    >>> images, labels = jnp.zeros((100, 28, 28, 1)), jnp.zeros((100,), jnp.int32)
    >>> state, metrics = fn.train_epoch(state, images, labels, batch_size=32, rng=jax.random.key(1))
    >>> metrics["loss"].shape, int(state.step)
    ((4,), 4)
    """
    loss_fn = losses.resolve(loss_fn)
    if streams.is_stream(images) and labels is None:
        return _train_stream(state, streams.Stream(images, "images"), mesh, transform, loss_fn, host_malloc)
    if batch_size is None:
        raise TypeError("train_epoch() needs batch_size for a whole split (a stream's batches set their own)")
    if mesh is not None:
        parallel.check_batch_size(batch_size, mesh)
    images, labels = device_split(state, images, labels, batch_size, mesh=mesh, transform=transform)
    if rng is not None:
        keys.check_key(rng, "rng")
    host_memory.for_cpu_steps(host_malloc, host_memory.say_on_stderr)
    state = place_state(state, mesh)
    history = []
    for index in batch_index(np.asarray(epoch_order(images.shape[0], rng)), batch_size, drop_last):
        state, metrics = run_steps(state, images, labels, index, scan=scan, mesh=mesh, transform=transform,
                                   loss_fn=loss_fn)
        history.append(metrics)
    return state, jax.tree.map(lambda *m: jnp.concatenate(m), *history)


def _train_stream(state: TrainState, stream: streams.Stream, mesh, transform, loss_fn, host_malloc):
    """`train_epoch` over one pass of a stream (`batch_step` per batch, the next batch
    copied to the device meanwhile): ``(state, per-step metrics)``."""
    host_memory.for_cpu_steps(host_malloc, host_memory.say_on_stderr)
    state = place_state(state, mesh)

    def put(batch, index=[0]):   # noqa: B006 (the producer thread's batch counter)
        index[0] += 1
        images, labels = streams.as_batch(batch, index[0], stream.argument)
        if index[0] == 1:
            if transform is not None:
                check_transform(state, images, labels, transform)
            else:
                state.model.check_images(images, "images")
        return device_batch((images, labels.astype(np.int32)), mesh)

    history = []
    for images, labels in streams.prefetch(stream.iterator(0), put):
        state, metrics = batch_step(state, images, labels, loss_fn=loss_fn, transform=transform)
        history.append(metrics)
    if not history:
        raise streams.StreamError(f"{stream.argument}: the stream gave no batch")
    return state, jax.tree.map(lambda *m: jnp.stack(m), *history)


def _batch_sums(state, images, labels, loss_fn, transform=None):
    """A batch's summed loss (mean loss times its size) and its count of correct answers."""
    outputs = forward(state, state.params, augment.apply(augment.for_evaluation(transform), images))
    loss = _objective(state, loss_fn)(outputs, labels)
    return loss * labels.shape[0], jnp.sum(jnp.argmax(outputs, axis=-1) == labels)


@functools.partial(_jit_with_options, static_argnames=("loss_fn", "transform"))
def _eval_sums(state, images, labels, loss_fn=None, transform=None):
    return _batch_sums(state, images, labels, loss_fn, transform)


@functools.partial(_jit_with_options, static_argnames=("batch_size", "loss_fn", "transform"))
def _eval_split(state, images, labels, batch_size: int, loss_fn=None, transform=None):
    """Every batch's `_batch_sums` over a whole split, in one program: the full batches
    under ``lax.map``, the ragged last one after them; two ``(num_batches,)`` arrays."""
    n = labels.shape[0]
    full = n // batch_size
    sums = []
    if full:
        batched = (images[:full * batch_size].reshape(full, batch_size, *images.shape[1:]),
                   labels[:full * batch_size].reshape(full, batch_size, *labels.shape[1:]))
        sums.append(jax.lax.map(lambda batch: _batch_sums(state, *batch, loss_fn, transform), batched))
    if n % batch_size:
        tail = _batch_sums(state, images[full * batch_size:], labels[full * batch_size:], loss_fn, transform)
        sums.append(jax.tree.map(lambda x: x[None], tail))
    return jax.tree.map(lambda *parts: jnp.concatenate(parts), *sums)


def _evaluate_stream(state: TrainState, stream: streams.Stream, mesh, transform, loss_fn) -> dict[str, float]:
    """`evaluate` over one pass of a stream: each batch's loss times its size and its correct
    answers, summed in float64 on the host, over all its examples."""
    state = place_state(state, mesh)

    def put(batch, index=[0]):   # noqa: B006 (the producer thread's batch counter)
        index[0] += 1
        images, labels = streams.as_batch(batch, index[0], stream.argument)
        return device_batch((images, labels.astype(np.int32)), mesh), labels.shape[0]

    sums, n = [], 0
    for (images, labels), size in streams.prefetch(stream.iterator(0), put):
        sums.append(_eval_sums(state, images, labels, loss_fn=loss_fn, transform=transform))
        n += size
    if not n:
        raise streams.StreamError(f"{stream.argument}: the stream gave no batch to evaluate")
    loss_sum, correct = (np.asarray(part, np.float64).sum() for part in zip(*jax.device_get(sums)))
    return {"loss": float(loss_sum / n), "accuracy": float(correct / n)}


def evaluate(state: TrainState, images, labels=None, *, batch_size: int = 1000, mesh: Mesh | None = None,
             transform: Callable | None = None, host_malloc: str | None = None,
             loss_fn: losses.LossFn | str | None = None) -> dict[str, float]:
    """Loss and accuracy over a whole split, dropout off::

        loss = sum_b |b| * mean_loss(b) / n,   accuracy = sum_b correct(b) / n

    over batches ``b`` of ``batch_size`` (the last one smaller), so the ragged
    batch counts exactly as its examples; the sums accumulate in float64 on
    the host.

    Args:
      state: the train state (not donated).
      images, labels: the split: normalised float images (NHWC) and int labels
        (or images as loaded, with ``transform``); or ``images`` a stream of
        ``(images, labels)`` batches and no ``labels`` (`funcnets.streams`; its
        batches are the evaluation's).
      batch_size: examples per forward pass (the tutorials' test batch size).
      mesh: split the batches that divide by its device count over it.
        Without one, the whole split is one program (``lax.map`` over the batches).
      transform: applied to each batch of images inside the program (as in `train_epoch`).
      host_malloc: as in `train_epoch`.
      loss_fn: as in `train_epoch` (a batch's loss counts times its size).

    Returns:
      ``{"loss": float, "accuracy": float}``.

    >>> import jax, jax.numpy as jnp, funcnets as fn
    >>> state = fn.create_train_state(fn.models.get("mnist_mlp"), fn.optim.sgd(lr=0.01), jax.random.key(0))
    >>> scores = fn.evaluate(state, jnp.zeros((10, 28, 28, 1)), jnp.zeros((10,), jnp.int32), batch_size=4)
    >>> sorted(scores)
    ['accuracy', 'loss']
    """
    loss_fn = losses.resolve(loss_fn)
    if streams.is_stream(images) and labels is None:
        return _evaluate_stream(state, streams.Stream(images, "images"), mesh, transform, loss_fn)
    images, labels = device_split(state, images, labels, batch_size, mesh=mesh, transform=transform)
    host_memory.for_cpu_steps(host_malloc, host_memory.say_on_stderr)
    state = place_state(state, mesh)
    n = images.shape[0]
    if mesh is None:
        sums = [_eval_split(state, images, labels, batch_size, loss_fn=loss_fn, transform=transform)]
    else:
        sums = []
        for i in range(0, n, batch_size):
            batch = images[i:i + batch_size], labels[i:i + batch_size]
            if batch[1].shape[0] % mesh.shape[parallel.DATA_AXIS] == 0:
                batch = jax.device_put(batch, (parallel.batch_sharded(mesh, batch[0].ndim),
                                               parallel.batch_sharded(mesh)))
            sums.append(_eval_sums(state, *batch, loss_fn=loss_fn, transform=transform))
    sums = jax.device_get(sums)   # one host sync for the whole split
    loss_sum, correct = (np.asarray(np.concatenate([np.atleast_1d(p) for p in part]), np.float64).sum()
                         for part in zip(*sums))
    return {"loss": float(loss_sum / n), "accuracy": float(correct / n)}
