"""
Real pretraining sources: hub id, pinned revision, the split's files, columns, and how a row becomes a document
(../shared/data/SCHEMAS.md).

    files = source_files("omi2")                      # the hub's files of split train, at the pinned revision
    files = source_files("omi2", "path/to/omi2")      # the same filter on a local folder in the hub's layout
    for row in read_rows(files[0]): ...                # streamed: parquet batches, JSON lines, gzip, zstd, JSON arrays
    docs, counts = load_documents("omi1", "omi1_sample.jsonl", max_docs=1000)   # small reads (tests, a look)

Which files: each source lists its split's files as globs in the hub repo, without extension (OMI-2's
`data/train-*` leaves out the train_1M / 2M / 5M subsets that `data/*` would double count; OMI-1's
`correct_solutions/train` never touches the 6.4 GB of incorrect solutions). A local folder is searched recursively
with the same globs, matched from the right (so the repo's root, its `data/` folder or any folder above either
work); a local file is read whatever its name. Formats: .parquet, .jsonl / .json (JSON lines, or one JSON array
as MetaMathQA ships), each of the JSON ones plain, .gz or .zst.

Hub files are opened through huggingface_hub's HfFileSystem (`hf://datasets/<repo>@<revision>/<path>`) and read
by the same streaming readers as local files: no `datasets` loading script (proof-pile-2's is refused by
datasets 4+), nothing downloaded whole. Rows missing a column or with empty text are skipped and counted
(counts["skipped"]), never a crash; rows a source filters out on purpose (OMI-1 rows not is_correct) are counted
as counts["filtered"]. A file that cannot be read (corrupt parquet, cut-short gzip or zstd) is one UserError
naming the file.
"""
import fnmatch
import gzip
import io
import json
import os
import zlib
from dataclasses import dataclass

from common import UserError
from data import document_text


@dataclass(frozen=True)
class Source:
    hub: str
    revision: str            # a commit on record (see the comment at SOURCES), else "main"
    files: tuple             # globs of the split's files in the repo, without extension
    columns: tuple           # (text,) or (question, solution)
    keep: str | None = None  # a boolean column a row must have true (OMI-1: is_correct)


# Revisions: full commit ids found in stored copies of the hub's pages (OMI-1: its README blob 2e123e4; OMI-2: the
# revision of its train_1M files quoted in a lab notebook; FineMath: its README blob 57df768). For the others no
# commit was on record offline: "main", to pin on first download (SOURCES[...] = Source(..., revision=...)).
SOURCES = {
    "finemath": Source("HuggingFaceTB/finemath", "57df7681e6242c0b505c6417632e657211fa2807", ("finemath-3plus/*",),
                       ("text",)),
    # proof-pile-2's loading script is refused by datasets 4+; its files are algebraic-stack/train/*.jsonl.zst
    # (older revisions .jsonl.gz), read here directly. A parquet mirror exists: typeof/algebraic-stack.
    "algebraic-stack": Source("EleutherAI/proof-pile-2", "main", ("algebraic-stack/train/*",), ("text",)),
    "tinygsm": Source("TinyGSM/TinyGSM", "main", ("data/*",), ("question", "code")),
    # correct_solutions/train only: not validation (the authors' reader), not incorrect_solutions/ (filtered anyway)
    "omi1": Source("nvidia/OpenMathInstruct-1", "2e123e467011ef2e489422b74ba24fd65d0024cf",
                   ("correct_solutions/train",), ("question", "generated_solution"), keep="is_correct"),
    # split train only: data/train_1M-*, train_2M-*, train_5M-* are subsets of it and would double count
    "omi2": Source("nvidia/OpenMathInstruct-2", "469216e3f46f4dacf476b382e192485ea51a143e", ("data/train-*",),
                   ("problem", "generated_solution")),
    "metamathqa": Source("meta-math/MetaMathQA", "main", ("MetaMathQA-395K",), ("query", "response")),
    "gsm8k": Source("openai/gsm8k", "main", ("main/train-*",), ("question", "answer")),
}

EXTENSIONS = (".parquet", ".jsonl", ".jsonl.gz", ".jsonl.zst", ".json", ".json.gz", ".json.zst")


def get_source(name):
    if name not in SOURCES:
        raise UserError(f"unknown source {name!r}; real sources: {', '.join(SOURCES)}")
    return SOURCES[name]


# ------------------------------------------------------------------------------------------------ which files
def _stem(path):
    """'data/train-0.jsonl.gz' -> 'data/train-0', or None for a format we do not read."""
    for ext in EXTENSIONS:
        if path.endswith(ext):
            return path[: -len(ext)]
    return None


def matches(relpath, globs):
    """Does a file (path relative to the searched folder) belong to the split? Globs are matched component by
    component from the right, so a search from any folder of the hub's layout (or above it) finds the same files."""
    stem = _stem(relpath)
    if stem is None:
        return False
    parts = stem.replace(os.sep, "/").split("/")
    for g in globs:
        gp = g.split("/")
        n = min(len(parts), len(gp))
        if all(fnmatch.fnmatchcase(p, q) for p, q in zip(parts[-n:], gp[-n:])):
            return True
    return False


def local_files(name, path):
    """The split's files under a local path: [{"path", "size", "mtime_ns"}], sorted. A file is taken whatever its
    name; a folder is searched recursively with the source's globs."""
    src = get_source(name)
    if not os.path.exists(path):
        raise UserError(f"no such file: {path}")
    if os.path.isfile(path):
        if _stem(path) is None:
            raise UserError(f"{path}: expected one of {', '.join(EXTENSIONS)} (or a folder of them)")
        found = [path]
    else:
        found = []
        for root, dirs, names in os.walk(path):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            found += [os.path.join(root, f) for f in sorted(names)
                      if matches(os.path.relpath(os.path.join(root, f), path), src.files)]
        if not found:
            raise UserError(f"{path}: no {name} files in this folder: expected the hub's layout "
                            f"{' or '.join(g + '.<ext>' for g in src.files)} with ext one of "
                            f"{', '.join(e[1:] for e in EXTENSIONS)} (or pass one file, whatever its name)")
    out = []
    for f in sorted(found):
        st = os.stat(f)
        out.append({"path": os.path.abspath(f), "size": st.st_size, "mtime_ns": st.st_mtime_ns})
    return out


def _hub_fs():
    """The filesystem hub files are listed and opened with (tests substitute a local folder in the same layout)."""
    from huggingface_hub import HfFileSystem
    return HfFileSystem()


def hub_root(src):
    return f"datasets/{src.hub}@{src.revision}"


def _hub_hint(name, src):
    return (f"pass a local file or folder instead, e.g. --mix '{name}=path/to/{name}:1' (the hub's layout, or a file "
            f"with columns {', '.join(src.columns)})")


def hub_files(name):
    """The split's files in the hub repo at the pinned revision: [{"path": "hf:datasets/...", "size"}], sorted."""
    src = get_source(name)
    reason = hub_unreachable()
    if reason:
        raise UserError(f"cannot list {name} on the hub ({src.hub}): {reason}; {_hub_hint(name, src)}")
    root = hub_root(src)
    try:
        found = _hub_fs().find(root, detail=True)
    except Exception as e:  # network errors come in many types (requests, huggingface_hub, OSError)
        raise UserError(f"cannot list {name} on the hub ({src.hub}@{src.revision}): {_first_line(e)}; "
                        f"{_hub_hint(name, src)}")
    out = [{"path": "hf:" + p, "size": int(info.get("size") or 0)} for p, info in sorted(found.items())
           if info.get("type", "file") == "file" and matches(p[len(root) + 1:], src.files)]
    if not out:
        raise UserError(f"{src.hub}@{src.revision} has no files matching {', '.join(src.files)}; "
                        f"{_hub_hint(name, src)}")
    return out


def source_files(name, path=None):
    return local_files(name, path) if path else hub_files(name)


def hub_unreachable():
    """A reason string when the hub is clearly unreachable, else None. huggingface_hub itself retries for a while.

    Skipped (None) in offline mode, where the local cache answers, and behind a proxy, which a direct socket
    would bypass."""
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


# ------------------------------------------------------------------------------------------------ reading rows
def _first_line(e):
    msg = (str(e).strip().splitlines() or [""])[0][:160]
    return f"{type(e).__name__}: {msg}" if msg else type(e).__name__


def _read_errors():
    """The exceptions a damaged or cut-short file raises while being read (pyarrow's are ValueError / OSError)."""
    errors = (OSError, EOFError, ValueError, zlib.error)
    try:
        import zstandard
        errors += (zstandard.ZstdError,)
    except ImportError:
        pass
    return errors


def open_binary(path):
    """A local path or an "hf:" hub path -> a binary file object (hub files are streamed, never downloaded whole)."""
    if path.startswith("hf:"):
        return _hub_fs().open(path[3:], "rb", block_size=8 << 20)
    return open(path, "rb")


def _decompressed(fh, path):
    if path.endswith(".gz"):
        return gzip.GzipFile(fileobj=fh)
    if path.endswith(".zst"):
        try:
            import zstandard
        except ImportError:
            raise UserError(f"{path}: reading .zst needs the zstandard package: pip install zstandard")
        return io.BufferedReader(_ZstdFrames(fh, zstandard), 1 << 20)
    return fh


class _ZstdFrames(io.RawIOBase):
    """A .zst stream decoded frame after frame. zstandard's own stream_reader ends quietly where a file was cut
    short; here a last frame without its end raises, so a truncated download is an error, not missing rows."""

    def __init__(self, fh, zstandard):
        self.fh, self.zstd = fh, zstandard
        self.dec = zstandard.ZstdDecompressor(max_window_size=2 ** 31)  # proof-pile-2 wrote long windows
        self.obj, self.started, self.out, self.pos = self.dec.decompressobj(), False, b"", 0

    def readable(self):
        return True

    def readinto(self, b):
        while self.pos >= len(self.out):
            chunk = self.fh.read(1 << 20)
            if not chunk:
                if self.started and not self.obj.eof:
                    raise self.zstd.ZstdError("the last zstd frame is cut short (a truncated file)")
                return 0
            parts = []
            while chunk:
                if self.obj.eof:  # the next frame of a multi-frame file
                    self.obj, self.started = self.dec.decompressobj(), False
                self.started = True
                parts.append(self.obj.decompress(chunk))
                chunk = self.obj.unused_data if self.obj.eof else b""
            self.out, self.pos = b"".join(parts), 0
        n = min(len(b), len(self.out) - self.pos)
        b[:n] = self.out[self.pos:self.pos + n]
        self.pos += n
        return n


def read_rows(path, columns=None, row_groups=None, byte_range=None):
    """Rows of one file as dicts (None for a line that is not a JSON object: the caller skips and counts it).

    row_groups=(a, b) reads parquet row groups a..b-1; byte_range=(a, b) reads the JSON lines that start in
    [a, b) of an uncompressed file (how one big file is split into work units). A damaged file raises one
    UserError naming it."""
    where = path[3:] if path.startswith("hf:") else path
    line = 0
    try:
        if path.endswith(".parquet"):  # pyarrow reads a local path natively (no Python file object in between)
            if path.startswith("hf:"):
                with open_binary(path) as raw:
                    yield from _parquet_rows(raw, columns, row_groups)
            else:
                yield from _parquet_rows(path, columns, row_groups)
            return
        with open_binary(path) as raw:
            fh = _decompressed(raw if hasattr(raw, "peek") else io.BufferedReader(raw, 1 << 20), path)
            if byte_range is not None and byte_range[0] > 0:
                # lines belong to the unit they start in: skip the rest of the line holding byte start - 1
                fh.seek(byte_range[0] - 1)
                fh.readline()
            if _peek(fh) == b"[" and byte_range is None:  # one JSON array (MetaMathQA-395K.json)
                yield from _json_array(fh, path)
                return
            pos = fh.tell() if byte_range is not None else 0
            for line, raw_line in enumerate(fh, 1):
                if byte_range is not None:
                    if pos >= byte_range[1]:
                        break
                    pos += len(raw_line)
                if not raw_line.strip():
                    continue
                try:
                    row = json.loads(raw_line)
                except (UnicodeDecodeError, json.JSONDecodeError):
                    row = None
                yield row if isinstance(row, dict) else None
    except UserError:
        raise
    except _read_errors() as e:
        at = f" after line {line}" if line else ""
        raise UserError(f"{where}: cannot read this file{at} ({_first_line(e)}): a damaged or cut-short download? "
                        f"re-download it")


def starts_a_json_array(path):
    """Is this local JSON file one array (read whole by one unit) rather than JSON lines (split by byte ranges)?"""
    with open(path, "rb") as f:
        return _peek(f) == b"["


def _peek(fh):
    """The first non-blank byte, without consuming it (a BufferedReader or a GzipFile both peek)."""
    while True:
        buf = fh.peek(64)
        if not buf:
            return b""
        stripped = buf.lstrip()
        if stripped:
            return stripped[:1]
        fh.read(len(buf))  # all blank: drop it and look further


def _parquet_rows(fh, columns, row_groups):
    import pyarrow.parquet as pq
    pf = pq.ParquetFile(fh)
    names = pf.schema_arrow.names
    present = [c for c in columns if c in names] if columns else names
    groups = range(*row_groups) if row_groups else range(pf.num_row_groups)
    if not present:  # none of the columns: every row is skipped (and counted) by the caller
        for g in groups:
            yield from ({} for _ in range(pf.metadata.row_group(g).num_rows))
        return
    # use_threads=False: one core per worker process; the pool is the parallelism
    for batch in pf.iter_batches(batch_size=2048, row_groups=list(groups), columns=present, use_threads=False):
        cols = [batch.column(i).to_pylist() for i in range(batch.num_columns)]
        for values in zip(*cols):
            yield dict(zip(present, values))


def _json_array(fh, path):
    """The elements of one big JSON array, decoded one at a time from a sliding buffer (bounded memory)."""
    text = io.TextIOWrapper(fh, encoding="utf-8")
    dec = json.JSONDecoder()
    buf, pos, eof = text.read(1 << 20), 0, False
    pos = buf.index("[") + 1
    while True:
        while True:  # skip blanks and the comma between elements, reading more as needed
            while pos < len(buf) and buf[pos] in " \t\r\n,":
                pos += 1
            if pos < len(buf) or eof:
                break
            buf, pos = text.read(1 << 20), 0
            eof = not buf
        if pos >= len(buf):
            raise ValueError("the JSON array is not closed (a cut-short file?)")
        if buf[pos] == "]":
            return
        try:
            obj, end = dec.raw_decode(buf, pos)
        except json.JSONDecodeError:
            more = "" if eof else text.read(1 << 20)
            if not more:
                raise
            if len(buf) - pos > 256 << 20:  # no row is this big: a damaged file, so do not read all of it
                raise ValueError("a JSON array element over 256 MB (a damaged file?)")
            buf, pos = buf[pos:] + more, 0  # an element cut by the buffer's end: read on and decode again
            continue
        yield obj if isinstance(obj, dict) else None
        pos = end
        if pos > 1 << 20:
            buf, pos = buf[pos:], 0


# ------------------------------------------------------------------------------------------------ documents
def document(row, src):
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


def columns_read(src):
    return src.columns + ((src.keep,) if src.keep else ())


def load_documents(name, path=None, max_docs=None):
    """Documents of one real source, at most max_docs of them, in file order; returns (docs, counts). For small
    reads: a mixture tokenizes sources in work units (data/shards.py), never holding a source in memory."""
    src = get_source(name)
    docs, counts = [], {"rows": 0, "skipped": 0, "filtered": 0}
    for f in source_files(name, path):
        for row in read_rows(f["path"], columns_read(src)):
            if max_docs is not None and len(docs) >= max_docs:
                return docs, counts
            counts["rows"] += 1
            doc = document(row, src)
            if doc is None:
                counts["skipped"] += 1
            elif doc is False:
                counts["filtered"] += 1
            else:
                docs.append(doc)
    return docs, counts
