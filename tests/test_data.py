"""funcnets.data on real files: MNIST's test split, Debian's Fashion-MNIST, scikit-learn's digits,
CIFAR-10's published formats, TFDS under its own mock data; and broken files."""

import gzip
import pathlib
import pickle
import struct

import numpy as np
import pytest

import funcnets as fn
from funcnets import data

SHARED_MNIST = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"
DEBIAN_FASHION = pathlib.Path("/usr/share/datasets/fashion-mnist")
needs_mnist = pytest.mark.skipif(not (SHARED_MNIST / "t10k-images-idx3-ubyte.gz").exists(),
                                 reason="the shared real-MNIST folder is not beside this checkout")
needs_fashion = pytest.mark.skipif(not DEBIAN_FASHION.is_dir(),
                                   reason="apt-get install dataset-fashion-mnist (.ci/run does)")


@needs_mnist
def test_real_mnist_test_split_from_idx_files():
    test = data.load("mnist", "test", data_dir=SHARED_MNIST, download=False)
    assert test.images.shape == (10000, 28, 28, 1) and test.images.dtype == np.uint8
    assert test.labels.dtype == np.int32 and test.labels[:5].tolist() == [7, 2, 1, 0, 4]
    assert np.bincount(test.labels).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert test.info.source == f"IDX files in {SHARED_MNIST}"
    x = data.normalize(test.images, test.info)
    assert x.dtype == np.float32
    assert abs(float(x.mean()) - (test.images.mean() / 255 - 0.1307) / 0.3081) < 1e-4
    assert abs(test.images.mean() / 255 - 0.1307) < 0.005  # the tutorial's constant fits the data


@needs_mnist
def test_missing_training_images_is_one_clear_error(tmp_path):
    """A folder with MNIST's test files only (links to the real ones)."""
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz", "train-labels-idx1-ubyte.gz"):
        (tmp_path / name).symlink_to(SHARED_MNIST / name)
    assert data.load("mnist", "test", data_dir=tmp_path, download=False).images.shape == (10000, 28, 28, 1)
    with pytest.raises(data.DatasetNotFoundError) as error:
        data.load("mnist", "train", data_dir=tmp_path, download=False, cache_dir=tmp_path / "cache")
    message = str(error.value)
    assert "dataset 'mnist' (train split) was not found. Tried:" in message
    assert f"{tmp_path}: no train-images-idx3-ubyte[.gz]" in message
    assert "default TFDS data dir" in message and "To get it:" in message and "dataset-fashion-mnist" in message


@needs_fashion
def test_debian_fashion_mnist_is_found_without_flags():
    train = data.load("fashion_mnist", "train", download=False)
    test = data.load("fashion_mnist", "test", download=False)
    assert (len(train.labels), len(test.labels)) == (60000, 10000)
    assert train.info.source == f"IDX files in {DEBIAN_FASHION}"
    assert np.bincount(train.labels).tolist() == [6000] * 10
    assert train.info.class_names[9] == "Ankle boot"
    assert abs(train.images.mean() / 255 - train.info.mean[0]) < 1e-3
    assert abs(train.images.std() / 255 - train.info.std[0]) < 1e-3


def test_digits_always_work_offline():
    train, test = data.load("digits", "train"), data.load("digits", "test")
    assert (train.images.shape, test.images.shape) == ((1437, 28, 28, 1), (360, 28, 28, 1))
    assert train.images[:, :4].max() == 0 and train.images[:, 24:].max() == 0  # centred, as MNIST
    x = train.images / 255.0
    assert abs(x.mean() - train.info.mean[0]) < 1e-3 and abs(x.std() - train.info.std[0]) < 1e-3


def _write_idx(path, array, magic_type=0x08):
    header = bytes([0, 0, magic_type, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    (gzip.open if path.suffix == ".gz" else open)(path, "wb").write(payload)


def _idx_folder(tmp_path, n_images=5, n_labels=5, prefix="train"):
    rng = np.random.default_rng(0)
    _write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n_images, 28, 28)))
    _write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", rng.integers(0, 10, n_labels))
    return tmp_path


def test_idx_round_trip_gz_and_raw(tmp_path):
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    for name in ("a.gz", "a"):
        _write_idx(tmp_path / name, array)
        assert np.array_equal(data.read_idx(tmp_path / name), array)


@pytest.mark.parametrize("damage, match", [
    (lambda p: p.write_bytes(gzip.compress(b"\x00\x00\x08\x03" + struct.pack(">3I", 5, 28, 28) + b"\0" * 100)),
     "truncated or padded: the header promises shape \\(5, 28, 28\\)"),
    (lambda p: p.write_bytes(gzip.compress(b"\x12\x34\x56\x78" + b"\0" * 100)), "magic number 12345678"),
    (lambda p: p.write_bytes(p.read_bytes()[:200]), "cannot be read as gzip"),
])
def test_broken_idx_files_are_named(tmp_path, damage, match):
    folder = _idx_folder(tmp_path)
    damage(folder / "train-images-idx3-ubyte.gz")
    with pytest.raises(data.CorruptDatasetError, match=match) as error:
        data.load("fashion_mnist", "train", data_dir=folder, download=False)
    assert "train-images-idx3-ubyte.gz" in str(error.value)


def test_label_count_mismatch_is_named(tmp_path):
    folder = _idx_folder(tmp_path, n_images=5, n_labels=4)
    with pytest.raises(data.CorruptDatasetError, match="4 labels for the 5 images"):
        data.load("mnist", "train", data_dir=folder, download=False)


def _cifar_arrays(n, seed):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 3072), dtype=np.uint8), rng.integers(0, 10, n)


def test_cifar10_python_and_binary_batches(tmp_path):
    py_dir, bin_dir = tmp_path / "py" / "cifar-10-batches-py", tmp_path / "bin" / "cifar-10-batches-bin"
    py_dir.mkdir(parents=True)
    bin_dir.mkdir(parents=True)
    expected = []
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        pixels, labels = _cifar_arrays(4, i)
        expected.append((pixels, labels))
        with open(py_dir / name, "wb") as f:
            pickle.dump({b"data": pixels, b"labels": labels.tolist()}, f)
        np.concatenate([labels[:, None].astype(np.uint8), pixels], axis=1).tofile(bin_dir / f"{name}.bin")
    for root in (tmp_path / "py", tmp_path / "bin"):
        train = data.load("cifar10", "train", data_dir=root, download=False)
        test = data.load("cifar10", "test", data_dir=root, download=False)
        assert train.images.shape == (20, 32, 32, 3) and test.images.shape == (4, 32, 32, 3)
        first = expected[0][0][0].reshape(3, 32, 32).transpose(1, 2, 0)  # CHW rows -> HWC
        assert np.array_equal(train.images[0], first)
        assert test.labels.tolist() == expected[5][1].tolist()
    (bin_dir / "test_batch.bin").write_bytes(b"\0" * 100)
    with pytest.raises(data.CorruptDatasetError, match="test_batch.bin: 100 bytes"):
        data.load("cifar10", "test", data_dir=tmp_path / "bin", download=False)


def test_cifar10_missing_everywhere_says_how_to_get_it(tmp_path):
    with pytest.raises(data.DatasetNotFoundError, match="cifar-10-python.tar.gz"):
        data.load("cifar10", "train", data_dir=tmp_path, download=False)


def test_tfds_path_reads_mock_data_without_tensorflow():
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=12):
        train = data.load("mnist", "train", download=False)
    assert train.images.shape == (12, 28, 28, 1) and train.images.dtype == np.uint8
    assert train.labels.dtype == np.int32 and train.info.source.startswith("TFDS mnist")


def test_shards_of_files_and_tfds_copies_are_consecutive_blocks(tmp_path):
    """Each process of a multi-host run loads only its block (funcnets.parallel.process_shard)."""
    folder = _idx_folder(tmp_path, n_images=7, n_labels=7)
    whole = data.load("mnist", "train", data_dir=folder, download=False)
    shards = [data.load("mnist", "train", data_dir=folder, download=False, shard=(i, 3)) for i in range(3)]
    assert [len(s.labels) for s in shards] == [2, 2, 3]
    np.testing.assert_array_equal(np.concatenate([s.images for s in shards]), whole.images)
    assert shards[1].info.source.endswith("shard 1 of 3")

    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=12):
        whole = data.load("mnist", "train", download=False)
        shards = [data.load("mnist", "train", download=False, shard=(i, 5)) for i in range(5)]
    assert [len(s.labels) for s in shards] == [2, 2, 3, 2, 3]
    np.testing.assert_array_equal(np.concatenate([s.labels for s in shards]), whole.labels)
    np.testing.assert_array_equal(np.concatenate([s.images for s in shards]), whole.images)


def test_unknown_names_are_clear_errors():
    with pytest.raises(ValueError, match="unknown dataset 'imagenet'; choose one of mnist, fashion_mnist"):
        data.load("imagenet")
    with pytest.raises(ValueError, match="unknown split 'validation'"):
        data.load("digits", "validation")
    with pytest.raises(TypeError, match="uint8"):
        data.normalize(np.zeros((1, 28, 28, 1), np.float32), data.load("digits").info)


def test_loaded_data_trains_a_model():
    train = data.load("digits")
    x = data.normalize(train.images, train.info)
    state = fn.create_train_state(fn.models.get("mnist_mlp"), fn.optim.sgd(lr=0.05), __import__("jax").random.key(0))
    _, metrics = fn.train_epoch(state, x, train.labels, batch_size=64)
    assert float(metrics["loss"][-5:].mean()) < float(metrics["loss"][:5].mean())


@pytest.mark.parametrize("mean, std", [((0.1307,), (0.3081,)), ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))])
def test_normalize_transform_gives_normalize_bits_on_the_host_and_in_jit(mean, std):
    """Normalize looks up the values normalize computed: the same bits, NumPy or jitted."""
    import jax

    info = data.load("digits", "test").info._replace(mean=mean, std=std)
    images = np.random.default_rng(0).integers(0, 256, (7, 5, 4, len(mean))).astype(np.uint8)
    images[0, 0, 0] = 0
    images[0, 0, 1] = 255
    expected = data.normalize(images, info)
    transform = data.Normalize.of(info)
    assert np.array_equal(transform(images), expected)
    assert np.array_equal(np.asarray(jax.jit(transform)(images)), expected)
    assert np.array_equal(data.Normalize.of(info, np.float64)(images), expected.astype(np.float64))
    assert hash(transform) == hash(data.Normalize.of(info))   # a static argument of the compiled step


def test_normalize_transform_with_one_mean_serves_every_channel():
    info = data.load("digits", "test").info._replace(mean=(0.1307,), std=(0.3081,))
    images = np.random.default_rng(1).integers(0, 256, (3, 4, 4, 3)).astype(np.uint8)
    assert np.array_equal(data.Normalize.of(info)(images), data.normalize(images, info))


def test_normalize_transform_rejects_what_it_cannot_take():
    info = data.load("digits", "test").info._replace(mean=(0.5, 0.5, 0.5), std=(0.2, 0.2, 0.2))
    with pytest.raises(TypeError, match="uint8 images as loaded, got float32"):
        data.Normalize.of(info)(np.zeros((1, 2, 2, 3), np.float32))
    with pytest.raises(ValueError, match="Normalize has 3 channels; images have shape"):
        data.Normalize.of(info)(np.zeros((1, 2, 2, 1), np.uint8))
    with pytest.raises(TypeError, match="dtype must be a floating dtype"):
        data.Normalize.of(info, np.int32)
    with pytest.raises(TypeError, match="info must be a funcnets.data.DatasetInfo"):
        data.Normalize.of({"mean": (0.5,), "std": (0.5,)})
