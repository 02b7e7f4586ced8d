"""Process settings that make XLA:CPU's steps faster, set before JAX starts.

`cpt-jax` and the speed benchmarks call `configure()` first thing. Two settings:

1. **Transparent huge pages for the step's temporaries** (on by default). XLA:CPU allocates
   them afresh at every execution (about 570 MB for the tiny model's step at 16 x 256), and
   glibc serves allocations above 32 MiB with a new mmap, so every step faulted in, and the
   kernel zeroed, each 4 KiB page again: 143,000 page faults per step. glibc's
   `glibc.malloc.hugetlb=1` tunable advises those maps as huge pages (2 MiB): about 1,000
   faults, and the step went from 639 to 535 ms. glibc reads tunables once, at start, so the
   process re-executes itself (same pid, arguments and streams) with the tunable added: on
   Linux with glibc, where the kernel allows huge pages, unless GLIBC_TUNABLES already names
   it or CPT_JAX_HUGE_PAGES=0.
2. **oneDNN for the CPU's matmuls** (opt-in: CPT_JAX_ONEDNN=1), with the elementwise ops and
   reductions fused into them, in place of YNNPACK (XLA's default since jaxlib 0.8.1): the
   same step went from 7,908-8,021 to 9,230-9,250 tokens/s (jaxlib 0.10.2), but it is
   slower since the model's weight matmuls take (B*T, D) inputs (11,981 against 13,442).
   Not the default: JAX's persistent compilation cache cannot store programs with oneDNN
   fusions ("ToProto is not implemented for thunk kind: onednn-fusion"), so every process
   compiles afresh and warns at each compile. Added to XLA_FLAGS on x86-64 Linux from
   jaxlib 0.8.1 (older versions abort on the YNNPACK flag they do not know) unless XLA_FLAGS
   already picks these libraries.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import re
import sys

TUNABLE = "glibc.malloc.hugetlb"
HUGE_PAGES_OPT_OUT = "CPT_JAX_HUGE_PAGES"  # "0": run as started, without re-executing.
ONEDNN_OPT_IN = "CPT_JAX_ONEDNN"  # "1": XLA:CPU's matmuls through oneDNN.
ONEDNN_FLAGS = ("--xla_cpu_use_onednn=true",
                "--xla_cpu_experimental_onednn_fusion_type=dot,eltwise,reduce",
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


def environment_with_huge_pages(environ) -> dict[str, str] | None:
  """The environment to re-execute with, or None where there is nothing to gain."""
  if (environ.get(HUGE_PAGES_OPT_OUT) == "0" or TUNABLE in environ.get("GLIBC_TUNABLES", "")
      or not _glibc() or not _kernel_allows_huge_pages()):
    return None
  tunables = ":".join(filter(None, (environ.get("GLIBC_TUNABLES", ""), f"{TUNABLE}=1")))
  return {**environ, "GLIBC_TUNABLES": tunables}


def configure() -> None:
  """Sets what applies; re-executes this process where huge pages do. Call it before
  importing JAX and before any work worth keeping."""
  environ = dict(os.environ)
  flags = xla_flags_with_onednn(environ) if environ.get(ONEDNN_OPT_IN) == "1" else ""
  if flags:
    environ["XLA_FLAGS"] = flags
  with_huge_pages = environment_with_huge_pages(environ)
  if with_huge_pages is not None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], with_huge_pages)
  os.environ.update(environ)
