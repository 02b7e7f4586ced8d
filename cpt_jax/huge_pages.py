"""Transparent huge pages for the buffers XLA's CPU runtime allocates at every step.

XLA:CPU allocates an execution's temporaries afresh each time it runs a program: about
570 MB for the tiny model's train step at batch 16 x 256. glibc serves allocations above
32 MiB with a new mmap, so every step faults in, and the kernel zeroes, each 4 KiB page of
them again: 142,000 page faults per step, a fifth of the step's time on a 2-core CPU.
glibc's `glibc.malloc.hugetlb=1` tunable advises those maps as transparent huge pages
(2 MiB), which cuts the faults to about 1,000 per step (`benchmarks/vs_transformers.py`
measures the step with it).

glibc reads its tunables once, when a process starts, so a command that wants them
re-executes itself with the tunable added. Nothing happens where it cannot help: outside
Linux with glibc, where the kernel's huge pages are off, where the tunable is already set,
or with CPT_JAX_HUGE_PAGES=0.
"""

from __future__ import annotations

import os
import sys

TUNABLE = "glibc.malloc.hugetlb"
OPT_OUT = "CPT_JAX_HUGE_PAGES"  # "0": run as started, without re-executing.
_THP_SETTING = "/sys/kernel/mm/transparent_hugepage/enabled"


def _kernel_allows_huge_pages() -> bool:
  """The kernel's setting reads like "always [madvise] never"; glibc's advice needs
  "always" or "madvise" selected."""
  try:
    with open(_THP_SETTING) as setting:
      return "[never]" not in setting.read()
  except OSError:
    return False


def _glibc() -> bool:
  try:
    return os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc")
  except (AttributeError, ValueError, OSError):  # Not a POSIX system, or not glibc.
    return False


def environment_with_huge_pages(environ) -> dict[str, str] | None:
  """The environment to re-execute with, or None where there is nothing to gain."""
  if (environ.get(OPT_OUT) == "0" or TUNABLE in environ.get("GLIBC_TUNABLES", "")
      or not _glibc() or not _kernel_allows_huge_pages()):
    return None
  tunables = ":".join(filter(None, (environ.get("GLIBC_TUNABLES", ""), f"{TUNABLE}=1")))
  return {**environ, "GLIBC_TUNABLES": tunables}


def reexec_with_huge_pages() -> None:
  """Replaces this process (same pid, arguments, streams) by one with the tunable set;
  returns where it does not apply. Call it first thing, before any work worth keeping."""
  environ = environment_with_huge_pages(os.environ)
  if environ is not None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], environ)
