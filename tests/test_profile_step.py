"""experiments.tools.profile_step: op names read as layers and passes, FLOPs counted from
the compiled HLO, and the script end to end (its timings mean nothing here)."""

import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.tools import profile_step


@pytest.mark.parametrize("op_name, expected", [
    ("jit(_indexed_step)/jvp(conv2)/conv_general_dilated", "conv2 forward"),
    ("jit(_indexed_step)/transpose(jvp(conv2))/conv_general_dilated", "conv2 backward"),
    ("jit(_indexed_step)/jvp(fc2)/jit(log_softmax)/exp", "fc2 forward"),
    ("jit(_indexed_step)/jvp(jit(take_along_axis))/select_n", "forward"),
    ("jit(_indexed_step)/transpose(jvp())/slice", "backward"),
    ("jit(_indexed_step)/optimizer/sqrt", "optimizer"),
    ("jit(_indexed_step)/add", ""),
])
def test_op_names_read_as_layer_and_pass(op_name, expected):
    assert profile_step.layer_and_pass(op_name) == expected


def test_hlo_ops_count_the_flops_and_name_the_layers_of_a_compiled_gradient():
    batch, size, c_in, c_out, hidden = 4, 10, 3, 5, 7

    def loss(params, x):
        with jax.named_scope("conv"):
            y = jax.lax.conv_general_dilated(x, params["conv"], (1, 1), "VALID",
                                             dimension_numbers=("NHWC", "HWIO", "NHWC"))
        with jax.named_scope("fc"):
            return jnp.sum(jnp.tanh(y.reshape(batch, -1) @ params["fc"]))

    out = size - 2
    params = {"conv": jnp.ones((3, 3, c_in, c_out)), "fc": jnp.ones((out * out * c_out, hidden))}
    hlo = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(params, jnp.ones((batch, size, size, c_in))).compile().as_text()
    ops = list(profile_step.hlo_ops(hlo).values())

    conv_forward = [op for op in ops if op.where.startswith("conv forward") and op.flops]
    assert [op.flops for op in conv_forward] == [2.0 * batch * out * out * c_out * 3 * 3 * c_in]
    fc_forward = [op for op in ops if op.where.startswith("fc forward") and op.flops]
    assert [op.flops for op in fc_forward] == [2.0 * batch * out * out * c_out * hidden]
    # the backward pass: the fc's two gradient matmuls and the conv's two gradients, each as
    # many multiply-adds as its forward (the input gradient's padded conv: more)
    backward = sorted(op.flops for op in ops if op.flops and op not in conv_forward + fc_forward)
    assert len(backward) == 4
    assert backward[:3] == sorted([2.0 * batch * out * out * c_out * hidden] * 2 + [conv_forward[0].flops])
    assert backward[3] >= conv_forward[0].flops
    assert any(op.where.startswith("fc backward") for op in ops)


def test_profile_step_profiles_both_frameworks_op_by_op(tmp_path):
    result = profile_step.main(["mnist_mlp", "--steps", "2", "--warmup", "1", "--torch", "--top", "5",
                                "--out", str(tmp_path)])
    funcnets, torch_step = result["profiles"]
    assert funcnets["step_ms"] > 0 and funcnets["profiled_step_ms"] > 0 and funcnets["page_faults_per_step"] >= 0
    fc1_weight_gradient = [op for op in funcnets["ops"] if op["where"] == "linear1 backward" and op["gflops"]]
    assert [op["gflops"] for op in fc1_weight_gradient] == [pytest.approx(2 * 64 * 784 * 100 / 1e9)]
    assert fc1_weight_gradient[0]["gflop_per_s"] > 0
    assert any(op["where"] == "optimizer" for op in funcnets["ops"])
    assert {"aten::addmm", "aten::mm"} <= {op["op"] for op in torch_step["ops"]}
    saved = json.loads((tmp_path / "mnist_mlp.json").read_text())
    assert saved["profiles"][0]["ops"] == funcnets["ops"]
    report = (tmp_path / "mnist_mlp.md").read_text()
    assert "| op | ms | % of step | layer, pass |" in report and "torch tutorial" in report


def test_profile_step_one_thread_needs_a_fresh_process_and_runs_in_one(tmp_path):
    with pytest.raises(RuntimeError, match="before JAX is imported"):
        profile_step._one_thread_setup()
    subprocess.run([sys.executable, "-m", "experiments.tools.profile_step", "mnist_mlp", "--one-thread", "--steps", "2",
                    "--warmup", "2", "--out", str(tmp_path)], check=True, capture_output=True)
    result = json.loads((tmp_path / "mnist_mlp-one-thread.json").read_text())
    assert result["one_thread"] and result["profiles"][0]["ops"]
    assert "on one thread" in (tmp_path / "mnist_mlp-one-thread.md").read_text()


@pytest.mark.parametrize("argv", [["mnist_mlp", "--steps", "0"], ["resnet50"]])
def test_profile_step_rejects_bad_arguments(argv, capsys):
    with pytest.raises(SystemExit):
        profile_step.main(argv)
    assert "error" in capsys.readouterr().err


def test_the_winograd_probe_computes_the_convolution(x64):
    """experiments.tools.winograd_probe: F(2x2,3x3) and F(4x4,3x3) equal XLA's convolution
    in float64, on sizes that do not divide by the tile."""
    from experiments.tools import winograd_probe

    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((2, 9, 7, 3)))
    kernel = jnp.asarray(rng.standard_normal((3, 3, 3, 5)))
    expected = np.asarray(winograd_probe.xla_conv(x, kernel))
    for form in (winograd_probe.F2, winograd_probe.F4):
        np.testing.assert_allclose(np.asarray(winograd_probe.winograd_conv(x, kernel, form)), expected,
                                   rtol=0, atol=1e-10)
