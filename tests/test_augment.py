"""Augmentation on the device (`funcnets.augment`): torchvision's RandomCrop and
RandomHorizontalFlip, their statistics and determinism under a key, inside the
compiled step of every entry point, evaluation without them, and exact resume."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import funcnets as fn

D = fn.data


def test_crop_offsets_are_uniform_over_the_padded_range_as_torchvisions():
    """Each example's offset ``(i, j)`` is uniform on ``{0..2p}^2`` (torchvision: ``randint(0, h - th + 1)``):
    a marker pixel shows where each crop was cut."""
    n, p = 20000, 2
    images = jnp.zeros((n, 4, 4, 1), jnp.float32).at[:, 0, 0, 0].set(1.0)
    crops = D.RandomCrop(4, padding=p)(images, jax.random.key(0))
    found = np.argwhere(np.asarray(crops[..., 0]) == 1.0)          # (example, row, column) of the marker
    assert len(found) == np.count_nonzero(np.asarray(crops))
    offsets = p - found[:, 1:]                                       # i = p - row of the marker, j likewise
    counts = np.zeros((2 * p + 1, 2 * p + 1))
    np.add.at(counts, (offsets[:, 0], offsets[:, 1]), 1)
    counts[p + 1:, :] = counts[:, p + 1:] = np.nan                   # offsets past p push the marker out
    seen = counts[:p + 1, :p + 1]
    expected = n / (2 * p + 1) ** 2
    assert np.all(np.abs(seen - expected) < 5 * np.sqrt(expected))   # within 5 sigma of uniform
    assert len(found) == pytest.approx(n * ((p + 1) / (2 * p + 1)) ** 2, rel=0.05)


def test_flip_rate_is_p_and_draws_follow_the_key():
    images = jnp.broadcast_to(jnp.arange(3.0)[None, None, :, None], (4000, 2, 3, 1))
    for p in (0.5, 0.2):
        flipped = D.RandomHorizontalFlip(p)(images, jax.random.key(1))
        rate = float(jnp.mean(flipped[:, 0, 0, 0] == 2.0))
        assert rate == pytest.approx(p, abs=4 * np.sqrt(p * (1 - p) / 4000))
    pipeline = D.Compose([D.RandomCrop(3, padding=1, padding_mode="reflect"), D.RandomHorizontalFlip()])
    a = pipeline(images, jax.random.key(2))
    np.testing.assert_array_equal(a, pipeline(images, jax.random.key(2)))
    assert not np.array_equal(a, pipeline(images, jax.random.key(3)))
    np.testing.assert_array_equal(pipeline(images), images)          # no key: the deterministic part only


def test_padding_modes_pad_as_torchvision_defines_them():
    """torchvision's modes are NumPy's: edge, reflect (no edge repeat), symmetric (edge repeated)."""
    image = np.arange(6.0).reshape(1, 2, 3, 1)
    for mode in ("edge", "reflect", "symmetric"):
        padded = np.pad(image, ((0, 0), (1, 1), (2, 2), (0, 0)), mode=mode)
        crops = D.RandomCrop((4, 7), padding=(2, 1), padding_mode=mode)(jnp.asarray(image), jax.random.key(0))
        np.testing.assert_array_equal(crops, padded)                 # the crop is the whole padded image
    crops = D.RandomCrop((4, 7), padding=(2, 1), fill=9)(jnp.asarray(image), jax.random.key(0))
    assert float(crops[0, 0, 0, 0]) == 9.0


@pytest.fixture(scope="module")
def digits():
    train = fn.data.load("digits", "train")
    return train.images[:256], train.labels[:256], train.info


@pytest.mark.slow   # 15 s on 2 cores; CI runs the slow tests
def test_fit_augments_training_batches_only_and_resumes_exactly(digits, tmp_path):
    images, labels, info = digits
    augmented = D.Compose([D.RandomCrop(28, padding=2), D.RandomHorizontalFlip(), D.Normalize.of(info)])
    model = fn.models.get("mnist_mlp", n_hidden=16)

    def fresh():
        return fn.create_train_state(model, fn.optim.sgd(lr=0.1), jax.random.key(0))

    run = dict(epochs=3, batch_size=64, rng=jax.random.key(1), report=fn.loop.Report.silent(), transform=augmented)
    straight, history = fn.fit(fresh(), (images, labels), (images, labels), **run)
    plain, plain_history = fn.fit(fresh(), (images, labels), (images, labels),
                                  **{**run, "transform": D.Normalize.of(info)})
    assert history[0]["loss"] != plain_history[0]["loss"]             # the training batches were augmented
    # evaluation applies Normalize only: the same as evaluating with it alone
    assert fn.evaluate(straight, images, labels, transform=augmented) == \
        fn.evaluate(straight, images, labels, transform=D.Normalize.of(info))
    # the step-by-step path and the epoch path draw the same augmentation
    order = np.asarray(fn.training.epoch_order(len(labels), jax.random.fold_in(jax.random.key(1), 0)))
    for scan in (True, False):
        epoch, _ = fn.train_epoch(fresh(), images[order], labels[order], batch_size=64, transform=augmented,
                                  scan=scan)
        first, _ = fn.fit(fresh(), (images, labels), **{**run, "epochs": 1})
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), epoch.params, first.params)
    # killed after epoch 1 and resumed: the same draws
    with fn.checkpoint.Checkpointer(tmp_path, save_every_epoch=True) as ckpt:
        fn.fit(fresh(), (images, labels), (images, labels), **{**run, "epochs": 1}, checkpointer=ckpt)
    with fn.checkpoint.Checkpointer(tmp_path, save_every_epoch=True, resume=True) as ckpt:
        resumed, again = fn.fit(fresh(), (images, labels), (images, labels), **run, checkpointer=ckpt)
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(straight.params), jax.device_get(resumed.params))
    assert [h["loss"] for h in again] == [h["loss"] for h in history[1:]]


def test_bad_augmentation_arguments_are_named():
    with pytest.raises(ValueError, match="size must be an int or a pair"):
        D.RandomCrop(0)
    with pytest.raises(ValueError, match="padding must be an int >= 0 or a tuple of 2 or 4"):
        D.RandomCrop(28, padding=(1, 2, 3))
    with pytest.raises(ValueError, match="padding_mode must be constant, edge, reflect or symmetric"):
        D.RandomCrop(28, padding_mode="wrap")
    with pytest.raises(ValueError, match="p must be a probability"):
        D.RandomHorizontalFlip(1.5)
    with pytest.raises(TypeError, match="Compose takes transforms"):
        D.Compose([3])
    state = fn.create_train_state(fn.models.get("mnist_mlp"), fn.optim.sgd(lr=0.1), jax.random.key(0))
    with pytest.raises(ValueError, match="transform\\(images\\) must have shape"):
        fn.train_epoch(state, np.zeros((8, 28, 28, 1), np.float32), np.zeros(8, np.int32), batch_size=4,
                       transform=D.RandomCrop(20))
