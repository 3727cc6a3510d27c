"""Datasets as whole NumPy arrays: ``images`` uint8 ``(N, H, W, C)``, ``labels`` int32 ``(N,)``.

>>> import funcnets as fn
>>> train = fn.data.load("digits", "train")        # always available offline
>>> x = fn.data.normalize(train.images, train.info) # float32, once for the whole split

``load(name, split)`` tries, in order, and says which one it used in
``info.source``:

1. ``data_dir``, when given: the dataset's own published files in it (MNIST-style
   IDX files, CIFAR-10 python or binary batches, or CIFAR-10 as an image-folder
   tree ``train/<class>/*.jpg``, unpacked or as a ``.tar.gz``: `image_folder`),
   or a TFDS copy prepared there;
2. a TFDS copy prepared in TFDS's default data dir (``$TFDS_DATA_DIR`` or
   ``~/tensorflow_datasets``), read with ``as_data_source`` (no TensorFlow needed
   for ArrayRecord copies);
3. known local folders (Debian's ``dataset-fashion-mnist`` installs
   ``/usr/share/datasets/fashion-mnist``) and funcnets' download cache
   (``~/.cache/funcnets/data/<name>``);
4. a download of the published files into that cache, each checked against its
   published MD5 (`funcnets.download`; needs the network, not TensorFlow).

Any other class-folder data set of one's own loads with `image_folder`.

If every source fails, one `DatasetNotFoundError` lists what was tried and how to
get the data. A file that is there but broken (truncated, wrong magic number,
labels that do not match the images) raises `CorruptDatasetError` naming it.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import logging
import os
import pathlib
import pickle
import struct
from typing import NamedTuple

import numpy as np

from funcnets import download as _download
from funcnets import imagefolder
from funcnets.augment import Compose, RandomCrop, RandomHorizontalFlip  # noqa: F401 (fn.data.<transform>)
from funcnets.streams import allow_grain_workers, from_torch  # noqa: F401 (fn.data.<name>)

SPLITS = ("train", "test")


class DatasetInfo(NamedTuple):
    """What a split is: ``mean``/``std`` are per channel, on the 0-1 scale."""

    name: str
    split: str
    num_classes: int
    class_names: tuple[str, ...]
    image_shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    source: str


class Dataset(NamedTuple):
    images: np.ndarray  # uint8 (N, H, W, C)
    labels: np.ndarray  # int32 (N,)
    info: DatasetInfo


class DatasetNotFoundError(FileNotFoundError):
    """No source had the dataset; the message lists each one tried and how to get it."""


class CorruptDatasetError(ValueError):
    """A dataset file exists but cannot be read as what it claims to be."""


class _Spec(NamedTuple):
    tfds_name: str | None
    class_names: tuple[str, ...]
    image_shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    known_dirs: tuple[str, ...]
    how_to_get: str


_DIGIT_NAMES = tuple(str(d) for d in range(10))
_SPECS = {
    "mnist": _Spec(
        "mnist", _DIGIT_NAMES, (28, 28, 1), (0.1307,), (0.3081,), ("/usr/share/datasets/mnist",),
        "with network, load it again with download=True (the default): funcnets fetches the four "
        "published IDX files and checks them; or put train-images-idx3-ubyte.gz, "
        "train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz in a "
        "folder and pass data_dir=<folder>; offline, Fashion-MNIST (`apt-get install "
        "dataset-fashion-mnist`) or 'digits' work"),
    "fashion_mnist": _Spec(
        "fashion_mnist",
        ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
         "Ankle boot"),
        (28, 28, 1), (0.2860,), (0.3530,), ("/usr/share/datasets/fashion-mnist",),
        "`apt-get install dataset-fashion-mnist` (Debian; found without flags), download=True with "
        "network, or put the four IDX files from github.com/zalandoresearch/fashion-mnist in a "
        "folder and pass data_dir=<folder>"),
    "cifar10": _Spec(
        "cifar10",
        ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
        (32, 32, 3), (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), (),
        "with network, download=True (the default) fetches cifar-10-python.tar.gz and checks it; "
        "or pass data_dir=<folder> holding cifar-10-batches-py (or the binary batches), or an "
        "image-folder tree train/<class>/*.jpg, test/<class>/*.jpg (unpacked or as a .tar.gz)"),
    "digits": _Spec(
        None, _DIGIT_NAMES, (28, 28, 1), (0.1558,), (0.2768,), (),
        "it ships with scikit-learn: `pip install scikit-learn`"),
}


def names() -> list[str]:
    """The dataset names `load` takes."""
    return list(_SPECS)


def load(name: str, split: str = "train", *, data_dir: str | os.PathLike | None = None,
         download: bool = True, shard: tuple[int, int] | None = None,
         cache_dir: str | os.PathLike | None = None) -> Dataset:
    """The whole ``split`` of dataset ``name`` as NumPy arrays.

    Sources, in order (the module doc and docs/data.md): the files in
    ``data_dir``; a TFDS copy; known local folders and funcnets' download
    cache; a download of the published files, kept only once its MD5 matches.

    Args:
      name: ``"mnist"``, ``"fashion_mnist"``, ``"cifar10"`` or ``"digits"``.
      split: ``"train"`` or ``"test"``.
      data_dir: a folder holding the data set's files (IDX files, CIFAR
        batches, an image-folder tree or its ``.tar.gz``) or a TFDS copy.
      download: False skips the last source.
      shard: ``(index, count)``: only the ``index``-th of ``count`` consecutive
        blocks, rows ``[index * n // count, (index + 1) * n // count)`` (no row
        is dropped), e.g. ``funcnets.parallel.process_shard()``.
      cache_dir: funcnets' cache (downloads in ``<cache_dir>/data``, decoded
        image folders in ``<cache_dir>/image_folders``); default ``~/.cache/funcnets``.

    Returns:
      A `Dataset`: uint8 NHWC ``images``, int32 ``labels`` and its ``info``
      (classes, shape, normalisation constants, ``source``).

    Raises:
      DatasetNotFoundError: no source had it (the message lists each one tried
        and how to get the data).
      CorruptDatasetError: a file is truncated or malformed (named).

    >>> import funcnets as fn
    >>> test = fn.data.load("digits", "test")
    >>> test.images.shape, test.images.dtype, test.info.source
    ((360, 28, 28, 1), dtype('uint8'), 'scikit-learn load_digits')
    """
    if name not in _SPECS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(names())}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r} for {name}; choose one of {', '.join(SPLITS)}")
    _check_shard(shard)
    spec = _SPECS[name]
    if name == "digits":
        images, labels = _load_digits(split)
        rows = shard_rows(len(labels), shard)
        return _dataset(name, split, images[rows], labels[rows], "scikit-learn load_digits", shard)

    attempts: list[str] = []
    sources = []
    if data_dir is not None:
        sources.append(("files", pathlib.Path(data_dir)))
        sources.append(("tfds", str(data_dir)))
    sources.append(("tfds", None))
    downloads = _download.dataset_dir(name, None if cache_dir is None else pathlib.Path(cache_dir) / "data")
    sources += [("files", pathlib.Path(d)) for d in spec.known_dirs] + [("files", downloads)]
    if download and not _download.offline():
        sources.append(("download", downloads))

    folder_cache = None if cache_dir is None else pathlib.Path(cache_dir) / "image_folders"
    for kind, where in sources:
        try:
            if kind == "download":
                where = _fetch(name, where.parent)
            if kind in ("files", "download"):
                images, labels, source = _load_files(name, split, where, folder_cache)
                rows = shard_rows(len(labels), shard)
                images, labels = images[rows], labels[rows]
            else:
                images, labels, source = _load_tfds(spec.tfds_name, split, where, shard)
        except _Missing as missing:
            attempts.append(str(missing))
            continue
        return _dataset(name, split, images, labels, source, shard)

    if download and _download.offline():
        attempts.append(f"download of {name}: off (FUNCNETS_OFFLINE is set)")
    tried = "\n".join(f"  - {a}" for a in attempts)
    raise DatasetNotFoundError(f"dataset {name!r} ({split} split) was not found. Tried:\n{tried}\n"
                               f"To get it: {spec.how_to_get}.")


def normalize(images: np.ndarray, info: DatasetInfo) -> np.ndarray:
    """``(images / 255 - mean) / std`` per channel, as ``transforms.Normalize`` after
    ``ToTensor``: float32, computed once over the whole array, in that order
    (the same bits as PyTorch's).

    Args:
      images: uint8 images as loaded, channels last.
      info: their `DatasetInfo` (its ``mean`` and ``std``, one per channel).

    Returns:
      A new float32 array of ``images``' shape.

    >>> import numpy as np, funcnets as fn
    >>> info = fn.data.load("digits", "test").info._replace(mean=(0.5,), std=(0.5,))
    >>> fn.data.normalize(np.array([[0, 255]], np.uint8)[..., None], info).ravel().tolist()
    [-1.0, 1.0]
    """
    if images.dtype != np.uint8:
        raise TypeError(f"images must be uint8 as loaded, got {images.dtype}")
    mean = np.asarray(info.mean, np.float32)
    std = np.asarray(info.std, np.float32)
    normalized = images.astype(np.float32)   # one new array; the rest in place
    normalized /= np.float32(255.0)
    normalized -= mean
    normalized /= std
    return normalized


@dataclasses.dataclass(frozen=True)
class Normalize:
    """`normalize` as a transform of uint8 batches, for inside a compiled step
    (``fit(..., transform=Normalize.of(info))``: the splits stay uint8 on the
    device, a quarter of the float32 bytes, and each batch is normalised where
    it is used).

    It looks each value up in a ``(256, C)`` table that `normalize` computed
    from the 256 levels, so it gives `normalize`'s bits on every backend (an
    XLA division need not round as NumPy's does), cast to ``dtype``.

    Attributes:
      table: ``table[v][c]``, channel ``c``'s normalised value of level ``v``
        (one column: every channel's).
      dtype: the output dtype's name (``"float32"``; ``"float64"`` casts the
        float32 values, as ``normalize(...).astype(np.float64)`` does).

    >>> import numpy as np, funcnets as fn
    >>> info = fn.data.load("digits", "test").info._replace(mean=(0.5,), std=(0.5,))
    >>> Normalize.of(info)(np.array([[0, 255]], np.uint8)[..., None]).ravel().tolist()
    [-1.0, 1.0]
    """

    table: tuple[tuple[float, ...], ...]
    dtype: str = "float32"

    @classmethod
    def of(cls, info: DatasetInfo, dtype=np.float32) -> "Normalize":
        """The transform of `normalize` with ``info``'s mean and std."""
        if not isinstance(info, DatasetInfo):
            raise TypeError(f"info must be a funcnets.data.DatasetInfo (a loaded Dataset's .info), "
                            f"got {type(info).__name__}")
        dtype = np.dtype(dtype)
        if not np.issubdtype(dtype, np.floating):
            raise TypeError(f"dtype must be a floating dtype, got {dtype}")
        levels = np.repeat(np.arange(256, dtype=np.uint8)[:, None], len(info.mean), axis=1)
        return cls(tuple(map(tuple, normalize(levels, info).tolist())), dtype.name)

    def __call__(self, images):
        """``images`` (uint8, channels last; NumPy or JAX, traced too) normalised:
        a NumPy array for a NumPy one, else a JAX array."""
        dtype = getattr(images, "dtype", None)
        if dtype != np.uint8:
            raise TypeError(f"Normalize takes uint8 images as loaded, got {dtype or type(images).__name__}")
        channels = len(self.table[0])
        if images.ndim < 1 or channels > 1 and images.shape[-1] != channels:
            raise ValueError(f"Normalize has {channels} channels; images have shape {tuple(images.shape)}")
        if isinstance(images, np.ndarray):
            xp = np
        else:
            import jax.numpy as xp
        table = xp.asarray(np.asarray(self.table, np.float32).astype(self.dtype))
        levels = images.astype(xp.int32)
        # One column (one mean and std) serves every channel, as in `normalize`.
        return table[:, 0][levels] if channels == 1 else table[levels, xp.arange(channels)]


# --- the pieces ---------------------------------------------------------------------

class _Missing(Exception):
    """A source that does not have the data (not an error while others remain)."""


def _check_shard(shard) -> None:
    if shard is None:
        return
    if (not isinstance(shard, (tuple, list)) or len(shard) != 2
            or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in shard)
            or not 0 <= shard[0] < shard[1]):
        raise ValueError(f"shard must be (index, count) with 0 <= index < count, got {shard!r}")


def shard_rows(num_examples: int, shard: tuple[int, int] | None) -> slice:
    """The rows of block ``index`` of ``count`` (see `load`); all rows for None."""
    if shard is None:
        return slice(0, num_examples)
    index, count = shard
    return slice(index * num_examples // count, (index + 1) * num_examples // count)


def _dataset(name, split, images, labels, source, shard=None) -> Dataset:
    spec = _SPECS[name]
    if shard is not None:
        source += f", shard {shard[0]} of {shard[1]}"
    if images.shape[1:] != spec.image_shape:
        raise CorruptDatasetError(f"{source}: images have shape {images.shape[1:]}, "
                                  f"{name} has {spec.image_shape}")
    if len(images) != len(labels):
        raise CorruptDatasetError(f"{source}: {len(images)} images but {len(labels)} labels")
    if labels.size and (labels.min() < 0 or labels.max() >= len(spec.class_names)):
        raise CorruptDatasetError(f"{source}: labels outside [0, {len(spec.class_names)})")
    info = DatasetInfo(name, split, len(spec.class_names), spec.class_names, spec.image_shape,
                       spec.mean, spec.std, source)
    return Dataset(np.ascontiguousarray(images, np.uint8), labels.astype(np.int32), info)


_IDX_DTYPES = {0x08: np.uint8}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """An IDX file (``.gz`` or raw) as an array: magic ``0x0000 TT NN`` (type ``TT``,
    ``NN`` dimensions), ``NN`` big-endian uint32 sizes, then the data."""
    path = pathlib.Path(path)
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, gzip.BadGzipFile) as error:
        raise CorruptDatasetError(f"{path}: cannot be read as {'gzip' if path.suffix == '.gz' else 'a file'}: "
                                  f"{error}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES or not 1 <= raw[3] <= 4:
        raise CorruptDatasetError(f"{path}: not an IDX file of uint8 (magic number {raw[:4].hex() or 'missing'}, "
                                  "expected 00000801 for labels or 00000803 for images)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise CorruptDatasetError(f"{path}: truncated header")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    expected = int(np.prod(shape))
    if len(raw) - header != expected:
        raise CorruptDatasetError(f"{path}: truncated or padded: the header promises shape {shape} "
                                  f"({expected} bytes), the file holds {len(raw) - header}")
    return np.frombuffer(raw, np.uint8, offset=header).reshape(shape)


def _find(folder: pathlib.Path, stem: str) -> pathlib.Path | None:
    for candidate in (folder / f"{stem}.gz", folder / stem):
        if candidate.is_file():
            return candidate
    return None


def _fetch(name: str, cache: pathlib.Path) -> pathlib.Path:
    try:
        return _download.fetch(name, cache)
    except _download.Unreachable as error:
        raise _Missing(f"download of {name}: {error}") from None


def _load_files(name: str, split: str, folder: pathlib.Path, folder_cache: pathlib.Path | None = None):
    if name == "cifar10" and imagefolder.is_archive(folder):
        return _load_cifar_folder(split, folder, folder_cache)
    if not folder.is_dir():
        raise _Missing(f"{folder}: no such folder")
    if name == "cifar10":
        try:
            return _load_cifar(split, folder)
        except _Missing as missing:
            for tree in _image_trees(folder, split):
                try:
                    return _load_cifar_folder(split, tree, folder_cache)
                except _Missing:
                    continue
            raise _Missing(f"{missing}; nor an image-folder tree {split}/<class>/<image>, unpacked or "
                           "as a .tar.gz") from None
    prefix = "train" if split == "train" else "t10k"
    image_path = _find(folder, f"{prefix}-images-idx3-ubyte")
    label_path = _find(folder, f"{prefix}-labels-idx1-ubyte")
    if image_path is None or label_path is None:
        missing = [f"{prefix}-{kind}-ubyte[.gz]" for kind, p in (("images-idx3", image_path),
                                                                 ("labels-idx1", label_path)) if p is None]
        raise _Missing(f"{folder}: no {' or '.join(missing)}")
    images, labels = read_idx(image_path), read_idx(label_path)
    if images.ndim != 3 or labels.ndim != 1:
        raise CorruptDatasetError(f"{image_path} / {label_path}: expected 3-D images and 1-D labels, "
                                  f"got shapes {images.shape} and {labels.shape}")
    if len(images) != len(labels):
        raise CorruptDatasetError(f"{label_path}: {len(labels)} labels for the {len(images)} images "
                                  f"of {image_path}")
    return images[..., None], labels, f"IDX files in {folder}"


def _load_cifar(split: str, folder: pathlib.Path):
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    for sub in ("cifar-10-batches-py", "."):
        base = folder / sub
        if all((base / n).is_file() for n in names):
            parts = [_read_cifar_pickle(base / n) for n in names]
            return (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]),
                    f"CIFAR-10 python batches in {_as_given(base)}")
    for sub in ("cifar-10-batches-bin", "."):
        base = folder / sub
        if all((base / f"{n}.bin").is_file() for n in names):
            parts = [_read_cifar_binary(base / f"{n}.bin") for n in names]
            return (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]),
                    f"CIFAR-10 binary batches in {_as_given(base)}")
    raise _Missing(f"{folder}: no CIFAR-10 batches ({', '.join(names)}) in it, "
                   "cifar-10-batches-py/ or cifar-10-batches-bin/")


def _as_given(path: pathlib.Path) -> str:
    """``path`` absolute, its symlinks kept: a data folder named as the user gave it
    (clusters often link data folders; the link is the name the user knows)."""
    return os.path.normpath(os.path.abspath(path))


def _image_trees(folder: pathlib.Path, split: str) -> list[pathlib.Path]:
    """Where an image-folder tree may be in ``folder``: itself (when it has a
    ``<split>/`` of class folders), then its archives, sorted (each is opened
    only when read; a cached one not at all)."""
    trees = [folder] if imagefolder.has_split(folder, split) else []
    return trees + sorted(p for p in folder.iterdir() if imagefolder.is_archive(p))


def _load_cifar_folder(split: str, tree: pathlib.Path, folder_cache: pathlib.Path | None):
    """CIFAR-10 from an image-folder tree, its class folders checked against CIFAR-10's order."""
    try:
        decoded = imagefolder.read_split(tree, split, cache_dir=folder_cache)
    except FileNotFoundError as error:
        raise _Missing(str(error)) from None
    except imagefolder.ImageFolderError as error:
        raise CorruptDatasetError(str(error)) from None
    expected = _SPECS["cifar10"].class_names
    if decoded.class_names != expected:
        raise CorruptDatasetError(f"{tree}: class folders {list(decoded.class_names)} are not CIFAR-10's "
                                  f"classes in its label order {list(expected)}")
    kind = f"JPEG q{decoded.jpeg_quality} copy" if decoded.jpeg_quality else "image-folder copy"
    return decoded.images, decoded.labels, f"CIFAR-10 ({kind}) from {decoded.source}"


def image_folder(root: str | os.PathLike, split: str = "train", *, name: str | None = None,
                 cache_dir: str | os.PathLike | None = None, shard: tuple[int, int] | None = None,
                 stream: bool = False) -> Dataset | FolderStream:
    """A class-folder data set of one's own, ``<root>/<split>/<class>/<image>``
    (torchvision's ``ImageFolder`` layout; ``root`` a folder or a ``.tar.gz``
    of one), decoded with Pillow once and cached (`funcnets.imagefolder`).

    Classes are the folder names, sorted; every image must have one shape
    (the first odd file is named). ``info.mean``/``info.std`` are the
    per-channel statistics of the ``train`` split, for `normalize`.
    ``split`` is any subfolder name (``"train"``, ``"test"``, ``"val"``...).
    ``cache_dir``: funcnets' cache (decoded splits in ``<cache_dir>/image_folders``;
    default ``~/.cache/funcnets``); ``False`` decodes every time and caches nothing.

    ``stream=True``, for a split larger than memory: a `FolderStream` instead, a
    Grain data source that decodes each image when it is read (in Grain's
    worker processes), in the same order, with the same classes, labels and
    ``info`` (its statistics computed on first use, one decoding pass over
    ``train``, then cached).

    >>> import funcnets as fn
    >>> train = fn.data.image_folder("flowers", "train")        # doctest: +SKIP
    >>> x = fn.data.normalize(train.images, train.info)           # doctest: +SKIP
    >>> source = fn.data.image_folder("big", "train", stream=True)  # doctest: +SKIP
    >>> loader = grain.DataLoader(data_source=source, worker_count=2, ...)  # doctest: +SKIP
    """
    _check_shard(shard)
    root = pathlib.Path(root)
    folder_cache = cache_dir if cache_dir in (None, False) else pathlib.Path(cache_dir) / "image_folders"
    try:
        if stream:
            return FolderStream(root, split, name=name, cache_dir=folder_cache, shard=shard)
        decoded = imagefolder.read_split(root, split, cache_dir=folder_cache)
        train = decoded if split == "train" else imagefolder.read_split(root, "train", cache_dir=folder_cache)
    except FileNotFoundError as error:
        raise DatasetNotFoundError(str(error)) from None
    except imagefolder.ImageFolderError as error:
        raise CorruptDatasetError(str(error)) from None
    _check_like_train(root, split, decoded.class_names, decoded.images.shape[1:],
                      train.class_names, train.images.shape[1:])
    mean, std = imagefolder.channel_stats(train.images)
    rows = shard_rows(len(decoded.labels), shard)
    source = decoded.source + ("" if shard is None else f", shard {shard[0]} of {shard[1]}")
    info = DatasetInfo(name or root.name.split(".")[0], split, len(decoded.class_names), decoded.class_names,
                       decoded.images.shape[1:], mean, tuple(max(s, 1e-12) for s in std), source)
    return Dataset(decoded.images[rows], decoded.labels[rows], info)


def _check_like_train(root, split, class_names, shape, train_class_names, train_shape) -> None:
    if train_class_names != class_names:
        raise CorruptDatasetError(f"{root}: the {split} split's classes {list(class_names)} differ "
                                  f"from the train split's {list(train_class_names)}")
    if tuple(train_shape) != tuple(shape):
        raise CorruptDatasetError(f"{root}: {split} images have shape {tuple(shape)}, "
                                  f"train images {tuple(train_shape)}")


class FolderStream(imagefolder.FolderSource):
    """`image_folder(..., stream=True)`: a split read image by image
    (`funcnets.imagefolder.FolderSource`: ``source[i] -> (image uint8 (H, W, C), label)``,
    Grain's ``RandomAccessDataSource``) with the ``info`` of `image_folder`.

    >>> source = fn.data.image_folder("big", "train", stream=True)          # doctest: +SKIP
    >>> epoch = lambda e: grain.MapDataset.source(source).shuffle(seed=e).batch(64)  # doctest: +SKIP
    """

    def __init__(self, root: pathlib.Path, split: str, *, name: str | None, cache_dir, shard):
        super().__init__(root, split, cache_dir=cache_dir)
        if shard is not None:
            self._rows = self._rows[shard_rows(len(self), shard)]
        self._train = self if split == "train" and shard is None else \
            imagefolder.FolderSource(root, "train", cache_dir=cache_dir)
        _check_like_train(root, split, self.class_names, self.image_shape,
                          self._train.class_names, self._train.image_shape)
        self._name = name or root.name.split(".")[0]
        self.description += "" if shard is None else f", shard {shard[0]} of {shard[1]}"

    @functools.cached_property
    def info(self) -> DatasetInfo:
        """The split's `DatasetInfo`; ``mean``/``std`` of the ``train`` split (one
        decoding pass over it the first time, then from the cache)."""
        mean, std = self._train.channel_stats()
        return DatasetInfo(self._name, self.split, len(self.class_names), self.class_names, self.image_shape,
                           mean, tuple(max(s, 1e-12) for s in std), self.description)


def _read_cifar_pickle(path: pathlib.Path):
    try:
        with open(path, "rb") as f:
            batch = pickle.load(f, encoding="bytes")
        data = np.asarray(batch[b"data"], np.uint8)
        labels = np.asarray(batch[b"labels"])
    except Exception as error:  # a broken pickle can raise almost anything
        raise CorruptDatasetError(f"{path}: not a CIFAR-10 python batch: {error!r}") from None
    if data.ndim != 2 or data.shape[1] != 3072 or len(data) != len(labels):
        raise CorruptDatasetError(f"{path}: expected (N, 3072) data and N labels, got {data.shape} "
                                  f"and {labels.shape}")
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def _read_cifar_binary(path: pathlib.Path):
    raw = np.fromfile(path, np.uint8)
    if raw.size == 0 or raw.size % 3073:
        raise CorruptDatasetError(f"{path}: {raw.size} bytes is not a whole number of 3073-byte records")
    records = raw.reshape(-1, 3073)
    return records[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), records[:, 0]


def _load_tfds(tfds_name: str, split: str, data_dir: str | None, shard=None):
    """A copy TFDS has prepared (read with ``as_data_source``; nothing is downloaded)."""
    where = f"TFDS {tfds_name} in {data_dir or 'the default TFDS data dir'}"
    try:
        import tensorflow_datasets as tfds
    except ImportError as error:
        raise _Missing(f"{where}: tensorflow-datasets does not import ({error})") from None
    absl_logger = logging.getLogger("absl")
    level = absl_logger.level
    absl_logger.setLevel(logging.ERROR)  # TFDS warns about the missing copy we are only probing for
    try:
        return _read_tfds(tfds, tfds_name, split, data_dir, where, shard)
    finally:
        absl_logger.setLevel(level)


def _read_tfds(tfds, tfds_name: str, split: str, data_dir: str | None, where: str, shard=None):
    builder = tfds.builder(tfds_name, data_dir=data_dir)
    try:
        source = builder.as_data_source(split=split)
    except Exception as error:  # TFDS raises many kinds for "not here"; each is reported
        if not builder.is_prepared():
            raise _Missing(f"{where}: not prepared there") from None
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        if "tensorflow" in str(error).lower():
            message += " (a copy prepared as TFRecord needs TensorFlow to read; ArrayRecord copies do not)"
        raise _Missing(f"{where}: {type(error).__name__}: {message[:300]}") from None
    rows = shard_rows(len(source), shard)
    examples = [source[i] for i in range(rows.start, rows.stop)]
    images = np.stack([np.asarray(e["image"], np.uint8) for e in examples])
    labels = np.asarray([e["label"] for e in examples])
    return images, labels, f"TFDS {tfds_name} ({getattr(builder, 'data_dir', data_dir)})"


def _load_digits(split: str):
    """scikit-learn's 1,797 8x8 digits (0-16) as MNIST-like 28x28 uint8 images.

    Each digit is scaled bilinearly to 20x20 and centred in 28x28, as MNIST
    centres its digits in a 20x20 box; intensities go 0-16 -> 0-255. Split: the
    first 1,437 (80%) in scikit-learn's order for training, the other 360 for test.
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError as error:
        raise DatasetNotFoundError(f"dataset 'digits' needs scikit-learn: {error}") from None
    import jax

    bunch = load_digits()
    small = bunch.images.astype(np.float32) / 16.0
    big = np.asarray(jax.image.resize(small, (len(small), 20, 20), method="bilinear"))
    images = np.zeros((len(small), 28, 28, 1), np.uint8)
    images[:, 4:24, 4:24, 0] = np.clip(np.round(big * 255.0), 0, 255).astype(np.uint8)
    cut = 1437
    sl = slice(None, cut) if split == "train" else slice(cut, None)
    return images[sl], bunch.target[sl].astype(np.int32)
