"""
Real pretraining sources: hub id, split, columns, and how a row becomes a document (../shared/data/SCHEMAS.md).

    docs, counts = load_documents("omi1", path=None, max_docs=1000)   # from the hub (streamed)
    docs, counts = load_documents("omi1", path="omi1_sample.jsonl")    # the same code on a local file

A local path is a .jsonl / .jsonl.gz / .parquet file in the hub's columns, or a folder of them, so tests
and offline machines run the real loading code. Rows missing a column or with empty text are skipped and
counted (counts["skipped"]), never a crash; rows a source filters out on purpose (OMI-1's incorrect
solutions) are counted as counts["filtered"].
"""
import gzip
import json
import os
import zlib
from dataclasses import dataclass

from common import UserError
from data import document_text


@dataclass(frozen=True)
class Source:
    hub: str
    config: str | None
    split: str
    columns: tuple          # (text,) or (question, solution)
    stream: bool = True     # large sources stream from the hub instead of downloading whole
    keep: str | None = None  # a boolean column a row must have true (OMI-1: is_correct)


SOURCES = {
    "finemath": Source("HuggingFaceTB/finemath", "finemath-3plus", "train", ("text",)),
    "algebraic-stack": Source("EleutherAI/proof-pile-2", "algebraic-stack", "train", ("text",)),
    "tinygsm": Source("TinyGSM/TinyGSM", None, "train", ("question", "code")),
    # the hub's parquet merges correct and incorrect solutions; the paper reads correct ones only
    "omi1": Source("nvidia/OpenMathInstruct-1", None, "train", ("question", "generated_solution"), keep="is_correct"),
    # split "train" only: train_1M / 2M / 5M are subsets of it and would double count
    "omi2": Source("nvidia/OpenMathInstruct-2", None, "train", ("problem", "generated_solution")),
    "metamathqa": Source("meta-math/MetaMathQA", None, "train", ("query", "response")),
    "gsm8k": Source("openai/gsm8k", "main", "train", ("question", "answer"), stream=False),
}


def _local_files(path):
    if os.path.isdir(path):
        files = [os.path.join(path, f) for f in sorted(os.listdir(path))
                 if f.endswith((".jsonl", ".jsonl.gz", ".parquet"))]
        if not files:
            raise UserError(f"{path}: no .jsonl, .jsonl.gz or .parquet files in this folder")
        return files
    if not os.path.exists(path):
        raise UserError(f"no such file: {path}")
    if not path.endswith((".jsonl", ".jsonl.gz", ".parquet")):
        raise UserError(f"{path}: expected a .jsonl, .jsonl.gz or .parquet file (or a folder of them)")
    return [path]


def _local_rows(path, columns):
    """Rows of local files as dicts; a line that is not JSON becomes None (skipped and counted by the caller)."""
    for f in _local_files(path):
        if f.endswith(".parquet"):
            import pyarrow.parquet as pq
            pf = pq.ParquetFile(f)
            present = [c for c in columns if c in pf.schema_arrow.names]
            for batch in pf.iter_batches(columns=present, batch_size=4096):
                yield from batch.to_pylist()
            continue
        opener = gzip.open if f.endswith(".gz") else open
        line = 0
        try:
            with opener(f, "rb") as fh:
                for line, raw in enumerate(fh, 1):
                    if not raw.strip():
                        continue
                    try:
                        row = json.loads(raw)
                    except (UnicodeDecodeError, json.JSONDecodeError):
                        row = None
                    yield row if isinstance(row, dict) else None
        except (OSError, EOFError, zlib.error) as e:  # a truncated or corrupt .gz (a cut-short download)
            raise UserError(f"{f}:{line + 1}: cannot read past this line ({type(e).__name__}: "
                            f"{str(e).splitlines()[0][:120] if str(e) else 'corrupt'}); re-download the file")


def hub_unreachable():
    """A reason string when the hub is clearly unreachable, else None. datasets itself retries for ~30 s first.

    Skipped (None) in offline mode, where datasets reads its local cache, and behind a proxy, which a direct
    socket would bypass."""
    if os.environ.get("HF_HUB_OFFLINE") or os.environ.get("HF_DATASETS_OFFLINE"):
        return None
    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None
    import socket
    from urllib.parse import urlparse
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname
    try:
        socket.create_connection((host, 443), timeout=5).close()
    except OSError as e:
        return f"{host} unreachable ({e.strerror or type(e).__name__})"
    return None


def _hub_rows(name, src):
    """Rows from the Hugging Face hub; any failure (offline, moved, gated) is one line telling what to do."""
    hint = f"pass a local file instead, e.g. --mix '{name}=path/to/{name}.jsonl:1' (jsonl or parquet with columns {', '.join(src.columns)})"
    reason = hub_unreachable()
    if reason:
        raise UserError(f"cannot load {name} from the hub ({src.hub}): {reason}; {hint}")
    try:
        import datasets
        ds = datasets.load_dataset(src.hub, src.config, split=src.split, streaming=src.stream)
        yield from ds
    except Exception as e:  # network errors come in many types (requests, huggingface_hub, datasets, OSError)
        msg = str(e).strip().splitlines()[0][:160] if str(e).strip() else ""
        raise UserError(f"cannot load {name} from the hub ({src.hub}): {type(e).__name__}: {msg}; {hint}")


def load_documents(name, path=None, max_docs=None):
    """Documents of one real source, at most max_docs of them; returns (docs, counts)."""
    if name not in SOURCES:
        raise UserError(f"unknown source {name!r}; real sources: {', '.join(SOURCES)}")
    src = SOURCES[name]
    needed = src.columns + ((src.keep,) if src.keep else ())
    rows = _local_rows(path, needed) if path else _hub_rows(name, src)
    docs, counts = [], {"rows": 0, "skipped": 0, "filtered": 0}
    for row in rows:
        if max_docs is not None and len(docs) >= max_docs:
            break
        counts["rows"] += 1
        doc = _document(row, src)
        if doc is None:
            counts["skipped"] += 1
        elif doc is False:
            counts["filtered"] += 1
        else:
            docs.append(doc)
    return docs, counts


def _document(row, src):
    """A row -> its document text; None for a bad row (missing column, empty text), False if filtered out."""
    if not isinstance(row, dict):
        return None
    if src.keep:
        keep = row.get(src.keep)
        if keep is None:
            return None
        if keep not in (True, "true", "True", 1):
            return False
    values = [row.get(c) for c in src.columns]
    if any(not isinstance(v, str) or not v.strip() for v in values):
        return None
    return values[0] if len(values) == 1 else document_text(values[0], values[1])
