"""Tests for cpt_jax/embedded_corpora.py."""

import pytest

from cpt_jax import corpora
from cpt_jax import embedded_corpora


def test_shakespeare_documents_are_scenes():
  documents = [text for _, text in embedded_corpora.documents("shakespeare")]
  headings = [document.split("\n")[0].split(" ")[1] for document in documents]
  assert all(document.startswith("### ") for document in documents)
  assert set(headings) == {"SCENE", "PROLOGUE", "Prologue"}  # Scenes, and the plays' prologues.
  assert headings.count("SCENE") > 0.95 * len(headings)
  assert sum(map(len, documents)) > 4_000_000


def test_manpages_without_their_packages_say_what_to_install(monkeypatch):
  monkeypatch.setitem(embedded_corpora._MANPAGE_PACKAGES, "manpages_de",
                      ("cpt-jax-no-such-package",))
  embedded_corpora._manpages.cache_clear()
  monkeypatch.setattr(embedded_corpora, "_CACHE_DIR", "/nonexistent-cache")
  with pytest.raises(ValueError, match="apt-get install cpt-jax-no-such-package"):
    corpora.documents("de", corpora.source_config("embedded", corpus="manpages_de"), "train")
