"""
Mixtures: a spec string -> documents -> packed token shards on disk, cached.

    d = prepare_mixture("syn-tinygsm:1,syn-omi1:4,syn-omi2:1,syn-finemath:0.5", 4096, "data_cache")
    m = open_mixture(d)      # {"train": memmap of ids, "val": {source: memmap}, "meta": dict}

Spec: comma-separated `source:weight`. A weight k copies a source's documents k times (as the paper's
"4x omi1"), a fraction subsamples it (1.5 = one copy plus half of another). Sources:
    real:       tinygsm, omi1, omi2, finemath, algebraic-stack, metamathqa, gsm8k (hub, streamed)
    local file: tinygsm=path/to/file.jsonl:1 (jsonl / jsonl.gz / parquet in the hub's columns, or a folder)
    synthetic:  syn-tinygsm, syn-omi1, syn-omi2, syn-finemath; one copy = `unit` generated documents
Each document is question + "\\n\\n" + solution + end-of-text. Before copying, a small validation slice of
each source is held out and written as its own stream (so pretrain.py can report per-source val loss). The
train documents of all sources are shuffled (seeded) and concatenated into one flat uint16 (uint32 above a
65,536 vocab) stream. The whole directory is built under a temporary name and renamed into place, so a
reader never sees half a mixture; asking for the same spec again reuses it.

Documents are held in memory while tokenizing: fine for the toy and for capped real sources (--max-docs),
not for the paper's full billions of tokens.
"""
import hashlib
import json
import math
import os
import shutil
import time

import numpy as np
from tqdm import tqdm

from common import UserError, atomic_write_json
from data import synthetic
from data.sources import SOURCES, load_documents
from data.tokenizer import get_tokenizer

SYNTHETIC = {"syn-tinygsm": "tinygsm", "syn-omi1": "omi1", "syn-omi2": "omi2", "syn-finemath": "finemath"}
# finemath at a quarter weight: it teaches no answer format, and the toy needs its tokens for the three formats
DEFAULT_MIX = "syn-tinygsm:1,syn-omi1:1,syn-omi2:1,syn-finemath:0.25"
DEFAULT_UNIT = 6500      # documents in one copy of a synthetic source: the default mix is ~3.4M tokens at vocab 2049
DEFAULT_CACHE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data_cache")
VAL_FRACTION, VAL_MIN, VAL_MAX = 0.02, 8, 2000
VERSION = 1              # bump when the on-disk layout or the packing changes


def parse_mix(spec):
    """'tinygsm=a.jsonl:2,syn-omi1:0.5' -> [{"name", "path", "weight"}, ...]; one-line errors for bad parts."""
    valid = ", ".join(list(SOURCES) + list(SYNTHETIC))
    entries, seen = [], set()
    for item in (s.strip() for s in spec.split(",")):
        if not item:
            continue
        weight = 1.0
        if ":" in item:
            item, w = item.rsplit(":", 1)
            try:
                weight = float(w)
            except ValueError:
                weight = float("nan")
            if not math.isfinite(weight) or weight <= 0:
                raise UserError(f"bad weight {w!r} for {item} in mix {spec!r}: expected a positive number")
        name, _, path = item.partition("=")
        name = name.strip()
        if name not in SOURCES and name not in SYNTHETIC:
            raise UserError(f"unknown source {name!r} in mix {spec!r}; valid: {valid}")
        if path and name in SYNTHETIC:
            raise UserError(f"{name} is generated, it takes no file (use a real source name: {name[4:]}={path})")
        if name in seen:
            raise UserError(f"source {name} appears twice in mix {spec!r}: give it one weight")
        seen.add(name)
        entries.append({"name": name, "path": path or None, "weight": weight})
    if not entries:
        raise UserError(f"empty mix {spec!r}")
    return entries


def _fingerprint(path):
    """Size and mtime of a local source, so editing the file invalidates the cache."""
    files = [path] if os.path.isfile(path) else sorted(os.path.join(path, f) for f in os.listdir(path))
    return [(os.path.basename(f), os.path.getsize(f), int(os.path.getmtime(f))) for f in files]


def _cache_key(entries, tok, seed, unit, max_docs):
    # the generator's own source is part of the key: editing synthetic.py can never serve stale documents
    with open(synthetic.__file__, "rb") as f:
        generator = hashlib.sha256(f.read()).hexdigest()
    key = {"version": VERSION, "synthetic": generator, "tokenizer": tok.spec, "seed": seed,
           "unit": unit, "max_docs": max_docs, "val": [VAL_FRACTION, VAL_MIN, VAL_MAX],
           "entries": [dict(e, files=_fingerprint(e["path"]) if e["path"] else None) for e in entries]}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]


def _load(entry, seed, unit, max_docs):
    name = entry["name"]
    if name in SYNTHETIC:
        n = unit if max_docs is None else min(unit, max_docs)
        return synthetic.documents(SYNTHETIC[name], n, seed=seed), {"rows": n, "skipped": 0, "filtered": 0}
    docs, counts = load_documents(name, entry["path"], max_docs)
    if not docs:
        where = entry["path"] or SOURCES[name].hub
        raise UserError(f"source {name}: no usable documents in {where} ({counts['rows']} rows, "
                        f"{counts['skipped']} skipped for a missing column or empty text, {counts['filtered']} filtered; "
                        f"columns needed: {', '.join(SOURCES[name].columns)})")
    return docs, counts


def _tokenize(docs, tok, bar):
    """Docs -> one flat id array (each doc + end-of-text) and doc offsets; batched, threaded tiktoken."""
    lens, chunks = [], []
    for i in range(0, len(docs), 2048):
        for ids in tok.encode_batch(docs[i:i + 2048]):
            ids.append(tok.eot_id)
            lens.append(len(ids))
            chunks.append(np.asarray(ids, dtype=np.int64))
        bar.update(min(2048, len(docs) - i))
    flat = np.concatenate(chunks) if chunks else np.zeros(0, np.int64)
    return flat, np.concatenate([[0], np.cumsum(lens, dtype=np.int64)])


def prepare_mixture(mix: str, vocab_size: int, out_root: str, seed: int = 0, max_docs=None, unit=None,
                    quiet=False) -> str:
    """Build (or reuse) the token shards of a mixture; returns the shard directory."""
    tok = get_tokenizer(vocab_size)
    unit = int(unit or DEFAULT_UNIT)
    entries = parse_mix(mix)
    key = _cache_key(entries, tok, seed, unit, max_docs)
    out = os.path.join(out_root, f"mix-{key}")
    if os.path.exists(os.path.join(out, "meta.json")):
        if not quiet:
            print(f"reusing {out}")
            print(format_table(open_mixture(out)["meta"]))
        return out
    t0 = time.time()
    rng = np.random.default_rng(seed)
    dtype = np.uint16 if tok.vocab_size <= 65536 else np.uint32
    sources, flats, offsets, order = {}, [], [], []
    loaded = []
    for e in entries:
        docs, counts = _load(e, seed, unit, max_docs)
        loaded.append((e, docs, counts))
    bar = tqdm(total=sum(len(d) for _, d, _ in loaded), desc="tokenizing", unit="doc", disable=quiet)
    tmp = os.path.join(out_root, f".tmp-mix-{key}-{os.getpid()}")
    os.makedirs(tmp, exist_ok=True)
    try:
        val_meta = {}
        for si, (e, docs, counts) in enumerate(loaded):
            flat, off = _tokenize(docs, tok, bar)
            n = len(docs)
            val_idx, picks = _split_and_copy(n, e["weight"], rng)
            order.append(np.stack([np.full(len(picks), si), picks], 1))
            flats.append(flat)
            offsets.append(off)
            val = _gather(flat, off, np.sort(val_idx)).astype(dtype)
            val_file = f"val_{e['name']}.bin"
            val.tofile(os.path.join(tmp, val_file))
            lens = off[1:] - off[:-1]
            sources[e["name"]] = {
                "weight": e["weight"], "path": e["path"],
                "hub": None if e["name"] in SYNTHETIC else SOURCES[e["name"]].hub,
                "base_documents": n, "documents": int(len(picks)), "tokens": int(lens[picks].sum()),
                "val_documents": int(len(val_idx)), "val_tokens": int(len(val)),
                "rows": counts["rows"], "skipped": counts["skipped"], "filtered": counts["filtered"],
            }
            val_meta[e["name"]] = val_file
        bar.close()
        # one shuffled train stream over all sources' documents (the copies included)
        order = np.concatenate(order)
        order = order[rng.permutation(len(order))]
        train = np.concatenate([flats[s][offsets[s][i]:offsets[s][i + 1]] for s, i in order]).astype(dtype)
        train.tofile(os.path.join(tmp, "train.bin"))
        total = int(len(train))
        for s in sources.values():
            s["share"] = s["tokens"] / max(total, 1)
        meta = {
            "version": VERSION, "spec": mix, "tokenizer": tok.spec, "seed": seed, "unit": unit, "max_docs": max_docs,
            "dtype": np.dtype(dtype).name, "train": {"file": "train.bin", "tokens": total, "documents": int(len(order))},
            "val": val_meta, "sources": sources, "order": [e["name"] for e in entries], "seconds": round(time.time() - t0, 2),
        }
        atomic_write_json(os.path.join(tmp, "meta.json"), meta)
        try:
            os.rename(tmp, out)
        except OSError:
            if not os.path.exists(os.path.join(out, "meta.json")):  # not a racing twin that finished first
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if not quiet:
        print(f"wrote {out} in {time.time() - t0:.1f}s")
        print(format_table(meta))
    return out


def _split_and_copy(n, weight, rng):
    """Hold out a validation slice of n documents, then copy the rest: floor(weight) full passes plus a
    seeded subsample for the fraction. Returns (val indices, train indices with repeats)."""
    perm = rng.permutation(n)
    n_val = min(max(VAL_MIN, round(VAL_FRACTION * n)), VAL_MAX, n // 5)
    val_idx, train_idx = perm[:n_val], perm[n_val:]
    whole, frac = int(weight), weight - int(weight)
    extra = rng.choice(train_idx, round(frac * len(train_idx)), replace=False)
    return val_idx, np.concatenate([train_idx] * whole + [extra])


def _gather(flat, off, idx):
    if len(idx) == 0:
        return flat[:0]
    return np.concatenate([flat[off[i]:off[i + 1]] for i in idx])


def open_mixture(d):
    """A prepared mixture: {"train": 1-D memmap, "val": {source: 1-D memmap}, "meta": dict}."""
    path = os.path.join(d, "meta.json")
    if not os.path.exists(path):
        raise UserError(f"{d} is not a prepared mixture (no meta.json); run python -m data.prepare")
    with open(path) as f:
        meta = json.load(f)
    dtype = np.dtype(meta["dtype"])

    def load(name):
        p = os.path.join(d, name)
        # np.memmap refuses empty files; a source too small for a val slice has an empty stream
        return np.memmap(p, dtype=dtype, mode="r") if os.path.getsize(p) else np.zeros(0, dtype)

    return {"train": load(meta["train"]["file"]), "val": {s: load(f) for s, f in meta["val"].items()}, "meta": meta}


def _n(x):
    return f"{x / 1e6:.2f}M" if x >= 1e6 else f"{x / 1e3:.1f}k" if x >= 1e4 else str(x)


def format_table(meta):
    """The per-source table python -m data.prepare prints."""
    rows = [("source", "weight", "docs", "tokens", "tok/doc", "share", "val docs", "val tok", "skipped", "filtered")]
    for name in meta["order"]:
        s = meta["sources"][name]
        rows.append((name, f"{s['weight']:g}", _n(s["documents"]), _n(s["tokens"]),
                     f"{s['tokens'] / max(s['documents'], 1):.0f}", f"{100 * s['share']:.1f}%",
                     _n(s["val_documents"]), _n(s["val_tokens"]), str(s["skipped"]), str(s["filtered"])))
    t = meta["train"]
    rows.append(("total", "", _n(t["documents"]), _n(t["tokens"]), f"{t['tokens'] / max(t['documents'], 1):.0f}",
                 "100.0%", _n(sum(s["val_documents"] for s in meta["sources"].values())),
                 _n(sum(s["val_tokens"] for s in meta["sources"].values())), "", ""))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    head = f"mixture {meta['spec']}  tokenizer {meta['tokenizer']['name']}-{meta['tokenizer']['vocab_size']}  dtype {meta['dtype']}"
    return "\n".join([head] + lines)
