"""Tokenizers: a minimal shared interface, a byte tokenizer, SentencePiece and
Hugging Face `tokenizers` (GPT-2's byte-level BPE).

All implementations decode exactly what they encoded (no normalisation), so
generated code keeps its indentation and bits-per-byte can be computed from
`token_byte_lengths`, which says how many UTF-8 bytes each id decodes to.
"""

import hashlib
import json
import os
from collections.abc import Sequence
from typing import Protocol

import numpy as np
import sentencepiece as spm
import tokenizers
from etils import epath

from gptjax import rundir

SPM_FILENAME = "spm.model"
BYTES_FILENAME = "bytes.tokenizer"  # Marker file: the byte tokenizer has no state.
HF_FILENAME = "tokenizer.json"  # A Hugging Face `tokenizers` model, the same file the Hub ships.
HF_EOS = "<|endoftext|>"  # GPT-2's document separator (id 50256 in GPT-2's own vocabulary)


class Tokenizer(Protocol):
  """What training, evaluation and sampling need from a tokenizer."""

  vocab_size: int
  eos_id: int  # Appended after every document; the model learns where text ends.

  def encode(self, text: str) -> list[int]: ...

  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]: ...

  def decode(self, ids: Sequence[int]) -> str: ...

  def token_byte_lengths(self) -> np.ndarray: ...

  def fingerprint(self) -> str: ...

  def save(self, directory: str) -> None: ...


class ByteTokenizer:
  """UTF-8 bytes as ids 0..255 plus EOS=256: no training, no unknown tokens.

  `decode` replaces invalid UTF-8 sequences (which a model can sample) with
  U+FFFD instead of raising; `decode_bytes` returns the exact bytes. `encode`
  rejects strings that are not encodable as UTF-8 (lone surrogates).
  """

  vocab_size = 257
  eos_id = 256

  def encode(self, text: str) -> list[int]:
    return list(text.encode("utf-8"))

  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
    return [self.encode(text) for text in texts]

  def decode_bytes(self, ids: Sequence[int]) -> bytes:
    """The raw bytes of `ids`, dropping EOS."""
    return bytes(int(i) for i in ids if int(i) != self.eos_id)

  def decode(self, ids: Sequence[int]) -> str:
    return self.decode_bytes(ids).decode("utf-8", errors="replace")

  def token_byte_lengths(self) -> np.ndarray:
    lengths = np.ones(self.vocab_size, dtype=np.int32)
    lengths[self.eos_id] = 0
    return lengths

  def fingerprint(self) -> str:
    return "bytes-v1"

  def save(self, directory: str) -> None:
    target = epath.Path(directory)
    target.mkdir(parents=True, exist_ok=True)
    (target / BYTES_FILENAME).write_text("utf-8 bytes 0..255, eos=256\n")


class SentencePieceTokenizer:
  """A SentencePiece model used verbatim: no BOS, EOS only where we append it."""

  def __init__(self, model_proto: bytes, origin: str = "<memory>"):
    self._proto = model_proto
    self._sp = spm.SentencePieceProcessor(model_proto=model_proto)
    self.vocab_size = int(self._sp.get_piece_size())
    self.eos_id = int(self._sp.eos_id())
    if self.eos_id < 0:
      raise ValueError(
        f"data.tokenizer={origin!r}: the SentencePiece model has no EOS piece "
        "(eos_id=-1), which gptjax needs as a document separator; retrain it "
        "with eos_id set (e.g. --eos_id=1) or use data.tokenizer='sentencepiece'"
      )

  @classmethod
  def from_file(cls, path: str) -> "SentencePieceTokenizer":
    """Loads an existing `.model` file (local or gs://)."""
    model_file = epath.Path(path)
    if not model_file.is_file():
      raise ValueError(
        f"data.tokenizer={path!r}: no such file; give the path "
        "of a SentencePiece .model file, 'sentencepiece' or 'bytes'"
      )
    return cls(model_file.read_bytes(), origin=path)

  def encode(self, text: str) -> list[int]:
    return self._sp.encode(text)

  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
    return self._sp.encode(list(texts), num_threads=os.cpu_count() or 1)

  def decode(self, ids: Sequence[int]) -> str:
    return self._sp.decode([int(i) for i in ids])

  def token_byte_lengths(self) -> np.ndarray:
    """Bytes per id: 1 for byte-fallback pieces, 0 for control/unknown pieces.

    The metaspace '▁' stands for one ASCII space. For models trained without a
    dummy prefix and with identity normalisation (ours), the sum over an
    encoding equals the UTF-8 length of the text exactly.
    """
    sp = self._sp
    lengths = np.zeros(self.vocab_size, dtype=np.int32)
    for i in range(self.vocab_size):
      if sp.is_control(i) or sp.is_unknown(i):
        continue
      if sp.is_byte(i):
        lengths[i] = 1
      else:
        lengths[i] = len(sp.id_to_piece(i).replace("\u2581", " ").encode("utf-8"))
    return lengths

  def fingerprint(self) -> str:
    return "spm-" + hashlib.sha256(self._proto).hexdigest()[:16]

  def save(self, directory: str) -> None:
    """Writes the model whole or not at all: a resume must never read half of one."""
    target = epath.Path(directory)
    target.mkdir(parents=True, exist_ok=True)
    rundir.write_atomic(target / SPM_FILENAME, self._proto)


class HFTokenizer:
  """A Hugging Face `tokenizers` model (tokenizer.json) used verbatim.

  No special tokens are added on encode, and a special token's string inside the text is
  encoded as ordinary text; EOS is the model's own `<|endoftext|>`.
  Decoding skips special tokens, as the other tokenizers drop EOS. With GPT-2's
  byte-level BPE every string round-trips exactly.
  """

  def __init__(self, tokenizer_json: str, origin: str = "<memory>"):
    self._json = tokenizer_json
    self._tok = tokenizers.Tokenizer.from_str(tokenizer_json)
    # Text is text: a document that contains the string "<|endoftext|>" (web pages about
    # GPT-2 do) must not get the end-of-text id, which would split it into two documents
    # for the eval's clusters and the document mask. (tiktoken's encode_ordinary; nanoGPT.)
    self._tok.encode_special_tokens = True
    self.vocab_size = int(self._tok.get_vocab_size(with_added_tokens=True))
    eos_id = self._tok.token_to_id(HF_EOS)
    if eos_id is None:
      raise ValueError(
        f"data.tokenizer={origin!r}: the tokenizer has no {HF_EOS} token, which gptjax "
        "needs as a document separator; add it as a special token to tokenizer.json"
      )
    self.eos_id = int(eos_id)

  @classmethod
  def from_path(cls, path: str) -> "HFTokenizer":
    """Loads `path`: a tokenizer.json, or a directory holding one or GPT-2's
    vocab.json + merges.txt (turned into the equivalent byte-level BPE)."""
    where = epath.Path(path)
    if where.is_dir() and (where / HF_FILENAME).is_file():
      where = where / HF_FILENAME
    if where.is_file():
      return cls(where.read_text(), origin=f"hf:{path}")
    if where.is_dir() and (where / "vocab.json").is_file() and (where / "merges.txt").is_file():
      return cls(
        gpt2_bpe_json(os.fspath(where / "vocab.json"), os.fspath(where / "merges.txt")),
        origin=f"hf:{path}",
      )
    raise ValueError(
      f"data.tokenizer='hf:{path}': no {HF_FILENAME} there (nor vocab.json + "
      "merges.txt); give a tokenizer.json file or a directory holding one"
    )

  def encode(self, text: str) -> list[int]:
    return self._tok.encode(text, add_special_tokens=False).ids

  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
    return [e.ids for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]

  def decode(self, ids: Sequence[int]) -> str:
    return self._tok.decode([int(i) for i in ids], skip_special_tokens=True)

  def token_byte_lengths(self) -> np.ndarray:
    """Bytes per id: 0 for special tokens; for a byte-level model each character of a
    token stands for one byte, otherwise the UTF-8 length of the id decoded alone."""
    special = {int(i) for i, t in self._tok.get_added_tokens_decoder().items() if t.special}
    byte_level = (json.loads(self._json).get("decoder") or {}).get("type") == "ByteLevel"
    lengths = np.zeros(self.vocab_size, dtype=np.int32)
    for i in range(self.vocab_size):
      if i in special:
        continue
      if byte_level:
        lengths[i] = len(self._tok.id_to_token(i))
      else:
        lengths[i] = len(self._tok.decode([i]).encode("utf-8"))
    return lengths

  def fingerprint(self) -> str:
    # hf2: special-token strings in text are encoded as text (token caches of hf- differ).
    return "hf2-" + hashlib.sha256(self._json.encode()).hexdigest()[:16]

  def save(self, directory: str) -> None:
    target = epath.Path(directory)
    target.mkdir(parents=True, exist_ok=True)
    rundir.write_atomic(target / HF_FILENAME, self._json)


def gpt2_bpe_json(vocab_file: str, merges_file: str) -> str:
  """GPT-2's tokenizer.json from its older vocab.json + merges.txt files."""
  bpe = tokenizers.Tokenizer(tokenizers.models.BPE.from_file(vocab_file, merges_file))
  bpe.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
  bpe.decoder = tokenizers.decoders.ByteLevel()
  bpe.add_special_tokens([HF_EOS])
  return bpe.to_str()


def load_saved(directory: str) -> Tokenizer:
  """Reloads the tokenizer a run saved in `WORKDIR/tokenizer` (for sampling)."""
  saved = epath.Path(directory)
  if (saved / SPM_FILENAME).is_file():
    return SentencePieceTokenizer.from_file(os.fspath(saved / SPM_FILENAME))
  if (saved / BYTES_FILENAME).is_file():
    return ByteTokenizer()
  if (saved / HF_FILENAME).is_file():
    return HFTokenizer((saved / HF_FILENAME).read_text(), origin=directory)
  raise ValueError(
    f"no tokenizer saved in {directory!r} (expected {SPM_FILENAME}, "
    f"{BYTES_FILENAME} or {HF_FILENAME}); point at a run's WORKDIR/tokenizer"
  )


def save_to_workdir(tokenizer: Tokenizer, directory: str) -> None:
  """Saves `tokenizer` into a run's `WORKDIR/tokenizer`, refusing to swap it.

  A checkpoint is only meaningful with the tokenizer it was trained with, so
  resuming a workdir with different tokenizer settings is an error, not a
  silent overwrite. Only a whole saved model counts (saves are atomic; a temp
  file left by a killed save does not), and no other process saves into the
  same directory meanwhile: the run holds WORKDIR (`rundir.RunLock`).
  """
  saved = epath.Path(directory)
  if any((saved / name).is_file() for name in (SPM_FILENAME, BYTES_FILENAME, HF_FILENAME)):
    existing = load_saved(directory).fingerprint()
    if existing != tokenizer.fingerprint():
      raise ValueError(
        f"{directory!r} holds tokenizer {existing} but the data settings give "
        f"{tokenizer.fingerprint()}; use a new workdir or restore the data.* "
        "settings this run was started with"
      )
    return
  tokenizer.save(directory)
