"""Tokenizers for training: byte-level by default (nothing to download), or a local Hugging Face one.

Byte-level vocabulary (259 ids):

    0..255  the UTF-8 bytes of the text
    256     BOS — starts every document
    257     EOS — ends every document
    258     PAD — never trained on; fills nothing in packed training, kept for generation/eval

A Hugging Face tokenizer is loaded from a local directory only (``local_files_only=True``), so a
run never reaches the network. Both kinds describe themselves with :meth:`spec`, a small JSON
mapping stored in every checkpoint so that ``generate`` and ``evaluate`` rebuild the same tokenizer.
"""

from __future__ import annotations

import codecs
import json
from pathlib import Path
from typing import Any, Protocol

import numpy as np

SPEC_FILE = "gatedelta_tokenizer.json"  # in every checkpoint (HF's own tokenizer.json is another file)


class DataError(ValueError):
    """Bad data input the user can fix (missing path, empty corpus, ...); CLIs print it as one line."""


class Tokenizer(Protocol):
    vocab_size: int
    bos_id: int | None
    eos_id: int | None

    def encode(self, text: str) -> list[int]: ...
    def encode_batch(self, texts: list[str]) -> list[np.ndarray]: ...
    def decode(self, ids: list[int]) -> str: ...
    def spec(self) -> dict[str, Any]: ...


class ByteTokenizer:
    """UTF-8 bytes plus BOS/EOS/PAD; see the module docstring for the id layout."""

    vocab_size = 259
    bos_id = 256
    eos_id = 257
    pad_id = 258

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        # np.frombuffer avoids a Python int per byte: the whole built-in corpus encodes in ~0.1 s.
        return [np.frombuffer(t.encode("utf-8"), dtype=np.uint8) for t in texts]

    def decode(self, ids: list[int]) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")

    def stream_decoder(self) -> StreamDecoder:
        return _ByteStreamDecoder()

    def spec(self) -> dict[str, Any]:
        return {"kind": "byte", "vocab_size": self.vocab_size, "bos_id": self.bos_id,
                "eos_id": self.eos_id, "pad_id": self.pad_id}


class HFTokenizer:
    """A Hugging Face tokenizer from a local directory (no download)."""

    def __init__(self, path: str | Path):
        path = Path(path)
        if not path.is_dir():
            raise DataError(f"tokenizer directory not found: {path} (use tokenizer: byte for the built-in "
                            "byte-level tokenizer)")
        try:
            from transformers import AutoTokenizer

            self.tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        except (OSError, ValueError) as e:
            raise DataError(f"could not load a Hugging Face tokenizer from {path}: {e}") from None
        self.path = path
        self.vocab_size = len(self.tok)
        self.bos_id = self.tok.bos_token_id
        # Documents need a separator; fall back to BOS when the tokenizer has no EOS.
        self.eos_id = self.tok.eos_token_id if self.tok.eos_token_id is not None else self.bos_id

    def encode(self, text: str) -> list[int]:
        return list(self.tok(text, add_special_tokens=False)["input_ids"])

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        ids = self.tok(texts, add_special_tokens=False)["input_ids"]
        return [np.asarray(x, dtype=np.int64) for x in ids]

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=True)

    def stream_decoder(self) -> StreamDecoder:
        return _RedecodeStreamDecoder(self)

    def spec(self) -> dict[str, Any]:
        return {"kind": "hf", "path": str(self.path), "vocab_size": self.vocab_size,
                "bos_id": self.bos_id, "eos_id": self.eos_id}

    def save(self, directory: Path) -> None:
        self.tok.save_pretrained(str(directory))


class StreamDecoder(Protocol):
    def push(self, token_id: int) -> str: ...


class _ByteStreamDecoder:
    """Turns bytes into text as they arrive, holding back a multi-byte character until it is whole."""

    def __init__(self) -> None:
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token_id: int) -> str:
        return self._utf8.decode(bytes([token_id])) if token_id < 256 else ""


class _RedecodeStreamDecoder:
    """Decodes the whole generated text each time and emits the new suffix (subword merges can
    change earlier characters' rendering, so per-token decoding would print wrong text)."""

    def __init__(self, tokenizer: HFTokenizer) -> None:
        self.tokenizer, self.ids, self.shown = tokenizer, [], ""

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        text = self.tokenizer.decode(self.ids)
        if text.endswith("\ufffd"):  # an incomplete character: wait for the next token
            return ""
        new, self.shown = text[len(self.shown):], text
        return new


def load_tokenizer(name_or_spec: str | dict[str, Any],
                   base_dir: Path | None = None) -> ByteTokenizer | HFTokenizer:
    """``"byte"``, a local tokenizer directory, or a spec mapping from :meth:`spec` / a checkpoint.

    ``base_dir`` resolves a relative ``path`` in a spec (checkpoints store their tokenizer beside them).
    """
    if isinstance(name_or_spec, dict):
        kind = name_or_spec.get("kind")
        if kind == "byte":
            return ByteTokenizer()
        if kind == "hf":
            path = Path(name_or_spec["path"])
            if base_dir is not None and not path.is_absolute():
                path = base_dir / path
            return HFTokenizer(path)
        raise ValueError(f"unknown tokenizer spec {name_or_spec!r}")
    if name_or_spec == "byte":
        return ByteTokenizer()
    return HFTokenizer(name_or_spec)


def save_tokenizer(tokenizer: ByteTokenizer | HFTokenizer | None, directory: Path) -> None:
    """Write the spec (and, for a Hugging Face tokenizer, its files under ``tokenizer/``)."""
    if tokenizer is None:  # synthetic-task runs: ids are the task's own
        spec: dict[str, Any] = {"kind": "none"}
    elif isinstance(tokenizer, HFTokenizer):
        tokenizer.save(directory / "tokenizer")
        spec = {**tokenizer.spec(), "path": "tokenizer"}
    else:
        spec = tokenizer.spec()
    (directory / SPEC_FILE).write_text(json.dumps(spec, indent=2) + "\n")


def read_tokenizer(directory: Path) -> ByteTokenizer | HFTokenizer | None:
    """The tokenizer saved by :func:`save_tokenizer` in a checkpoint (``None`` for task-only runs)."""
    path = directory / SPEC_FILE
    if not path.is_file():
        return None
    spec = json.loads(path.read_text())
    if spec.get("kind") == "none":
        return None
    return load_tokenizer(spec, base_dir=directory)
