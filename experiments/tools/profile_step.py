"""Where one training step's time goes, op by op: funcnets' jitted step under
``jax.profiler``, and optionally PyTorch's tutorial step under ``torch.profiler``.

    python -m experiments.tools.profile_step mnist_cnn                 # as training runs it (all cores)
    python -m experiments.tools.profile_step mnist_cnn --one-thread    # each op's own work, on one core
    python -m experiments.tools.profile_step mnist_cnn --torch         # and PyTorch's step, op by op

The step is the one `funcnets.training.run_steps` jits (same compiler options,
same ``malloc`` setting, `funcnets.host_memory`), on random data of the real
shapes at the tutorial's batch size and optimizer (`experiments.tools.bench.CASES`).
After ``--warmup`` steps (the compile among them), ``--steps`` steps are
timed, then as many more run under the profiler; each step is followed by a
sync, so that its wall time is its own (this is a profile: the speed figures
are `experiments.tools.bench`'s, which never syncs inside a window).

Reported, for the timed and for the traced steps: the median step time and the
process's page faults per step (a page the kernel maps and zeroes); then a
table of the ops that took the most time per traced step: each XLA op (a
thunk: a convolution, a dot, a fusion of elementwise work, a copy) with its
shape, the layer and pass it is for (from its op name: the models run each
layer under a ``jax.named_scope``, and ``transpose(jvp(...))`` marks a
gradient; an op XLA made itself is named by what it reads), and for
convolutions and dots the FLOPs it executes and their rate. PyTorch's table
gives each ATen op's own (self) CPU time, by op and input shapes.

``--one-thread`` runs XLA on one thread (``--xla_cpu_multi_thread_eigen=false``)
pinned to one core, and PyTorch with one thread, so that each op's time is its
own work: on all cores XLA:CPU runs convolutions and dots on its worker
threads asynchronously, and their events time only the launch.

The profiler costs time of its own: on this project's CPU machine the
``mnist_cnn`` step makes 8,000-10,000 page faults a step while it is traced
(none without it; they come and go with the trace, not with ``malloc``'s
arenas or a pre-touched heap, which were tried), and the ops that write
fresh temporaries run slower for it (``conv2``'s forward convolution 20 ms
against 16.5 in a fault-free trace), so the ops add up to more than the
timed step. Both step times and both fault counts are reported; read an op's
share against the traced step.

A Markdown report and JSON go to ``--out`` (default ``reports/profile``).
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import os
import pathlib
import re
import statistics
import sys
import tempfile
import time
from typing import NamedTuple

import numpy as np

from experiments.tools.bench import CASES, _minor_faults

ONE_THREAD_FLAG = "--xla_cpu_multi_thread_eigen=false"


# --- the compiled program's ops, from its HLO text ---------------------------------

class HloOp(NamedTuple):
    """One instruction of an optimised HLO module.

    ``where``: the layers and passes its op names name (``conv2 backward``;
    for a fusion, those of the ops fused into it, most frequent first).
    ``flops``: the multiply-adds (x2) of its convolutions and dots, fused or not.
    """
    name: str
    opcode: str
    shape: str
    where: str
    flops: float


_INSTRUCTION = re.compile(r"\s*(?:ROOT )?%(?P<name>[^\s=]+) = (?P<shape>.+?) (?P<opcode>[a-z][\w-]*)\((?P<args>[^)]*)\)"
                          r"(?P<attrs>.*)$")
_COMPUTATION = re.compile(r"^(?:ENTRY )?%(?P<name>[^\s(]+) ")


def _dims(shape: str) -> list[int]:
    """``f32[64,24,24,64]{3,2,1,0}`` -> ``[64, 24, 24, 64]`` (the first array of a tuple)."""
    match = re.search(r"[a-z]\w*\[([\d,]*)\]", shape)
    return [int(d) for d in match.group(1).split(",") if d] if match else []


def layer_and_pass(op_name: str) -> str:
    """``jit(f)/transpose(jvp(conv2))/conv_general_dilated`` -> ``conv2 backward``;
    ``jit(f)/jvp(fc1)/dot_general`` -> ``fc1 forward``; ``jit(f)/optimizer/sqrt`` ->
    ``optimizer``; an op outside every named scope -> ``forward``, ``backward`` or ``""``."""
    path = op_name.split("/", 1)[1] if op_name.startswith("jit(") and "/" in op_name else op_name
    for prefix, which in (("transpose(jvp(", "backward"), ("jvp(", "forward")):
        if path.startswith(prefix):
            inner = path[len(prefix):].split(")", 1)[0]
            scope = inner.split("/")[0]
            return f"{scope} {which}" if scope and not scope.startswith("jit(") else which
    head = path.split("/")[0]
    return "" if "/" not in path or head.startswith("jit(") else head


def _flops(opcode: str, shape: str, args: str, attrs: str, shapes: dict[str, str]) -> float:
    operands = re.findall(r"%([^\s,)]+)", args)
    out = float(np.prod(_dims(shape))) if _dims(shape) else 1.0
    if opcode == "convolution" and len(operands) >= 2:
        kernel = _dims(shapes.get(operands[1], ""))
        labels = re.search(r"dim_labels=\w+_(\w+)->", attrs)
        if kernel and labels and "o" in labels.group(1):
            return 2.0 * out * np.prod(kernel) / kernel[labels.group(1).index("o")]
    if opcode == "dot" and operands:
        lhs = _dims(shapes.get(operands[0], ""))
        contracting = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", attrs)
        if lhs and contracting:
            return 2.0 * out * np.prod([lhs[int(d)] for d in contracting.group(1).split(",") if d])
    return 0.0


def hlo_ops(hlo_text: str) -> dict[str, HloOp]:
    """Every instruction of a module's text (``compiled.as_text()``) but those
    inside fusions, by name: what runs as a thunk, its ``where`` and ``flops``
    including those of the computations it calls."""
    computations: dict[str, list[dict]] = collections.defaultdict(list)
    shapes: dict[str, str] = {}
    current = ""
    for line in hlo_text.splitlines():
        start = _COMPUTATION.match(line)
        if start and line.rstrip().endswith("{"):
            current = start.group("name")
            continue
        match = _INSTRUCTION.match(line)
        if not match:
            continue
        fields = match.groupdict()
        fields["root"] = line.lstrip().startswith("ROOT ")
        op_name = re.search(r'op_name="([^"]*)"', fields["attrs"])
        fields["where"] = layer_and_pass(op_name.group(1)) if op_name else ""
        fields["calls"] = re.findall(r"(?:calls|to_apply|body|condition)=%([^\s,}]+)", fields["attrs"])
        computations[current].append(fields)
        shapes[fields["name"]] = fields["shape"]

    def summary(op: dict, seen: frozenset = frozenset()) -> tuple[float, list[str]]:
        """Its FLOPs and its layers and passes: its own op name's first, then, for
        each computation it calls, that computation's root's, then the rest by count."""
        flops = _flops(op["opcode"], op["shape"], op["args"], op["attrs"], shapes)
        labels = [op["where"]] if op["where"] else []
        for callee in (callee for callee in op["calls"] if callee not in seen):
            counts, root = collections.Counter(), []
            for inner in computations.get(callee, []):
                inner_flops, inner_labels = summary(inner, seen | {callee})
                flops += inner_flops
                counts.update(inner_labels)
                root = inner_labels if inner["root"] else root
            labels += [label for label in dict.fromkeys(root + [label for label, _ in counts.most_common()])
                       if label not in labels]
        return flops, labels

    fused = {callee for ops_of in computations.values() for op in ops_of if op["opcode"] == "fusion"
             for callee in op["calls"]}
    thunks = {op["name"]: op for name, ops_of in computations.items() if name not in fused for op in ops_of}
    summaries = {name: summary(op) for name, op in thunks.items()}

    def labels_of(name: str) -> list[str]:
        if thunks[name]["opcode"] == "parameter":  # its pytree path, e.g. state.params.fc1.kernel
            return [".".join(part for part in re.split(r"_+", name.rsplit(".", 1)[0]) if part)]
        return summaries[name][1]

    ops = {}
    for name, op in thunks.items():
        labels = labels_of(name)
        if not labels:  # XLA made it (a layout copy, a rewritten op): say what it reads
            inputs = [source for source in re.findall(r"%([^\s,)]+)", op["args"]) if source in thunks]
            read = list(dict.fromkeys(label for source in inputs for label in labels_of(source)))
            labels = [f"(XLA's, reads {', '.join(read[:3])}{', ...' if len(read) > 3 else ''})"] if read else []
        ops[name] = HloOp(name, op["opcode"], re.sub(r"\{[^}]*\}", "", op["shape"]),
                          ", ".join(labels[:3]) + (", ..." if len(labels) > 3 else ""), summaries[name][0])
    return ops


# --- funcnets' step under jax.profiler ---------------------------------------------

def _trace_op_times(trace_dir: str, module: str, steps: int) -> dict[str, tuple[float, float]]:
    """``{op: (seconds per step, calls per step)}`` of one module's ops in a
    ``jax.profiler`` trace (its Perfetto JSON: each XLA:CPU thunk is an event
    whose ``args.hlo_op`` names the instruction)."""
    found = list(pathlib.Path(trace_dir).rglob("*.trace.json.gz"))
    if not found:
        raise RuntimeError(f"jax.profiler wrote no trace under {trace_dir}")
    with gzip.open(found[0]) as trace:
        events = json.load(trace)["traceEvents"]
    total, calls = collections.Counter(), collections.Counter()
    for event in events:
        args = event.get("args") or {}
        if event.get("ph") == "X" and args.get("hlo_module") == module and "hlo_op" in args:
            total[args["hlo_op"]] += event.get("dur", 0.0) * 1e-6
            calls[args["hlo_op"]] += 1
    return {op: (total[op] / steps, calls[op] / steps) for op in total}


def _timed(run_step, count: int) -> tuple[list[float], float]:
    """Wall seconds of ``run_step(i)`` for ``i < count`` (each call syncs), and
    the page faults per call."""
    times, faults = [], _minor_faults()
    for i in range(count):
        start = time.perf_counter()
        run_step(i)
        times.append(time.perf_counter() - start)
    return times, (_minor_faults() - faults) / count


def _summary(contestant: str, times: list[float], faults: float, rows: list[dict]) -> dict:
    return {"contestant": contestant, "step_ms": statistics.median(times) * 1e3,
            "step_ms_range": [min(times) * 1e3, max(times) * 1e3], "page_faults_per_step": faults,
            "ops_ms": sum(r["ms"] for r in rows), "ops": sorted(rows, key=lambda r: -r["ms"])}


def profile_funcnets(name: str, *, steps: int, warmup: int) -> dict:
    """funcnets' jitted step for ``name``: ``steps`` steps timed, then ``steps``
    more under ``jax.profiler`` for the per-op times (see the module docstring)."""
    import jax
    import jax.numpy as jnp

    import funcnets as fn
    from funcnets.cpu import compiler_options
    from funcnets.training import _indexed_step, epoch_order

    batch, image_shape, _, optimizer, lr = CASES[name]
    model = fn.models.get(name)
    examples = batch * (warmup + 2 * steps)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.random((examples, *image_shape), np.float32))
    y = jnp.asarray(rng.integers(0, 10, examples).astype(np.int32))
    order = epoch_order(examples, jax.random.key(1)).reshape(-1, batch)
    holder = {"state": fn.create_train_state(model, fn.optim.create(optimizer, lr=lr), jax.random.key(0))}
    # As run_steps runs it (compiler options chosen; malloc set up below, as the scripts do); then the same
    # program compiled again, to read its HLO and run it.
    holder["state"], _ = _indexed_step(holder["state"], x, y, order[0])
    step = _indexed_step.jitted(compiler_options()).lower(holder["state"], x, y, order[0]).compile()
    hlo = step.as_text()
    ops, module = hlo_ops(hlo), re.match(r"HloModule (\S+?),", hlo).group(1)

    def run_step(rows):
        holder["state"], metrics = step(holder["state"], x, y, rows)
        jax.block_until_ready(metrics)

    for rows in order[1:warmup]:
        run_step(rows)
    times, faults = _timed(lambda i: run_step(order[warmup + i]), steps)
    with tempfile.TemporaryDirectory() as trace_dir:
        options = jax.profiler.ProfileOptions()
        options.python_tracer_level = 0  # XLA's ops only: Python's calls are not what is profiled
        options.enable_hlo_proto = False
        with jax.profiler.trace(trace_dir, create_perfetto_trace=True, profiler_options=options):
            traced_times, traced_faults = _timed(lambda i: run_step(order[warmup + steps + i]), steps)
        per_op = _trace_op_times(trace_dir, module, steps)
    rows = []
    for op, (seconds, calls) in per_op.items():
        info = ops.get(op, HloOp(op, "", "", "", 0.0))
        rows.append({"op": op, "ms": seconds * 1e3, "calls": calls, "opcode": info.opcode, "shape": info.shape,
                     "where": info.where, "gflops": info.flops / 1e9,
                     "gflop_per_s": info.flops / seconds / 1e9 if info.flops and seconds else None})
    return {**_summary("funcnets", times, faults, rows), "step_gflops": sum(op.flops for op in ops.values()) / 1e9,
            "profiled_step_ms": statistics.median(traced_times) * 1e3, "profiled_page_faults_per_step": traced_faults}


# --- PyTorch's tutorial step under torch.profiler ----------------------------------

def profile_torch(name: str, *, steps: int, warmup: int, threads: int | None) -> dict:
    """PyTorch's step as the tutorial writes it (``zero_grad``, forward, loss,
    ``backward``, ``step``; one batch already in memory) under ``torch.profiler``:
    each ATen op's own (self) CPU time per step, grouped by op and input shapes."""
    import torch

    from experiments.tools.bench import _torch_setup

    batch, image_shape, _, _, _ = CASES[name]
    if threads:
        torch.set_num_threads(threads)
    rng = np.random.default_rng(0)
    images = rng.random((batch * (warmup + 2 * steps), *image_shape), np.float32)
    labels = rng.integers(0, 10, len(images)).astype(np.int32)
    net, opt, loss_fn, x, y = _torch_setup(name, images, labels)

    def step(i):
        opt.zero_grad()
        loss = loss_fn(net(x[i * batch:(i + 1) * batch]), y[i * batch:(i + 1) * batch])
        loss.backward()
        opt.step()
        return loss.item()

    for i in range(warmup):
        step(i)
    times, faults = _timed(lambda i: step(warmup + i), steps)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True) as prof:
        traced_times, traced_faults = _timed(lambda i: step(warmup + steps + i), steps)
    rows = []
    for event in prof.key_averages(group_by_input_shape=True):
        if event.self_cpu_time_total > 0:
            shapes = " ".join(str(list(s)).replace(" ", "") for s in event.input_shapes if s)
            rows.append({"op": event.key, "ms": event.self_cpu_time_total / 1e3 / steps,
                         "calls": event.count / steps, "shape": shapes})
    threads = torch.get_num_threads()
    return {**_summary(f"torch tutorial ({threads} thread{'s' if threads > 1 else ''})", times, faults, rows),
            "profiled_step_ms": statistics.median(traced_times) * 1e3, "profiled_page_faults_per_step": traced_faults}


# --- report ------------------------------------------------------------------------

def markdown(name: str, profiles: list[dict], *, top: int, one_thread: bool) -> str:
    batch = CASES[name][0]
    where = "on one thread (each op its own work)" if one_thread else "on all cores (as training runs it)"
    lines = [f"# `{name}` (batch {batch}): one training step, op by op, {where}", ""]
    for prof in profiles:
        low, high = prof["step_ms_range"]
        timing = (f"Median of the timed steps ({low:.1f}-{high:.1f} ms), "
                  f"{prof['page_faults_per_step']:,.0f} page faults a step; under the profiler "
                  f"{prof['profiled_step_ms']:.1f} ms and {prof['profiled_page_faults_per_step']:,.0f} page faults "
                  f"a step, its ops adding up to {prof['ops_ms']:.1f} ms.")
        lines += [f"## {prof['contestant']}: {prof['step_ms']:.1f} ms a step", "", timing, ""]
        if "step_gflops" in prof:
            rate = prof["step_gflops"] / prof["step_ms"] * 1e3
            flops = f"The step executes {prof['step_gflops']:.2f} GFLOP in convolutions and dots ({rate:.1f} GFLOP/s"
            lines += [flops + " over the timed step).", ""]
            if not one_thread:
                lines += [("On all cores XLA:CPU runs convolutions and dots on its worker threads, asynchronously: "
                           "their rows time the launch, not the work. `--one-thread` times each op's work."), ""]
            lines += ["| op | ms | % of step | layer, pass | kind | shape | GFLOP/s |",
                      "| --- | --- | --- | --- | --- | --- | --- |"]
            for r in prof["ops"][:top]:
                rate = f"{r['gflop_per_s']:.0f}" if r["gflop_per_s"] else ""
                calls = f" (x{r['calls']:.0f})" if r["calls"] > 1.5 else ""
                lines.append(f"| `{r['op']}`{calls} | {r['ms']:.2f} | {100 * r['ms'] / prof['profiled_step_ms']:.1f} "
                             f"| {r['where']} | {r['opcode']} | `{r['shape']}` | {rate} |")
        else:
            lines += ["| op | ms | % of step | calls | input shapes |", "| --- | --- | --- | --- | --- |"]
            for r in prof["ops"][:top]:
                lines.append(f"| `{r['op']}` | {r['ms']:.2f} | {100 * r['ms'] / prof['profiled_step_ms']:.1f} "
                             f"| {r['calls']:.0f} | `{r['shape']}` |")
        lines.append("")
    return "\n".join(lines)


def _one_thread_setup() -> None:
    """One XLA thread on one core. XLA reads its flags when JAX starts, so this
    must run before JAX is imported."""
    if "jax" in sys.modules:
        raise RuntimeError("--one-thread must be set up before JAX is imported: run "
                           "`python -m experiments.tools.profile_step ... --one-thread` in a fresh process")
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {ONE_THREAD_FLAG}".strip()
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m experiments.tools.profile_step", description=__doc__.splitlines()[0])
    p.add_argument("model", choices=list(CASES))
    p.add_argument("--steps", type=int, default=20, help="profiled steps (default 20)")
    p.add_argument("--warmup", type=int, default=10, help="untimed steps first, compile included (default 10)")
    p.add_argument("--one-thread", action="store_true", help="XLA and PyTorch on one thread, pinned to one core")
    p.add_argument("--torch", action="store_true", help="also profile PyTorch's tutorial step")
    p.add_argument("--top", type=int, default=25, help="ops listed per table (default 25)")
    p.add_argument("--out", default="reports/profile")
    args = p.parse_args(argv)
    for flag in ("steps", "warmup", "top"):
        if getattr(args, flag) < 1:
            p.error(f"--{flag} must be at least 1, got {getattr(args, flag)}")

    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result_json = out / f"{args.model}{'-one-thread' if args.one_thread else ''}.json"
    if args.one_thread:
        _one_thread_setup()
    from experiments.tutorial import environment, set_up_host_memory

    set_up_host_memory()   # as the scripts run: freed blocks reused on the CPU
    profiles = [profile_funcnets(args.model, steps=args.steps, warmup=args.warmup)]
    if args.torch:
        profiles.append(profile_torch(args.model, steps=args.steps, warmup=args.warmup,
                                      threads=1 if args.one_thread else None))
    report = markdown(args.model, profiles, top=args.top, one_thread=args.one_thread)
    result = {"model": args.model, "one_thread": args.one_thread, "profiles": profiles, "environment": environment(),
              "command": " ".join(["python", "-m", "experiments.tools.profile_step",
                                   *(argv if argv is not None else sys.argv[1:])])}
    result_json.write_text(json.dumps(result, indent=2) + "\n")
    result_json.with_suffix(".md").write_text(report)
    print(report + f"\nReport: {result_json.with_suffix('.md')}", flush=True)
    return result


if __name__ == "__main__":
    main()
