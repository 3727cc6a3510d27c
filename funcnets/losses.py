"""``torch.nn.functional``'s losses, with PyTorch's definitions, options and defaults.

All take ``(outputs, targets)`` first and return a scalar (or, with
``reduction="none"``, one value per example or element), so any of them (or
your own function of that form) can be given to `funcnets.make_train_step`,
``fit(loss_fn=...)``, `funcnets.train_epoch` and `funcnets.evaluate`. Options
bind with `create` (``create("cross_entropy", label_smoothing=0.1)``), which
returns the same function object for the same options, so compiled steps are
reused. Each loss and option is tested against ``torch.nn.functional`` in float64.

=============================================  ===========================================
loss                                           targets
=============================================  ===========================================
`nll_loss`, `cross_entropy`                    class labels ``(B,)`` (or, for
                                               `cross_entropy`, class probabilities ``(B, K)``)
`binary_cross_entropy`, `..._with_logits`      floats in [0, 1], the outputs' shape
`mse_loss`, `l1_loss`, `smooth_l1_loss`,       floats, the outputs' shape
`huber_loss`
`kl_div`                                       probabilities (or log-probabilities)
=============================================  ===========================================

Losses whose targets are not class labels train through `funcnets.make_train_step`
(batches of ``(images, targets)``), as the README's custom-loss example does.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp

LossFn = Callable[[jax.Array, jax.Array], jax.Array]
_REDUCTIONS = ("mean", "sum", "none")


def _check_reduction(reduction: str, allowed=_REDUCTIONS) -> None:
    if reduction not in allowed:
        raise ValueError(f"{reduction} is not a valid value for reduction (one of {', '.join(allowed)})")


def _reduce(values: jax.Array, reduction: str) -> jax.Array:
    _check_reduction(reduction)
    if reduction == "mean":
        return jnp.mean(values)
    return jnp.sum(values) if reduction == "sum" else values


def _like(value, shape) -> jax.Array:
    """``value`` broadcast to ``shape`` as PyTorch broadcasts (trailing axes), explicitly."""
    return jnp.broadcast_to(jnp.asarray(value), shape)


def _picked(log_probs: jax.Array, labels: jax.Array, ignore_index: int):
    """``(log_probs[i, labels[i]], kept[i])``: ignored rows pick class 0 and are masked."""
    labels = labels.astype(jnp.int32)
    kept = labels != ignore_index
    safe = jnp.where(kept, labels, 0)
    return jnp.take_along_axis(log_probs, safe[:, None], axis=-1)[:, 0], kept, safe


def nll_loss(log_probs: jax.Array, labels: jax.Array, weight: jax.Array | None = None, ignore_index: int = -100,
             reduction: str = "mean") -> jax.Array:
    """``F.nll_loss``: ``l_i = -w[y_i] log_probs[i, y_i]`` over the rows whose label is not
    ``ignore_index``; ``"mean"`` divides their sum by ``sum_i w[y_i]`` (by their count
    without ``weight``), as PyTorch does.

    log_probs: ``(B, K)`` log-probabilities; labels: ``(B,)`` integers in ``[0, K)``
    (or ``ignore_index``); weight: ``(K,)`` class weights.
    """
    _check_reduction(reduction)
    picked, kept, safe = _picked(log_probs, labels, ignore_index)
    scale = jnp.ones_like(picked) if weight is None else jnp.asarray(weight, picked.dtype)[safe]
    scale = jnp.where(kept, scale, 0.0)
    losses = -picked * scale
    if reduction == "mean":
        return jnp.sum(losses) / jnp.sum(scale)
    return jnp.sum(losses) if reduction == "sum" else losses


def cross_entropy(logits: jax.Array, labels: jax.Array, weight: jax.Array | None = None, ignore_index: int = -100,
                  reduction: str = "mean", label_smoothing: float = 0.0) -> jax.Array:
    """``F.cross_entropy``: `nll_loss` of ``log_softmax(logits)``; with ``label_smoothing = e``
    over ``K`` classes, ``(1 - e) nll + e / K * s`` where ``s_i = -sum_c w_c log_softmax_ic``
    (reduced as the NLL: the ``"mean"`` of both divides by ``sum_i w[y_i]``).

    ``labels`` may also be class probabilities ``(B, K)``: ``l_i = -sum_c w_c q_ic
    log_softmax_ic`` with ``q`` smoothed to ``(1 - e) q + e / K``, ``"mean"`` over rows.
    ``log_softmax`` of log-probabilities returns them unchanged (their ``logsumexp`` is
    0), so this is also the loss for a net that ends in ``log_softmax``.
    """
    _check_reduction(reduction)
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"label_smoothing must be between 0.0 and 1.0. Got: {label_smoothing}")
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    classes = log_probs.shape[-1]
    w = None if weight is None else jnp.asarray(weight, log_probs.dtype)
    if labels.ndim == log_probs.ndim and jnp.issubdtype(labels.dtype, jnp.floating):   # class probabilities
        targets = labels * (1 - label_smoothing) + label_smoothing / classes
        per_class = targets * log_probs * (1.0 if w is None else _like(w, log_probs.shape))
        return _reduce(-jnp.sum(per_class, axis=-1), reduction)
    nll = nll_loss(log_probs, labels, w, ignore_index, reduction)
    if label_smoothing == 0.0:
        return nll
    _, kept, safe = _picked(log_probs, labels, ignore_index)
    smooth = -jnp.sum(log_probs * (1.0 if w is None else _like(w, log_probs.shape)), axis=-1)
    smooth = jnp.where(kept, smooth, 0.0)
    if reduction == "mean":
        denominator = jnp.sum(jnp.where(kept, 1.0 if w is None else w[safe], 0.0))
        smooth = jnp.sum(smooth) / denominator
    elif reduction == "sum":
        smooth = jnp.sum(smooth)
    return (1 - label_smoothing) * nll + smooth * (label_smoothing / classes)


def binary_cross_entropy(probabilities: jax.Array, targets: jax.Array, weight: jax.Array | None = None,
                         reduction: str = "mean") -> jax.Array:
    """``F.binary_cross_entropy``: ``-w (t log p + (1 - t) log(1 - p))``, each log clamped
    at -100 as PyTorch clamps it."""
    log_p = jnp.maximum(jnp.log(probabilities), -100.0)
    log_q = jnp.maximum(jnp.log1p(-probabilities), -100.0)
    losses = -(targets * log_p + (1 - targets) * log_q)
    return _reduce(losses if weight is None else losses * _like(weight, losses.shape), reduction)


def binary_cross_entropy_with_logits(logits: jax.Array, targets: jax.Array, weight: jax.Array | None = None,
                                     reduction: str = "mean", pos_weight: jax.Array | None = None) -> jax.Array:
    """``F.binary_cross_entropy_with_logits``: ``-w (p_w t log sigmoid(x) + (1 - t) log sigmoid(-x))``
    (``pos_weight`` ``p_w`` broadcast over the last axis, the classes), written as PyTorch
    computes it: ``(1 - t) x + (1 + (p_w - 1) t) (log(1 + exp(-|x|)) + max(-x, 0))``."""
    softplus_neg = jnp.log1p(jnp.exp(-jnp.abs(logits))) + jnp.maximum(-logits, 0.0)
    if pos_weight is None:
        losses = (1 - targets) * logits + softplus_neg
    else:
        losses = (1 - targets) * logits + (1 + (_like(pos_weight, targets.shape) - 1) * targets) * softplus_neg
    return _reduce(losses if weight is None else losses * _like(weight, losses.shape), reduction)


def mse_loss(predictions: jax.Array, targets: jax.Array, reduction: str = "mean") -> jax.Array:
    """``F.mse_loss``: ``(predictions - targets)^2`` over every element."""
    return _reduce(jnp.square(predictions - targets), reduction)


def l1_loss(predictions: jax.Array, targets: jax.Array, reduction: str = "mean") -> jax.Array:
    """``F.l1_loss``: ``|predictions - targets|`` over every element."""
    return _reduce(jnp.abs(predictions - targets), reduction)


def smooth_l1_loss(predictions: jax.Array, targets: jax.Array, reduction: str = "mean",
                   beta: float = 1.0) -> jax.Array:
    """``F.smooth_l1_loss``: ``0.5 d^2 / beta`` where ``|d| < beta``, else ``|d| - 0.5 beta``
    (``beta = 0``: `l1_loss`)."""
    if beta < 0:
        raise ValueError(f"smooth_l1_loss does not support negative values for beta, got {beta}")
    d = jnp.abs(predictions - targets)
    if beta == 0:
        return _reduce(d, reduction)
    return _reduce(jnp.where(d < beta, 0.5 * d * d / beta, d - 0.5 * beta), reduction)


def huber_loss(predictions: jax.Array, targets: jax.Array, reduction: str = "mean", delta: float = 1.0) -> jax.Array:
    """``F.huber_loss``: ``0.5 d^2`` where ``|d| <= delta``, else ``delta (|d| - 0.5 delta)``."""
    if delta <= 0:
        raise ValueError(f"huber_loss does not support non-positive values for delta, got {delta}")
    d = jnp.abs(predictions - targets)
    return _reduce(jnp.where(d <= delta, 0.5 * d * d, delta * (d - 0.5 * delta)), reduction)


def kl_div(log_probs: jax.Array, targets: jax.Array, reduction: str = "mean", log_target: bool = False) -> jax.Array:
    """``F.kl_div``: ``t (log t - x)`` (``0`` where ``t = 0``), or ``exp(t) (t - x)`` with
    ``log_target``, for log-probabilities ``x``. ``"batchmean"`` divides the sum by the
    batch size (the KL divergence); ``"mean"``, PyTorch's default, by every element."""
    _check_reduction(reduction, (*_REDUCTIONS, "batchmean"))
    if log_target:
        pointwise = jnp.exp(targets) * (targets - log_probs)
    else:
        pointwise = jax.scipy.special.xlogy(targets, targets) - targets * log_probs
    if reduction == "batchmean":
        return jnp.sum(pointwise) / log_probs.shape[0]
    return _reduce(pointwise, reduction)


def accuracy(outputs: jax.Array, labels: jax.Array) -> jax.Array:
    """Fraction of rows whose ``argmax`` is the label (ties: the first maximum)."""
    return jnp.mean(jnp.argmax(outputs, axis=-1) == labels)


LOSSES: dict[str, LossFn] = {
    "nll_loss": nll_loss, "cross_entropy": cross_entropy, "binary_cross_entropy": binary_cross_entropy,
    "binary_cross_entropy_with_logits": binary_cross_entropy_with_logits, "mse_loss": mse_loss,
    "l1_loss": l1_loss, "smooth_l1_loss": smooth_l1_loss, "huber_loss": huber_loss, "kl_div": kl_div,
}


def create(name: str, **options) -> LossFn:
    """The loss called ``name`` (``F.<name>``'s name) with ``options`` bound, e.g.
    ``create("cross_entropy", weight=(1.0, 2.0, ...), label_smoothing=0.1)``; a class
    ``weight`` or ``pos_weight`` may be a list. The same options give the same function
    object (so a step compiled for it is reused)."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose one of {', '.join(LOSSES)}")
    frozen = tuple(sorted((k, tuple(v) if isinstance(v, (list, tuple)) else v) for k, v in options.items()))
    try:
        return _bound(name, frozen)
    except TypeError as error:   # an unhashable option (an array): bind it without the cache
        if "unhashable" not in str(error):
            raise
        return _bind(name, options)


@functools.lru_cache(maxsize=128)
def _bound(name: str, options: tuple) -> LossFn:
    return _bind(name, dict(options))


def _bind(name: str, options: dict) -> LossFn:
    import inspect

    loss = LOSSES[name]
    allowed = set(list(inspect.signature(loss).parameters)[2:])
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise TypeError(f"{name}: unknown option(s) {unknown}; it takes {sorted(allowed)}")
    arrays = {k: jnp.asarray(v) if k in ("weight", "pos_weight") and v is not None else v for k, v in options.items()}
    bound = functools.partial(loss, **arrays)
    functools.update_wrapper(bound, loss)
    return bound


def resolve(loss_fn: LossFn | str | None) -> LossFn | None:
    """A training entry point's ``loss_fn`` argument: a function, a loss's name (`create`
    without options), or None (the model's own loss, `for_outputs`)."""
    if loss_fn is None or callable(loss_fn):
        return loss_fn
    if isinstance(loss_fn, str):
        return create(loss_fn)
    raise TypeError(f"loss_fn must be a loss function (outputs, targets) -> scalar or a name in "
                    f"funcnets.losses ({', '.join(LOSSES)}), got {loss_fn!r}")


def for_outputs(outputs: str) -> LossFn:
    """The tutorial's loss for a model's output kind: NLL after ``log_softmax``,
    cross-entropy on logits."""
    losses = {"log_probs": nll_loss, "logits": cross_entropy}
    if outputs not in losses:
        raise ValueError(f"unknown output kind {outputs!r}; expected one of {sorted(losses)}")
    return losses[outputs]
