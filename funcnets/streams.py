"""Training data as a stream of batches, for data larger than memory or from a loader one has.

`funcnets.fit`, `funcnets.train_epoch` and `funcnets.evaluate` take, instead of a
whole split ``(images, labels)``, a *stream*:

- a Grain dataset or loader that yields batches (``grain.MapDataset.batch(n)``,
  ``grain.IterDataset``, ``grain.DataLoader(..., operations=[grain.transforms.Batch(n)])``);
  its iterator state is checkpointed with the train state, so a resumed run is exact;
- a torch ``DataLoader`` through `from_torch` (NCHW tensors become NHWC arrays; its
  own shuffling and ``drop_last`` are kept);
- any re-iterable of ``(images, labels)`` NumPy batches (a list, an object with
  ``__iter__``);
- a function ``epoch -> iterable`` of the above, for a stream whose order changes
  per epoch (``lambda e: dataset.shuffle(seed=e).batch(64)``).

Each epoch iterates the stream once. Batches go to the device one step ahead of
the step that uses them (`prefetch`, a thread), so copying overlaps the compute.
A stream whose iterator has no state to save (anything but Grain's) resumes by
restarting the interrupted epoch from its first batch, with a warning saying so.
"""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import Callable, Iterator

import numpy as np


class StreamError(ValueError):
    """A stream's batch cannot be trained on; the message names the batch."""


def is_stream(data) -> bool:
    """Whether ``data`` is a stream rather than a whole split ``(images, labels)``."""
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(hasattr(part, "shape") for part in data):
        return False
    if hasattr(data, "images") and hasattr(data, "labels"):   # a funcnets.data.Dataset: a split, not a stream
        return False
    return data is not None and (hasattr(data, "__iter__") or callable(data) or is_example_source(data))


def is_example_source(data) -> bool:
    """Whether ``data`` is a random-access source of single examples (``len`` and ``[]``,
    not iterable: Grain's ``RandomAccessDataSource``, a `funcnets.data.FolderStream`)."""
    return (hasattr(data, "__getitem__") and hasattr(data, "__len__") and not hasattr(data, "__iter__")
            and not isinstance(data, (tuple, list)))


class Stream:
    """A stream's epochs: ``iterator(epoch, data_state)``, each batch checked and cast to
    NumPy; ``state(iterator)``: a JSON string of a Grain iterator's position (None for
    a stream without one)."""

    def __init__(self, source, argument: str = "train"):
        if isinstance(source, Stream):
            source = source.source
        if is_example_source(source):
            raise TypeError(f"{argument} is a source of single examples ({type(source).__name__}, {len(source)} of "
                            f"them), not of batches: batch it, e.g. lambda epoch: grain.MapDataset.source("
                            f"{argument}).shuffle(seed=epoch).batch(64)")
        if not is_stream(source):
            raise TypeError(f"{argument} must be a stream of (images, labels) batches (a Grain dataset or loader, "
                            f"funcnets.data.from_torch(loader), an iterable) or a pair of arrays, got "
                            f"{type(source).__name__}")
        self.source = source
        self.argument = argument
        self.by_epoch = callable(source) and not hasattr(source, "__iter__")

    def iterable(self, epoch: int):
        return self.source(epoch) if self.by_epoch else self.source

    def length(self, epoch: int) -> int | None:
        """The batches in an epoch, where the stream knows (``len``); else None."""
        try:
            return len(self.iterable(epoch))
        except TypeError:
            return None

    def iterator(self, epoch: int, data_state: str | None = None) -> Iterator:
        iterator = iter(self.iterable(epoch))
        if data_state is not None:
            saved = json.loads(data_state)
            value = saved["value"].encode() if saved["kind"] == "bytes" else saved["value"]
            iterator.set_state(value)
        return iterator

    @staticmethod
    def checkpointable(iterator) -> bool:
        return callable(getattr(iterator, "get_state", None)) and callable(getattr(iterator, "set_state", None))

    @staticmethod
    def state(iterator) -> str | None:
        if not Stream.checkpointable(iterator):
            return None
        value = iterator.get_state()
        if isinstance(value, bytes):
            return json.dumps({"kind": "bytes", "value": value.decode()})
        return json.dumps({"kind": "json", "value": value})


def as_batch(batch, index: int, argument: str) -> tuple[np.ndarray, np.ndarray]:
    """A stream's ``index``-th batch as ``(images, labels)`` NumPy arrays (a dict with
    ``"image"``/``"label"`` keys, as TFDS and Grain examples name them, is taken too)."""
    if isinstance(batch, dict):
        keys = [k for k in ("image", "images") if k in batch], [k for k in ("label", "labels") if k in batch]
        if not keys[0] or not keys[1]:
            raise StreamError(f"{argument}: batch {index} is a dict without image and label entries "
                              f"(keys: {sorted(batch)})")
        batch = (batch[keys[0][0]], batch[keys[1][0]])
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        raise StreamError(f"{argument}: batch {index} is not a pair (images, labels), got {type(batch).__name__}")
    images, labels = (np.asarray(part) for part in batch)
    if images.ndim < 2 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise StreamError(f"{argument}: batch {index} has images {images.shape} and labels {labels.shape}; "
                          "a batch is (B, ...) images with (B,) labels")
    return images, labels


def prefetch(iterator: Iterator, put: Callable, depth: int = 2) -> Iterator:
    """``put(batch)`` of each of ``iterator``'s batches, made by a thread up to ``depth``
    batches ahead of the caller (the device copy overlaps the step). An error raised
    by the stream is raised here, at the batch where it happened."""
    items: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def work():
        try:
            for batch in iterator:
                if stop.is_set():
                    return
                items.put(("batch", put(batch)))
            items.put(("end", done))
        except BaseException as error:  # noqa: BLE001 (re-raised in the caller's thread)
            items.put(("error", error))

    thread = threading.Thread(target=work, name="funcnets-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            kind, value = items.get()
            if kind == "end":
                return
            if kind == "error":
                raise value
            yield value
    finally:
        stop.set()
        while not items.empty():   # let the thread finish its put and see the stop
            items.get_nowait()


def allow_grain_workers() -> None:
    """Let Grain start worker processes (``mp_prefetch``, ``DataLoader(worker_count=n)``)
    in a script not run by ``absl.app``. Process-wide: it marks absl's flags parsed,
    each at its default, so funcnets never calls it for you.

    Grain 0.2.18 reads the absl flag ``--grain_enable_multiprocess_worker_profiling``
    when it starts workers with JAX imported, and absl raises
    ``UnparsedFlagAccessError`` for a flag read before parsing (google/grain#1355,
    fixed upstream after 0.2.18). Decoding in the loader's own threads
    (``to_iter_dataset(grain.ReadOptions(num_threads=n))``) needs no workers and no flags."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def hint_for(error: BaseException) -> str:
    """What to do about a stream's error, where funcnets knows ('' otherwise)."""
    if type(error).__name__ == "UnparsedFlagAccessError" and "grain" in str(error):
        return (". Grain's worker processes read an absl flag before absl parsed them (google/grain#1355): "
                "call funcnets.data.allow_grain_workers() once at the start of the script, run it with "
                "absl.app.run, or decode in threads (grain.ReadOptions(num_threads=n)) instead of workers")
    return ""


class TorchLoader:
    """`from_torch`'s stream: a torch ``DataLoader``'s batches as NHWC NumPy arrays."""

    def __init__(self, loader):
        self.loader = loader

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for batch in self.loader:
            if not isinstance(batch, (tuple, list)) or len(batch) != 2:
                raise StreamError("from_torch: the DataLoader's batches must be (images, labels) pairs")
            images, labels = (part.numpy() if hasattr(part, "numpy") else np.asarray(part) for part in batch)
            if images.ndim == 4:
                images = images.transpose(0, 2, 3, 1)   # NCHW -> NHWC
            yield np.ascontiguousarray(images), labels.astype(np.int32)

    def describe(self) -> str:
        sampler = type(getattr(self.loader, "sampler", None)).__name__
        return (f"a torch DataLoader: batch {self.loader.batch_size}, {sampler} (its own order), "
                f"drop_last={self.loader.drop_last}, {len(self.loader)} batches an epoch")


def from_torch(loader) -> TorchLoader:
    """A torch ``DataLoader`` as a funcnets stream: each ``(images, labels)`` batch as
    NumPy arrays, NCHW images as NHWC, labels int32. The loader's sampler (its
    shuffling, reseeded by torch each epoch) and ``drop_last`` are kept, so the
    batches are the ones PyTorch's loop sees; `describe` says which. A DataLoader's
    iterator has no state to checkpoint: a resumed run restarts the interrupted
    epoch (with a warning)."""
    if not hasattr(loader, "batch_size") or not hasattr(loader, "__iter__"):
        raise TypeError(f"from_torch takes a torch.utils.data.DataLoader, got {type(loader).__name__}")
    return TorchLoader(loader)
