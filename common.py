"""
Small helpers every script shares: one-line user errors, JSONL logs, atomic writes, seeds, threads.

Kept tiny on purpose: each script should still read top to bottom without chasing helpers.
"""
import contextlib
import functools
import json
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
