"""Does Winograd's convolution beat XLA:CPU's on the CIFAR net's convolutions? A probe,
measured in one run (the answer on this project's 2-core CPU: no; docs/performance.md).

    python -m experiments.tools.winograd_probe
    python -m experiments.tools.winograd_probe --repeats 50

Winograd F(m x m, 3 x 3) (Lavin and Gray, 2016) computes each ``m x m`` output tile from an
``(m+2) x (m+2)`` input tile ``d`` and the kernel ``g`` as ``A^T [(G g G^T) * (B^T d B)] A``:
``(m+2)^2`` elementwise products per tile and channel pair instead of ``9 m^2``
(2.25x fewer for F(2x2,3x3), 4x for F(4x4,3x3)). It is written here in plain XLA
ops, as funcnets' fast paths must be: the tiles as strided slices, ``B^T d B`` and
``A^T m A`` as the fixed additions (and small multiples) they are, which XLA fuses
into elementwise loops, and the products as one batched GEMM over the ``(m+2)^2``
tile positions. For each of the CIFAR tutorial net's three 3x3 convolutions with
64-128 channels, at its batch of 16, it times the forward pass of XLA's
``conv_general_dilated``, F(2x2,3x3) and F(4x4,3x3) in turns (median of
``--repeats``), the batched GEMM alone, and each form's largest error against
XLA's float32 result.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from funcnets.cpu import compiler_options

# (m, B^T, G, A^T) of F(m x m, 3 x 3), interpolation points 0, -1, 1 (and -2, 2, infinity for m = 4)
F2 = (2, np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]),
      np.array([[1, 0, 0], [.5, .5, .5], [.5, -.5, .5], [0, 0, 1]]),
      np.array([[1, 1, 1, 0], [0, 1, -1, -1]]))
F4 = (4, np.array([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
                   [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]]),
      np.array([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
                [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]]),
      np.array([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]]))
SHAPES = ((30, 64, 128), (28, 128, 128), (26, 128, 64))   # (H = W, in, out) of conv.2, conv.4, conv.6
BATCH = 16


def _combine(matrix, parts):
    """``matrix @ parts`` for a small integer-ish matrix, as adds (and scalings) XLA fuses."""
    rows = []
    for row in matrix:
        terms = [part if c == 1 else -part if c == -1 else part * c for c, part in zip(row, parts) if c != 0]
        rows.append(sum(terms[1:], terms[0]))
    return rows


def winograd_conv(x: jax.Array, kernel: jax.Array, form=F2) -> jax.Array:
    """A stride-1 VALID 3x3 convolution, NHWC ``x`` and HWIO ``kernel``, by Winograd F(m x m, 3 x 3)."""
    m, bt, g, at = form
    t = m + 2
    b, h, w, c = x.shape
    ho, wo = h - 2, w - 2
    nh, nw = -(-ho // m), -(-wo // m)
    x = jnp.pad(x, ((0, 0), (0, m * nh + 2 - h), (0, m * nw + 2 - w), (0, 0)))
    rows = _combine(bt, [x[:, a:a + m * nh:m] for a in range(t)])
    v = jnp.stack([q for r in rows for q in _combine(bt, [r[:, :, e:e + m * nw:m] for e in range(t)])])
    gg = jnp.asarray(g, kernel.dtype)
    u = jnp.einsum("pi,qj,ijco->pqco", gg, gg, kernel).reshape(t * t, c, -1)
    products = jnp.einsum("tnc,tco->tno", v.reshape(t * t, -1, c), u).reshape(t, t, b, nh, nw, -1)
    z = [_combine(at, [products[p, q] for p in range(t)]) for q in range(t)]
    y = [_combine(at, [z[q][r] for q in range(t)]) for r in range(m)]
    y = jnp.stack([jnp.stack(y[r], axis=3) for r in range(m)], axis=2)
    return y.reshape(b, m * nh, m * nw, -1)[:, :ho, :wo, :]


def xla_conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
    return jax.lax.conv_general_dilated(x, kernel, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=20)
    args = p.parse_args(argv)
    rng = np.random.default_rng(0)
    rows = []
    print("| conv (batch 16) | XLA conv | F(2x2,3x3) | F(4x4,3x3) | F(2x2,3x3) GEMM alone | F(4x4,3x3) GEMM alone "
          "| max error F(2x2) / F(4x4) |\n| --- | --- | --- | --- | --- | --- | --- |")
    for size, cin, cout in SHAPES:
        x = jnp.asarray(rng.standard_normal((BATCH, size, size, cin)), jnp.float32)
        kernel = jnp.asarray(rng.standard_normal((3, 3, cin, cout)) / np.sqrt(9 * cin), jnp.float32)
        programs = {"xla": jax.jit(xla_conv, compiler_options=compiler_options()),
                    "f2": jax.jit(lambda a, k: winograd_conv(a, k, F2), compiler_options=compiler_options()),
                    "f4": jax.jit(lambda a, k: winograd_conv(a, k, F4), compiler_options=compiler_options())}
        for m, name in ((2, "gemm2"), (4, "gemm4")):
            tiles = BATCH * (-(-(size - 2) // m)) ** 2
            v = jnp.asarray(rng.standard_normal(((m + 2) ** 2, tiles, cin)), jnp.float32)
            u = jnp.asarray(rng.standard_normal(((m + 2) ** 2, cin, cout)), jnp.float32)
            programs[name] = (jax.jit(lambda a, b: jnp.einsum("tnc,tco->tno", a, b),
                                      compiler_options=compiler_options()), (v, u))
        inputs = {name: ((x, kernel) if not isinstance(prog, tuple) else prog[1]) for name, prog in programs.items()}
        programs = {name: prog[0] if isinstance(prog, tuple) else prog for name, prog in programs.items()}
        for name, prog in programs.items():
            jax.block_until_ready(prog(*inputs[name]))
        times = {name: [] for name in programs}
        for _ in range(args.repeats):   # in turns, so that drift hits all alike
            for name, prog in programs.items():
                start = time.perf_counter()
                jax.block_until_ready(prog(*inputs[name]))
                times[name].append(time.perf_counter() - start)
        ms = {name: 1e3 * float(np.median(t)) for name, t in times.items()}
        reference = programs["xla"](x, kernel)
        errors = [float(jnp.abs(programs[f](x, kernel) - reference).max()) for f in ("f2", "f4")]
        rows.append({"shape": (size, cin, cout), "ms": ms, "errors": errors})
        print(f"| {size}x{size}, {cin}->{cout} | {ms['xla']:.1f} ms | {ms['f2']:.1f} ms | {ms['f4']:.1f} ms | "
              f"{ms['gemm2']:.1f} ms | {ms['gemm4']:.1f} ms | {errors[0]:.1e} / {errors[1]:.1e} |", flush=True)
    return rows


if __name__ == "__main__":
    main()
