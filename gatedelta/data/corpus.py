"""Text corpora for pretraining: read documents, tokenize, pack into rows with document boundaries.

The pipeline, in order:

1. **Documents** — :func:`read_documents` loads text files / directories, JSONL (one object per
   line, text in ``text_field``) or Parquet (Hugging Face ``datasets`` offline, or ``pyarrow``).
   :func:`build_builtin_corpus` writes a real-text corpus that every Python install has: the
   standard library's sources plus its documentation topics (``pydoc_data``). No download.
2. **Split** — a fixed permutation of the documents puts ``heldout_fraction`` of them aside for
   evaluation (the split does not depend on the training seed, so runs with different seeds are
   evaluated on the same text).
3. **Stream** — every document becomes ``BOS doc EOS``; all documents are concatenated into one
   token stream, and the start of each document is recorded.
4. **Packing** — the stream is cut into rows of ``seq_len`` tokens. A micro-batch of B rows is
   given to the model as one packed sequence ``input_ids [1, B*T]`` with ``cu_seqlens`` marking
   every document piece (and every row start), which is exactly the model's varlen API (B must be
   1 with ``cu_seqlens``). No recurrent state and no attention crosses a document or a row.
   ``labels`` equal ``input_ids`` except at the first token of every piece (-100): the model
   shifts labels inside, so that position would be "predict the next document's first token from
   the previous one", which packing must never train.
5. **Loader** — rows are visited in a seeded permutation per epoch. One optimizer step takes
   ``batch_size * world_size * accum_steps`` rows; rank r's slice of micro-batch m is contiguous, so
   N ranks see together exactly what one process with N times the batch sees. The loader's state
   is two integers (epoch, position) saved in checkpoints.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import sysconfig
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .tokenizer import ByteTokenizer, DataError, HFTokenizer

Tokenizer = ByteTokenizer | HFTokenizer

CORPUS_FILE = "docs.jsonl"
MANIFEST_FILE = "manifest.json"
SPLIT_SEED = 1234  # fixed: the held-out documents are the same for every training seed


# ---------------------------------------------------------------------------------------------
# 1. Documents


def default_corpus_dir() -> Path:
    """``$GATEDELTA_HOME/corpus/python-stdlib-X.Y``; ``GATEDELTA_HOME`` defaults to ``~/.cache/gatedelta``."""
    home = Path(os.environ.get("GATEDELTA_HOME", Path.home() / ".cache" / "gatedelta"))
    return home / "corpus" / f"python-stdlib-{sys.version_info.major}.{sys.version_info.minor}"


def _stdlib_documents(max_bytes: int) -> list[dict[str, str]]:
    """The stdlib's documentation topics, then its ``.py`` sources in sorted order (deterministic).

    Skipped: ``site-packages`` (differs per machine), test suites (mostly fixtures), ``encodings``
    (code-page tables) and ``_sysconfigdata*`` (build paths of this machine).
    """
    docs: list[dict[str, str]] = []
    try:
        from pydoc_data.topics import topics  # the reference manual's text, as `help()` shows it

        for name in sorted(topics):
            docs.append({"source": f"pydoc_data/topics/{name}", "text": topics[name]})
    except ImportError:  # some distributions strip pydoc_data
        pass
    root = Path(sysconfig.get_paths()["stdlib"])
    skip_dirs = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__", "encodings"}
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in skip_dirs)
        files += [Path(dirpath) / f for f in filenames
                  if f.endswith(".py") and not f.startswith("_sysconfigdata")]
    total = sum(len(d["text"]) for d in docs)
    for path in sorted(files, key=lambda p: p.relative_to(root).as_posix()):
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        if not text.strip():
            continue
        if total + len(text) > max_bytes:
            break
        docs.append({"source": path.relative_to(root).as_posix(), "text": text})
        total += len(text)
    return docs


def build_builtin_corpus(out_dir: str | Path | None = None, *, max_mb: float = 64.0,
                         force: bool = False) -> Path:
    """Write the built-in corpus (``docs.jsonl`` + ``manifest.json``) and return its directory.

    The directory appears atomically (written under a temporary name, then renamed), so two ranks
    building at once, or a build killed halfway, never leave a partial corpus behind.
    """
    out = Path(out_dir) if out_dir else default_corpus_dir()
    if (out / MANIFEST_FILE).is_file() and not force:
        return out
    docs = _stdlib_documents(int(max_mb * 2**20))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    digest = hashlib.sha256()
    with open(tmp / CORPUS_FILE, "w", encoding="utf-8") as f:
        for d in docs:
            line = json.dumps(d, ensure_ascii=False)
            digest.update(line.encode())
            f.write(line + "\n")
    manifest = {
        "name": "python-stdlib", "python": sys.version.split()[0], "documents": len(docs),
        "characters": sum(len(d["text"]) for d in docs), "sha256": digest.hexdigest(),
    }
    (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
    if force and out.exists():
        shutil.rmtree(out)
    try:
        os.rename(tmp, out)
    except OSError:  # another process finished first: keep its copy
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _read_jsonl(path: Path, text_field: str) -> list[str]:
    texts = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
            if not isinstance(obj, dict) or text_field not in obj:
                keys = ", ".join(obj) if isinstance(obj, dict) else type(obj).__name__
                raise DataError(f"{path}:{lineno}: no {text_field!r} field (has: {keys}); "
                                "set data.text_field")
            texts.append(str(obj[text_field]))
    return texts


def _read_parquet(paths: list[Path], text_field: str) -> list[str]:
    try:
        import datasets
    except ImportError:
        datasets = None
    if datasets is not None:
        os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # local files only, never the Hub
        ds = datasets.load_dataset("parquet", data_files=[str(p) for p in paths], split="train")
        if text_field not in ds.column_names:
            raise DataError(f"parquet files have no column {text_field!r} (columns: "
                            f"{', '.join(ds.column_names)}); set data.text_field")
        return [str(t) for t in ds[text_field]]
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError("reading Parquet needs Hugging Face datasets: pip install datasets "
                        "(or pip install pyarrow)") from None
    texts = []
    for p in paths:
        table = pq.read_table(p)
        if text_field not in table.column_names:
            raise DataError(f"{p}: no column {text_field!r} (columns: {', '.join(table.column_names)}); "
                            "set data.text_field")
        texts += [str(t) for t in table.column(text_field).to_pylist()]
    return texts


def _expand(paths: list[str], extensions: tuple[str, ...]) -> list[Path]:
    """Files named directly, plus files under directories whose suffix is in ``extensions``, sorted."""
    out = []
    for p in map(Path, paths):
        if p.is_file():
            out.append(p)
        elif p.is_dir():
            out += sorted(f for f in p.rglob("*") if f.is_file() and f.suffix in extensions)
        else:
            raise DataError(f"data path not found: {p}")
    return out


def read_documents(source: str, paths: list[str], *, text_field: str = "text",
                   extensions: list[str] | tuple[str, ...] = (".txt", ".md", ".rst", ".py"),
                   corpus_dir: str = "") -> list[str]:
    """All documents of a source as strings (empty ones dropped). Raises :class:`DataError`."""
    if source == "builtin":
        directory = build_builtin_corpus(corpus_dir or None)
        texts = _read_jsonl(directory / CORPUS_FILE, "text")
        where = str(directory)
    elif source == "text":
        files = _expand(paths, tuple(extensions))
        texts = []
        for f in files:
            try:
                texts.append(f.read_text(encoding="utf-8"))
            except UnicodeDecodeError:
                raise DataError(f"{f} is not UTF-8 text") from None
        where = ", ".join(paths)
    elif source == "jsonl":
        files = _expand(paths, (".jsonl", ".json"))
        texts = [t for f in files for t in _read_jsonl(f, text_field)]
        where = ", ".join(paths)
    elif source == "parquet":
        texts = _read_parquet(_expand(paths, (".parquet",)), text_field)
        where = ", ".join(paths)
    else:
        raise DataError(f"unknown data source {source!r}")
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise DataError(f"empty corpus: no documents with text in {where}")
    return texts


# ---------------------------------------------------------------------------------------------
# 2-3. Split and token stream


@dataclass
class TokenStream:
    """All documents as one array: ``tokens[starts[i]:starts[i+1]]`` is ``BOS doc_i EOS``."""

    tokens: np.ndarray  # (N,) uint16 or int32
    starts: np.ndarray  # (D,) int64, sorted, starts[0] == 0

    def __len__(self) -> int:
        return len(self.tokens)


def tokenize_documents(texts: list[str], tokenizer: Tokenizer) -> TokenStream:
    """Concatenate ``BOS text EOS`` for every document into one array (ids fit uint16 when they can)."""
    pieces = []
    batch = 256  # HF fast tokenizers are much faster on lists than one string at a time
    for i in range(0, len(texts), batch):
        pieces += tokenizer.encode_batch(texts[i:i + batch])
    bos = [] if tokenizer.bos_id is None else [tokenizer.bos_id]
    eos = [] if tokenizer.eos_id is None else [tokenizer.eos_id]
    lengths = np.array([len(bos) + len(p) + len(eos) for p in pieces], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    dtype = np.uint16 if tokenizer.vocab_size <= 2**16 else np.int32
    tokens = np.empty(int(lengths.sum()), dtype=dtype)
    for s, p in zip(starts, pieces):
        tokens[s:s + len(bos)] = bos
        tokens[s + len(bos):s + len(bos) + len(p)] = p
        tokens[s + len(bos) + len(p):s + len(bos) + len(p) + len(eos)] = eos
    return TokenStream(tokens, starts)


def split_documents(texts: list[str], heldout_fraction: float) -> tuple[list[str], list[str]]:
    """``(train, heldout)`` by a fixed permutation of the documents (see ``SPLIT_SEED``)."""
    n_held = int(round(heldout_fraction * len(texts)))
    if heldout_fraction > 0 and len(texts) >= 2:
        n_held = min(max(n_held, 1), len(texts) - 1)  # at least one of each
    else:
        n_held = 0
    order = np.random.default_rng(SPLIT_SEED).permutation(len(texts))
    held = set(order[:n_held].tolist())
    train = [t for i, t in enumerate(texts) if i not in held]
    heldout = [t for i, t in enumerate(texts) if i in held]
    return train, heldout


# ---------------------------------------------------------------------------------------------
# 4. Packing


class PackedRows:
    """A token stream cut into rows of ``seq_len`` tokens (the tail shorter than a row is dropped)."""

    def __init__(self, stream: TokenStream, seq_len: int):
        self.stream, self.seq_len = stream, seq_len
        self.num_rows = len(stream) // seq_len

    def __len__(self) -> int:
        return self.num_rows

    def batch(self, rows: np.ndarray | list[int]) -> dict[str, torch.Tensor]:
        """Rows packed as one sequence: ``input_ids, labels [1, B*T]``, ``cu_seqlens [P+1]`` int32.

        ``cu_seqlens`` holds every row start and every document start inside a row, so each
        segment is one piece of one document.
        """
        T = self.seq_len
        ids, bounds = [], [0]
        for j, r in enumerate(rows):
            a = int(r) * T
            ids.append(self.stream.tokens[a:a + T].astype(np.int64))
            # document starts strictly inside this row, as offsets in the packed sequence
            lo, hi = np.searchsorted(self.stream.starts, [a + 1, a + T])
            bounds += (self.stream.starts[lo:hi] - a + j * T).tolist() + [(j + 1) * T]
        input_ids = torch.from_numpy(np.concatenate(ids)).unsqueeze(0)  # (1, B*T)
        cu_seqlens = torch.tensor(bounds, dtype=torch.int32)  # (P+1,)
        labels = input_ids.clone()
        labels[0, cu_seqlens[:-1].long()] = -100  # never predict a piece's first token across a boundary
        return {"input_ids": input_ids, "labels": labels, "cu_seqlens": cu_seqlens}


# ---------------------------------------------------------------------------------------------
# 5. Loaders


class PackedLoader:
    """Seeded, resumable, rank-sharded micro-batches of packed rows.

    ``next_step()`` returns this rank's ``accum_steps`` micro-batches for one optimizer step. The
    state (``epoch``, ``position`` = rows of the epoch already consumed by all ranks together) is all
    that a resume needs, and it does not depend on the number of ranks.
    """

    def __init__(self, rows: PackedRows, *, batch_size: int, accum_steps: int = 1, rank: int = 0,
                 world_size: int = 1, seed: int = 0):
        self.rows, self.B, self.accum, self.rank, self.world, self.seed = (
            rows, batch_size, accum_steps, rank, world_size, seed)
        self.rows_per_step = batch_size * world_size * accum_steps
        if len(rows) < self.rows_per_step:
            raise DataError(
                f"the training data packs into {len(rows)} rows of {rows.seq_len} tokens, fewer than one "
                f"optimizer step needs ({batch_size} rows x {world_size} ranks x {accum_steps} "
                "accumulation); "
                "use more data or a smaller data.seq_len / data.batch_size")
        self.epoch, self.position = 0, 0
        self._perm = self._permutation(0)

    def _permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.rows))

    def next_step(self) -> list[dict[str, torch.Tensor]]:
        if self.position + self.rows_per_step > len(self.rows):  # epoch tail: drop, reshuffle
            self.epoch, self.position = self.epoch + 1, 0
            self._perm = self._permutation(self.epoch)
        micro = []
        for m in range(self.accum):
            # rows of micro-batch m: [B of rank 0 | B of rank 1 | ...], so ranks split one global batch
            a = self.position + (m * self.world + self.rank) * self.B
            micro.append(self.rows.batch(self._perm[a:a + self.B]))
        self.position += self.rows_per_step
        return micro

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._perm = self._permutation(self.epoch)


def heldout_batches(rows: PackedRows, *, batches: int, batch_size: int, rank: int = 0,
                    world_size: int = 1) -> list[dict[str, torch.Tensor]]:
    """The first ``batches`` micro-batches of held-out rows for this rank, in order (fixed every eval).

    Fewer rows than asked for shrink the set, by the same count on every rank (evaluation is a
    collective: a rank with nothing to evaluate while others evaluate would hang them).
    """
    n = min(batches, len(rows) // (batch_size * world_size))
    return [rows.batch(np.arange(a, a + batch_size))
            for a in ((i * world_size + rank) * batch_size for i in range(n))]


class TaskLoader:
    """Synthetic-task micro-batches from :func:`gatedelta.data.tasks.make_task`, resumable by step.

    Each micro-batch is drawn with a generator seeded from ``(seed, step, micro, rank)``, so a resumed
    run draws exactly what the uninterrupted run would have.
    """

    def __init__(self, task: Any, *, batch_size: int, accum_steps: int = 1, rank: int = 0,
                 world_size: int = 1, seed: int = 0):
        self.task, self.B, self.accum, self.rank, self.world, self.seed = (
            task, batch_size, accum_steps, rank, world_size, seed)
        self.step = 0

    def _sample(self, *key: int) -> dict[str, torch.Tensor]:
        seed = int(np.random.SeedSequence([self.seed, *key]).generate_state(1)[0])
        batch = self.task.sample(self.B, torch.Generator().manual_seed(seed))
        return {"input_ids": batch["input_ids"], "labels": batch["labels"]}

    def next_step(self) -> list[dict[str, torch.Tensor]]:
        micro = [self._sample(self.step, m, self.rank) for m in range(self.accum)]
        self.step += 1
        return micro

    def heldout(self, batches: int) -> list[dict[str, torch.Tensor]]:
        # a key no training step uses (step counts are < 2**31)
        return [self._sample(2**31, i, self.rank) for i in range(batches)]

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])


# ---------------------------------------------------------------------------------------------
# `gatedelta corpus ...`


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="gatedelta corpus",
        description="Build or describe the built-in real-text corpus (Python standard library sources "
                    "and documentation topics; no download).")
    sub = parser.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="write the corpus (docs.jsonl + manifest.json)")
    b.add_argument("--out", default=None, help=f"directory (default: {default_corpus_dir()})")
    b.add_argument("--max-mb", type=float, default=64.0, help="stop after this much text (default 64)")
    b.add_argument("--force", action="store_true", help="rebuild even if it exists")
    i = sub.add_parser("info", help="print the manifest of a built corpus")
    i.add_argument("dir", nargs="?", default=None)
    args = parser.parse_args(argv)
    if args.cmd == "build":
        out = build_builtin_corpus(args.out, max_mb=args.max_mb, force=args.force)
    else:
        out = Path(args.dir) if args.dir else default_corpus_dir()
        if not (out / MANIFEST_FILE).is_file():
            print(f"error: no corpus at {out}; run `gatedelta corpus build`", file=sys.stderr)
            return 2
    manifest = json.loads((out / MANIFEST_FILE).read_text())
    print(f"{out}: {manifest['documents']} documents, {manifest['characters'] / 1e6:.1f} M characters "
          f"(Python {manifest['python']}, sha256 {manifest['sha256'][:12]})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
