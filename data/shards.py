"""
Tokenize each source once, independent of any mixture, in work units run by a pool of processes.

    units = plan_units(plan_source(entry, seed=0, unit_docs=6500, max_docs=None), root)
    build_units(units, tok, root, workers=8)     # resumable: a finished unit is never redone

A work unit is one input file, or a row-group range of a big parquet file, or a byte range of a big .jsonl file
(UNIT_BYTES of text or so each), or one embedded synthetic source. A unit streams its rows, builds each document
(question + "\\n\\n" + solution, then end-of-text), encodes them with the tokenizer's batch encoder and writes:

    <root>/tokens/<tokenizer>/<source>/<unit>.bin        token ids (uint16 where the vocab fits, else uint32)
                                       <unit>.idx.npy    document boundaries: int64 offsets, docs + 1 of them
                                       <unit>.val.npy    hashes of the documents that may be held out (sorted)
                                       <unit>.json       counts (rows, skipped, filtered, docs, tokens) and the
                                                         input's fingerprint; written last, it marks the unit done

Inside a unit, documents are ordered by a 64-bit hash of their text: a fixed shuffle that needs no seed, so
units are shared by every mixture and every run (the authors' datatrove tokenizer also shuffled documents
within each file). The hash also picks the validation split in the same pass: a document whose hash falls in
the lowest VAL_FRACTION is a held-out candidate, and candidates come first in the unit, so a mixture holds out
a prefix of each unit (data/mixture.py takes the lowest hashes of the whole source, up to VAL_MAX, and trains on
the rest). Identical documents share a hash, so a duplicate never sits on both sides of the split.

Memory stays flat whatever the input: rows stream in batches of BATCH_CHARS, tokens go to a scratch file on
disk, and the hash order is applied by reading the scratch file back document by document. Each unit is built
in its own scratch folder (.build-<host>-<pid>-<unit>) and moved into place file by file, the .json last: a
killed build leaves only that folder, which the next build removes once its process is gone, and a rerun
redoes exactly the units without a .json. Units are pure functions of their input and the tokenizer, so 1 or N
workers, or N machines (--shard-index / --num-shards over a shared filesystem), write the same bytes.
"""
import hashlib
import itertools
import json
import multiprocessing
import os
import re
import shutil
import socket
import time
from array import array

import numpy as np
from tqdm import tqdm

from common import UserError
from data import synthetic
from data.sources import SOURCES, columns_read, document, hub_files, local_files, read_rows, starts_a_json_array

VERSION = 1                     # bump when a unit's bytes would change (hashing, ordering, layout)
UNIT_BYTES = 16 << 20           # split big local inputs into work units of about this much text: enough units to
                                # keep every worker busy to the end (52B tokens of local files: ~12k units)
VAL_FRACTION = 0.02             # documents whose hash is in the lowest 2% may be held out
VAL_CUT = int(VAL_FRACTION * 2 ** 64)
BATCH_DOCS, BATCH_CHARS = 1024, 4 << 20   # one encode_batch call; bounds a worker's memory
WRITE_BUFFER = 16 << 20
SYNTHETIC = {"syn-tinygsm": "tinygsm", "syn-omi1": "omi1", "syn-omi2": "omi2", "syn-finemath": "finemath",
             "syn-arith": "arith"}
HOST = socket.gethostname()


def _sha(obj, n=10):
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:n]


def token_dtype(tok):
    return np.uint16 if tok.vocab_size <= 65536 else np.uint32


def tokens_dir(root, tok):
    """Units are cached per tokenizer, keyed on its spec's JSON (an HF spec holds its whole tokenizer.json)."""
    spec = tok.spec
    return os.path.join(root, "tokens", f"{spec.get('name', 'tok')}-{spec['vocab_size']}-{_sha(spec)}")


def generator_hash():
    """The synthetic generator's own source: editing synthetic.py can never serve stale documents."""
    with open(synthetic.__file__, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()[:8]


# ------------------------------------------------------------------------------------------------ planning
def plan_source(entry, seed, unit_docs, max_docs, syn=None):
    """A mixture entry -> its source's identity: what decides its tokens, known without reading the data (no hub
    call for a pinned revision), so a finished mixture is found again in milliseconds. syn: the synthetic
    generator's options ({"steps": (1, 2), "hard_share": {"omi1": 0.05}}, see synthetic.documents)."""
    name, path = entry["name"], entry["path"]
    if name in SYNTHETIC:
        n = unit_docs if max_docs is None else min(unit_docs, max_docs)
        opts = synthetic.source_options(SYNTHETIC[name], **(syn or {}))
        ident = {"synthetic": SYNTHETIC[name], "n": n, "seed": seed, "generator": generator_hash(), **opts}
        d = f"{name}-seed{seed}-n{n}-{ident['generator']}" + (f"-{_sha(opts, 8)}" if opts else "")
        return {"name": name, "kind": "synthetic", "dir": d, "identity": ident, "path": None, "max_docs": max_docs}
    src = SOURCES[name]
    if path:
        files = local_files(name, path)  # stat only: an edited file is a new identity
        ident = {"path": os.path.abspath(path), "files": [[f["path"], f["size"], f["mtime_ns"]] for f in files]}
        d = f"{name}-local-{_sha(os.path.abspath(path))}"
    else:
        files = None  # listed when the units are planned (a hub call), not to find a finished mixture
        ident = {"hub": src.hub, "revision": src.revision, "files": list(src.files)}
        d = f"{name}-{src.hub.replace('/', '--')}-{src.revision[:10]}"
    return {"name": name, "kind": "files", "dir": d, "identity": ident, "path": path, "files": files,
            "max_docs": max_docs}


def _unit_name(rel, part=""):
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", rel.replace("/", "__")) + part
    return name if len(name) <= 120 else name[:100] + "-" + hashlib.sha256(name.encode()).hexdigest()[:12]


def plan_units(plan):
    """A source's work units (dicts, JSON-able: they travel to worker processes and into each unit's .json)."""
    base = {"source": plan["name"], "dir": plan["dir"]}
    if plan["kind"] == "synthetic":
        return [dict(base, name="docs", synthetic=plan["identity"], inputs=[], fingerprint=plan["identity"],
                     size=plan["identity"]["n"] * 600)]
    files = plan["files"] if plan["path"] else hub_files(plan["name"])
    root = None  # unit names are the files' paths below the folder given (a hub file: below the repo's root)
    if plan["path"]:
        root = plan["path"] if os.path.isdir(plan["path"]) else os.path.dirname(os.path.abspath(plan["path"]))

    def rel(f):
        if root:
            return os.path.relpath(f["path"], root)
        return f["path"].split("@", 1)[1].split("/", 1)[1]  # hf:datasets/<repo>@<rev>/<path> -> <path>

    def fp(f):
        return [f["path"], f["size"], f.get("mtime_ns")]

    if plan["max_docs"] is not None:
        # a capped source is one unit over its files in order: the first max_docs documents, as a quick look
        return [dict(base, name=f"head-{plan['max_docs']}", inputs=[f["path"] for f in files],
                     max_docs=plan["max_docs"], fingerprint=[fp(f) for f in files], size=sum(f["size"] for f in files))]
    units = []
    for f in files:
        unit = dict(base, inputs=[f["path"]], fingerprint=fp(f), size=f["size"])
        parts = None
        if not f["path"].startswith("hf:"):  # a hub file is one unit (hundreds of MB: a good size already)
            if f["path"].endswith(".parquet"):
                parts = _row_group_parts(f["path"])
            elif f["path"].endswith(".jsonl") and f["size"] > UNIT_BYTES and not starts_a_json_array(f["path"]):
                k = -(-f["size"] // UNIT_BYTES)
                cuts = [f["size"] * i // k for i in range(k + 1)]
                parts = [("byte_range", (cuts[i], cuts[i + 1]), cuts[i + 1] - cuts[i]) for i in range(k)]
        if not parts or len(parts) == 1:  # one unit; a parquet's size is its uncompressed one (for the ordering)
            units.append(dict(unit, name=_unit_name(rel(f)), size=parts[0][2] if parts else f["size"]))
            continue
        for i, (key, rng, size) in enumerate(parts):
            units.append(dict(unit, name=_unit_name(rel(f), f".part{i:04d}of{len(parts):04d}"), size=size,
                              **{key: list(rng)}))
    return units


def _row_group_parts(path):
    """Consecutive row groups of a parquet file, grouped to about UNIT_BYTES of uncompressed data each. A file
    whose footer cannot be read stays one unit: its worker reports it in one line."""
    import pyarrow.parquet as pq
    try:
        md = pq.ParquetFile(path).metadata
    except Exception:  # noqa: BLE001 - any damage: the worker's read gives the one-line error
        return None
    parts, start, size = [], 0, 0
    for i in range(md.num_row_groups):
        size += md.row_group(i).total_byte_size
        if size >= UNIT_BYTES or i == md.num_row_groups - 1:
            parts.append(("row_groups", (start, i + 1), size))
            start, size = i + 1, 0
    return parts


# ------------------------------------------------------------------------------------------------ one unit
def unit_paths(root, tok, unit):
    d = os.path.join(tokens_dir(root, tok), unit["dir"])
    stem = os.path.join(d, unit["name"])
    return {"dir": d, "bin": stem + ".bin", "idx": stem + ".idx.npy", "val": stem + ".val.npy", "json": stem + ".json"}


def unit_info(root, tok, unit):
    """The finished unit's counts, or None when it must be (re)built: missing, or another input / layout."""
    p = unit_paths(root, tok, unit)
    try:
        with open(p["json"]) as f:
            info = json.load(f)
    except (OSError, ValueError):
        return None
    if info.get("version") != VERSION or info.get("fingerprint") != unit["fingerprint"]:
        return None
    return info


def _rows(unit):
    """The documents of a unit with their row counts: yields (text or None (skipped) or False (filtered))."""
    if unit.get("synthetic"):
        s = unit["synthetic"]
        yield from synthetic.documents(s["synthetic"], s["n"], seed=s["seed"], steps=s.get("steps", synthetic.STEPS),
                                       hard_share=s.get("hard_share", 0.0))
        return
    src = SOURCES[unit["source"]]
    kept, cap = 0, unit.get("max_docs")
    for path in unit["inputs"]:
        for row in read_rows(path, columns_read(src), unit.get("row_groups"), unit.get("byte_range")):
            if cap is not None and kept >= cap:
                return
            doc = document(row, src)
            kept += isinstance(doc, str)
            yield doc


def _doc_hash(text):
    """(text, 64-bit hash of its utf-8). A lone surrogate (JSON "\\ud800") cannot be utf-8: replaced, as decode
    would."""
    try:
        b = text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
        b = text.encode("utf-8")
    return text, int.from_bytes(hashlib.blake2b(b, digest_size=8).digest(), "little")


def build_unit(unit, tok, root):
    """Tokenize one unit and move its files into place (the .json last); returns its counts."""
    t0 = time.time()
    p = unit_paths(root, tok, unit)
    scratch = os.path.join(p["dir"], f".build-{HOST}-{os.getpid()}-{unit['name']}")
    shutil.rmtree(scratch, ignore_errors=True)
    os.makedirs(scratch)
    dtype = np.dtype(token_dtype(tok))
    counts = {"rows": 0, "skipped": 0, "filtered": 0}
    lengths, hashes = array("q"), array("Q")
    texts, chars = [], 0
    raw_path = os.path.join(scratch, "unordered.bin")
    with open(raw_path, "wb") as raw:
        def flush():
            ids = tok.encode_batch(texts, num_threads=1)  # one core per worker: the pool is the parallelism
            for d in ids:
                d.append(tok.eot_id)
                lengths.append(len(d))
            raw.write(np.fromiter(itertools.chain.from_iterable(ids), dtype, count=sum(map(len, ids))).tobytes())
            texts.clear()

        for doc in _rows(unit):
            counts["rows"] += 1
            if doc is None:
                counts["skipped"] += 1
                continue
            if doc is False:
                counts["filtered"] += 1
                continue
            doc, h = _doc_hash(doc)
            texts.append(doc)
            hashes.append(h)
            chars += len(doc)
            if len(texts) >= BATCH_DOCS or chars >= BATCH_CHARS:
                flush()
                chars = 0
        if texts:
            flush()
    lens = np.frombuffer(lengths, np.int64) if lengths else np.zeros(0, np.int64)
    hs = np.frombuffer(hashes, np.uint64) if hashes else np.zeros(0, np.uint64)
    order = np.argsort(hs, kind="stable")  # ties (identical texts) keep file order: deterministic
    starts = np.concatenate([[0], np.cumsum(lens)])[:-1]
    out = {k: os.path.join(scratch, os.path.basename(p[k])) for k in ("bin", "idx", "val", "json")}
    with open(raw_path, "rb") as raw, open(out["bin"], "wb") as f:
        fd, buf, size = raw.fileno(), bytearray(), dtype.itemsize
        lens_l, starts_l = lens.tolist(), starts.tolist()
        for i in order.tolist():
            buf += os.pread(fd, lens_l[i] * size, starts_l[i] * size)
            if len(buf) >= WRITE_BUFFER:
                f.write(buf)
                buf.clear()
        f.write(buf)
    os.unlink(raw_path)
    sorted_h = hs[order]
    n_cand = int(np.searchsorted(sorted_h, np.uint64(VAL_CUT)))
    np.save(out["idx"], np.concatenate([[0], np.cumsum(lens[order])]).astype(np.int64))
    np.save(out["val"], sorted_h[:n_cand])
    info = {"version": VERSION, "unit": unit, "fingerprint": unit["fingerprint"], **counts, "docs": int(len(lens)),
            "tokens": int(lens.sum()), "val_candidates": n_cand, "dtype": dtype.name,
            "seconds": round(time.time() - t0, 3)}
    with open(out["json"], "w") as f:
        json.dump(info, f, indent=1, sort_keys=True)
    for k in ("bin", "idx", "val", "json"):  # each replace is atomic; the .json last marks the unit done
        os.replace(out[k], p[k])
    shutil.rmtree(scratch, ignore_errors=True)
    return info


def remove_stale_scratch(d):
    """Scratch folders of builds that were killed: this machine's whose process is gone. Another machine's (a
    shared filesystem) are left alone: they may be live."""
    if not os.path.isdir(d):
        return
    for name in os.listdir(d):
        m = re.match(r"\.build-(.+)-(\d+)-", name)
        if not m or m.group(1) != HOST:
            continue
        try:
            os.kill(int(m.group(2)), 0)
            continue  # alive (or someone else's): not ours to remove
        except ProcessLookupError:
            shutil.rmtree(os.path.join(d, name), ignore_errors=True)
        except PermissionError:
            continue


# ------------------------------------------------------------------------------------------------ many units
_W = {}


def _init_worker(spec, root, pool=True):
    if pool:
        os.environ["TOKENIZERS_PARALLELISM"] = "false"  # an HF tokenizer: one core per worker too
    from data.tokenizer import get_tokenizer
    _W.update(tok=get_tokenizer(spec), root=root)


def _run(unit):
    """One unit in a worker: its counts, or the one-line reason it could not be read."""
    try:
        return unit, build_unit(unit, _W["tok"], _W["root"]), None
    except UserError as e:
        return unit, None, str(e)


def default_workers():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def build_units(units, tok, root, workers=None, quiet=False, shard=None):
    """Build every unit not finished yet, in `workers` processes (default: all cores); shard=(i, w) builds only
    units i, i+w, i+2w, ... (one SLURM array task of w). Returns (built, failed): failed = [(unit, reason)]."""
    mine = units if shard is None else units[shard[0]::shard[1]]
    todo = [u for u in mine if unit_info(root, tok, u) is None]
    for d in sorted({unit_paths(root, tok, u)["dir"] for u in todo}):
        os.makedirs(d, exist_ok=True)
        remove_stale_scratch(d)
    if not todo:
        return 0, []
    # largest first: the last unit to finish is a small one, so workers idle less at the end
    todo.sort(key=lambda u: -u["size"])
    workers = max(1, min(workers or default_workers(), len(todo)))
    failed, tokens, t0 = [], 0, time.time()
    bar = tqdm(total=len(todo), desc=f"tokenizing ({workers} worker{'s' * (workers > 1)})", unit="unit",
               disable=quiet, dynamic_ncols=True)

    def done(unit, info, err):
        nonlocal tokens
        if err:
            failed.append((unit, err))
        else:
            tokens += info["tokens"]
        bar.update(1)
        bar.set_postfix(tokens=f"{tokens / 1e6:.1f}M", tok_s=f"{tokens / max(time.time() - t0, 1e-9) / 1e6:.2f}M")

    if workers == 1:
        _init_worker(tok.spec, root, pool=False)
        for u in todo:
            done(*_run(u))
    else:
        # fork: workers start in milliseconds with the tokenizer already built (as the authors' datatrove run)
        ctx = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
        with ctx.Pool(workers, initializer=_init_worker, initargs=(tok.spec, root)) as pool:
            for res in pool.imap_unordered(_run, todo, chunksize=1):
                done(*res)
    bar.close()
    return len(todo) - len(failed), failed
