"""PRNG keys as funcnets takes them."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def check_key(key, argument: str) -> None:
    """TypeError, naming ``argument``, unless ``key`` is a PRNG key
    (``jax.random.key``) or a legacy ``uint32[2]`` one (``jax.random.PRNGKey``).

    >>> check_key(jax.random.key(0), "rng")
    >>> check_key(0, "rng")
    Traceback (most recent call last):
    TypeError: rng must be a PRNG key such as jax.random.key(0), got 0
    """
    if not isinstance(key, jax.Array) or not (
            jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
            or (key.dtype == jnp.uint32 and key.shape == (2,))):
        raise TypeError(f"{argument} must be a PRNG key such as jax.random.key(0), got {key!r}")
