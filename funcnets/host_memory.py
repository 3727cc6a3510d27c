"""Host memory on the CPU: freed blocks stay in the process for the next step.

XLA:CPU hands each run of a compiled program its temporaries as one block
(``compiled.memory_analysis().temp_size_in_bytes``: 52 MB for ``mnist_cnn``'s
training step at batch 64). glibc's ``malloc`` serves a block above its mmap
threshold (128 KiB, raised as such blocks are freed, to at most 32 MiB)
straight from the kernel and unmaps it on ``free``, and it gives back free
memory at the top of its heap beyond the trim threshold. Either way the next
step writes to fresh pages, each a page fault and a page zeroed by the kernel:
12,800 faults per ``mnist_cnn`` step, about a quarter of its time. (PyTorch's
eager loop pays the same toll, 7,500 faults per step of the same net, through
the trim threshold.)

XLA:CPU's worker threads take memory too: a convolution run by an Eigen
thread packs its operands into a buffer it mallocs there (``mnist_cnn``'s
conv2 takes 42 MiB for its forward pass and weight gradient), so from that
thread's arena. A thread arena grows in heaps of at most 64 MiB, and glibc
unmaps a heap as soon as it is all free, whatever the thresholds, unless the
top pad is as large as a heap (``heap_trim``): in some processes every step
mapped a fresh heap and faulted its pages in, 500-8,600 faults a step
(docs/performance.md has the measurements).

`reuse_freed_blocks` sets all three with glibc's ``mallopt``::

    mmap threshold  128 MiB   blocks up to this size come from the heap
    trim threshold  256 MiB   free heap memory kept before any is given back
    top pad          64 MiB   a thread arena keeps its heaps; the heap grows
                              by this much more address space than it needs

so steady-state steps reuse the same pages and fault almost never. The cost: up to 256 MiB of freed memory stays with the main heap
instead of going back to the system, and memory a worker thread freed stays
in its arena (the pad itself is address space, not memory: pages are only
resident once written). Blocks over 128 MiB, such as a whole 60,000-image
MNIST split (180 MiB as float32), are still mapped and unmapped on their own,
so a dataset's copies do not linger.

The setting is process-wide. `funcnets.fit`, `funcnets.train_epoch` and
`funcnets.evaluate` make it on the CPU (`for_cpu_steps`), and say so in one
line the first time: ``host_malloc="system"`` (their argument) or
``FUNCNETS_HOST_MALLOC=system`` leaves ``malloc`` alone. `funcnets.train_step`
and the other single steps never touch it: a loop of one's own gets the fast
path by calling `reuse_freed_blocks` once. It leaves ``malloc`` as it is when:

- ``FUNCNETS_HOST_MALLOC=system`` is set (the opt-out; ``reuse``, or the
  variable unset, is the default, and any other value is an error);
- the user has configured ``malloc`` already: ``GLIBC_TUNABLES`` with a
  ``glibc.malloc.*`` entry, a ``MALLOC_*_`` variable, or another allocator
  (jemalloc, tcmalloc, mimalloc) in ``LD_PRELOAD``;
- the C library is not glibc (macOS, musl).

`setting` says which of these happened.
"""

from __future__ import annotations

import ctypes
import os
import platform

MMAP_THRESHOLD = 128 << 20
TRIM_THRESHOLD = 2 * MMAP_THRESHOLD    # glibc's own rule when it raises the mmap threshold
TOP_PAD = 64 << 20                     # glibc's largest thread-arena heap on 64-bit (HEAP_MAX_SIZE)
OPT_OUT = "FUNCNETS_HOST_MALLOC"
OPT_OUT_VALUES = {"reuse": "the default: freed blocks reused", "system": "glibc's malloc left as it is"}
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3   # glibc's <malloc.h>
_OTHER_ALLOCATORS = ("jemalloc", "tcmalloc", "mimalloc")

_setting: str | None = None
_said = False


def reason_to_leave_malloc_alone(environ=os.environ) -> str | None:
    """Why `reuse_freed_blocks` must not touch ``malloc`` here, or None.

    Raises ValueError for a value of ``FUNCNETS_HOST_MALLOC`` other than those
    in `OPT_OUT_VALUES` (a typo must not silently apply the setting)."""
    choice = environ.get(OPT_OUT, "").strip().lower()
    if choice and choice not in OPT_OUT_VALUES:
        accepted = "; ".join(f"{value!r} ({meaning})" for value, meaning in OPT_OUT_VALUES.items())
        raise ValueError(f"{OPT_OUT}={environ[OPT_OUT]!r} is not a setting funcnets knows: "
                         f"set it to one of {accepted}, or unset it")
    if choice == "system":
        return f"{OPT_OUT}=system"
    if "glibc.malloc." in environ.get("GLIBC_TUNABLES", ""):
        return "GLIBC_TUNABLES configures malloc"
    variables = sorted(name for name in environ if name.startswith("MALLOC_") and name.endswith("_"))
    if variables:
        return f"{variables[0]} configures malloc"
    preloaded = [name for name in _OTHER_ALLOCATORS if name in environ.get("LD_PRELOAD", "")]
    if preloaded:
        return f"LD_PRELOAD has {preloaded[0]}"
    if platform.libc_ver()[0] != "glibc":
        return "the C library is not glibc"
    return None


def reuse_freed_blocks() -> str:
    """Raise glibc's mmap and trim thresholds and its top pad (see the module
    docstring), once per process; returns `setting`. Raises ValueError, and
    changes nothing, for an unknown ``FUNCNETS_HOST_MALLOC`` value."""
    global _setting
    if _setting is None:
        reason = reason_to_leave_malloc_alone()
        if reason is not None:
            _setting = f"system malloc ({reason})"
        else:
            mallopt = ctypes.CDLL("libc.so.6").mallopt
            if (mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
                    and mallopt(_M_TOP_PAD, TOP_PAD)):
                _setting = (f"freed blocks reused (glibc mmap threshold {MMAP_THRESHOLD >> 20} MiB, "
                            f"trim threshold {TRIM_THRESHOLD >> 20} MiB, top pad {TOP_PAD >> 20} MiB)")
            else:
                _setting = "system malloc (glibc's mallopt refused the thresholds)"
    return _setting


def setting() -> str | None:
    """What `reuse_freed_blocks` did in this process; None before it ran."""
    return _setting


def for_cpu_steps(host_malloc: str | None, say) -> str | None:
    """What `funcnets.fit`, `funcnets.train_epoch` and `funcnets.evaluate` do before
    their steps: on the CPU backend, `reuse_freed_blocks` unless ``host_malloc`` is
    ``"system"`` (or ``FUNCNETS_HOST_MALLOC=system``); ``say(line)`` once per
    process, when this call changed ``malloc``. Returns `setting`.

    Args:
      host_malloc: None or ``"reuse"`` (the default: reuse freed blocks), or
        ``"system"`` (leave glibc's malloc as it is).
      say: where the one line goes (e.g. ``print``), or None for nowhere.
    """
    global _said
    if host_malloc is not None and host_malloc not in OPT_OUT_VALUES:
        accepted = ", ".join(repr(value) for value in OPT_OUT_VALUES)
        raise ValueError(f"host_malloc must be None, {accepted}, got {host_malloc!r}")
    if host_malloc == "system":
        return _setting
    import jax

    if jax.default_backend() != "cpu":
        return _setting
    made_here = _setting is None
    setting = reuse_freed_blocks()
    if made_here and not _said and say is not None and setting.startswith("freed blocks reused"):
        _said = True
        say(f"funcnets: host memory for CPU steps: {setting}, process-wide; "
            f"host_malloc='system' or {OPT_OUT}=system leaves malloc alone")
    return setting


def say_on_stderr(line: str) -> None:
    """Print ``line`` to standard error (for `for_cpu_steps` outside `funcnets.fit`)."""
    import sys

    print(line, file=sys.stderr, flush=True)
