"""Tokenizers: raw bytes, a byte-level BPE trained here, or a user's HF / sentencepiece file.

Owns text -> token ids, the end-of-document id, and a fingerprint that identifies the
vocabulary: a run stores it and refuses to resume or continue with a different one, since a
silent tokenizer change ruins a continual pre-training run. Nothing is downloaded.

A document is framed as the tokenizer frames a text for its model: where an HF tokenizer.json's
post-processor puts tokens before every text (Llama's `<|begin_of_text|>`), each document
starts with them, as in the model's pretraining and in transformers and lm-eval at inference;
the end-of-document token follows every document. Pythia's tokenizer and a BPE trained here
put nothing before a text.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from typing import Callable, Iterable, Sequence

from etils import epath
import ml_collections
import numpy as np

from cpt_jax.config_error import ConfigError

KINDS = ("bytes", "bpe", "hf_json", "sentencepiece")
EOS_TOKEN = "<|endoftext|>"
_BYTES_EOS = 256
# Texts are encoded in pieces of about this many characters: HF tokenizers hold ~300 bytes per
# token while encoding, so one 15 MB document would take ~3 GB in a single call.
PIECE_CHARS = 1 << 20
_BATCH_CHARS = 4 * PIECE_CHARS  # Characters encoded per call (across documents).
_CUT = re.compile(r"(?<=\S) (?=\S)")  # A lone space between words: pre-tokenizers split there.


def default_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  # "bytes" (no file), "bpe" (byte-level BPE trained here on `train_source`), "hf_json"
  # (a tokenizer.json at `path`) or "sentencepiece" (a .model at `path`).
  config.kind = "bpe"
  config.vocab_size = 4096  # Vocabulary of a "bpe" tokenizer trained here.
  config.train_source = ""  # Source whose training split trains "bpe"; "" = first stage's first.
  config.train_megabytes = 8.0  # At most this much training text is used to train "bpe".
  config.path = ""  # The tokenizer file for "hf_json" / "sentencepiece".
  config.eos_token = EOS_TOKEN  # Appended after every document; must be in the vocabulary.
  return config


@dataclasses.dataclass(frozen=True)
class Tokenizer:
  kind: str
  vocab_size: int
  eos_id: int
  fingerprint: str  # sha256 of the vocabulary's serialized form (and of the document prefix).
  # int32 ids per text: the document prefix, then the text's tokens; no EOS.
  encode_batch: Callable[[list[str]], list[np.ndarray]]
  decode: Callable[[list[int]], str]
  serialized: bytes  # What `save` writes into a run directory.
  document_prefix: tuple[int, ...] = ()  # Ids before every document (Llama's BOS), if any.

  def encode(self, text: str) -> np.ndarray:
    return np.asarray(self.encode_batch([text])[0], np.int32)

  def save(self, path: str) -> None:
    epath.Path(path).write_bytes(self.serialized)


def _pieces(text: str) -> list[str]:
  """`text` cut before single spaces between words into pieces of at most PIECE_CHARS (where a
  piece has no such space, at PIECE_CHARS). Byte-level BPE pre-tokenizes at those spaces, so
  encoding the pieces gives the tokens of encoding the whole."""
  pieces, start = [], 0
  while len(text) - start > PIECE_CHARS:
    window = text[start + PIECE_CHARS // 2:start + PIECE_CHARS]
    last = None
    for last in _CUT.finditer(window):
      pass
    cut = start + (PIECE_CHARS // 2 + last.start() if last else PIECE_CHARS)
    pieces.append(text[start:cut])
    start = cut
  pieces.append(text[start:])
  return pieces


def _in_pieces(encode: Callable[[list[str]], Sequence[Sequence[int]]]):
  """Wraps a batch encoder so that memory stays bounded by the piece and batch sizes, and
  ids come back as int32 arrays (a Python list of ints takes 7x the memory)."""

  def encode_batch(texts: list[str]) -> list[np.ndarray]:
    owners, pieces = [], []
    for index, text in enumerate(texts):
      for piece in _pieces(text):
        owners.append(index)
        pieces.append(piece)
    encoded, batch, size = [], [], 0
    for piece in pieces + [None]:
      if piece is None or (batch and size + len(piece) > _BATCH_CHARS):
        encoded += [np.asarray(ids, np.int32) for ids in encode(batch)]
        batch, size = [], 0
      if piece is not None:
        batch.append(piece)
        size += len(piece)
    result = [[] for _ in texts]
    for owner, ids in zip(owners, encoded):
      result[owner].append(ids)
    return [parts[0] if len(parts) == 1 else np.concatenate(parts) for parts in result]

  return encode_batch


def _fingerprint(kind: str, serialized: bytes) -> str:
  return hashlib.sha256(kind.encode() + b"\0" + serialized).hexdigest()


def bytes_tokenizer() -> Tokenizer:
  def encode_batch(texts):
    return [np.frombuffer(text.encode("utf-8"), np.uint8).astype(np.int32) for text in texts]

  def decode(ids):
    return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")

  return Tokenizer("bytes", 257, _BYTES_EOS, _fingerprint("bytes", b"utf-8"), encode_batch,
                   decode, b"utf-8")


def _from_hf(kind: str, serialized: bytes, eos_token: str, where: str) -> Tokenizer:
  import tokenizers  # Deferred: only runs that use HF tokenizers pay its import.

  hf = tokenizers.Tokenizer.from_str(serialized.decode("utf-8"))
  eos_id = hf.token_to_id(eos_token)
  if eos_id is None:
    raise ConfigError(f"{where}: the tokenizer has no end-of-document token {eos_token!r}; set "
                      "data.tokenizer.eos_token to one of its special tokens")

  def encode_batch(texts):
    return [encoding.ids for encoding in hf.encode_batch(texts, add_special_tokens=False)]

  encode_texts, prefix = _in_pieces(encode_batch), _document_prefix(hf)

  def encode_documents(texts):
    return [np.concatenate([np.asarray(prefix, np.int32), ids]) for ids in encode_texts(texts)]

  # "hf" for both kinds: a trained BPE reloaded from its tokenizer.json is the same vocabulary.
  # The prefix is in the fingerprint so that token caches written before documents were
  # framed with it are not read as if they were.
  framing = f"\0prefix {list(prefix)}".encode() if prefix else b""
  return Tokenizer(kind, hf.get_vocab_size(), eos_id, _fingerprint("hf", serialized + framing),
                   encode_documents if prefix else encode_texts, lambda ids: hf.decode(list(ids)),
                   serialized, prefix)


def _document_prefix(hf) -> tuple[int, ...]:
  """The ids the tokenizer's post-processor puts before a text (Llama's BOS); () for none.
  What it appends is left out: the end-of-document token ends every document."""
  probe = "a"
  plain = hf.encode(probe, add_special_tokens=False).ids
  framed = hf.encode(probe, add_special_tokens=True).ids
  for start in range(len(framed) - len(plain) + 1):
    if framed[start:start + len(plain)] == plain:
      return tuple(framed[:start])
  return ()


def train_bpe(texts: Iterable[str], vocab_size: int, megabytes: float) -> Tokenizer:
  """A byte-level BPE trained on up to `megabytes` of `texts` (deterministic for fixed input)."""
  import tokenizers

  def limited():  # At most `megabytes`, in pieces (one huge document trains in bounded memory).
    budget = int(megabytes * 2**20)
    for text in texts:
      for piece in _pieces(text[:budget]):
        yield piece
      budget -= len(text)
      if budget <= 0:
        return

  hf = tokenizers.Tokenizer(tokenizers.models.BPE())
  hf.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
  hf.decoder = tokenizers.decoders.ByteLevel()
  trainer = tokenizers.trainers.BpeTrainer(
      vocab_size=vocab_size, special_tokens=[EOS_TOKEN], show_progress=False,
      initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet())
  hf.train_from_iterator(limited(), trainer=trainer)
  return _from_hf("bpe", hf.to_str().encode("utf-8"), EOS_TOKEN, "data.tokenizer")


def _sentencepiece(serialized: bytes, where: str) -> Tokenizer:
  import sentencepiece  # Deferred: only sentencepiece runs pay its import.

  processor = sentencepiece.SentencePieceProcessor()
  try:
    processor.LoadFromSerializedProto(serialized)
  except RuntimeError:
    raise ConfigError(f"{where}: not a valid sentencepiece model") from None
  eos_id = processor.eos_id()
  if eos_id < 0:
    raise ConfigError(f"{where}: the sentencepiece model has no EOS id")
  return Tokenizer("sentencepiece", processor.get_piece_size(), eos_id,
                   _fingerprint("sentencepiece", serialized),
                   _in_pieces(processor.encode),
                   lambda ids: processor.decode([int(i) for i in ids]),  # Not numpy ints.
                   serialized)


def load(kind: str, path: str, eos_token: str = EOS_TOKEN) -> Tokenizer:
  """A tokenizer from a file: a run directory's saved copy or a user-provided one."""
  if kind not in KINDS:
    raise ConfigError(f"data.tokenizer.kind={kind!r}: expected one of {KINDS}")
  if kind == "bytes":
    return bytes_tokenizer()
  if not path or not epath.Path(path).is_file():
    raise ConfigError(f"data.tokenizer.path={path!r}: tokenizer file not found")
  return from_serialized(kind, epath.Path(path).read_bytes(), eos_token,
                         f"data.tokenizer.path={path!r}")


def from_serialized(kind: str, serialized: bytes, eos_token: str, where: str) -> Tokenizer:
  """A tokenizer from a file's bytes; `where` names the file in errors."""
  if kind == "sentencepiece":
    return _sentencepiece(serialized, where)
  try:
    return _from_hf(kind, serialized, eos_token, where)
  except ConfigError:
    raise
  except Exception as error:  # tokenizers raises its own exception types on bad JSON.
    raise ConfigError(f"{where}: not a valid HF tokenizer.json ({type(error).__name__})") from None


def saved_file_name(kind: str) -> str:
  return {"sentencepiece": "tokenizer.model"}.get(kind, "tokenizer.json")
