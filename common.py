"""
Small helpers every script shares: one-line user errors and the argument parser, JSONL logs, atomic writes, the
warmup + cosine schedule, resume's argument merge, torchrun set-up, text tables, seeds, threads.

Kept tiny on purpose: each script should still read top to bottom without chasing helpers.
"""
import argparse
import contextlib
import functools
import hashlib
import json
import math
import os
import random
import sys
import tempfile

import numpy as np
import torch


class UserError(Exception):
    """Bad input from the user (a flag, a file, a checkpoint). Shown as one line, never a traceback."""


def main_guard(fn):
    """Wrap a script's main(): UserError (and friends) become one line on stderr and exit code 2."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            sys.exit(130)
    return wrapper


@contextlib.contextmanager
def atomic_open(path):
    """Write to a temp file in the same directory, fsync, then rename: readers never see half a file."""
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp-", suffix=os.path.basename(path))
    try:
        os.fchmod(fd, 0o644)  # mkstemp makes 0600; results should be readable like any other file
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        # a full disk, a quota, a vanished dir (torch.save wraps the OSError in a RuntimeError): one line
        cause = e if isinstance(e, OSError) else e.__context__ if isinstance(e.__context__, OSError) else None
        if cause is None and isinstance(e, RuntimeError) and "unexpected pos" in str(e):
            cause = OSError("the write stopped short (disk full?)")
        if cause is not None:
            raise UserError(f"cannot write {path}: {cause.strerror or cause} (the previous version, if any, "
                            f"is intact)") from e
        raise


def atomic_write_bytes(path, data: bytes):
    with atomic_open(path) as f:
        f.write(data)


def atomic_write_json(path, obj):
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def append_jsonl(path, record):
    """Append one JSON record per line; flushed at once so a killed run keeps its log."""
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()


def read_jsonl(path):
    """Read a JSONL file; a bad line is a one-line UserError naming the file and line."""
    if not os.path.exists(path):
        raise UserError(f"no such file: {path}")
    rows = []
    with open(path, "rb") as f:
        for i, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                rows.append(json.loads(raw.decode("utf-8")))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise UserError(f"{path}:{i}: not a JSON line ({type(e).__name__})")
    return rows


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def derive_seed(*keys):
    """A seed from the run seed and a tag such as ("gen", step, rank): every random choice is a pure function of
    (seed, step), so a resumed run replays exactly what an uninterrupted one does."""
    # 31 bits: callees may do arithmetic on it (evaluate.run_eval multiplies it) and torch wants a signed 64-bit
    return int.from_bytes(hashlib.sha256(repr(keys).encode()).digest()[:4], "little") >> 1


def generator(*keys):
    g = torch.Generator()
    g.manual_seed(derive_seed(*keys))
    return g


def set_threads(n):
    """At toy size small ops are overhead-bound; a busy second core can make 2 threads slower than 1."""
    if n and n > 0:
        torch.set_num_threads(n)


def pick_device(name):
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name} asked for, but no CUDA device is available (use --device cpu)")
    return name


def check_out_dir(path):
    """Fail before any work if the out dir cannot be written (not after an hour of training).

    Also removes temp files a killed run left mid-write (atomic_open's .tmp-*): the run that owns this
    dir is the only writer, and the file they were meant to replace is intact."""
    try:
        os.makedirs(path, exist_ok=True)
        for name in os.listdir(path):
            if name.startswith(".tmp-"):
                os.unlink(os.path.join(path, name))
        probe = os.path.join(path, ".write-probe")
        with open(probe, "wb") as f:
            f.write(b"x" * 4096)
            f.flush()
            os.fsync(f.fileno())
        os.unlink(probe)
    except OSError as e:
        raise UserError(f"cannot write to out dir {path}: {e.strerror or e}")


# ------------------------------------------------------------------------------------------------ flags
class ArgParser(argparse.ArgumentParser):
    """argparse as every script uses it: a bad flag is one line on stderr (UserError via main_guard), not a
    usage block, and abbreviations are off: `--max-st 5` is an error, never a silent `--max-steps 5` that
    --resume would not see as given."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        kwargs.setdefault("formatter_class", argparse.ArgumentDefaultsHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message):
        raise UserError(message)

    def parse_explicit(self, argv=None):
        """(args, explicit): explicit is the set of dests the user typed, so --resume knows what was asked for."""
        args = self.parse_args(argv)
        given = {t.split("=")[0] for t in (argv if argv is not None else sys.argv[1:]) if t.startswith("-")}
        explicit = {a.dest for a in self._actions if given & set(a.option_strings)}
        return args, explicit


def merge_resumed_args(args, saved, explicit, runtime=(), overrides=()):
    """On --resume the run continues as it was: every flag takes the checkpoint's value, except `runtime` flags
    (always this invocation's: device, threads, ...) and `overrides` (this invocation's when given, e.g. a new
    --max-steps). A given flag that the checkpoint overrules gets a note, never silence."""
    for k, v in saved.items():
        if k in runtime or (k in overrides and k in explicit):
            continue
        if k in explicit and getattr(args, k, v) != v:
            print(f"note: --{k.replace('_', '-')} ignored on resume (the run uses {v!r})", file=sys.stderr)
        setattr(args, k, v)
    args.resume = True
    return args


# ------------------------------------------------------------------------------------------------ schedules
def cosine_lr(it, total, peak, warmup, min_ratio):
    """Linear warmup over `warmup` steps, then cosine from peak down to min_ratio * peak at step `total`."""
    if it < warmup:
        return peak * (it + 1) / warmup
    progress = min(1.0, (it - warmup) / max(1, total - warmup))
    return peak * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


# ------------------------------------------------------------------------------------------------ logs
def start_metrics(path, step, resume, first_record=None):
    """Open a run's metrics.jsonl. A fresh run starts it (with first_record, e.g. the config); a resumed one drops
    what a killed run wrote after its last checkpoint (records past `step`, and a line cut short by the kill),
    since the resumed run writes those again. Returns the records kept."""
    kept = []
    if resume and os.path.exists(path):
        with open(path) as f:
            for ln in f:
                try:
                    rec = json.loads(ln)
                except json.JSONDecodeError:
                    continue
                if rec.get("step", 0) <= step:
                    kept.append(rec)
    elif first_record is not None:
        kept = [first_record]
    atomic_write_bytes(path, "".join(json.dumps(r) + "\n" for r in kept).encode())
    return kept


def text_table(header, rows, align=None):
    """A plain aligned text table: header is a list of column names, rows lists of cells (already strings or
    numbers). align: a string of 'l'/'r' per column (default: first left, the rest right)."""
    cells = [[str(c) for c in header]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    align = align or "l" + "r" * (len(header) - 1)
    fmt = lambda r: "  ".join(c.ljust(w) if a == "l" else c.rjust(w) for c, w, a in zip(r, widths, align)).rstrip()
    return "\n".join([fmt(cells[0]), "  ".join("-" * w for w in widths)] + [fmt(r) for r in cells[1:]])


# ------------------------------------------------------------------------------------------------ torchrun
def dist_env():
    """(ddp, rank, world, local_rank) from torchrun's environment, without touching the process group; a plain
    run is rank 0 of 1. Work that must not sit inside a collective (a data build) can branch on it."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return True, int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0))
    return False, 0, 1, 0


def setup_distributed(device_flag):
    """Resolve the device and, under torchrun, join the process group (nccl on CUDA, gloo on the CPU), one GPU per
    local rank. Returns (device, ddp, rank, world)."""
    ddp, rank, world, local_rank = dist_env()
    device = pick_device(device_flag)
    if ddp:
        import torch.distributed as dist
        if device.startswith("cuda"):
            device = f"cuda:{local_rank}"
            torch.cuda.set_device(device)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return device, ddp, rank, world
