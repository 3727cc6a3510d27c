"""`funcnets.losses` against ``torch.nn.functional`` in float64, every option; losses by
name in training."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import funcnets as fn

torch = pytest.importorskip("torch")
F = torch.nn.functional
L = fn.losses

RNG = np.random.default_rng(0)
LOGITS = RNG.normal(size=(12, 5)) * 2
LABELS = RNG.integers(0, 5, 12)
LABELS_IGNORED = np.where(np.arange(12) % 4 == 0, -100, LABELS)
LABELS_OTHER_IGNORE = np.where(np.arange(12) % 3 == 0, 2, LABELS)
WEIGHT = np.array([1.0, 2.0, 0.5, 1.5, 3.0])
_RAW = np.exp(RNG.normal(size=(12, 5)))
PROBS = _RAW / _RAW.sum(axis=1, keepdims=True)
PROBS_WITH_ZERO = PROBS[6:].copy()
PROBS_WITH_ZERO[0, 0] = 0.0
PREDICTIONS, TARGETS = RNG.normal(size=(6, 4)) * 2, RNG.normal(size=(6, 4)) * 2
BINARY = RNG.uniform(size=(6, 4))
UNIT = 1 / (1 + np.exp(-PREDICTIONS))


def t(x):
    return torch.from_numpy(np.asarray(x))


CASES = {  # name: (funcnets call, torch call)
    **{f"cross_entropy-{r}-{i}": (
        lambda r=r, i=i: L.cross_entropy(jnp.asarray(LOGITS), jnp.asarray(lab), **kw),
        lambda r=r, i=i: F.cross_entropy(t(LOGITS), t(lab), **{k: t(v) if k == "weight" else v
                                                               for k, v in kw.items()}))
       for r in ("mean", "sum", "none") for i, (lab, kw) in enumerate([
           (LABELS, {"reduction": r}),
           (LABELS, {"reduction": r, "weight": WEIGHT}),
           (LABELS_IGNORED, {"reduction": r, "weight": WEIGHT}),
           (LABELS_OTHER_IGNORE, {"reduction": r, "ignore_index": 2}),
           (LABELS, {"reduction": r, "label_smoothing": 0.1}),
           (LABELS_IGNORED, {"reduction": r, "weight": WEIGHT, "label_smoothing": 0.2}),
           (LABELS_IGNORED, {"reduction": r, "label_smoothing": 0.3}),
           (np.asarray(PROBS), {"reduction": r}),
           (np.asarray(PROBS), {"reduction": r, "weight": WEIGHT, "label_smoothing": 0.1}),
       ])},
    **{f"nll_loss-{r}-{i}": (
        lambda r=r, i=i: L.nll_loss(jax.nn.log_softmax(jnp.asarray(LOGITS)), jnp.asarray(lab), **kw),
        lambda r=r, i=i: F.nll_loss(F.log_softmax(t(LOGITS), 1), t(lab), **{k: t(v) if k == "weight" else v
                                                                             for k, v in kw.items()}))
       for r in ("mean", "sum", "none") for i, (lab, kw) in enumerate([
           (LABELS, {"reduction": r}), (LABELS_IGNORED, {"reduction": r, "weight": WEIGHT}),
           (LABELS_OTHER_IGNORE, {"reduction": r, "ignore_index": 2})])},
    **{f"bce-{r}": (lambda r=r: L.binary_cross_entropy(jnp.asarray(UNIT), jnp.asarray(BINARY), reduction=r,
                                                       weight=jnp.asarray(WEIGHT[:4])),
                    lambda r=r: F.binary_cross_entropy(t(UNIT), t(BINARY), reduction=r, weight=t(WEIGHT[:4])))
       for r in ("mean", "sum", "none")},
    "bce-saturated": (lambda: L.binary_cross_entropy(jnp.asarray([0.0, 1.0, 0.5]), jnp.asarray([1.0, 0.0, 1.0])),
                      lambda: F.binary_cross_entropy(t([0.0, 1.0, 0.5]), t([1.0, 0.0, 1.0]))),
    **{f"bce_logits-{r}-{i}": (
        lambda r=r, i=i: L.binary_cross_entropy_with_logits(jnp.asarray(PREDICTIONS * 10), jnp.asarray(BINARY),
                                                            reduction=r, **{k: jnp.asarray(v) for k, v in kw.items()}),
        lambda r=r, i=i: F.binary_cross_entropy_with_logits(t(PREDICTIONS * 10), t(BINARY), reduction=r,
                                                            **{k: t(v) for k, v in kw.items()}))
       for r in ("mean", "sum", "none") for i, kw in enumerate([{}, {"pos_weight": WEIGHT[:4]},
                                                                {"weight": WEIGHT[1:], "pos_weight": WEIGHT[:4]}])},
    **{f"{name}-{r}-{i}": (lambda name=name, r=r, kw=kw: getattr(L, name)(jnp.asarray(PREDICTIONS), jnp.asarray(TARGETS),
                                                                        reduction=r, **kw),
                           lambda name=name, r=r, kw=kw: getattr(F, name)(t(PREDICTIONS), t(TARGETS), reduction=r,
                                                                        **kw))
       for r in ("mean", "sum", "none") for name, options in [
           ("mse_loss", [{}]), ("l1_loss", [{}]), ("smooth_l1_loss", [{}, {"beta": 0.5}, {"beta": 0.0}]),
           ("huber_loss", [{}, {"delta": 2.5}])] for i, kw in enumerate(options)},
    **{f"kl_div-{r}-{log_target}": (
        lambda r=r, lt=log_target: L.kl_div(jnp.log(PROBS[:6]), jnp.log(PROBS[6:]) if lt
                                            else jnp.asarray(PROBS_WITH_ZERO), reduction=r, log_target=lt),
        lambda r=r, lt=log_target: F.kl_div(t(np.log(PROBS[:6])), t(np.log(PROBS[6:])) if lt
                                            else t(PROBS_WITH_ZERO), reduction=r, log_target=lt))
       for r in ("mean", "sum", "none", "batchmean") for log_target in (False, True)},
}


@pytest.mark.filterwarnings("ignore:reduction. 'mean' divides the total loss:UserWarning")   # torch's, on kl_div
@pytest.mark.parametrize("name", sorted(CASES))
def test_losses_equal_torch_in_float64(name, x64):
    ours, theirs = CASES[name]
    np.testing.assert_allclose(np.asarray(ours()), theirs().numpy(), rtol=1e-12, atol=1e-14)


def test_gradients_equal_torch_in_float64(x64):
    logits = t(LOGITS).requires_grad_()
    F.cross_entropy(logits, t(LABELS_IGNORED), weight=t(WEIGHT), label_smoothing=0.1).backward()
    ours = jax.grad(lambda x: L.cross_entropy(x, jnp.asarray(LABELS_IGNORED), weight=WEIGHT, label_smoothing=0.1))(
        jnp.asarray(LOGITS))
    np.testing.assert_allclose(np.asarray(ours), logits.grad.numpy(), rtol=1e-12, atol=1e-14)


def test_losses_by_name_train_and_evaluate():
    split = fn.data.load("digits", "train")
    images, labels = fn.data.normalize(split.images, split.info)[:128], split.labels[:128]
    smoothing = fn.losses.create("cross_entropy", label_smoothing=0.1, weight=[1.0] * 10)
    assert smoothing is fn.losses.create("cross_entropy", weight=[1.0] * 10, label_smoothing=0.1)   # reused
    model = fn.models.get("mnist_mlp")
    state = fn.create_train_state(model, fn.optim.sgd(lr=0.1), jax.random.key(0))
    scores = fn.evaluate(state, images, labels, batch_size=64, loss_fn=smoothing)
    expected = float(L.cross_entropy(model.apply(state.params, jnp.asarray(images)), jnp.asarray(labels),
                                     label_smoothing=0.1))
    assert scores["loss"] == pytest.approx(expected, rel=1e-5)
    state, history = fn.fit(state, (images, labels), (images, labels), epochs=1, batch_size=64,
                            rng=jax.random.key(1), report=fn.loop.Report.silent(), loss_fn=smoothing)
    assert history[0]["test_loss"] > fn.evaluate(state, images, labels, loss_fn="nll_loss")["loss"]
    step = fn.make_train_step("nll_loss")
    state, metrics = step(state, (jnp.asarray(images[:8]), jnp.asarray(labels[:8])))
    assert np.isfinite(float(metrics["loss"]))


def test_bad_loss_arguments_are_named():
    with pytest.raises(ValueError, match="unknown loss 'focal'"):
        fn.losses.create("focal")
    with pytest.raises(TypeError, match=r"cross_entropy: unknown option\(s\) \['smoothing'\]"):
        fn.losses.create("cross_entropy", smoothing=0.1)
    with pytest.raises(ValueError, match="label_smoothing must be between 0.0 and 1.0"):
        L.cross_entropy(jnp.zeros((2, 3)), jnp.zeros(2, jnp.int32), label_smoothing=1.5)
    with pytest.raises(ValueError, match="avg is not a valid value for reduction"):
        L.mse_loss(jnp.zeros(2), jnp.zeros(2), reduction="avg")
    with pytest.raises(TypeError, match="loss_fn must be a loss function"):
        fn.make_train_step(3)
