"""Tests for cpt_jax/tokenizer.py."""

import os

import numpy as np
import pytest

import run_helpers as helpers
from cpt_jax import tokenizer as tokenizer_lib

TEXTS = ["To be, or not to be, that is the question.", "def f(x):\n    return x + 1\n"] * 50


def test_bytes_tokenizer_round_trips_utf8():
  tokenizer = tokenizer_lib.bytes_tokenizer()
  ids = tokenizer.encode("Grüße, 世界")
  assert ids.max() < 256 and tokenizer.eos_id == 256 and tokenizer.vocab_size == 257
  assert tokenizer.decode(list(ids)) == "Grüße, 世界"


def test_trained_bpe_is_deterministic_saved_and_reloaded(tmp_path):
  first = tokenizer_lib.train_bpe(TEXTS, vocab_size=300, megabytes=1)
  second = tokenizer_lib.train_bpe(TEXTS, vocab_size=300, megabytes=1)
  assert first.fingerprint == second.fingerprint
  assert first.vocab_size <= 300
  assert first.decode(list(first.encode(TEXTS[0]))) == TEXTS[0]
  assert len(first.encode(TEXTS[0])) < len(TEXTS[0].encode())
  path = os.path.join(tmp_path, "tokenizer.json")
  first.save(path)
  loaded = tokenizer_lib.load("hf_json", path)
  assert loaded.fingerprint == first.fingerprint  # A resume must recognise its tokenizer.
  assert list(loaded.encode(TEXTS[1])) == list(first.encode(TEXTS[1]))
  assert loaded.eos_id == first.eos_id


def test_a_different_vocabulary_has_a_different_fingerprint():
  small = tokenizer_lib.train_bpe(TEXTS, vocab_size=280, megabytes=1)
  large = tokenizer_lib.train_bpe(TEXTS, vocab_size=320, megabytes=1)
  assert small.fingerprint != large.fingerprint


def test_missing_tokenizer_file_is_named(tmp_path):
  with pytest.raises(ValueError, match="data.tokenizer.path=.*nothing.json.*not found"):
    tokenizer_lib.load("hf_json", os.path.join(tmp_path, "nothing.json"))


def test_corrupt_tokenizer_file_is_named(tmp_path):
  path = os.path.join(tmp_path, "tokenizer.json")
  with open(path, "w") as f:
    f.write("{not json")
  with pytest.raises(ValueError, match="not a valid HF tokenizer.json"):
    tokenizer_lib.load("hf_json", path)


def test_tokenizer_without_the_eos_token_is_refused(tmp_path):
  path = os.path.join(tmp_path, "tokenizer.json")
  tokenizer_lib.train_bpe(TEXTS, vocab_size=280, megabytes=1).save(path)
  with pytest.raises(ValueError, match="eos_token"):
    tokenizer_lib.load("hf_json", path, eos_token="</s>")


def test_unknown_tokenizer_kind_lists_the_kinds():
  with pytest.raises(ValueError, match="data.tokenizer.kind='wordpiece'"):
    tokenizer_lib.load("wordpiece", "")


def test_sentencepiece_model_is_loaded_with_its_eos(tmp_path):
  import sentencepiece
  prefix = str(tmp_path / "sp")
  sentencepiece.SentencePieceTrainer.train(sentence_iterator=iter(TEXTS * 4), model_prefix=prefix,
                                           vocab_size=60, model_type="bpe", eos_id=2)
  tokenizer = tokenizer_lib.load("sentencepiece", prefix + ".model")
  assert tokenizer.eos_id == 2 and tokenizer.vocab_size == 60
  ids = tokenizer.encode(TEXTS[0])
  assert tokenizer.decode(list(ids)) == TEXTS[0]
  again = tokenizer_lib.load("sentencepiece", prefix + ".model")
  assert again.fingerprint == tokenizer.fingerprint


def test_corrupt_sentencepiece_model_is_named(tmp_path):
  path = tmp_path / "broken.model"
  path.write_bytes(b"not a model")
  with pytest.raises(ValueError, match="not a valid sentencepiece model"):
    tokenizer_lib.load("sentencepiece", str(path))


def test_a_huge_document_is_encoded_in_pieces_to_the_same_tokens(monkeypatch):
  tokenizer = tokenizer_lib.train_bpe(TEXTS, vocab_size=300, megabytes=1)
  words = ["To", "be,", "or", "not", "to", "be", "question.", "x", "+", "1\n", "def"]
  text = " ".join(words[(i * 7) % len(words)] for i in range(30_000))
  whole = tokenizer.encode(text)
  monkeypatch.setattr(tokenizer_lib, "PIECE_CHARS", 1000)  # ~150 pieces instead of one.
  pieces = tokenizer_lib._pieces(text)
  assert len(pieces) > 100 and "".join(pieces) == text
  assert all(len(piece) <= 1000 for piece in pieces)
  np.testing.assert_array_equal(tokenizer.encode(text), whole)


@pytest.mark.parametrize("template", ["<|begin_of_text|> $A", "<|begin_of_text|> $A <|endoftext|>"])
def test_documents_start_with_what_the_post_processor_puts_before_a_text(template, monkeypatch):
  import tokenizers
  plain = tokenizer_lib.train_bpe(TEXTS, vocab_size=300, megabytes=1)
  assert plain.document_prefix == ()
  serialized, bos = helpers.with_begin_of_text(plain.serialized, template)
  framed = tokenizer_lib.from_serialized("hf_json", serialized, tokenizer_lib.EOS_TOKEN, "t")
  assert framed.document_prefix == (bos,)
  monkeypatch.setattr(tokenizer_lib, "PIECE_CHARS", 64)  # The prefix once, not once a piece.
  hf = tokenizers.Tokenizer.from_str(serialized.decode())
  texts = [TEXTS[0], " ".join(TEXTS[:20]), ""]
  for text, ids in zip(texts, framed.encode_batch(texts)):
    expected = hf.encode(text, add_special_tokens=False).ids
    np.testing.assert_array_equal(ids, [bos] + expected)  # Nothing appended: EOS ends it.
  # A token cache written before documents were framed must not read as if it were.
  assert framed.fingerprint != tokenizer_lib._fingerprint("hf", serialized)
