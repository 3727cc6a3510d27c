"""The real data sets in ../shared/data: MNIST complete, CIFAR-10 as a JPEG q75
image-folder archive; funcnets' downloader against a local HTTP server that
serves those real files (and broken copies); image-folder trees of one's own.

Tests that need ../shared/data skip, saying so, where it is not beside the checkout.
"""

import gzip
import hashlib
import http.server
import io
import pathlib
import pickle
import tarfile
import threading

import jax
import numpy as np
import pytest

import funcnets as fn
from funcnets import data, download, imagefolder

SHARED_DATA = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"
MNIST = SHARED_DATA / "mnist"
CIFAR_JPEG = SHARED_DATA / "cifar10-jpeg" / "cifar10-jpeg.tar.gz"
needs_mnist = pytest.mark.skipif(not (MNIST / "train-images-idx3-ubyte.gz").exists(),
                                 reason="needs ../shared/data/mnist (the complete MNIST) beside this checkout")
needs_cifar = pytest.mark.skipif(not CIFAR_JPEG.exists(),
                                 reason="needs ../shared/data/cifar10-jpeg beside this checkout")

MNIST_TRAIN_HISTOGRAM = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_HISTOGRAM = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


# --- real MNIST ------------------------------------------------------------------------

@needs_mnist
def test_real_mnist_both_splits_with_their_label_histograms():
    train = data.load("mnist", "train", data_dir=MNIST, download=False)
    test = data.load("mnist", "test", data_dir=MNIST, download=False)
    assert train.images.shape == (60000, 28, 28, 1) and test.images.shape == (10000, 28, 28, 1)
    assert np.bincount(train.labels).tolist() == MNIST_TRAIN_HISTOGRAM
    assert np.bincount(test.labels).tolist() == MNIST_TEST_HISTOGRAM
    assert train.labels[:5].tolist() == [5, 0, 4, 1, 9]
    assert abs(train.images.mean() / 255 - 0.1307) < 5e-4 and abs(train.images.std() / 255 - 0.3081) < 5e-4


@needs_mnist
def test_the_downloader_checksums_are_those_of_the_real_files():
    for published in download.FILES["mnist"]:
        assert download.md5_of(MNIST / published.filename, published.md5_of_decompressed) == published.md5


@needs_mnist
def test_one_mlp_epoch_on_real_mnist_reaches_90_percent():
    """The tutorial's MLP and optimizer (SGD 0.01, batch 64): one epoch gives 91.0-91.2%
    over seeds 0-2 (the tutorial reaches 96% after ten)."""
    train = data.load("mnist", "train", data_dir=MNIST, download=False)
    test = data.load("mnist", "test", data_dir=MNIST, download=False)
    state = fn.create_train_state(fn.models.get("mnist_mlp"), fn.optim.sgd(lr=0.01), jax.random.key(0))
    state, _ = fn.train_epoch(state, data.normalize(train.images, train.info), train.labels, batch_size=64,
                              rng=jax.random.key(1))
    result = fn.evaluate(state, data.normalize(test.images, test.info), test.labels)
    assert result["accuracy"] >= 0.90


# --- CIFAR-10, JPEG q75 copy -----------------------------------------------------------

@needs_cifar
def test_cifar10_jpeg_test_split_from_the_archive(tmp_path):
    test = data.load("cifar10", "test", data_dir=CIFAR_JPEG.parent, download=False, cache_dir=tmp_path)
    assert test.images.shape == (10000, 32, 32, 3) and test.images.dtype == np.uint8
    assert np.bincount(test.labels).tolist() == [1000] * 10
    assert test.info.source.startswith(f"CIFAR-10 (JPEG q75 copy) from {CIFAR_JPEG}")
    assert test.info.class_names[0] == "airplane" and test.info.class_names[9] == "truck"


@needs_cifar
@pytest.mark.slow
def test_cifar10_jpeg_train_split_decodes_once(tmp_path, monkeypatch):
    train = data.load("cifar10", "train", data_dir=CIFAR_JPEG, download=False, cache_dir=tmp_path)
    assert train.images.shape == (50000, 32, 32, 3)
    assert np.bincount(train.labels).tolist() == [5000] * 10
    mean, std = imagefolder.channel_stats(train.images)   # the data's README: 0.4913, 0.4821, 0.4465
    np.testing.assert_allclose(mean, (0.4913, 0.4821, 0.4465), atol=6e-5)
    np.testing.assert_allclose(std, (0.2452, 0.2428, 0.2606), atol=6e-5)
    monkeypatch.setattr(imagefolder, "_decode", lambda *a: pytest.fail("decoded again"))
    again = data.load("cifar10", "train", data_dir=CIFAR_JPEG, download=False, cache_dir=tmp_path)
    np.testing.assert_array_equal(again.images, train.images)
    assert "cached in" in again.info.source


# --- image folders of one's own ----------------------------------------------------------

def _write_tree(root, shape=(6, 5, 3), per_class=2, classes=("cat", "ant")):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for name in classes:
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, shape, dtype=np.uint8)
                Image.fromarray(pixels.squeeze(-1) if shape[-1] == 1 else pixels).save(folder / f"{i}.png")
    return root


def test_image_folder_classes_sorted_stats_from_train_and_a_cache(tmp_path, monkeypatch):
    root = _write_tree(tmp_path / "pets")
    train = data.image_folder(root, "train", cache_dir=tmp_path / "cache")
    assert train.info.class_names == ("ant", "cat") and train.labels.tolist() == [0, 0, 1, 1]
    assert train.images.shape == (4, 6, 5, 3) and train.info.name == "pets"
    from PIL import Image

    np.testing.assert_array_equal(train.images[0], np.asarray(Image.open(root / "train" / "ant" / "0.png")))
    np.testing.assert_allclose(train.info.mean, (train.images / 255.0).mean(axis=(0, 1, 2)), rtol=1e-9)
    np.testing.assert_allclose(train.info.std, (train.images / 255.0).std(axis=(0, 1, 2)), rtol=1e-9)
    test = data.image_folder(root, "test", cache_dir=tmp_path / "cache")
    assert test.info.mean == train.info.mean and test.info.split == "test"

    decoded = []
    real_decode = imagefolder._decode
    monkeypatch.setattr(imagefolder, "_decode", lambda *a: decoded.append(a) or real_decode(*a))
    data.image_folder(root, "train", cache_dir=tmp_path / "cache")
    assert decoded == []                                   # unchanged files: from the cache
    (root / "train" / "cat" / "2.png").write_bytes((root / "train" / "cat" / "0.png").read_bytes())
    grown = data.image_folder(root, "train", cache_dir=tmp_path / "cache")
    assert len(decoded) == 1 and len(grown.labels) == 5    # a new file: decoded again


def test_image_folder_archive_and_grayscale(tmp_path):
    root = _write_tree(tmp_path / "digits", shape=(8, 8, 1))
    archive = tmp_path / "digits.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(root, arcname="digits")                     # the tree under one top folder
    from_archive = data.image_folder(archive, "test", cache_dir=False)
    from_folder = data.image_folder(root, "test", cache_dir=False)
    assert from_archive.images.shape == (4, 8, 8, 1)
    np.testing.assert_array_equal(from_archive.images, from_folder.images)
    assert from_archive.labels.tolist() == from_folder.labels.tolist()


def test_image_folder_errors_name_the_problem(tmp_path):
    from PIL import Image

    root = _write_tree(tmp_path / "odd")
    Image.fromarray(np.zeros((7, 5, 3), np.uint8)).save(root / "train" / "cat" / "9.png")
    with pytest.raises(data.CorruptDatasetError, match=r"cat/9.png: image of shape \(7, 5, 3\)"):
        data.image_folder(root, "train", cache_dir=False)
    (root / "train" / "cat" / "9.png").write_bytes(b"not an image")
    with pytest.raises(data.CorruptDatasetError, match="9.png: cannot be decoded"):
        data.image_folder(root, "train", cache_dir=False)
    with pytest.raises(data.DatasetNotFoundError, match="no val/<class>/<image>"):
        data.image_folder(root, "val", cache_dir=False)


def test_an_empty_class_folder_is_refused_naming_it(tmp_path):
    root = _write_tree(tmp_path / "pets")
    (root / "train" / "bee").mkdir()                       # between ant and cat: cat would take its label
    with pytest.raises(data.CorruptDatasetError, match=r"train/bee: class folder with no images"):
        data.image_folder(root, "train", cache_dir=False)
    archive = tmp_path / "pets.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(root, arcname="pets")
    with pytest.raises(data.CorruptDatasetError, match=rf"{archive}:train/bee: class folder with no images"):
        data.image_folder(archive, "train", cache_dir=False)


def test_a_truncated_archive_is_named(tmp_path):
    root = _write_tree(tmp_path / "pets", per_class=20)
    archive = tmp_path / "pets.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(root, arcname="pets")
    whole = archive.read_bytes()
    archive.write_bytes(whole[:len(whole) // 2])
    with pytest.raises(data.CorruptDatasetError, match=rf"{archive}: the archive is truncated or corrupt"):
        data.image_folder(archive, "train", cache_dir=False)
    archive.write_bytes(b"not an archive at all" * 10)
    with pytest.raises(data.CorruptDatasetError, match=rf"{archive}: the archive is truncated or corrupt"):
        data.image_folder(archive, "train", cache_dir=False)


def test_provenance_names_a_linked_data_folder_as_given(tmp_path):
    root = _write_tree(tmp_path / "pets")
    (tmp_path / "linked").symlink_to(root)
    for cache_dir in (False, tmp_path / "cache", tmp_path / "cache"):   # decoded, cached, read from the cache
        split = data.image_folder(tmp_path / "linked", "train", cache_dir=cache_dir)
        assert split.info.source.startswith(f"{tmp_path / 'linked'} (train"), split.info.source


def test_cifar10_class_folders_must_be_cifar10s(tmp_path):
    root = _write_tree(tmp_path / "notcifar", shape=(32, 32, 3), per_class=1)
    with pytest.raises(data.CorruptDatasetError, match="not CIFAR-10's classes"):
        data.load("cifar10", "train", data_dir=root, download=False, cache_dir=tmp_path)



# --- image folders read image by image (stream=True) ------------------------------------------

def _archive_of(root, tmp_path):
    archive = tmp_path / f"{root.name}.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(root, arcname=root.name)
    return archive


def _same_as_decoded(streamed, decoded):
    assert len(streamed) == len(decoded.labels)
    np.testing.assert_array_equal(streamed.labels, decoded.labels)
    np.testing.assert_array_equal(np.stack([streamed[i][0] for i in range(len(streamed))]), decoded.images)
    assert [int(streamed[i][1]) for i in range(len(streamed))] == decoded.labels.tolist()
    assert streamed.info._replace(source="") == decoded.info._replace(source="")   # mean/std: the same bits


@pytest.mark.parametrize("packed", ["folder", "archive", "archive, no cache"])
def test_a_streamed_image_folder_reads_what_the_decoded_one_holds(tmp_path, packed):
    root = _write_tree(tmp_path / "pets", per_class=5, classes=("cat", "ant", "bee"))
    source = root if packed == "folder" else _archive_of(root, tmp_path)
    cache = False if packed == "archive, no cache" else tmp_path / "cache"
    for split in ("train", "test"):
        _same_as_decoded(data.image_folder(source, split, cache_dir=cache, stream=True),
                         data.image_folder(source, split, cache_dir=False))
    for shard in ((0, 2), (1, 2)):
        _same_as_decoded(data.image_folder(source, "train", cache_dir=cache, stream=True, shard=shard),
                         data.image_folder(source, "train", cache_dir=False, shard=shard))
    streamed = data.image_folder(source, "test", cache_dir=cache, stream=True)
    assert streamed.info.source.startswith(f"{source} (test; read image by image")
    assert pickle.loads(pickle.dumps(streamed))[3][0].tolist() == streamed[3][0].tolist()   # to Grain's workers


def test_an_archive_is_copied_once_and_again_when_it_changes(tmp_path, monkeypatch):
    root = _write_tree(tmp_path / "pets", per_class=3)
    archive = _archive_of(root, tmp_path)
    first = data.image_folder(archive, "train", cache_dir=tmp_path / "cache", stream=True)
    assert "bytes copied to" in first.info.source and len(first) == 6
    real = imagefolder._archive_files
    monkeypatch.setattr(imagefolder, "_archive_files", lambda *a: pytest.fail("copied again"))
    again = data.image_folder(archive, "train", cache_dir=tmp_path / "cache", stream=True)
    assert [again[i][0].tolist() for i in range(6)] == [first[i][0].tolist() for i in range(6)]
    assert again.info == first.info                                     # statistics from the cache too
    monkeypatch.setattr(imagefolder, "_archive_files", real)
    (root / "train" / "cat" / "5.png").write_bytes((root / "train" / "ant" / "0.png").read_bytes())
    grown = data.image_folder(_archive_of(root, tmp_path), "train", cache_dir=tmp_path / "cache", stream=True)
    assert len(grown) == 7 and grown.labels.tolist() == [0, 0, 0, 1, 1, 1, 1]


def test_a_streamed_image_folder_names_a_bad_file_when_it_reads_it(tmp_path):
    from PIL import Image

    root = _write_tree(tmp_path / "odd")
    Image.fromarray(np.zeros((7, 5, 3), np.uint8)).save(root / "train" / "cat" / "9.png")
    streamed = data.image_folder(root, "train", cache_dir=False, stream=True)
    with pytest.raises(imagefolder.ImageFolderError, match=r"cat/9.png: image of shape \(7, 5, 3\)"):
        streamed[len(streamed) - 1]
    (root / "train" / "cat" / "9.png").write_bytes(b"not an image")
    with pytest.raises(imagefolder.ImageFolderError, match="9.png: cannot be decoded"):
        streamed[len(streamed) - 1]
    (root / "train" / "bee").mkdir()
    with pytest.raises(data.CorruptDatasetError, match=r"train/bee: class folder with no images"):
        data.image_folder(root, "train", cache_dir=False, stream=True)
    with pytest.raises(data.DatasetNotFoundError, match="no val/<class>/<image>"):
        data.image_folder(root, "val", cache_dir=False, stream=True)


def test_fit_over_a_streamed_folder_equals_fit_over_its_decoded_arrays(tmp_path):
    import grain
    import optax

    root = _write_tree(tmp_path / "pets", shape=(8, 8, 3), per_class=12)
    streamed = data.image_folder(root, "train", cache_dir=tmp_path / "cache", stream=True)
    decoded = data.image_folder(root, "train", cache_dir=False)
    model = fn.models.sequential(fn.layers.Flatten(), ("fc", fn.layers.Linear(192, 2)), input_shape=(8, 8, 3))
    order = lambda e: np.asarray(list(grain.MapDataset.range(24).shuffle(seed=e)))   # Grain's shuffle  # noqa: E731
    run = dict(epochs=2, rng=jax.random.key(0), transform=fn.data.Normalize.of(decoded.info),
               report=fn.loop.Report.silent())
    fresh = lambda: fn.create_train_state(model, optax.sgd(0.1), jax.random.key(0))   # fit donates it  # noqa: E731
    by_grain, grain_history = fn.fit(
        fresh(), lambda e: grain.MapDataset.source(streamed).shuffle(seed=e).batch(6), **run)
    by_arrays, array_history = fn.fit(
        fresh(), lambda e: [(decoded.images[i], decoded.labels[i]) for i in np.split(order(e), 4)], **run)
    assert [h["loss"] for h in grain_history] == [h["loss"] for h in array_history]
    jax.tree.map(np.testing.assert_array_equal, by_grain.params, by_arrays.params)
    with pytest.raises(TypeError, match=r"train is a source of single examples \(FolderStream, 24 of them\)"):
        fn.fit(fresh(), streamed, **run)


@pytest.mark.slow   # CI runs the slow tests
def test_grain_worker_processes_decode_a_streamed_folder(tmp_path):
    import grain

    root = _write_tree(tmp_path / "pets", per_class=8)
    streamed = data.image_folder(_archive_of(root, tmp_path), "train", cache_dir=tmp_path / "cache", stream=True)
    fn.data.allow_grain_workers()
    loader = (grain.MapDataset.source(streamed).batch(4).to_iter_dataset()
              .mp_prefetch(grain.MultiprocessingOptions(num_workers=2)))
    images, labels = (np.concatenate(parts) for parts in zip(*list(loader)))
    decoded = data.image_folder(root, "train", cache_dir=False)
    np.testing.assert_array_equal(images, decoded.images)
    np.testing.assert_array_equal(labels, decoded.labels)


@needs_cifar
@pytest.mark.slow   # CI runs the slow tests
def test_the_cifar10_archive_streamed_equals_its_decoded_splits(tmp_path):
    streamed = data.image_folder(CIFAR_JPEG, "test", cache_dir=tmp_path, stream=True)
    decoded = data.image_folder(CIFAR_JPEG, "test", cache_dir=tmp_path)
    _same_as_decoded(streamed, decoded)
    assert streamed.info.mean == decoded.info.mean and len(streamed.labels) == 10000


# --- downloads, from a server on 127.0.0.1 ---------------------------------------------------

class _Files(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server's name)
        body = self.server.files.get(self.path.lstrip("/"))
        if body is None:
            self.send_error(404)
            return
        truncate = self.server.truncate
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[:truncate] if truncate else body)

    def log_message(self, *args):
        pass


@pytest.fixture
def serve(monkeypatch):
    """``serve(files, truncate=None) -> base URL``: an HTTP server on 127.0.0.1
    serving ``{name: bytes}`` (a truncated body when ``truncate`` is set); downloads
    on for the test (the suite turns them off)."""
    monkeypatch.delenv("FUNCNETS_OFFLINE", raising=False)
    servers = []

    def start(files, truncate=None):
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Files)
        server.files, server.truncate = files, truncate
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def _real_mnist_files():
    return {p.filename: (MNIST / p.filename).read_bytes() for p in download.FILES["mnist"]}


@needs_mnist
def test_mnist_downloads_from_a_mirror_verified_and_loads(tmp_path, serve, monkeypatch):
    dead = serve({})                                    # answers 404 for everything: the next mirror is tried
    base = serve(_real_mnist_files())
    monkeypatch.setitem(download.MIRRORS, "mnist", (dead, base))
    train = data.load("mnist", "train", cache_dir=tmp_path)
    assert np.bincount(train.labels).tolist() == MNIST_TRAIN_HISTOGRAM
    assert train.info.source == f"IDX files in {tmp_path / 'data' / 'mnist'}"
    assert sorted(p.name for p in (tmp_path / "data" / "mnist").iterdir()) == sorted(_real_mnist_files())
    monkeypatch.setitem(download.MIRRORS, "mnist", ())  # now from the cache, with no mirror at all
    assert len(data.load("mnist", "test", cache_dir=tmp_path).labels) == 10000


@needs_mnist
@pytest.mark.parametrize("damage", ["corrupt", "truncate"])
def test_a_bad_download_is_named_and_leaves_nothing_trusted(tmp_path, serve, damage):
    files = _real_mnist_files()
    name = "t10k-labels-idx1-ubyte.gz"
    truncate = None
    if damage == "corrupt":   # a valid gzip of other bytes: only the checksum can tell
        raw = bytearray(gzip.decompress(files[name]))
        raw[100] ^= 1
        files[name] = gzip.compress(bytes(raw))
    else:                     # the connection drops half way
        files = {name: files[name]}
        truncate = len(files[name]) // 2
    base = serve(files, truncate)
    published = dict((p.filename, p) for p in download.FILES["mnist"])[name]
    with pytest.raises(download.DownloadError) as error:
        download._download(published, tmp_path / name, (base,), timeout=10)
    message = str(error.value)
    if damage == "corrupt":
        assert name in message and published.md5 in message and "does not match its published checksum" in message
        assert hashlib.md5(bytes(raw)).hexdigest() in message
    else:
        assert name in message
    assert list(tmp_path.iterdir()) == []   # no file, no .partial: nothing a later run would trust


def _cifar_python_archive():
    buffer = io.BytesIO()
    rng = np.random.default_rng(0)
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name in [f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]:
            batch = pickle.dumps({b"data": rng.integers(0, 256, (3, 3072), dtype=np.uint8),
                                  b"labels": rng.integers(0, 10, 3).tolist()})
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(batch)
            tar.addfile(info, io.BytesIO(batch))
    return buffer.getvalue()


def test_cifar10_python_archive_downloads_unpacks_and_loads(tmp_path, serve, monkeypatch):
    """The real CIFAR-10 archive is not here: a small one in its format, its MD5 put in the table."""
    archive = _cifar_python_archive()
    monkeypatch.setitem(download.FILES, "cifar10", (download.PublishedFile(
        "cifar-10-python.tar.gz", hashlib.md5(archive).hexdigest()),))
    monkeypatch.setitem(download.MIRRORS, "cifar10", (serve({"cifar-10-python.tar.gz": archive}),))
    test = data.load("cifar10", "test", cache_dir=tmp_path)
    assert test.images.shape == (3, 32, 32, 3)
    assert (tmp_path / "data" / "cifar10" / "cifar-10-batches-py" / "test_batch").is_file()
    assert "CIFAR-10 python batches" in test.info.source


def test_offline_download_is_one_clear_error_fast(tmp_path, monkeypatch):
    monkeypatch.delenv("FUNCNETS_OFFLINE", raising=False)
    monkeypatch.setitem(download.MIRRORS, "mnist", ("http://127.0.0.1:9/",))   # the discard port: refused
    with pytest.raises(data.DatasetNotFoundError, match="download of mnist: .*no mirror answered"):
        data.load("mnist", "train", cache_dir=tmp_path)
    monkeypatch.setenv("FUNCNETS_OFFLINE", "1")
    with pytest.raises(data.DatasetNotFoundError, match=r"download of mnist: off \(FUNCNETS_OFFLINE is set\)"):
        data.load("mnist", "train", cache_dir=tmp_path)


def test_unknown_download_is_refused():
    with pytest.raises(ValueError, match="no published files known for 'digits'"):
        download.fetch("digits")

