"""torchvision's random image transforms, run on the device inside the compiled step.

``fit(..., transform=fn.data.Compose([fn.data.RandomCrop(32, padding=4),
fn.data.RandomHorizontalFlip(), fn.data.Normalize.of(info)]))`` augments each
training batch where it is used: the split stays on the device (uint8, as
loaded), and each step draws its crops and flips from its own key,
``fold_in(fold_in(state.rng, step), AUGMENT_STREAM)``, so a resumed run draws
what the uninterrupted one drew. Evaluation applies the deterministic transforms
only (here ``Normalize``): one `Compose` stands for torchvision's training/test
pair ``Compose([RandomCrop, RandomHorizontalFlip, ToTensor, Normalize])`` /
``Compose([ToTensor, Normalize])``.

Images are batches ``(B, H, W, C)``; each example draws its own crop offset and
flip, as torchvision's transforms do per image in a ``Dataset``. A transform
with ``random = True`` is called ``transform(images, key)``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp

AUGMENT_STREAM = 0x61756770   # "augp": the augmentation key's fold_in of the step's key


def step_key(rng: jax.Array, step) -> jax.Array:
    """The key a training step's augmentation draws from (its dropout key is ``fold_in(rng, step)``)."""
    return jax.random.fold_in(jax.random.fold_in(rng, step), AUGMENT_STREAM)


def _pair(value, name: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int) and v >= 1 for v in pair):
        raise ValueError(f"{name} must be an int or a pair (height, width) of ints >= 1, got {value!r}")
    return pair


def _padding(padding) -> tuple[int, int, int, int]:
    """torchvision's padding: one int for every side, ``(left/right, top/bottom)``, or
    ``(left, top, right, bottom)``; returned as ``(top, bottom, left, right)``."""
    values = (padding,) if isinstance(padding, int) else tuple(padding)
    if len(values) not in (1, 2, 4) or not all(isinstance(v, int) and v >= 0 for v in values):
        raise ValueError(f"padding must be an int >= 0 or a tuple of 2 or 4 of them, got {padding!r}")
    if len(values) == 1:
        return values * 4
    if len(values) == 2:
        return values[1], values[1], values[0], values[0]
    left, top, right, bottom = values
    return top, bottom, left, right


@dataclasses.dataclass(frozen=True)
class RandomCrop:
    """``torchvision.transforms.RandomCrop(size, padding, fill=0, padding_mode)``: pad, then
    cut a ``size`` window at offsets ``i ~ U{0..H_padded - h}``, ``j ~ U{0..W_padded - w}``
    per example. ``padding_mode``: ``"constant"`` (with ``fill``), ``"edge"``,
    ``"reflect"`` or ``"symmetric"``, as torchvision's."""

    size: int | tuple[int, int]
    padding: int | tuple[int, ...] = 0
    fill: float = 0
    padding_mode: str = "constant"
    random = True

    def __post_init__(self):
        _pair(self.size, "size")
        _padding(self.padding)
        if self.padding_mode not in ("constant", "edge", "reflect", "symmetric"):
            raise ValueError(f"padding_mode must be constant, edge, reflect or symmetric, got {self.padding_mode!r}")

    def __call__(self, images, key):
        h, w = _pair(self.size, "size")
        top, bottom, left, right = _padding(self.padding)
        widths = ((0, 0), (top, bottom), (left, right), (0, 0))
        padded = (jnp.pad(images, widths, constant_values=self.fill) if self.padding_mode == "constant"
                  else jnp.pad(images, widths, mode=self.padding_mode))
        height, width, channels = padded.shape[1:]
        if height < h or width < w:
            raise ValueError(f"RandomCrop: the crop {h}x{w} is larger than the padded image {height}x{width}")
        rows_key, columns_key = jax.random.split(key)
        batch = images.shape[0]
        i = jax.random.randint(rows_key, (batch,), 0, height - h + 1)
        j = jax.random.randint(columns_key, (batch,), 0, width - w + 1)
        return jax.vmap(lambda image, top, left: jax.lax.dynamic_slice(image, (top, left, 0), (h, w, channels)))(
            padded, i, j)


@dataclasses.dataclass(frozen=True)
class RandomHorizontalFlip:
    """``torchvision.transforms.RandomHorizontalFlip(p)``: each example mirrored left to
    right with probability ``p``."""

    p: float = 0.5
    random = True

    def __post_init__(self):
        if not 0.0 <= self.p <= 1.0:
            raise ValueError(f"p must be a probability in [0, 1], got {self.p!r}")

    def __call__(self, images, key):
        flip = jax.random.uniform(key, (images.shape[0],)) < self.p
        return jnp.where(flip[:, None, None, None], images[:, :, ::-1, :], images)


@dataclasses.dataclass(frozen=True)
class Compose:
    """``torchvision.transforms.Compose``: the transforms in order, each random one drawing
    from its own key split from the step's. Called without a key (evaluation), it
    applies the deterministic ones only (`deterministic`)."""

    transforms: tuple

    def __init__(self, transforms: Sequence):
        transforms = tuple(transforms)
        for transform in transforms:
            if not callable(transform):
                raise TypeError(f"Compose takes transforms (callables), got {transform!r}")
        object.__setattr__(self, "transforms", transforms)

    @property
    def random(self) -> bool:
        return any(getattr(t, "random", False) for t in self.transforms)

    @property
    def deterministic(self) -> Compose | None:
        """The transforms evaluation applies: the ones that draw nothing (None if none)."""
        kept = tuple(t for t in self.transforms if not getattr(t, "random", False))
        return Compose(kept) if kept else None

    def __call__(self, images, key=None):
        random_count = sum(getattr(t, "random", False) for t in self.transforms)
        keys = iter(jax.random.split(key, random_count)) if key is not None and random_count else iter(())
        for transform in self.transforms:
            if getattr(transform, "random", False):
                if key is None:
                    continue
                images = transform(images, next(keys))
            else:
                images = transform(images)
        return images


def for_evaluation(transform):
    """What evaluation applies of a step's ``transform``: all of a deterministic one, the
    deterministic part of a `Compose`, nothing of a lone random transform."""
    if not getattr(transform, "random", False):
        return transform
    return transform.deterministic if isinstance(transform, Compose) else None


def apply(transform, images, key=None):
    """``transform(images)``, with the step's augmentation ``key`` for a random one."""
    if transform is None:
        return images
    return transform(images, key) if getattr(transform, "random", False) else transform(images)
