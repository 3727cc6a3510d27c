"""Losses with PyTorch's definitions and ``reduction='mean'``.

All take ``(outputs, targets)`` and return a scalar, so any of them (or your
own function of the same form) can be given to `funcnets.make_train_step`.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

LossFn = Callable[[jax.Array, jax.Array], jax.Array]


def nll_loss(log_probs: jax.Array, labels: jax.Array) -> jax.Array:
    """``F.nll_loss``: ``-mean_i log_probs[i, labels[i]]``.

    log_probs: ``(B, K)`` log-probabilities; labels: ``(B,)`` integers in ``[0, K)``.
    """
    picked = jnp.take_along_axis(log_probs, labels[:, None].astype(jnp.int32), axis=-1)
    return -jnp.mean(picked)


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """``F.cross_entropy``: ``nll_loss(log_softmax(logits), labels)``.

    ``log_softmax`` of log-probabilities returns them unchanged (their
    ``logsumexp`` is 0), so this is also the right loss for a net that ends in
    ``log_softmax``: the same number up to rounding.
    """
    return nll_loss(jax.nn.log_softmax(logits, axis=-1), labels)


def mse_loss(predictions: jax.Array, targets: jax.Array) -> jax.Array:
    """``F.mse_loss``: ``mean((predictions - targets)^2)`` over every element."""
    return jnp.mean(jnp.square(predictions - targets))


def accuracy(outputs: jax.Array, labels: jax.Array) -> jax.Array:
    """Fraction of rows whose ``argmax`` is the label (ties: the first maximum)."""
    return jnp.mean(jnp.argmax(outputs, axis=-1) == labels)


def for_outputs(outputs: str) -> LossFn:
    """The tutorial's loss for a model's output kind: NLL after ``log_softmax``,
    cross-entropy on logits."""
    losses = {"log_probs": nll_loss, "logits": cross_entropy}
    if outputs not in losses:
        raise ValueError(f"unknown output kind {outputs!r}; expected one of {sorted(losses)}")
    return losses[outputs]
