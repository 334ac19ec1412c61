"""
Small helpers every script shares: one-line user errors and the argument parser, JSONL logs, atomic writes, the
warmup + cosine schedule, resume's argument merge, torchrun set-up and collectives, text tables, seeds, threads;
a training run's update step (all-reduce, clip, finite check), divergence guard, resume and log.

Kept tiny on purpose: each script should still read top to bottom without chasing helpers.
"""
import argparse
import contextlib
import copy
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
    """Append one JSON record per line; flushed at once so a killed run keeps its log. A metrics file opened with
    open_tracker also sends the record to its tracker."""
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
    tracker = _TRACKERS.get(os.path.abspath(path))
    if tracker is not None and record.get("type") != "config":
        tracker.log(flat_record(record), step=record.get("step"))


# ---- optional experiment tracking (--wandb): off by default, never required. metrics.jsonl stays the record of
# a run; the tracker gets a copy of each record as it is appended (W&B's offline mode, WANDB_MODE=offline, needs
# no network: `wandb sync` uploads later).
_TRACKERS = {}  # absolute metrics.jsonl path -> the tracker run that mirrors it


def flat_record(rec):
    """{"type": "eval", "sampled": {"pass@1": .3}} -> {"eval/sampled/pass@1": .3}: numbers only, keys by type."""
    out = {}

    def walk(prefix, v):
        if isinstance(v, dict):
            for k, x in v.items():
                walk(f"{prefix}/{k}", x)
        elif isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            out[prefix] = v
        elif isinstance(v, bool):
            out[prefix] = int(v)
    for k, v in rec.items():
        if k not in ("type", "step"):
            walk(f"{rec.get('type', 'record')}/{k}", v)
    return out


def open_tracker(enabled, metrics_path, config, project, name=None):
    """--wandb: a W&B run (one per out dir: its id is a hash of the path, so --resume continues it) that receives
    every record later appended to metrics_path. Returns the run, or None when tracking is off."""
    if not enabled:
        return None
    try:
        import wandb
    except ImportError:
        raise UserError("--wandb needs the wandb package: pip install wandb (offline without a network: "
                        "WANDB_MODE=offline, then `wandb sync`)")
    out_dir = os.path.dirname(os.path.abspath(metrics_path))
    run_id = hashlib.sha1(out_dir.encode()).hexdigest()[:16]
    run = wandb.init(project=project, name=name or os.path.basename(out_dir), id=run_id, resume="allow",
                     dir=out_dir, config={k: v for k, v in config.items() if k != "type"})
    _TRACKERS[os.path.abspath(metrics_path)] = run
    return run


def close_tracker(metrics_path):
    run = _TRACKERS.pop(os.path.abspath(metrics_path), None)
    if run is not None:
        run.finish()


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


def all_sum(t, ddp):
    """Sum a tensor over ranks in place (identity on one process); stats stay float64 on the device until read."""
    if ddp:
        import torch.distributed as dist
        dist.all_reduce(t)
    return t


def all_gather(items, world):
    """One list per rank -> their concatenation in rank order (the list itself on one process)."""
    if world == 1:
        return list(items)
    import torch.distributed as dist
    out = [None] * world
    dist.all_gather_object(out, list(items))
    return [x for part in out for x in part]


# ------------------------------------------------------------------------------------------------ updates
def set_lr(opt, lr):
    for g in opt.param_groups:
        g["lr"] = lr


def apply_update(pairs, bad, grad_clip, ddp):
    """All-reduce, clip and step each (module, optimizer); skip every step if a loss (the device flag `bad`) or a
    grad is non-finite. All ranks decide alike: the grads are summed, so one bad rank is seen everywhere.
    Returns (ok, the first module's grad norm); the one host sync of an update."""
    norms = []
    for module, _ in pairs:
        if ddp:
            import torch.distributed as dist
            for p in module.parameters():
                if p.grad is None:  # a rank with no rows this step still joins every collective
                    p.grad = torch.zeros_like(p)
                dist.all_reduce(p.grad)
        norms.append(torch.nn.utils.clip_grad_norm_(module.parameters(), grad_clip or float("inf")))
    bad = all_sum(bad.double().reshape(1), ddp)
    ok = bool((bad == 0).all() & torch.stack([torch.isfinite(g) for g in norms]).all())
    for _, opt in pairs:
        if ok:
            opt.step()
        opt.zero_grad(set_to_none=True)
    return ok, float(norms[0])


class Diverged(UserError):
    pass


def guard(ok, bad_in_a_row, step, save_fn, say=print, what="update"):
    """Count non-finite updates in a row; 3 in a row call save_fn() (skipped updates never touch the weights, so the
    saved ones are the last good ones) and stop with Diverged. Returns the new count."""
    bad_in_a_row = 0 if ok else bad_in_a_row + 1
    if bad_in_a_row:
        say(f"step {step + 1}: non-finite loss or gradient, {what} skipped ({bad_in_a_row} in a row)")
    if bad_in_a_row >= 3:
        where = save_fn()
        raise Diverged(f"{bad_in_a_row} non-finite updates in a row at step {step}: stopping (lower --lr?); "
                       f"last good weights in {where}")
    return bad_in_a_row


def device_sums(keys, device):
    """Zeroed float64 accumulators on the device: stats summed without a host sync, read once by read_sums."""
    return {k: torch.zeros((), dtype=torch.float64, device=device) for k in keys}


def read_sums(sums, ddp):
    """Sum the accumulators over ranks and read them in one host sync -> {key: float}."""
    keys = list(sums)
    return dict(zip(keys, all_sum(torch.stack([sums[k] for k in keys]), ddp).tolist()))


def log_steps(max_steps, every="log"):
    """Steps 1, 2, 4, 8, ... ('log') or every N (an int or its digits, e.g. --ckpt-interval 5), and the last."""
    steps = set(range(int(every), max_steps + 1, int(every))) if every != "log" else \
        {2 ** i for i in range(max_steps.bit_length()) if 2 ** i <= max_steps}
    return steps | {max_steps}


def phase_times(times, t0, phases):
    """{phase: seconds} from the wall-clock time each phase ended (a missing phase took 0), plus the total."""
    last, out = t0, {}
    for k in phases:
        out[k] = round(times.get(k, last) - last, 3)
        last = times.get(k, last)
    out["total"] = round(last - t0, 3)
    return out


# ------------------------------------------------------------------------------------------------ a training run
# rl.py's set-up and loops share these. `run` is its plain namespace: args, master (rank 0), bar (the progress bar or
# None), metrics_path, train_log / eval_log (the records logged), resume_ck (the checkpoint resumed from), step,
# model, tok and init_ck (the pretrained checkpoint it started from).
def resume_or_resolve(args, explicit, resolve, runtime=(), overrides=()):
    """A fresh run: resolve(args) (presets filled in, flags checked). --resume: <out-dir>/ckpt.pt's flags, merged by
    merge_resumed_args (the out dir itself resolved when not given). Returns (args, the checkpoint or None)."""
    if not args.resume:
        return resolve(args), None
    from model import CheckpointError, load_checkpoint
    if args.out_dir is None:
        args.out_dir = resolve(copy.copy(args)).out_dir
    try:
        ck = load_checkpoint(os.path.join(args.out_dir, "ckpt.pt"))
    except CheckpointError as e:
        raise UserError(f"cannot resume: {e}")
    return merge_resumed_args(args, ck["args"], explicit, runtime, overrides), ck


def start_run_log(out_dir, step, resume, config):
    """config.json, and metrics.jsonl opened by start_metrics (a fresh run's starts with the config record).
    Returns the records kept."""
    atomic_write_json(os.path.join(out_dir, "config.json"), config)
    return start_metrics(os.path.join(out_dir, "metrics.jsonl"), step, resume, config)


def log(run, rec):
    """Rank 0 appends the record to metrics.jsonl and keeps it in run.eval_log or run.train_log."""
    if run.master:
        append_jsonl(run.metrics_path, rec)
        (run.eval_log if rec["type"] == "eval" else run.train_log).append(rec)


def say(run, msg):
    """Print on rank 0, through the progress bar when there is one (it would garble a plain print)."""
    if run.master:
        (run.bar.write if run.bar is not None else print)(msg)


def restore(run, **states):
    """On --resume, load each named state (model, optimizer, critic, ...) from the run's checkpoint."""
    if run.resume_ck:
        for name, obj in states.items():
            obj.load_state_dict(run.resume_ck[name])
        say(run, f"resuming from {run.args.out_dir}/ckpt.pt at step {run.step}")


def save(run, state, snapshot):
    """rl.py's checkpoints, written by rank 0: ckpt.pt (the policy, what it started from and `state`: everything
    --resume needs) and, at snapshot steps, ckpt-stepNNNNNN.pt (the policy only). Returns ckpt.pt's path."""
    from model import save_checkpoint
    args, path = run.args, os.path.join(run.args.out_dir, "ckpt.pt")
    if run.master:
        base = {"model": run.model.state_dict(), "config": run.init_ck["config"], "tokenizer": run.tok.spec,
                "step": run.step, "args": dict(vars(args)), "kind": "rl", "algo": args.algo, "init_ckpt": args.ckpt}
        if snapshot:
            save_checkpoint(os.path.join(args.out_dir, f"ckpt-step{run.step:06d}.pt"), base)
        save_checkpoint(path, {**base, **state})
    return path
