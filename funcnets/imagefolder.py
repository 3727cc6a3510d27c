"""Class-folder image data sets, decoded once with Pillow and cached as arrays.

The layout is torchvision's and TFDS's ``ImageFolder``::

    <root>/<split>/<class>/<image>        e.g. cifar10/train/airplane/0000.jpg

``root`` is a folder or a ``.tar``/``.tar.gz``/``.tgz`` archive of one (read
in place, without unpacking; the tree may sit under one top folder inside
it). Classes are the folder names, sorted, numbered from 0; as in
torchvision's ``ImageFolder``, a class folder with no image is refused (every
later label would mean another class). Every image of a split must have the
same size and channels (``L`` is one channel, ``RGB`` three); the first one
that does not is named in the error, and so is an archive that is truncated or
not an archive (`ImageFolderError`; `funcnets.data` raises it as its
`CorruptDatasetError`).

Decoding 60,000 small JPEGs takes tens of seconds, so each split is kept as
one ``.npz`` in a cache folder (default ``$XDG_CACHE_HOME/funcnets/image_folders``,
else ``~/.cache/funcnets/image_folders``) under a key of the source's path and
its files' names, sizes and modification times: a changed, added or removed
file makes a new key, and the stale entry is never read.

A split larger than memory is read image by image instead (`FolderSource`, a
Grain data source), in the same order and with the same labels.
"""

from __future__ import annotations

import hashlib
import io
import os
import pathlib
import tarfile
import zlib
from typing import Iterator, NamedTuple

import numpy as np

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".ppm", ".pgm", ".webp", ".tif", ".tiff")


class ImageFolderError(ValueError):
    """An image-folder tree that cannot be read as one data set (the message names the file)."""


class FolderSplit(NamedTuple):
    """One decoded split: uint8 ``images (N, H, W, C)``, int32 ``labels (N,)``,
    the sorted ``class_names``, and what it was read from (``source``, plus the
    JPEG ``quality`` of its first image where the file says, else None)."""

    images: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]
    source: str
    jpeg_quality: int | None


def is_archive(path: pathlib.Path) -> bool:
    return path.is_file() and path.name.lower().endswith(ARCHIVE_SUFFIXES)


def has_split(root: pathlib.Path, split: str) -> bool:
    """Whether ``root`` (folder or archive) looks like it holds ``<split>/<class>/`` folders."""
    if is_archive(root):
        return any(True for _ in _archive_members(root, split, names_only=True))
    return (root / split).is_dir() and any(p.is_dir() for p in (root / split).iterdir())


def default_cache_dir() -> pathlib.Path:
    cache_home = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return pathlib.Path(cache_home) / "funcnets" / "image_folders"


def read_split(root: str | os.PathLike, split: str, *, cache_dir: str | os.PathLike | None = None
               ) -> FolderSplit:
    """The ``split`` of the image-folder tree ``root`` (see the module doc),
    from the cache when the files are unchanged, else decoded and cached.
    ``cache_dir=False`` neither reads nor writes a cache."""
    root = pathlib.Path(root)
    if not root.exists():
        raise FileNotFoundError(f"{root}: no such folder or archive")
    entries = _list_entries(root, split)
    if not entries:
        raise FileNotFoundError(f"{root}: no {split}/<class>/<image> files in it")
    cache_path = None
    if cache_dir is not False:
        cache_path = pathlib.Path(cache_dir or default_cache_dir()) / f"{_cache_key(root, split, entries)}.npz"
        cached = _read_cache(cache_path)
        if cached is not None:
            return cached._replace(source=f"{_as_given(root)} ({split}; cached in {cache_path})")
    images, labels, class_names, quality = _decode(root, split)
    result = FolderSplit(images, labels, class_names, f"{_as_given(root)} ({split})", quality)
    if cache_path is not None:
        _write_cache(cache_path, result)
    return result


def _as_given(path: pathlib.Path) -> str:
    """``path`` absolute, its symlinks kept (the name the user gave, not the link's target)."""
    return os.path.normpath(os.path.abspath(path))


def stats_block(image_shape) -> int:
    """Images per float64 block of `channel_stats`: 4096, fewer where that is over 2**24 values."""
    return int(min(4096, max(1, 2**24 // int(np.prod(image_shape)))))


def channel_stats(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and standard deviation on the 0-1 scale, over all
    pixels of ``images (N, H, W, C)`` (as ``transforms.Normalize`` constants
    are computed), accumulated in float64 a block of `stats_block` images at a time."""
    size = stats_block(images.shape[1:])
    return block_stats(images[start:start + size] for start in range(0, len(images), size))


def block_stats(blocks) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """`channel_stats` over an iterable of consecutive uint8 ``(n, H, W, C)`` blocks
    (`stats_block` images each but the last, for the same bits)."""
    total = squares = None
    count = 0
    for block in blocks:
        block = block.astype(np.float64) / 255.0
        if total is None:
            total, squares = np.zeros(block.shape[-1]), np.zeros(block.shape[-1])
        total += block.sum(axis=(0, 1, 2))
        squares += (block * block).sum(axis=(0, 1, 2))
        count += block.shape[0] * block.shape[1] * block.shape[2]
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - mean * mean, 0.0))
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)


# --- listing ------------------------------------------------------------------------

def _split_parts(name: str, split: str) -> tuple[str, str] | None:
    """``(class, file)`` when the archive or tree path ``name`` is
    ``[top/]<split>/<class>/<file>`` of an image; else None."""
    parts = name.strip("/").split("/")
    for offset in (0, 1):
        rest = parts[offset:]
        if len(rest) == 3 and rest[0] == split and rest[2].lower().endswith(IMAGE_SUFFIXES):
            return rest[1], rest[2]
    return None


def _split_class_folder(name: str, split: str) -> str | None:
    """The class of the archive or tree folder ``name`` when it is
    ``[top/]<split>/<class>``; else None."""
    parts = name.strip("/").split("/")
    for offset in (0, 1):
        rest = parts[offset:]
        if len(rest) == 2 and rest[0] == split:
            return rest[1]
    return None


def _archive_members(path: pathlib.Path, split: str, names_only: bool = False,
                     class_folders: set[str] | None = None) -> Iterator:
    """The image members of ``split`` in the archive ``path`` (their names, or
    ``(member, archive)``), adding the class folders it lists to ``class_folders``.
    Raises `ImageFolderError` naming the archive if it is truncated or not an archive."""
    try:
        with tarfile.open(path, "r:*") as archive:
            for member in archive:
                if member.isdir() and class_folders is not None:
                    class_name = _split_class_folder(member.name, split)
                    if class_name is not None:
                        class_folders.add(class_name)
                if member.isfile() and _split_parts(member.name, split) is not None:
                    if names_only:
                        yield member.name
                    else:
                        yield member, archive
    except (tarfile.TarError, EOFError, zlib.error, OSError) as error:
        raise ImageFolderError(f"{path}: the archive is truncated or corrupt ({type(error).__name__}: "
                               f"{error or 'unexpected end of data'}); download or copy it again") from None


def _refuse_empty_classes(where: str, class_folders, classes_with_images) -> None:
    """torchvision's rule: a class folder without images is an error, since every
    later class would take its label."""
    empty = sorted(set(class_folders) - set(classes_with_images))
    if empty:
        raise ImageFolderError(f"{where}/{empty[0]}: class folder with no images "
                               f"({', '.join(IMAGE_SUFFIXES)}); every later class would take its label, "
                               "so remove the folder or add its images"
                               + (f" ({len(empty)} such folders: {empty})" if len(empty) > 1 else ""))


def _list_entries(root: pathlib.Path, split: str) -> list[tuple[str, int, int]]:
    """What the cache key covers: ``(name, size, mtime_ns)`` of every image of
    the split (for an archive, the archive itself)."""
    if is_archive(root):
        stat = root.stat()
        return [(root.name, stat.st_size, stat.st_mtime_ns)]   # its members are listed when decoding
    base = root / split
    if not base.is_dir():
        return []
    files = _folder_files(root, split)
    entries = []
    for class_name, path in files:
        stat = os.stat(path)
        entries.append((f"{class_name}/{os.path.basename(path)}", stat.st_size, stat.st_mtime_ns))
    if entries:
        _refuse_empty_classes(str(base), (p.name for p in base.iterdir() if p.is_dir()), (c for c, _ in files))
    return entries


def _cache_key(root: pathlib.Path, split: str, entries) -> str:
    digest = hashlib.sha256(f"{root.resolve()}\0{split}\0".encode())
    for name, size, mtime in entries:
        digest.update(f"{name}\0{size}\0{mtime}\n".encode())
    return f"{root.name}-{split}-{digest.hexdigest()[:20]}"


# --- decoding -----------------------------------------------------------------------

def _folder_files(root: pathlib.Path, split: str) -> list[tuple[str, str]]:
    """``(class, path)`` of every image of an unpacked tree's split, in path order."""
    files = []
    for class_dir in sorted(p for p in (root / split).iterdir() if p.is_dir()):
        for file in sorted(class_dir.iterdir()):
            if file.is_file() and file.name.lower().endswith(IMAGE_SUFFIXES):
                files.append((class_dir.name, str(file)))
    return sorted(files, key=lambda f: f[1])


def _archive_files(root: pathlib.Path, split: str) -> Iterator[tuple[str, str, bytes]]:
    """``(class, shown name, encoded bytes)`` of each image of an archive's split, in
    archive order, one member at a time; then the empty-class check."""
    class_folders: set[str] = set()
    classes_seen: set[str] = set()
    for member, archive in _archive_members(root, split, class_folders=class_folders):
        class_name, _ = _split_parts(member.name, split)
        classes_seen.add(class_name)
        yield class_name, f"{root}:{member.name}", archive.extractfile(member).read()
    if classes_seen:
        _refuse_empty_classes(f"{root}:{split}", class_folders, classes_seen)


def decode_image(encoded: bytes, shown: str) -> np.ndarray:
    """One encoded image as uint8 ``(H, W, C)``: ``L`` (and 1-bit, 16-bit grey) as one
    channel, everything else as ``RGB``; `ImageFolderError` naming ``shown`` if Pillow cannot."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(encoded)) as image:
            pixels = np.asarray(image.convert("L" if image.mode in ("L", "1", "I;16") else "RGB"))
    except Exception as error:  # Pillow raises many kinds for a broken file
        raise ImageFolderError(f"{shown}: cannot be decoded as an image: {error}") from None
    return pixels[..., None] if pixels.ndim == 2 else pixels


def _quality_of(encoded: bytes) -> int | None:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(encoded)) as image:
            return jpeg_quality(image)
    except Exception:  # decode_image names the broken file
        return None


def _shape_error(shown: str, shape, first: str, expected) -> ImageFolderError:
    return ImageFolderError(f"{shown}: image of shape {tuple(shape)} (H, W, C), but the split's first image "
                            f"{first} has {tuple(expected)}; every image of a split must have one shape")


def _decode(root: pathlib.Path, split: str):
    if is_archive(root):
        files = list(_archive_files(root, split))
    else:
        files = [(c, path, pathlib.Path(path).read_bytes()) for c, path in _folder_files(root, split)]
    if not files:
        raise FileNotFoundError(f"{root}: no {split}/<class>/<image> files in it")
    files.sort(key=lambda f: f[1])
    class_names = tuple(sorted({c for c, _, _ in files}))
    index = {name: i for i, name in enumerate(class_names)}
    images = None
    for i, (_, shown, encoded) in enumerate(files):
        pixels = decode_image(encoded, shown)
        if images is None:
            images = np.empty((len(files), *pixels.shape), np.uint8)
        elif pixels.shape != images.shape[1:]:
            raise _shape_error(shown, pixels.shape, files[0][1], images.shape[1:])
        images[i] = pixels
    labels = np.asarray([index[c] for c, _, _ in files], np.int32)
    return images, labels, class_names, _quality_of(files[0][2])


_STANDARD_LUMINANCE = np.array([
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
    14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99])


def jpeg_quality(image) -> int | None:
    """The IJG quality (1-100) whose scaled standard luminance table (ITU T.81
    Annex K) is ``image``'s first quantization table; None for other files or
    non-standard tables. Pillow lists tables in zigzag order; the comparison
    is on the sorted values, which the scaling keeps in order."""
    tables = getattr(image, "quantization", None)
    if not tables or 0 not in tables:
        return None
    table = np.sort(np.asarray(tables[0]))
    standard = np.sort(_STANDARD_LUMINANCE)
    for quality in range(1, 101):
        scale = 5000 // quality if quality < 50 else 200 - 2 * quality
        scaled = np.clip((standard * scale + 50) // 100, 1, 255)
        if np.array_equal(scaled, table):
            return quality
    return None


# --- cache --------------------------------------------------------------------------

def _read_cache(path: pathlib.Path) -> FolderSplit | None:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as saved:
            quality = int(saved["jpeg_quality"])
            return FolderSplit(saved["images"], saved["labels"], tuple(str(c) for c in saved["class_names"]),
                               "", quality if quality > 0 else None)
    except Exception:  # a damaged cache entry is decoded again, not trusted
        return None


def _write_cache(path: pathlib.Path, split: FolderSplit) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
        with open(partial, "wb") as f:
            np.savez(f, images=split.images, labels=split.labels, class_names=np.asarray(split.class_names),
                     jpeg_quality=np.int64(split.jpeg_quality or 0))
        os.replace(partial, path)   # a reader sees the whole file or none
    except OSError:
        pass  # an unwritable cache only costs the next load its decoding


# --- reading image by image ---------------------------------------------------------

class FolderSource:
    """One split read image by image, for a tree larger than memory:
    ``source[i]`` is ``(image uint8 (H, W, C), label int32)``, decoded from its
    file when asked, in `read_split`'s order (images sorted by path, classes by
    name). It is Grain's ``RandomAccessDataSource`` (``len`` and ``[]``), so
    ``grain.MapDataset.source(source)`` decodes in the loader's thread, or in worker
    processes through ``mp_prefetch`` (see `funcnets.streams.allow_grain_workers`).

    An unpacked tree is read file by file. An archive cannot be read at an
    offset through gzip, so its images' encoded bytes are copied once, in one
    pass, into ``<cache_dir>/<key>.images`` (JPEGs as they are, about the
    archive's size) with their offsets in ``<key>.index.npz``, under the key
    `read_split` uses; each read is then one ``pread``. With ``cache_dir=False``
    (or an unwritable cache) those bytes are held in memory instead.

    Every image must have the shape of the split's first (decoded when the
    source is made); one that does not raises `ImageFolderError` naming it when read.
    """

    def __init__(self, root: str | os.PathLike, split: str, *, cache_dir: str | os.PathLike | None = None):
        root = pathlib.Path(root)
        if not root.exists():
            raise FileNotFoundError(f"{root}: no such folder or archive")
        self.root, self.split, self._cache_dir = root, split, cache_dir
        if is_archive(root):
            names, classes, self._offsets, self._packed, self._blob = _packed_archive(root, split, cache_dir)
        else:
            if not (root / split).is_dir():
                raise FileNotFoundError(f"{root}: no {split}/<class>/<image> files in it")
            files = _folder_files(root, split)
            if files:   # an empty class folder is refused, as read_split does
                _refuse_empty_classes(str(root / split), (p.name for p in (root / split).iterdir() if p.is_dir()),
                                      (c for c, _ in files))
            names, classes = [path for _, path in files], [c for c, _ in files]
            self._offsets, self._packed, self._blob = None, None, None
        if not names:
            raise FileNotFoundError(f"{root}: no {split}/<class>/<image> files in it")
        self.class_names = tuple(sorted(set(classes)))
        index = {name: i for i, name in enumerate(self.class_names)}
        self._names = np.asarray(names)
        self._labels = np.asarray([index[c] for c in classes], np.int32)
        self._rows = np.arange(len(names))
        self._fd = None
        first = self._encoded(0)
        self.jpeg_quality = _quality_of(first)
        self.image_shape = decode_image(first, str(self._names[0])).shape
        location = f"{_as_given(root)} ({split}; read image by image"
        self.description = location + (f", bytes copied to {self._packed})" if self._packed else ")")

    def __len__(self) -> int:
        return len(self._rows)

    @property
    def labels(self) -> np.ndarray:
        """The labels of the rows this source reads, int32 ``(len,)`` (no decoding)."""
        return self._labels[self._rows]

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.int32]:
        row = int(self._rows[index])
        pixels = decode_image(self._encoded(row), str(self._names[row]))
        if pixels.shape != self.image_shape:
            raise _shape_error(str(self._names[row]), pixels.shape, str(self._names[0]), self.image_shape)
        return pixels, self._labels[row]

    def blocks(self, size: int | None = None) -> Iterator[np.ndarray]:
        """The decoded images in order, ``size`` (default `stats_block`) at a time."""
        size = size or stats_block(self.image_shape)
        for start in range(0, len(self), size):
            yield np.stack([self[i][0] for i in range(start, min(start + size, len(self)))])

    def channel_stats(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """`channel_stats` of this source's images, decoding each once, with the same
        bits as of the decoded split; kept in the cache (``<key>.stats.json``) like a split."""
        import json

        path = None
        if self._cache_dir is not False:
            key = _cache_key(self.root, self.split, _list_entries(self.root, self.split))
            rows = "" if len(self._rows) == len(self._names) else f"-rows{self._rows[0]}-{len(self._rows)}"
            path = pathlib.Path(self._cache_dir or default_cache_dir()) / f"{key}{rows}.stats.json"
            try:
                saved = json.loads(path.read_text())
                return tuple(saved["mean"]), tuple(saved["std"])
            except (OSError, ValueError, KeyError):
                pass
        mean, std = block_stats(self.blocks())
        if path is not None:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
                partial.write_text(json.dumps({"mean": mean, "std": std}))
                os.replace(partial, path)
            except OSError:
                pass   # an unwritable cache only costs the next call its decoding
        return mean, std

    def _encoded(self, row: int) -> bytes:
        if self._offsets is None:
            return pathlib.Path(self._names[row]).read_bytes()
        start, stop = int(self._offsets[row]), int(self._offsets[row + 1])
        if self._blob is not None:
            return self._blob[start:stop]
        if self._fd is None:
            self._fd = os.open(self._packed, os.O_RDONLY)
        return os.pread(self._fd, stop - start, start)

    def __getstate__(self):   # a worker process opens its own file
        return {**self.__dict__, "_fd": None}

    def __del__(self):
        if getattr(self, "_fd", None) is not None and os is not None:   # os is gone at interpreter exit
            os.close(self._fd)


def _packed_archive(root: pathlib.Path, split: str, cache_dir):
    """``(names, classes, offsets (N+1,), packed file or None, bytes or None)`` of an
    archive's split, in `read_split`'s order; the packed file made in one pass of
    the archive if the cache does not hold it for the archive as it is now."""
    if cache_dir is not False:
        base = pathlib.Path(cache_dir or default_cache_dir()) / _cache_key(root, split, _list_entries(root, split))
        packed, index = base.with_name(f"{base.name}.images"), base.with_name(f"{base.name}.index.npz")
        try:
            with np.load(index, allow_pickle=False) as saved:
                if packed.is_file() and packed.stat().st_size == int(saved["offsets"][-1]):
                    return ([str(n) for n in saved["names"]], [str(c) for c in saved["classes"]],
                            saved["offsets"], str(packed), None)
        except (OSError, KeyError, ValueError):
            pass   # not cached yet, or damaged: copied again
        try:
            packed.parent.mkdir(parents=True, exist_ok=True)
            partial = packed.with_name(f"{packed.name}.{os.getpid()}.partial")
            with open(partial, "wb") as out:
                names, classes, offsets = _copy_images(root, split, out.write)
            order = np.argsort(names, kind="stable")
            starts, sizes = offsets[:-1][order], np.diff(offsets)[order]
            reordered = _reorder(partial, starts, sizes, packed)
            partial.unlink()
            with open(index.with_name(f"{index.name}.{os.getpid()}.partial"), "wb") as f:
                np.savez(f, names=np.asarray(names)[order], classes=np.asarray(classes)[order], offsets=reordered)
            os.replace(f.name, index)
            return [names[i] for i in order], [classes[i] for i in order], reordered, str(packed), None
        except OSError:
            pass   # an unwritable cache: the bytes are held in memory
    chunks: list[bytes] = []
    names, classes, offsets = _copy_images(root, split, chunks.append)
    order = np.argsort(names, kind="stable")
    blob = b"".join(chunks[i] for i in order)
    return ([names[i] for i in order], [classes[i] for i in order],
            np.concatenate([[0], np.cumsum(np.diff(offsets)[order])]), None, blob)


def _copy_images(root: pathlib.Path, split: str, write) -> tuple[list[str], list[str], np.ndarray]:
    names, classes, offsets = [], [], [0]
    for class_name, shown, encoded in _archive_files(root, split):
        write(encoded)
        names.append(shown)
        classes.append(class_name)
        offsets.append(offsets[-1] + len(encoded))
    return names, classes, np.asarray(offsets, np.int64)


def _reorder(partial: pathlib.Path, starts: np.ndarray, sizes: np.ndarray, packed: pathlib.Path) -> np.ndarray:
    """Copy ``partial``'s pieces into ``packed`` in sorted order (reads stay sequential
    for an in-order epoch); returns the new offsets."""
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    tmp = packed.with_name(f"{packed.name}.{os.getpid()}.sorted")
    with open(partial, "rb") as src, open(tmp, "wb") as out:
        for start, size in zip(starts, sizes):
            out.write(os.pread(src.fileno(), int(size), int(start)))
    os.replace(tmp, packed)
    return offsets
