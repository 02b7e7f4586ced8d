"""Process settings that make XLA:CPU's steps faster, set before JAX starts.

`cpt-jax` and the speed benchmarks call `configure()` first thing. Three settings:

1. **Transparent huge pages for the step's temporaries** (on by default). XLA:CPU allocates
   them afresh at every execution (about 450 MB for the tiny model's step at 16 x 256), and
   glibc serves allocations above 32 MiB with a new mmap, so every step faulted in, and the
   kernel zeroed, each 4 KiB page again: 143,000 page faults per step. glibc's
   `glibc.malloc.hugetlb=1` tunable advises those maps as huge pages (2 MiB): about 700
   faults, and the step went from 639 to 535 ms. Off with CPT_JAX_HUGE_PAGES=0.
2. **Freed memory kept for the next step** (on by default for commands that run steps, where
   XLA runs on the CPU). Even with huge pages, each step's 450 MB were mapped, zeroed by the
   kernel and unmapped again: an eighth of the step's CPU time was the kernel's. One malloc
   arena (the threads' own arenas map large blocks afresh whatever the settings), no mmap for
   large blocks and no trimming of the heap's top make the next step reuse the same memory:
   no page faults; the bare step went from 13,141 to 15,725 tokens/s
   (`benchmarks.step_throughput`) and the demo from 193 to 176 s. The costs: memory the
   process keeps once it has used it (peak RSS in that benchmark 1.3 -> 2.3 GB over three
   training loops), and threads that allocate a lot contend for the one arena (Hugging Face
   tokenizers: the demo's BPE trains in 4.0 s instead of 2.1, and `prepare` in one worker
   ran at 0.7 instead of 1.8M tokens/s, so `prepare` does not ask for it). Not applied where
   a GPU or TPU plugin is installed or JAX_PLATFORMS names another platform first: the
   step's temporaries are not in host memory there. Off with CPT_JAX_REUSE_MEMORY=0.
3. **oneDNN for the CPU's matmuls** (opt-in: CPT_JAX_ONEDNN=1) in place of YNNPACK (XLA's
   default since jaxlib 0.8.1), without XLA's experimental oneDNN fusions: those (with
   "dot,eltwise,reduce") abort the process while compiling the model ("partition compile
   failed": oneDNN's graph API loses a tensor when an elementwise op feeds a matmul; the MLP
   block alone fails, and since issue 14's attention layout the whole step). Plain oneDNN
   matmuls compile, and the persistent compilation cache stores them (it could not store
   the fusions). Not the default: the step runs at about 0.93 of the default's speed. Added
   to XLA_FLAGS on x86-64 Linux from jaxlib 0.8.1 (older versions abort on the YNNPACK flag
   they do not know) unless XLA_FLAGS already picks these libraries.

glibc reads its tunables once, at start, so the process re-executes itself (same pid,
arguments and streams) with the tunables added to GLIBC_TUNABLES: on Linux with glibc, for
each setting whose tunables GLIBC_TUNABLES does not already name.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import platform
import re
import sys

HUGE_PAGES = {"glibc.malloc.hugetlb": "1"}
HUGE_PAGES_OPT_OUT = "CPT_JAX_HUGE_PAGES"  # "0": glibc's default pages.
MEMORY_REUSE = {"glibc.malloc.arena_max": "1", "glibc.malloc.mmap_max": "0",
                "glibc.malloc.trim_threshold": str(1 << 40)}
MEMORY_REUSE_OPT_OUT = "CPT_JAX_REUSE_MEMORY"  # "0": glibc's default arenas and maps.
ONEDNN_OPT_IN = "CPT_JAX_ONEDNN"  # "1": XLA:CPU's matmuls through oneDNN.
ONEDNN_FLAGS = ("--xla_cpu_use_onednn=true",
                "--xla_cpu_experimental_onednn_fusion_type=",  # None: they abort (above).
                "--xla_cpu_experimental_ynn_fusion_type=")
_FIRST_JAXLIB_WITH_YNNPACK = (0, 8, 1)
_THP_SETTING = "/sys/kernel/mm/transparent_hugepage/enabled"


def _jaxlib_version() -> tuple[int, ...]:
  try:
    return tuple(int(part) for part in re.findall(r"\d+", importlib.metadata.version("jaxlib"))[:3])
  except importlib.metadata.PackageNotFoundError:
    return ()


def xla_flags_with_onednn(environ) -> str:
  """XLA_FLAGS with the oneDNN flags added where they apply."""
  flags = environ.get("XLA_FLAGS", "")
  if (not sys.platform.startswith("linux") or platform.machine() != "x86_64"
      or _jaxlib_version() < _FIRST_JAXLIB_WITH_YNNPACK
      or re.search(r"xla_cpu_use_onednn|xla_cpu_experimental_\w+_fusion_type", flags)):
    return flags
  return " ".join(filter(None, (flags, *ONEDNN_FLAGS)))


def _glibc() -> bool:
  try:
    return os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc")
  except (AttributeError, ValueError, OSError):  # Not a POSIX system, or not glibc.
    return False


def _kernel_allows_huge_pages() -> bool:
  """The kernel's setting reads like "always [madvise] never"; glibc's advice needs
  "always" or "madvise" selected."""
  try:
    with open(_THP_SETTING) as setting:
      return "[never]" not in setting.read()
  except OSError:
    return False


def _xla_runs_on_cpu(environ) -> bool:
  """Whether JAX will pick its CPU backend: JAX_PLATFORMS names it first, or names nothing
  and no GPU or TPU plugin is installed."""
  platforms = environ.get("JAX_PLATFORMS", "").strip()
  if platforms:
    return platforms.split(",")[0].strip() == "cpu"
  return (not importlib.metadata.entry_points(group="jax_plugins")  # CUDA, ROCm, ...
          and importlib.util.find_spec("libtpu") is None)


def tunables_to_add(environ, reuse_memory: bool = True) -> dict[str, str]:
  """The glibc tunables that apply here and that GLIBC_TUNABLES leaves to us; `reuse_memory`:
  whether the command runs steps (setting 2)."""
  if not _glibc():
    return {}
  named = {item.split("=")[0] for item in environ.get("GLIBC_TUNABLES", "").split(":")}
  settings = []
  if environ.get(HUGE_PAGES_OPT_OUT) != "0" and _kernel_allows_huge_pages():
    settings.append(HUGE_PAGES)
  if reuse_memory and environ.get(MEMORY_REUSE_OPT_OUT) != "0" and _xla_runs_on_cpu(environ):
    settings.append(MEMORY_REUSE)
  # A setting one of whose tunables is already named is the user's choice, kept whole.
  return {name: value for setting in settings if not named & setting.keys()
          for name, value in setting.items()}


def environment_with_tunables(environ, reuse_memory: bool = True) -> dict[str, str] | None:
  """The environment to re-execute with, or None where there is nothing to add."""
  added = tunables_to_add(environ, reuse_memory)
  if not added:
    return None
  tunables = ":".join(filter(None, (environ.get("GLIBC_TUNABLES", ""),
                                    *(f"{name}={value}" for name, value in added.items()))))
  return {**environ, "GLIBC_TUNABLES": tunables}


def configure(reuse_memory: bool = True) -> None:
  """Sets what applies; re-executes this process where glibc tunables do. Call it before
  importing JAX and before any work worth keeping; `reuse_memory=False` for a process that
  runs no steps."""
  environ = dict(os.environ)
  flags = xla_flags_with_onednn(environ) if environ.get(ONEDNN_OPT_IN) == "1" else ""
  if flags:
    environ["XLA_FLAGS"] = flags
  with_tunables = environment_with_tunables(environ, reuse_memory)
  if with_tunables is not None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], with_tunables)
  os.environ.update(environ)
