"""funcnets.host_memory: on the CPU, freed blocks stay in the process, so a step's
temporaries reuse the same pages instead of faulting in fresh ones every step."""

import json
import os
import pathlib
import platform
import subprocess
import sys

import pytest

from funcnets import host_memory

BLOCK_PAGES = (64 << 20) // os.sysconf("SC_PAGE_SIZE")   # one 64 MiB block, as big as mnist_cnn's temporaries

# A block allocated, written and freed four times with the C library's
# malloc/free, as XLA:CPU's buffers are (NumPy's own big blocks ask the kernel
# for huge pages instead): the minor page faults of the last three.
BLOCKS = """
import ctypes, json, resource, threading
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_void_p]

def reuse_faults(mib, who=resource.RUSAGE_SELF):
    faults = []
    for _ in range(4):
        before = resource.getrusage(who).ru_minflt
        block = libc.malloc(mib << 20)
        ctypes.memset(block, 1, mib << 20)
        libc.free(block)
        faults.append(resource.getrusage(who).ru_minflt - before)
    return sum(faults[1:])
"""

# One jitted step, which leaves malloc as it is; then the explicit call, then
# 64 MiB blocks, as big as mnist_cnn's temporaries.
PROBE = BLOCKS + """
import jax, jax.numpy as jnp
import funcnets as fn
from funcnets import host_memory
state = fn.create_train_state(fn.models.get("mnist_mlp"), fn.optim.sgd(lr=0.01), jax.random.key(0))
fn.train_step(state, (jnp.zeros((8, 28, 28, 1)), jnp.zeros((8,), jnp.int32)))
assert host_memory.setting() is None, "a library call changed malloc"
host_memory.reuse_freed_blocks()
print(json.dumps({"setting": host_memory.setting(), "faults": reuse_faults(64)}))
"""

# XLA's worker threads take their convolutions' buffers (42 MiB for mnist_cnn's
# conv2) from their own arenas, which grow in heaps of at most 64 MiB. With a
# 48 MiB block held, each further 48 MiB block needs a second heap, which glibc
# unmaps as soon as it is all free unless the top pad keeps it. In a fresh
# thread, before any XLA thread has made the arenas a new thread would share.
THREAD_PROBE = BLOCKS + """
from funcnets import host_memory
setting = host_memory.reuse_freed_blocks()
result = {}

def second_heap_blocks():
    held = libc.malloc(48 << 20)
    ctypes.memset(held, 1, 48 << 20)
    result["faults"] = reuse_faults(48, resource.RUSAGE_THREAD)
    libc.free(held)

worker = threading.Thread(target=second_heap_blocks)
worker.start()
worker.join()
print(json.dumps({"setting": setting, **result}))
"""


def _probe(script: str = PROBE, **extra) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MALLOC_", "GLIBC_TUNABLES", "LD_PRELOAD", host_memory.OPT_OUT))}
    run = subprocess.run([sys.executable, "-c", script], env={**env, **extra, "JAX_PLATFORMS": "cpu"},
                         capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


def _huge_pages_always() -> bool:
    path = pathlib.Path("/sys/kernel/mm/transparent_hugepage/enabled")
    return path.exists() and "[always]" in path.read_text()


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the setting is glibc's malloc's")
def test_after_a_cpu_step_freed_blocks_are_reused_without_page_faults():
    reused = _probe()
    assert reused["setting"].startswith("freed blocks reused"), reused
    assert reused["faults"] < BLOCK_PAGES // 10, reused      # 3 blocks: the heap's pages again

    system = _probe(**{host_memory.OPT_OUT: "system"})
    assert system["setting"] == f"system malloc ({host_memory.OPT_OUT}=system)", system
    if not _huge_pages_always():                             # 2 MiB pages fault 512x less
        assert system["faults"] > 3 * BLOCK_PAGES * 0.9, system  # each block mapped afresh


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the setting is glibc's malloc's")
def test_a_worker_threads_heaps_stay_for_its_next_blocks():
    reused = _probe(THREAD_PROBE)
    assert reused["setting"].startswith("freed blocks reused") and "top pad 64 MiB" in reused["setting"], reused
    assert reused["faults"] < BLOCK_PAGES // 10, reused      # the second heap's pages again

    system = _probe(THREAD_PROBE, **{host_memory.OPT_OUT: "system"})
    if not _huge_pages_always():
        assert system["faults"] > 3 * (BLOCK_PAGES * 3 // 4) * 0.9, system   # each block mapped afresh


@pytest.mark.parametrize("environ,reason", [
    ({host_memory.OPT_OUT: "system"}, "FUNCNETS_HOST_MALLOC=system"),
    ({host_memory.OPT_OUT: " System "}, "FUNCNETS_HOST_MALLOC=system"),
    ({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, "GLIBC_TUNABLES configures malloc"),
    ({"MALLOC_ARENA_MAX_": "2"}, "MALLOC_ARENA_MAX_ configures malloc"),
    ({"LD_PRELOAD": "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"}, "LD_PRELOAD has jemalloc"),
])
def test_malloc_is_left_alone_when_the_user_configured_it(environ, reason):
    assert host_memory.reason_to_leave_malloc_alone(environ) == reason


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the setting is glibc's malloc's")
def test_nothing_else_in_the_environment_stops_it():
    assert host_memory.reason_to_leave_malloc_alone({"GLIBC_TUNABLES": "glibc.cpu.hwcaps=-AVX512F",
                                                     host_memory.OPT_OUT: "reuse", "LD_PRELOAD": ""}) is None


@pytest.mark.parametrize("value", ["sytem", "off", "1"])
def test_an_unknown_opt_out_value_is_an_error_naming_the_accepted_ones(value):
    with pytest.raises(ValueError, match=rf"FUNCNETS_HOST_MALLOC='{value}' is not a setting.*'reuse'.*'system'"):
        host_memory.reason_to_leave_malloc_alone({host_memory.OPT_OUT: value})


def test_a_train_step_never_touches_malloc(monkeypatch):
    """The setting is process-wide: single steps never make it (a loop of one's own
    calls `reuse_freed_blocks`, as `train_step`'s docstring says)."""
    import jax
    import jax.numpy as jnp

    import funcnets as fn

    monkeypatch.setattr(host_memory, "_setting", None)   # as in a fresh process
    monkeypatch.setenv(host_memory.OPT_OUT, "sytem")     # would raise if anything read it
    state = fn.create_train_state(fn.models.get("mnist_mlp"), fn.optim.sgd(lr=0.01), jax.random.key(0))
    batch = (jnp.zeros((8, 28, 28, 1)), jnp.zeros((8,), jnp.int32))
    fn.train_step(state, batch)
    fn.eval_step(state, batch)
    fn.make_train_step(fn.losses.nll_loss)(state, batch)
    assert host_memory.setting() is None


# The library's epoch functions on the CPU: the setting made once, and said in one line.
LIBRARY_PROBE = """
import json, sys
import jax, jax.numpy as jnp
import funcnets as fn
from funcnets import host_memory
entry, choice = sys.argv[1], (None if sys.argv[2] == "default" else sys.argv[2])
state = fn.create_train_state(fn.models.get("mnist_mlp"), fn.optim.sgd(lr=0.01), jax.random.key(0))
images, labels = jnp.zeros((16, 28, 28, 1)), jnp.zeros((16,), jnp.int32)
fn.train_step(state, (images[:8], labels[:8]))
assert host_memory.setting() is None, "a train step changed malloc"
log = []
for _ in range(2):
    if entry == "train_epoch":
        state, _ = fn.train_epoch(state, images, labels, batch_size=8, host_malloc=choice)
    elif entry == "evaluate":
        fn.evaluate(state, images, labels, batch_size=8, host_malloc=choice)
    else:
        state, _ = fn.fit(state, (images, labels), (images, labels), epochs=1, batch_size=8, rng=jax.random.key(1),
                          report=fn.loop.Report(progress=False, log=log.append), host_malloc=choice)
print(json.dumps({"setting": host_memory.setting(), "log": [line for line in log if "host memory" in line]}))
"""


def _library_probe(entry: str, choice: str = "default", **extra) -> tuple[dict, list[str]]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MALLOC_", "GLIBC_TUNABLES", "LD_PRELOAD", host_memory.OPT_OUT))}
    run = subprocess.run([sys.executable, "-c", LIBRARY_PROBE, entry, choice],
                         env={**env, **extra, "JAX_PLATFORMS": "cpu"}, capture_output=True, text=True, timeout=300,
                         check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    said = [line for line in run.stderr.splitlines() if line.startswith("funcnets: host memory")]
    return json.loads(run.stdout.strip().splitlines()[-1]), said


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the setting is glibc's malloc's")
@pytest.mark.parametrize("entry", ["train_epoch", "evaluate", "fit"])
def test_the_epoch_functions_take_the_fast_path_and_say_so_once(entry):
    result, said = _library_probe(entry)
    assert result["setting"].startswith("freed blocks reused"), result
    lines = result["log"] if entry == "fit" else said     # fit says it through its report, the others on stderr
    assert len(lines) == 1, (result, said)
    assert "process-wide" in lines[0] and "host_malloc='system'" in lines[0] and "FUNCNETS_HOST_MALLOC=system" in lines[0]
    if entry == "fit":
        assert said == []


@pytest.mark.parametrize("entry", ["train_epoch", pytest.param("evaluate", marks=pytest.mark.slow),
                                   pytest.param("fit", marks=pytest.mark.slow)])   # one path is enough by default
def test_host_malloc_system_or_the_variable_leaves_malloc_alone(entry):
    result, said = _library_probe(entry, "system")
    assert result["setting"] is None and said == [] and result["log"] == [], (result, said)
    result, said = _library_probe(entry, **{host_memory.OPT_OUT: "system"})
    assert result["setting"] == f"system malloc ({host_memory.OPT_OUT}=system)", result
    assert said == [] and result["log"] == [], (result, said)


def test_an_unknown_host_malloc_is_named_before_any_step():
    import jax
    import jax.numpy as jnp

    import funcnets as fn

    state = fn.create_train_state(fn.models.get("mnist_mlp"), fn.optim.sgd(lr=0.01), jax.random.key(0))
    with pytest.raises(ValueError, match=r"host_malloc must be None, 'reuse', 'system', got 'off'"):
        fn.train_epoch(state, jnp.zeros((16, 28, 28, 1)), jnp.zeros((16,), jnp.int32), batch_size=8,
                       host_malloc="off")
    assert int(state.step) == 0


def test_the_scripts_set_it_up_and_say_so(monkeypatch, capsys):
    import jax

    from experiments import tutorial

    monkeypatch.setattr(host_memory, "_setting", None)
    monkeypatch.setenv(host_memory.OPT_OUT, "system")
    setting = tutorial.set_up_host_memory()
    if jax.default_backend() != "cpu":
        assert setting is None
        return
    assert setting == "system malloc (FUNCNETS_HOST_MALLOC=system)"
    assert "Host memory: system malloc (FUNCNETS_HOST_MALLOC=system)" in capsys.readouterr().out
