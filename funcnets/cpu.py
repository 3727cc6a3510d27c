"""What funcnets does differently on the CPU backend, and why: the one place.

On every backend the layers compute the same maths (`funcnets.layers`) with
PyTorch's semantics. On a GPU or TPU they are XLA's own ops
(``lax.conv_general_dilated``, a broadcast bias add, ``threefry_2x32`` for the
dropout bits), which call cuDNN and friends. On the CPU, a few shapes of the
tutorials' nets run faster written another way, and two compile-time choices
differ; each was measured on the project's 2-core CPU (docs/performance.md has
the numbers) and each gives the same results as the plain op (to float
rounding, or bit for bit for the dropout bits):

=========================  ====================================================
`single_channel_conv2d`    a one-channel conv as ``kh*kw`` shifted windows, its
                           kernel and bias gradients as one matmul
`patches` matmul           a conv whose output is smaller than its kernel, as
                           im2col and a matmul (`conv2d`)
`add_bias`                 a conv's bias gradient as a matrix-vector product
`batch_norm_train`         batch norm's per-channel sums as matrix-vector
                           products, its backward in closed form
`threefry2x32_hash`        Threefry written out, so XLA fuses the dropout mask
                           into one elementwise loop
`compiler_options`         programs compile with XLA's YNNPACK fusions off
`scan_is_slow`             conv nets run a jitted step per batch, not a loop
=========================  ====================================================

`fast_paths` says whether the layers take them: on the CPU backend, unless
``FUNCNETS_CPU_FAST_PATHS=off`` (read when a program is traced; the parity
tests use it to check the plain path on the CPU too).
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

FAST_PATHS_VARIABLE = "FUNCNETS_CPU_FAST_PATHS"


def fast_paths() -> bool:
    """Whether the layers take the CPU fast paths: the default backend is the CPU and
    ``FUNCNETS_CPU_FAST_PATHS`` is not ``off``."""
    value = os.environ.get(FAST_PATHS_VARIABLE, "on").strip().lower()
    if value not in ("on", "off"):
        raise ValueError(f"{FAST_PATHS_VARIABLE}={os.environ[FAST_PATHS_VARIABLE]!r}: expected 'on' or 'off'")
    return value == "on" and jax.default_backend() == "cpu"


# --- compile-time choices ---------------------------------------------------------------

# XLA:CPU routes dots and convolutions through YNNPACK fusions by default; for these
# nets' training steps (dense and convolutional) XLA's own Eigen path is faster.
_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": ""}


def compiler_options() -> dict[str, str]:
    """XLA options for funcnets' programs on the current backend: YNNPACK fusions
    off on the CPU; none elsewhere."""
    if jax.default_backend() == "cpu":
        return dict(_OPTIONS)
    return {}


def scan_is_slow(has_conv: bool) -> bool:
    """Whether runs of steps should be a jitted step per batch rather than one
    loop program: for convolutional nets on the CPU, where XLA compiles the
    convolution weight-gradient inside a loop body far slower than alone."""
    return has_conv and jax.default_backend() == "cpu"


# --- convolutions ---------------------------------------------------------------------

def conv2d(params, x: jax.Array) -> jax.Array:
    """`funcnets.layers.conv2d` at stride 1, no padding, on the CPU: one input channel
    as `single_channel_conv2d`; an output smaller than the kernel in both spatial dims
    (a 3x3 kernel on a 4x4 map) as `patches` times the kernel, whose gradients are
    matmuls (XLA:CPU computes that shape's input gradient as a batch-last
    convolution); otherwise XLA's convolution; the bias by `add_bias`."""
    kernel = params["kernel"]
    kh, kw, in_channels, out_channels = kernel.shape
    if in_channels == 1:
        return single_channel_conv2d(x, kernel, params["bias"])
    if x.shape[1] - kh + 1 < kh and x.shape[2] - kw + 1 < kw:
        y = patches(x, kh, kw) @ kernel.reshape(kh * kw * in_channels, out_channels)
    else:
        y = _xla_conv2d(x, kernel)
    return add_bias(y, params["bias"])


def _xla_conv2d(x: jax.Array, kernel: jax.Array) -> jax.Array:
    return jax.lax.conv_general_dilated(x, kernel, window_strides=(1, 1), padding="VALID",
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))


@jax.custom_vjp
def single_channel_conv2d(x: jax.Array, kernel: jax.Array, bias: jax.Array) -> jax.Array:
    """A conv of a one-channel input, ``(B, H, W, 1) -> (B, Ho, Wo, Cout)``, as the
    weighted sum of its ``kh*kw`` shifted windows ``x_ij = x[:, i:i+Ho, j:j+Wo, :]``::

        y = bias + sum_{i, j} x_ij * kernel[i, j, 0]          (broadcast over Cout)

    one elementwise pass that XLA fuses with the ReLU after it. Gradients, for
    an output gradient ``g`` flattened to ``G (B*Ho*Wo, Cout)``::

        [kernel; bias] grad = [X; 1] @ G      X: (kh*kw, B*Ho*Wo), row i*kw+j = x_ij

    one matmul for both (the row of ones sums ``g`` for the bias, accumulated in
    at least float32); the input's gradient is XLA's, and is not computed when
    nothing needs it (a net's first layer). XLA:CPU's own convolution packs
    9-long im2col rows for this shape and transposes the output gradient for
    the weight gradient.
    """
    _check_single_channel(x, kernel, bias)
    return _single_channel_forward(x, kernel, bias)


def _check_single_channel(x, kernel, bias):
    kh, kw, in_channels, out_channels = kernel.shape
    if in_channels != 1 or x.ndim != 4 or x.shape[-1] != 1:
        raise ValueError(f"single_channel_conv2d: x must be (B, H, W, 1) and kernel (kh, kw, 1, Cout), "
                         f"got x {tuple(x.shape)} and kernel {tuple(kernel.shape)}")
    if bias.shape != (out_channels,):
        raise ValueError(f"single_channel_conv2d: bias must have shape ({out_channels},), got {tuple(bias.shape)}")
    if not (kh <= x.shape[1] and kw <= x.shape[2]):
        raise ValueError(f"single_channel_conv2d: a {kh}x{kw} kernel does not fit x of shape {tuple(x.shape)}")


def _shifted_windows(x: jax.Array, kh: int, kw: int) -> list[jax.Array]:
    """``[x[:, i:i+Ho, j:j+Wo, :] for i < kh for j < kw]``, row-major in ``(i, j)``."""
    ho, wo = x.shape[1] - kh + 1, x.shape[2] - kw + 1
    return [x[:, i:i + ho, j:j + wo, :] for i in range(kh) for j in range(kw)]


def _single_channel_forward(x, kernel, bias):
    kh, kw, _, out_channels = kernel.shape
    taps = kernel.reshape(kh * kw, 1, 1, 1, out_channels)
    y = bias.reshape(1, 1, 1, out_channels)
    for tap, window in zip(taps, _shifted_windows(x, kh, kw)):
        y = y + window * tap
    return y


def _single_channel_vjp_forward(x, kernel, bias):
    return single_channel_conv2d(x, kernel, bias), (x, kernel, bias)


def _single_channel_vjp_backward(saved, grad):
    x, kernel, bias = saved
    kh, kw, _, out_channels = kernel.shape
    windows = _shifted_windows(x, kh, kw)
    rows = jnp.stack([*windows, jnp.ones_like(windows[0])]).reshape(kh * kw + 1, -1)
    accumulate = jnp.promote_types(grad.dtype, jnp.float32)
    kernel_and_bias = jax.lax.dot(rows, grad.reshape(-1, out_channels), preferred_element_type=accumulate)
    grad_x = jax.vjp(lambda x: _xla_conv2d(x, kernel), x)[1](grad)[0]
    return (grad_x, kernel_and_bias[:-1].reshape(kernel.shape).astype(kernel.dtype),
            kernel_and_bias[-1].astype(bias.dtype))


single_channel_conv2d.defvjp(_single_channel_vjp_forward, _single_channel_vjp_backward)


def patches(x: jax.Array, kh: int, kw: int) -> jax.Array:
    """im2col: ``(B, H, W, C) -> (B, H-kh+1, W-kw+1, kh*kw*C)``, the window at each
    output position flattened in HWIO order (row ``i``, column ``j``, channel
    ``c`` at ``(i*kw + j)*C + c``), so ``patches(x) @ kernel.reshape(-1, Cout)``
    is the convolution without the bias."""
    if x.ndim != 4 or not (1 <= kh <= x.shape[1] and 1 <= kw <= x.shape[2]):
        raise ValueError(f"patches: x must be (B, H, W, C) with H >= kh = {kh} >= 1 and "
                         f"W >= kw = {kw} >= 1, got shape {tuple(x.shape)}")
    return jnp.concatenate(_shifted_windows(x, kh, kw), axis=-1)


@jax.custom_vjp
def add_bias(y: jax.Array, bias: jax.Array) -> jax.Array:
    """``y + bias`` over the last axis, ``(..., C) + (C,)``. Its bias gradient,
    ``g`` summed over all but the last axis, is the matrix-vector product
    ``ones(N) @ g.reshape(N, C)`` (accumulated in at least float32): XLA:CPU runs
    that several times faster than the reduction."""
    if bias.shape != y.shape[-1:]:
        raise ValueError(f"add_bias: bias must have shape ({y.shape[-1]},) to match y's last axis, "
                         f"got {tuple(bias.shape)} for y of shape {tuple(y.shape)}")
    return y + bias.reshape((1,) * (y.ndim - 1) + bias.shape)


def _add_bias_forward(y, bias):
    return add_bias(y, bias), None


def _add_bias_backward(_, grad):
    rows = grad.reshape(-1, grad.shape[-1])
    accumulate = jnp.promote_types(grad.dtype, jnp.float32)
    bias_grad = jax.lax.dot(jnp.ones(rows.shape[0], grad.dtype), rows, preferred_element_type=accumulate)
    return grad, bias_grad.astype(grad.dtype)


add_bias.defvjp(_add_bias_forward, _add_bias_backward)


# --- batch norm ------------------------------------------------------------------------

def _column_sums(rows: jax.Array) -> jax.Array:
    """``rows (N, C)`` summed over N as ``ones(N) @ rows``, accumulated in at least float32."""
    accumulate = jnp.promote_types(rows.dtype, jnp.float32)
    return jax.lax.dot(jnp.ones(rows.shape[0], rows.dtype), rows, preferred_element_type=accumulate
                       ).astype(rows.dtype)


@jax.custom_vjp
def batch_norm_train(x: jax.Array, weight: jax.Array, bias: jax.Array, eps: float
                     ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """`funcnets.layers.batch_norm` with batch statistics, on the CPU: ``(y, mean, var)``
    for ``x (..., C)``, ``var`` biased, ``y = (x - mean) / sqrt(var + eps) * weight + bias``.

    Every per-channel sum over the ``N`` rows of ``x.reshape(N, C)`` is
    ``ones(N) @ rows`` (`_column_sums`): XLA:CPU runs a reduction over every
    axis but the last several times slower. The backward is the closed form,
    with ``xhat = (x - mean) / sqrt(var + eps)`` and ``d = g * weight``::

        dx = (N d - sum(d) - xhat sum(d xhat)) / (N sqrt(var + eps)),  dweight = sum(g xhat),  dbias = sum(g)

    (plus the cotangents of ``mean`` and ``var``, ``1/N`` and ``2 (x - mean) / N``).
    """
    return _batch_norm_forward(x, weight, bias, eps)[0]


def _batch_norm_forward(x, weight, bias, eps):
    rows = x.reshape(-1, x.shape[-1])
    n = rows.shape[0]
    mean = _column_sums(rows) / n
    centred = rows - mean[None, :]
    var = _column_sums(centred * centred) / n
    inv_std = 1.0 / jnp.sqrt(var + eps)
    xhat = centred * inv_std[None, :]
    y = xhat * weight[None, :] + bias[None, :]
    return (y.reshape(x.shape), mean, var), (xhat, inv_std, centred, weight, eps)


def _batch_norm_backward(saved, cotangents):
    xhat, inv_std, centred, weight, eps = saved
    grad_y, grad_mean, grad_var = cotangents
    rows = grad_y.reshape(xhat.shape)
    n = xhat.shape[0]
    d = rows * weight[None, :]
    grad_x = (n * d - _column_sums(d)[None, :] - xhat * _column_sums(d * xhat)[None, :]) * (inv_std / n)[None, :]
    grad_x = grad_x + (grad_mean / n)[None, :] + centred * (2.0 * grad_var / n)[None, :]
    return (grad_x.reshape(grad_y.shape), _column_sums(rows * xhat), _column_sums(rows), None)


batch_norm_train.defvjp(_batch_norm_forward, _batch_norm_backward)


# --- dropout bits ---------------------------------------------------------------------

def threefry_bits(key_data: jax.Array, n: int) -> jax.Array:
    """``jax.extend.random.threefry_2x32(key_data, arange(n))``, bit for bit, with
    the hash written out (`threefry2x32_hash`): the counters ``0 .. n-1`` cut into
    halves (a zero appended when ``n`` is odd), counter ``i`` of the first half
    paired with counter ``i`` of the second, each pair hashed to two words."""
    half = (int(n) + 1) // 2
    first = jax.lax.iota(jnp.uint32, half)
    second = first + np.uint32(half)
    if n % 2:
        second = jnp.where(first == half - 1, np.uint32(0), second)   # threefry_2x32's padding
    return jnp.concatenate(threefry2x32_hash(key_data[0], key_data[1], first, second))[:n]


_THREEFRY_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))


def threefry2x32_hash(key0: jax.Array, key1: jax.Array, x0: jax.Array, x1: jax.Array
                      ) -> tuple[jax.Array, jax.Array]:
    """Threefry-2x32 (20 rounds; Salmon et al. 2011), the hash behind JAX's
    default PRNG: ``uint32`` words ``(x0, x1)`` (same shape) under the key
    ``(key0, key1)`` to two ``uint32`` words, bit for bit as JAX's
    ``threefry2x32`` primitive. Five times: four rounds of::

        x0 += x1;  x1 = rotl(x1, r) ^ x0          r in (13, 15, 26, 6), then (17, 29, 16, 24)

    then the key injection ``x0 += k[s+1];  x1 += k[s+2] + s + 1`` (``s`` the
    pass, ``k`` the key words with ``k[2] = key0 ^ key1 ^ 0x1BD11BDA``, indices
    mod 3), after ``x0 += k[0];  x1 += k[1]`` at the start.

    On the CPU JAX lowers the primitive as a loop of the five passes, each a few
    separate sweeps over the arrays; written out, it is one elementwise loop that
    XLA fuses with the counters and their consumers.
    """
    dtypes = [jnp.result_type(word) for word in (key0, key1, x0, x1)]
    if any(dtype != jnp.uint32 for dtype in dtypes) or jnp.shape(key0) or jnp.shape(key1):
        raise TypeError(f"threefry2x32_hash: key0 and key1 must be uint32 scalars and x0, x1 uint32 "
                        f"arrays, got dtypes {[str(d) for d in dtypes]} and key shapes "
                        f"{jnp.shape(key0)}, {jnp.shape(key1)}")
    if jnp.shape(x0) != jnp.shape(x1):
        raise ValueError(f"threefry2x32_hash: x0 and x1 must have the same shape, "
                         f"got {jnp.shape(x0)} and {jnp.shape(x1)}")
    keys = (key0, key1, key0 ^ key1 ^ np.uint32(0x1BD11BDA))
    x0, x1 = x0 + keys[0], x1 + keys[1]
    for step in range(5):
        for r in _THREEFRY_ROTATIONS[step % 2]:
            x0 = x0 + x1
            x1 = ((x1 << np.uint32(r)) | (x1 >> np.uint32(32 - r))) ^ x0
        x0 = x0 + keys[(step + 1) % 3]
        x1 = x1 + keys[(step + 2) % 3] + np.uint32(step + 1)
    return x0, x1
