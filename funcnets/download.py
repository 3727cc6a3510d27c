"""The tutorials' data sets downloaded from their published files, verified by checksum.

Like torchvision's and Keras's downloaders, and without TensorFlow: each file
is fetched from the first mirror that answers into ``<cache>/<name>/`` (default
``$XDG_CACHE_HOME/funcnets/data``, else ``~/.cache/funcnets/data``), written to a
``.partial`` file, and renamed to its real name only once its MD5 matches the
published one. A file that fails the check is deleted and reported
(`DownloadError`, naming the file, the URL and both checksums); an interrupted
download leaves only a ``.partial`` file, which nothing reads. So a file under
its real name in the cache is always one that passed. ``FUNCNETS_OFFLINE=1``
turns downloads off (`offline`).

=================  ==========================================  ===========================
data set           files                                       MD5 of
=================  ==========================================  ===========================
``mnist``          the four IDX ``.gz`` files                  the decompressed bytes (as
                                                               published; mirrors re-gzip)
``fashion_mnist``  the four IDX ``.gz`` files                  the ``.gz`` files
``cifar10``        ``cifar-10-python.tar.gz``, then unpacked   the archive
=================  ==========================================  ===========================
"""

from __future__ import annotations

import gzip
import hashlib
import os
import pathlib
import shutil
import sys
import tarfile
import urllib.error
import urllib.request
from typing import NamedTuple


class PublishedFile(NamedTuple):
    filename: str
    md5: str
    md5_of_decompressed: bool = False   # the sum is of the gunzipped bytes, not of the file


MIRRORS: dict[str, tuple[str, ...]] = {
    "mnist": ("https://ossci-datasets.s3.amazonaws.com/mnist/",
              "https://storage.googleapis.com/cvdf-datasets/mnist/"),
    "fashion_mnist": ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
    "cifar10": ("https://www.cs.toronto.edu/~kriz/",),
}

FILES: dict[str, tuple[PublishedFile, ...]] = {
    "mnist": (
        PublishedFile("train-images-idx3-ubyte.gz", "6bbc9ace898e44ae57da46a324031adb", True),
        PublishedFile("train-labels-idx1-ubyte.gz", "a25bea736e30d166cdddb491f175f624", True),
        PublishedFile("t10k-images-idx3-ubyte.gz", "2646ac647ad5339dbf082846283269ea", True),
        PublishedFile("t10k-labels-idx1-ubyte.gz", "27ae3e4e09519cfbb04c329615203637", True),
    ),
    "fashion_mnist": (
        PublishedFile("train-images-idx3-ubyte.gz", "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
        PublishedFile("train-labels-idx1-ubyte.gz", "25c81989df183df01b3e8a0aad5dffbe"),
        PublishedFile("t10k-images-idx3-ubyte.gz", "bef4ecab320f06d8554ea6380940ec79"),
        PublishedFile("t10k-labels-idx1-ubyte.gz", "bb300cfdad3c16e7a12a480ee83cd310"),
    ),
    "cifar10": (PublishedFile("cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a"),),
}


class DownloadError(OSError):
    """A download failed or did not match its published checksum (nothing of it is kept)."""


class Unreachable(DownloadError):
    """No mirror of a file answered (e.g. no network)."""


def offline() -> bool:
    """Whether downloads are off: ``FUNCNETS_OFFLINE`` set to anything but ``0``
    (the test suite sets it, so no test reaches for the network)."""
    return os.environ.get("FUNCNETS_OFFLINE", "0") not in ("", "0")


def default_cache_dir() -> pathlib.Path:
    cache_home = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return pathlib.Path(cache_home) / "funcnets" / "data"


def dataset_dir(name: str, cache_dir: str | os.PathLike | None = None) -> pathlib.Path:
    """Where ``name``'s files go: ``<cache_dir>/<name>``."""
    return pathlib.Path(cache_dir or default_cache_dir()) / name


def md5_of(path: pathlib.Path, decompressed: bool = False) -> str:
    """The MD5 of ``path``'s bytes, or of what it gunzips to."""
    digest = hashlib.md5()
    opener = gzip.open if decompressed else open
    try:
        with opener(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    except (OSError, EOFError) as error:   # a truncated or non-gzip file
        return f"unreadable ({type(error).__name__}: {error})"
    return digest.hexdigest()


def fetch(name: str, cache_dir: str | os.PathLike | None = None, *,
          mirrors: tuple[str, ...] | None = None, timeout: float = 30.0) -> pathlib.Path:
    """Download (where not already in the cache) and verify ``name``'s
    published files; the folder that holds them, ready for `funcnets.data.load`.

    ``mirrors``: base URLs to try in turn (default ``MIRRORS[name]``).
    Raises `Unreachable` when no mirror answers, `DownloadError` when a
    file is broken or does not match its published MD5.
    """
    if name not in FILES:
        raise ValueError(f"no published files known for {name!r}; downloadable: {', '.join(FILES)}")
    folder = dataset_dir(name, cache_dir)
    folder.mkdir(parents=True, exist_ok=True)
    for published in FILES[name]:
        target = folder / published.filename
        if not target.is_file():
            _download(published, target, mirrors or MIRRORS[name], timeout)
    if name == "cifar10":
        _unpack(folder / FILES[name][0].filename, folder)
    return folder


def _download(published: PublishedFile, target: pathlib.Path, mirrors: tuple[str, ...], timeout: float) -> None:
    partial = target.with_name(target.name + ".partial")
    failures = []
    for base in mirrors:
        url = base.rstrip("/") + "/" + published.filename
        print(f"Downloading {url} -> {target}", file=sys.stderr, flush=True)
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response, open(partial, "wb") as out:
                shutil.copyfileobj(response, out, 1 << 20)
        except (urllib.error.URLError, OSError) as error:   # HTTP errors, refused, reset, timeouts
            partial.unlink(missing_ok=True)
            failures.append(f"{url}: {getattr(error, 'reason', error)}")
            continue
        got = md5_of(partial, published.md5_of_decompressed)
        if got != published.md5:
            partial.unlink(missing_ok=True)
            what = "decompressed bytes" if published.md5_of_decompressed else "file"
            raise DownloadError(f"{published.filename} downloaded from {url} does not match its published "
                                f"checksum: MD5 of the {what} is {got}, expected {published.md5}. "
                                "Nothing was kept; try again, or download it by hand and pass data_dir")
        os.replace(partial, target)
        return
    raise Unreachable(f"{published.filename}: no mirror answered ({'; '.join(failures)})")


def _unpack(archive: pathlib.Path, folder: pathlib.Path) -> None:
    """CIFAR-10's archive unpacked once into ``folder/cifar-10-batches-py``
    (through a temporary folder and a rename, so a kill leaves no half tree)."""
    if (folder / "cifar-10-batches-py").is_dir():
        return
    staging = folder / "unpacking.partial"
    shutil.rmtree(staging, ignore_errors=True)
    with tarfile.open(archive, "r:gz") as tar:
        members = [m for m in tar.getmembers() if m.name.startswith("cifar-10-batches-py/") and m.isfile()]
        if hasattr(tarfile, "data_filter"):   # Python >= 3.10.12: refuse paths out of the folder
            tar.extractall(staging, members=members, filter="data")
        else:
            tar.extractall(staging, members=members)
    os.replace(staging / "cifar-10-batches-py", folder / "cifar-10-batches-py")
    shutil.rmtree(staging, ignore_errors=True)
