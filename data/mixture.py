"""
Mixtures: a spec string -> tokenized sources (data/shards.py, each built once) -> a small manifest over them.

    d = prepare_mixture("syn-tinygsm:1,syn-omi1:4,syn-omi2:1,syn-finemath:0.5", 4096, "data_cache")
    m = open_mixture(d)      # {"train": TokenStream, "val": {source: TokenStream}, "meta": dict}
    m["train"][i:j]          # a numpy slice of the train stream, read through memmaps

Spec: comma-separated `source:weight`. Sources:
    real:       tinygsm, omi1, omi2, finemath, algebraic-stack, metamathqa, gsm8k (hub files at a pinned revision)
    local:      tinygsm=path/to/folder:1 (a folder in the hub's layout, or one file: parquet, JSON lines or a JSON
                array; plain, .gz or .zst)
    synthetic:  syn-tinygsm, syn-omi1, syn-omi2, syn-finemath, syn-arith (arithmetic drill); one copy = `unit` generated documents
A weight k lists the source's units k times (k passes over it, as the authors' symlinks did); a fraction takes a
deterministic subset: each unit's first documents in its hash order (a uniform sample), so 1.5 = one pass plus
half of another. Before that, a validation slice of each source is held out: its documents with the lowest
text hashes, 2% of them up to VAL_MAX (at most a fifth of a small source), each unit's held-out documents being a
prefix of the unit; everything else trains. The manifest (mix-<hash>/meta.json) lists token ranges of unit files:
building it reads each unit's small index files, so a new mixture over tokenized sources takes seconds, and
the same request is found again from its hash without reading any data.

The train stream is the concatenation of those ranges; pretrain.py cuts it into fixed-length sequences and
shuffles them (seeded, per epoch), as the paper's OLMo loader did with the authors' token files.
"""
import hashlib
import json
import math
import os
import time

import numpy as np

from common import UserError, atomic_write_json
from data import shards
from data.shards import SYNTHETIC
from data.sources import SOURCES
from data.tokenizer import get_tokenizer

# finemath at a quarter weight: it teaches no answer format, and the toy needs its tokens for the three formats
DEFAULT_MIX = "syn-tinygsm:1,syn-omi1:1,syn-omi2:1,syn-finemath:0.25"
DEFAULT_UNIT = 6500      # documents in one copy of a synthetic source: the default mix is ~3.4M tokens at vocab 2049
DEFAULT_CACHE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data_cache")
VAL_MAX = 2000           # held-out documents per source at most (2% of a small source, at most a fifth of it)
VERSION = 2              # bump when the manifest's layout or meaning changes


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


def _plan(mix, tokenizer, out_root, seed, max_docs, unit, syn=None):
    tok = get_tokenizer(tokenizer)
    entries = parse_mix(mix)
    plans = [shards.plan_source(e, seed, int(unit or DEFAULT_UNIT), max_docs, syn) for e in entries]
    key = hashlib.sha256(json.dumps({
        "version": VERSION, "units": [shards.VERSION, shards.UNIT_BYTES, shards.VAL_FRACTION], "val_max": VAL_MAX,
        "tokenizer": os.path.basename(shards.tokens_dir(out_root, tok)),
        "sources": [[e["name"], e["weight"], p["identity"]] for e, p in zip(entries, plans)], "max_docs": max_docs,
    }, sort_keys=True).encode()).hexdigest()[:12]
    return tok, entries, plans, os.path.join(out_root, f"mix-{key}")


def mixture_path(mix, tokenizer, out_root, seed=0, max_docs=None, unit=None, syn=None):
    """Where prepare_mixture puts (or finds) this mixture, worked out without reading or building anything."""
    return _plan(mix, tokenizer, out_root, seed, max_docs, unit, syn)[3]


def prepare_mixture(mix: str, tokenizer, out_root: str, seed: int = 0, max_docs=None, unit=None, quiet=False,
                    workers=None, shard=None, progress=True, syn=None):
    """Build (or reuse) a mixture: tokenize the units not built yet, then write the manifest. Returns its folder,
    or None when shard=(i, w) built its share of units and others are still missing.

    tokenizer: a vocab size, a tokenizer spec or a tokenizer.json folder (data.tokenizer.get_tokenizer).
    quiet: no table, no progress bar; progress=False: the table but no bar (pretrain.py --no-tqdm).
    syn: the synthetic generator's options, {"steps": (1, 2), "hard_share": {"omi1": 0.05}} (synthetic.documents)."""
    tok, entries, plans, out = _plan(mix, tokenizer, out_root, seed, max_docs, unit, syn)
    if os.path.exists(os.path.join(out, "meta.json")):
        if not quiet:
            print(f"reusing {out}")
            print(format_table(open_mixture(out)["meta"]))
        return out
    t0 = time.time()
    units = [shards.plan_units(p) for p in plans]
    flat = [u for us in units for u in us]
    built, failed = shards.build_units(flat, tok, out_root, workers=workers, quiet=quiet or not progress, shard=shard)
    if failed:
        unit, why = failed[0]
        more = f" (and {len(failed) - 1} more units)" if len(failed) > 1 else ""
        raise UserError(f"the build stopped: {why}{more}; the units already built are kept, so a rerun resumes "
                        f"after the file is fixed or removed")
    infos = [[shards.unit_info(out_root, tok, u) for u in us] for us in units]
    missing = sum(i is None for us in infos for i in us)
    if missing:
        if not quiet:
            print(f"shard {shard[0]}/{shard[1]}: built {built} units; {missing} of {len(flat)} units are not built "
                  f"yet (other shards); the last shard to finish, or a run without --shard-index, writes the mixture")
        return None
    meta = _manifest(mix, tok, entries, plans, units, infos, out_root, seed, max_docs, unit)
    meta["seconds"] = round(time.time() - t0, 2)
    atomic_write_json(os.path.join(out, "meta.json"), meta)
    if not quiet:
        print(f"wrote {out} in {time.time() - t0:.1f}s ({built} units tokenized, {len(flat) - built} reused)")
        print(format_table(meta))
    return out


def _manifest(mix, tok, entries, plans, units, infos, out_root, seed, max_docs, unit):
    """Token ranges of the unit files: each source's held-out prefix (val) and k passes over the rest (train)."""
    train, val, sources = [], {}, {}
    for e, plan, us, inf in zip(entries, plans, units, infos):
        name = e["name"]
        n = sum(i["docs"] for i in inf)
        counts = {k: sum(i[k] for i in inf) for k in ("rows", "skipped", "filtered")}
        if n == 0:
            where = e["path"] or f"{SOURCES[name].hub}@{SOURCES[name].revision}"
            raise UserError(f"source {name}: no usable documents in {where} ({counts['rows']} rows, "
                            f"{counts['skipped']} skipped for a missing column or empty text, {counts['filtered']} "
                            f"filtered; columns needed: {', '.join(SOURCES[name].columns)})")
        files = [os.path.relpath(shards.unit_paths(out_root, tok, u)["bin"], out_root) for u in us]
        idx = [np.load(shards.unit_paths(out_root, tok, u)["idx"], mmap_mode="r") for u in us]
        cands = [np.load(shards.unit_paths(out_root, tok, u)["val"]) for u in us]
        # hold out the lowest hashes of the whole source: each unit's share is a prefix of it
        all_c = np.sort(np.concatenate(cands)) if cands else np.zeros(0, np.uint64)
        n_val = min(len(all_c), VAL_MAX, n // 5)
        cut = [int(np.searchsorted(c, all_c[n_val - 1], side="right")) if n_val else 0 for c in cands]
        val[name] = [[f, 0, int(ix[v])] for f, ix, v in zip(files, idx, cut) if v]
        whole, frac = int(e["weight"]), e["weight"] - int(e["weight"])
        docs = tokens = 0
        for _ in range(whole):  # k passes: the units listed k times
            for f, ix, v, i in zip(files, idx, cut, inf):
                if i["docs"] > v:
                    train.append([f, int(ix[v]), int(ix[i["docs"]])])
                    docs += i["docs"] - v
                    tokens += int(ix[i["docs"]] - ix[v])
        if frac:  # the fraction: the next documents of each unit in hash order (a uniform sample)
            for f, ix, v, i in zip(files, idx, cut, inf):
                m = round(frac * (i["docs"] - v))
                if m:
                    train.append([f, int(ix[v]), int(ix[v + m])])
                    docs += m
                    tokens += int(ix[v + m] - ix[v])
        sources[name] = {
            "weight": e["weight"], "path": e["path"], "units": len(us),
            "hub": None if name in SYNTHETIC else f"{SOURCES[name].hub}@{SOURCES[name].revision}",
            "base_documents": n, "documents": docs, "tokens": tokens,
            "val_documents": int(sum(cut)), "val_tokens": int(sum(r[2] for r in val[name])), **counts,
        }
    total = sum(s["tokens"] for s in sources.values())
    for s in sources.values():
        s["share"] = s["tokens"] / max(total, 1)
    return {
        "version": VERSION, "spec": mix, "tokenizer": tok.spec, "seed": seed, "unit": int(unit or DEFAULT_UNIT),
        "max_docs": max_docs, "dtype": np.dtype(shards.token_dtype(tok)).name,
        "train": {"tokens": total, "documents": sum(s["documents"] for s in sources.values()), "ranges": len(train)},
        "sources": sources, "order": [e["name"] for e in entries], "ranges": {"train": train, "val": val},
    }


class TokenStream:
    """A read-only 1-D token array made of [file, start, end) ranges of unit files (token offsets), read through
    memmaps opened on first use. Supports len() and contiguous slices, which return numpy arrays."""

    def __init__(self, root, ranges, dtype):
        self.root, self.dtype = root, np.dtype(dtype)
        self.files = [r[0] for r in ranges]
        self.starts = np.array([r[1] for r in ranges], np.int64)
        self.offsets = np.concatenate([[0], np.cumsum([r[2] - r[1] for r in ranges], dtype=np.int64)]).astype(np.int64)
        self._maps = {}

    def __len__(self):
        return int(self.offsets[-1])

    def _map(self, f):
        if f not in self._maps:
            self._maps[f] = np.memmap(os.path.join(self.root, f), dtype=self.dtype, mode="r")
        return self._maps[f]

    def __getitem__(self, key):
        if not isinstance(key, slice):
            raise TypeError("TokenStream supports slices only")
        start, stop, step = key.indices(len(self))
        if step != 1:
            raise TypeError("TokenStream supports contiguous slices only")
        out, i = [], int(np.searchsorted(self.offsets, start, side="right")) - 1
        while start < stop:
            take = min(stop, int(self.offsets[i + 1])) - start
            off = int(self.starts[i]) + start - int(self.offsets[i])
            out.append(self._map(self.files[i])[off:off + take])
            start += take
            i += 1
        if not out:
            return np.zeros(0, self.dtype)
        return np.array(out[0]) if len(out) == 1 else np.concatenate(out)


def open_mixture(d):
    """A prepared mixture: {"train": TokenStream, "val": {source: TokenStream}, "meta": dict (without ranges)}."""
    path = os.path.join(d, "meta.json")
    if not os.path.exists(path):
        raise UserError(f"{d} is not a prepared mixture (no meta.json); run python -m data.prepare")
    with open(path) as f:
        meta = json.load(f)
    if meta.get("version") != VERSION:
        raise UserError(f"{d} was written by another version of data/mixture.py; rebuild it (python -m data.prepare)")
    ranges = meta.pop("ranges")
    root = os.path.dirname(os.path.abspath(d))  # unit files are named relative to the cache root
    return {"train": TokenStream(root, ranges["train"], meta["dtype"]),
            "val": {s: TokenStream(root, r, meta["dtype"]) for s, r in ranges["val"].items()}, "meta": meta}


def wait_for_mixture(d, poll=0.5, note_after=10.0, say=print):
    """Wait (no process group, no collective) until another process has written the mixture d."""
    t0, noted = time.time(), False
    while not os.path.exists(os.path.join(d, "meta.json")):
        if not noted and time.time() - t0 > note_after:
            say(f"waiting for the first process on this machine to build {d}")
            noted = True
        time.sleep(poll)
    return d


def _n(x):
    if x >= 1e9:
        return f"{x / 1e9:.2f}B"
    return f"{x / 1e6:.2f}M" if x >= 1e6 else f"{x / 1e3:.1f}k" if x >= 1e4 else str(x)


def format_table(meta):
    """The per-source table python -m data.prepare prints."""
    rows = [("source", "weight", "units", "docs", "tokens", "tok/doc", "share", "val docs", "val tok", "skipped",
             "filtered")]
    for name in meta["order"]:
        s = meta["sources"][name]
        rows.append((name, f"{s['weight']:g}", str(s["units"]), _n(s["documents"]), _n(s["tokens"]),
                     f"{s['tokens'] / max(s['documents'], 1):.0f}", f"{100 * s['share']:.1f}%",
                     _n(s["val_documents"]), _n(s["val_tokens"]), str(s["skipped"]), str(s["filtered"])))
    t = meta["train"]
    rows.append(("total", "", str(sum(s["units"] for s in meta["sources"].values())), _n(t["documents"]),
                 _n(t["tokens"]), f"{t['tokens'] / max(t['documents'], 1):.0f}", "100.0%",
                 _n(sum(s["val_documents"] for s in meta["sources"].values())),
                 _n(sum(s["val_tokens"] for s in meta["sources"].values())), "", ""))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    tk = meta["tokenizer"]
    head = f"mixture {meta['spec']}  tokenizer {tk.get('name')}-{tk['vocab_size']}  dtype {meta['dtype']}"
    return "\n".join([head] + lines)
