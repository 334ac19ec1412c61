"""
Run untrusted, model-written Python with hard limits. classify.py grades every code answer through here.

    from sandbox import Sandbox, run_python
    with Sandbox(workers=2, timeout=3.0) as sb:
        sb.run("def f():\n    return 6 * 7", expr="f()")        # -> ('42', None)
        sb.run("x = 1 / 0")                                      # -> (None, 'error: ZeroDivisionError: ...')
        sb.run_many([(code, "simple_math_problem()"), ...])     # parallel across the workers
    run_python("2 + 2")                                          # shared default pool -> ('4', None)

This is NOT a security boundary against a determined attacker (no seccomp, no namespaces we can count on).
It is meant to keep a small model's programs - loops, bombs, accidents, the odd os.system - from hurting
the grader, the machine or the run. How it is built, and why:

- A pool of long-lived workers, each `python -I -B` running this file with a scrubbed environment (no secrets
  of the caller). A worker imports the usual modules (numpy, sympy, math_verify, ...) once, drops root
  (below), then runs each program in a child it forks: a few ms per program instead of a new interpreter,
  and every program starts from the same clean state (a program that sets decimal precision or patches
  math cannot change the next one's answer). Programs that mention none of the big modules (nearly all
  TinyGSM code) are forked from a small "zygote" instead, which forks ~4x faster. The worker waits for the
  child with a wall-clock deadline and SIGKILLs it; a timeout costs the child, not the worker. The caller
  also watches each worker and kills and replaces one that stalls or dies (timeout + GRACE at most).
- As root, every worker gets its own unused uid (like isolate's per-box uids): the program cannot write
  files it does not own, cannot signal or read the caller or other workers, and every process and /tmp file
  it leaves can be found by uid and removed. Modules are imported before the drop, because the Python
  install may not be readable by that uid (pyenv under /root is 0700).
- rlimits in the child: address space, CPU, file size, open files, no core, and RLIMIT_NPROC = 1. The
  process-count limit counts every process of the real uid, so 1 means "no fork, no thread" - for root it
  would not bind (root is exempt), hence the uid drop. As a normal user the same limit works as well.
- A Python audit hook in the child blocks fork/exec/spawn/system, subprocess, sockets, ctypes, kill, and
  writes outside the scratch dir - an extra layer with clear error messages, not the only one. A program
  that trips it gets None even if it catches the exception.
- No network: best effort. As root with CAP_SYS_ADMIN the worker moves into an empty network namespace;
  otherwise only the audit hook stands between a program and a socket.
- As a non-root user there is no uid drop: the file system and the caller's signals are then guarded only
  by the audit hook (plus rlimits). Run grading as root, or accept that.

A result is (value, reason): value is str() of the answer, reason is None; or value is None and reason
says why (timeout, error, blocked, memory, crashed, ...). Never the program's exception, never a hang.
Speed: ~230 TinyGSM programs/s with 2 workers on a busy 2-core machine (~6 ms each, fork to answer).
"""
import ast
import atexit
import builtins
import io
import json
import os
import random
import re
import resource
import select
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
import weakref

DEFAULT_TIMEOUT = 3.0        # the paper's alarm for code execution
GRACE = 0.5                  # the caller kills a worker that has not answered by timeout + GRACE
MAX_VALUE_CHARS = 4000
MAX_STDOUT_CHARS = 16000
MAX_MSG_BYTES = 1 << 20
STARTUP_TIMEOUT = 120.0      # imports on a busy 2-core machine can take a while

# imported by each worker before it drops root; programs can import other modules only if the Python
# install is readable by everyone. Missing ones (no scipy here) are skipped. The light ones are all a
# typical TinyGSM program needs; see the zygote in _worker_main.
LIGHT_MODULES = (
    "math", "cmath", "fractions", "decimal", "itertools", "functools", "collections", "statistics",
    "random", "datetime", "re", "string", "operator", "heapq", "bisect", "numbers", "typing", "copy",
    "time", "calendar", "json",
)
DEFAULT_PRELOAD = LIGHT_MODULES + ("numpy", "sympy", "scipy", "math_verify")

# run once in each worker before it drops root: pulls in the submodules that sympy and numpy import
# lazily (they could not be imported after the drop when the install is not world-readable, and each
# forked child would pay for them again anyway). Each line may fail on its own.
WARMUP = r"""
import sympy as sp; x, y = sp.symbols("x y")
sp.solve([sp.Eq(x + y, 3), sp.Eq(x - y, 1)], [x, y]); sp.solve(x**2 - 4, x, dict=True); sp.solve(sp.Eq(x**2, 4))
sp.linsolve([x + y - 3, x - y - 1], x, y); sp.solveset(x**2 - 4, x, sp.S.Reals); sp.nsolve(x**2 - 2, x, 1)
sp.simplify(sp.sin(x)**2 + sp.cos(x)**2); sp.factor(x**2 - 1); sp.expand((x + 1)**3); sp.nsimplify(0.5)
sp.Rational(1, 3) + 1; sp.sqrt(8); sp.N(sp.pi, 10); sp.floor(2.5); sp.ceiling(2.5); sp.Mod(7, 3)
sp.re(1 + 2*sp.I); sp.Abs(-3)
sp.integrate(x**2, (x, 0, 1)); sp.diff(sp.exp(x), x); sp.limit(sp.sin(x) / x, x, 0); sp.series(sp.exp(x), x, 0, 3)
sp.Matrix([[1, 2], [3, 4]]).det(); sp.Matrix([[1, 2], [3, 4]]).inv(); sp.Matrix([[1, 2], [3, 4]]).eigenvals()
sp.binomial(5, 2); sp.factorial(5); sp.factorint(60); sp.isprime(7); sp.divisors(12); sp.totient(12)
sp.gcd(4, 6); sp.lcm(4, 6); list(sp.primerange(1, 10)); sp.prime(5); sp.Poly(x**2 - 1, x).all_roots()
sp.summation(x, (x, 1, 10)); sp.Sum(x, (x, 1, 3)).doit(); sp.product(x, (x, 1, 3))
sp.Interval(0, 1) | sp.Interval(2, 3)
sp.latex(x**2); str(sp.Rational(3, 5)); sp.simplify(sp.Abs(x)); sp.trigsimp(sp.sin(x)); sp.apart(1 / (x**2 - 1))
sp.sympify("x**2 + 1"); sp.Symbol("z", positive=True); sp.Point(0, 0).distance(sp.Point(3, 4))
sp.Triangle(sp.Point(0, 0), sp.Point(1, 0), sp.Point(0, 1)).area
from sympy.stats import Die, P; P(Die("D", 6) > 3)
import numpy as np; np.linalg.det(np.eye(2)); np.linalg.solve(np.eye(2), np.ones(2)); np.roots([1, 0, -1])
np.random.default_rng(0).random(); np.random.seed(0); np.random.rand(); np.polyfit([0, 1, 2], [0, 1, 2], 1)
np.mean([1, 2]); np.std([1, 2]); np.median([1, 2]); np.percentile([1, 2], 50); np.round(2.5); np.lcm(4, 6)
str(np.float64(1.5)); str(np.array([1.5, 2]))
import fractions, decimal, statistics, itertools, math; statistics.mean([1, 2]); decimal.Decimal("1.1") + 1
"""

# audit events that end the program's claim to a value (prefix match)
_DENY = (
    "os.fork", "os.forkpty", "os.exec", "os.posix_spawn", "os.spawn", "os.system", "os.startfile",
    "os.kill", "os.killpg", "signal.pthread_kill", "subprocess.", "socket.", "ctypes.", "_ctypes.",
    "resource.setrlimit", "resource.prlimit", "pty.", "gc.get_objects", "gc.get_referrers",
    "gc.get_referents", "os.putenv", "os.unsetenv", "sys.setprofile", "sys.settrace", "webbrowser.",
    "urllib.", "http.", "ftplib.", "smtplib.", "telnetlib.", "poplib.", "imaplib.", "nntplib.",
    "sqlite3.", "os.setxattr", "os.removexattr",
)
# audit events whose first argument is a path: allowed only inside the scratch dir
_PATH_EVENTS = (
    "os.remove", "os.rmdir", "os.rename", "os.chmod", "os.chown", "os.link", "os.symlink",
    "os.truncate", "os.mkdir", "os.utime", "os.chflags", "os.lchflags", "shutil.rmtree",
    "shutil.chown", "shutil.copytree", "shutil.move", "shutil.make_archive", "shutil.unpack_archive",
)
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC


class Result(tuple):
    """(value, reason) - unpacks and compares as a plain 2-tuple; .stdout and .elapsed ride along."""

    def __new__(cls, value, reason, stdout="", elapsed=0.0, printed=False):
        self = tuple.__new__(cls, (value, reason))
        # printed: the value is what the program printed (no expression value, like a notebook cell)
        self.stdout, self.elapsed, self.printed = stdout, elapsed, printed
        return self

    value = property(lambda self: self[0])
    reason = property(lambda self: self[1])


# ----------------------------------------------------------------------------- the caller's side

def _send_bytes(fd, data):
    data = struct.pack(">I", len(data)) + data
    while data:
        data = data[os.write(fd, data):]


def _send(fd, obj):
    _send_bytes(fd, json.dumps(obj).encode())


# what `python -c` runs in a new worker: read this module's source from stdin, run it as __main__
_BOOT = ("import os, struct\n"
         "def _read(n):\n"
         "    b = b''\n"
         "    while len(b) < n:\n"
         "        c = os.read(0, n - len(b))\n"
         "        if not c:\n"
         "            raise SystemExit(1)\n"
         "        b += c\n"
         "    return b\n"
         "exec(compile(_read(struct.unpack('>I', _read(4))[0]).decode(), 'sandbox-worker', 'exec'))\n")


def _proc_uids():
    """Real uids of all running processes (to avoid picking a busy one, and to reap leftovers)."""
    out = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/status") as f:
                    for line in f:
                        if line.startswith("Uid:"):
                            out[int(name)] = int(line.split()[1])
                            break
            except OSError:
                pass
    return out


def _uid_range():
    """A block of uids the kernel will accept in this (maybe user-namespaced) container."""
    try:
        with open("/proc/self/uid_map") as f:
            maps = [tuple(map(int, line.split())) for line in f if line.strip()]
    except OSError:
        maps = []
    for base, span in ((1_000_000, 1 << 20), (62000, 3000)):
        if any(inside <= base and base + span <= inside + count for inside, _, count in maps):
            return base, span
    return 62000, 3000


def _pick_uids(n):
    import pwd
    used = {p.pw_uid for p in pwd.getpwall()} | set(_proc_uids().values())
    base, span = _uid_range()
    picked = set()
    while len(picked) < n:
        uid = base + random.randrange(span)
        if uid not in used:
            picked.add(uid)
    return sorted(picked)


def _kill_uid(uid):
    """SIGKILL every process of a sandbox uid (only ever called for uids this pool owns)."""
    for _ in range(3):
        pids = [pid for pid, u in _proc_uids().items() if u == uid]
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.01)


def _remove_tmp_files(uids):
    """Files a program left in the world-writable dirs (only reachable past the audit hook)."""
    for d in ("/tmp", "/var/tmp", "/dev/shm"):
        try:
            entries = list(os.scandir(d))
        except OSError:
            continue
        for e in entries:
            try:
                if e.stat(follow_symlinks=False).st_uid not in uids:
                    continue
                if e.is_dir(follow_symlinks=False):
                    shutil.rmtree(e.path, ignore_errors=True)
                else:
                    os.unlink(e.path)
            except OSError:
                pass


class _Worker:
    def __init__(self, pool, slot):
        self.pool, self.slot = pool, slot
        self.uid = pool._uids[slot]
        self.scratch = os.path.join(pool._root, f"w{slot}")
        self.job = None          # (job id, result index, deadline) while busy
        self.ready = False
        self.buf = bytearray()
        self.info = {}
        self.started = time.monotonic()
        self._start()

    def _start(self):
        pool = self.pool
        shutil.rmtree(self.scratch, ignore_errors=True)
        os.mkdir(self.scratch, 0o700)
        if pool._root_mode:
            os.chown(self.scratch, self.uid, self.uid)
        cfg = dict(uid=self.uid if pool._root_mode else None, scratch=self.scratch, preload=list(pool.preload),
                   memory_mb=pool.memory_mb, file_mb=pool.file_mb, audit=pool.audit, netns=pool._root_mode,
                   warmup=pool.warmup)
        env = {"PATH": "/usr/bin:/bin", "HOME": self.scratch, "TMPDIR": self.scratch, "LANG": "C.UTF-8",
               "LC_ALL": "C.UTF-8", "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1",
               "MKL_NUM_THREADS": "1", "NUMEXPR_NUM_THREADS": "1"}
        self.errlog = os.path.join(pool._root, f"w{self.slot}.err")
        with open(self.errlog, "wb") as err:
            # -I: ignore PYTHON* variables, user site and the cwd; -B: never write .pyc as root.
            self.proc = subprocess.Popen(
                [sys.executable, "-I", "-B", "-c", _BOOT, "--sandbox-worker", json.dumps(cfg)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, env=env, cwd=self.scratch,
                close_fds=True, start_new_session=True)
        self.fd_in, self.fd_out = self.proc.stdin.fileno(), self.proc.stdout.fileno()
        try:   # this file's source goes down the pipe: the worker needs no read access to the repo
            _send_bytes(self.fd_in, _worker_source().encode())
        except OSError:
            pass   # it died at once: seen as EOF by the caller's loop
        os.set_blocking(self.fd_out, False)
        self.ready, self.job, self.buf, self.started, self.info = False, None, bytearray(), time.monotonic(), {}

    def kill(self):
        """Kill the worker, its child and anything else of its uid; wipe its scratch dir."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except OSError:
            pass
        self.proc.kill()
        self.proc.wait()
        if self.pool._root_mode:
            _kill_uid(self.uid)
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()
            except OSError:
                pass
        shutil.rmtree(self.scratch, ignore_errors=True)

    def restart(self):
        self.kill()
        self._start()

    def startup_error(self):
        try:
            with open(self.errlog, "rb") as f:
                lines = f.read().decode(errors="replace").strip().splitlines()
            return lines[-1] if lines else f"exit code {self.proc.poll()}"
        except OSError:
            return "unknown"

    def messages(self):
        """Read what is there; return complete messages, or None if the worker is gone or talks garbage."""
        try:
            chunk = os.read(self.fd_out, 1 << 16)
        except BlockingIOError:
            return []
        except OSError:
            return None
        if not chunk:
            return None
        self.buf += chunk
        out = []
        while len(self.buf) >= 4:
            (n,) = struct.unpack(">I", self.buf[:4])
            if n > MAX_MSG_BYTES:
                return None
            if len(self.buf) < 4 + n:
                break
            try:
                out.append(json.loads(bytes(self.buf[4:4 + n])))
            except ValueError:
                return None
            del self.buf[:4 + n]
        return out


_live = weakref.WeakSet()


class Sandbox:
    """A pool of sandbox workers. run() one program, run_many() a batch in parallel; close() when done."""

    def __init__(self, workers=2, timeout=DEFAULT_TIMEOUT, memory_mb=1024, *, preload=DEFAULT_PRELOAD,
                 audit=True, file_mb=4, warmup=True):
        self.n_workers, self.timeout, self.memory_mb = max(1, int(workers)), float(timeout), int(memory_mb)
        self.preload, self.audit, self.file_mb = tuple(preload), bool(audit), int(file_mb)
        self.warmup = bool(warmup)
        self._root_mode = os.geteuid() == 0
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._next_id = 0
        self._closed = False
        self._root = tempfile.mkdtemp(prefix="echo-sandbox-")
        os.chmod(self._root, 0o711)    # workers may enter their own dir, not list the others
        self._uids = _pick_uids(self.n_workers) if self._root_mode else [os.getuid()] * self.n_workers
        self._workers = [_Worker(self, i) for i in range(self.n_workers)]
        _live.add(self)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    @property
    def info(self):
        """What each worker reported once up: uid, network namespace, modules that failed to import."""
        with self._lock:
            if not self._closed:
                self._loop([], [], [], self.timeout)   # no jobs: just wait until every worker is ready
        return [dict(w.info) for w in self._workers]

    def run(self, code, expr=None, timeout=None):
        """Run code as a module; return (str(value), None) or (None, reason). Value: eval(expr) if given,
        else the last line if it is an expression (like a notebook cell), else what the program printed."""
        return self.run_many([(code, expr)], timeout=timeout)[0]

    def run_many(self, jobs, timeout=None):
        """jobs: list of code strings or (code, expr) pairs. Returns one Result per job, in order."""
        jobs = [(j, None) if isinstance(j, str) else (j[0], j[1]) for j in jobs]
        for code, expr in jobs:
            if not isinstance(code, str) or not (expr is None or isinstance(expr, str)):
                raise TypeError("a job is a code string or a (code, expr) pair of strings (expr may be None)")
        if not jobs:
            return []
        timeout = self.timeout if timeout is None else float(timeout)
        with self._lock:
            if self._closed:
                raise RuntimeError("sandbox is closed")
            if os.getpid() != self._pid:
                raise RuntimeError("a Sandbox cannot be used in a forked child; create a new one there")
            results = [None] * len(jobs)
            todo = list(range(len(jobs)))[::-1]
            done = False
            try:
                self._loop(jobs, todo, results, timeout)
                done = True
            finally:
                if not done:   # interrupted: busy workers would answer a job nobody waits for
                    for w in self._workers:
                        if w.job is not None:
                            w.restart()
            return results

    def _loop(self, jobs, todo, results, timeout):
        pending = len(jobs)
        failures = 0
        while pending or not jobs and not all(w.ready for w in self._workers):
            now = time.monotonic()
            for w in self._workers:
                if w.ready and w.job is None and todo:
                    i = todo.pop()
                    self._next_id += 1
                    code, expr = jobs[i]
                    w.job = (self._next_id, i, now + timeout + GRACE)
                    try:
                        _send(w.fd_in, {"id": self._next_id, "code": code, "expr": expr, "timeout": timeout})
                    except OSError:
                        pass   # a dead worker shows up as EOF below
            waits = [w.job[2] - now for w in self._workers if w.job is not None]
            waits += [w.started + STARTUP_TIMEOUT - now for w in self._workers if not w.ready]
            fds = {w.fd_out: w for w in self._workers}
            readable, _, _ = select.select(list(fds), [], [], max(0.0, min(waits, default=1.0)))
            now = time.monotonic()
            for fd in readable:
                w = fds[fd]
                msgs = w.messages()
                if msgs is None:   # died or spoke garbage
                    if not w.ready:
                        failures += 1
                        if failures > 2 * self.n_workers:
                            raise RuntimeError(f"sandbox worker cannot start: {w.startup_error()}")
                    if w.job is not None:
                        results[w.job[1]] = Result(None, "sandbox worker died")
                        pending -= 1
                    w.restart()
                    continue
                for m in msgs:
                    if "ready" in m:
                        w.ready, w.info = True, m
                    elif "error" in m:
                        raise RuntimeError(f"sandbox worker cannot start: {m['error']}")
                    elif w.job is not None and m.get("id") == w.job[0]:
                        results[w.job[1]] = Result(m.get("value"), m.get("reason"), m.get("stdout", ""),
                                                   m.get("elapsed", 0.0), bool(m.get("printed")))
                        pending -= 1
                        w.job = None
            for w in self._workers:
                if w.job is not None and now > w.job[2]:
                    results[w.job[1]] = Result(None, f"timeout after {timeout:g}s (worker unresponsive)")
                    pending -= 1
                    w.restart()
                elif not w.ready and now > w.started + STARTUP_TIMEOUT:
                    raise RuntimeError(f"sandbox worker did not start in {STARTUP_TIMEOUT:g}s")

    def close(self):
        if self._closed or os.getpid() != self._pid:
            return
        self._closed = True
        for w in self._workers:
            w.kill()
        if self._root_mode:
            _remove_tmp_files(set(self._uids))
        shutil.rmtree(self._root, ignore_errors=True)


_default = None
_default_lock = threading.Lock()


def default_sandbox():
    """The shared pool (created on first use, closed at exit; a forked child gets its own)."""
    global _default
    with _default_lock:
        if _default is None or _default._closed or _default._pid != os.getpid():
            workers = max(2, min(8, (os.cpu_count() or 2) // 2))
            _default = Sandbox(workers=workers, timeout=DEFAULT_TIMEOUT)
        return _default


def run_python(code, expr=None, timeout=DEFAULT_TIMEOUT):
    """Run one program in the shared pool: (str(value), None) or (None, reason)."""
    return default_sandbox().run(code, expr, timeout=timeout)


@atexit.register
def _close_all():
    for sb in list(_live):
        try:
            sb.close()
        except Exception:
            pass


_SOURCE = None


def _worker_source():
    global _SOURCE
    if _SOURCE is None:
        with open(os.path.abspath(__file__)) as f:
            _SOURCE = f.read()
    return _SOURCE


# ----------------------------------------------------------------------------- the worker's side

def _recv(fd, deadline=None):
    """One framed message from fd, or None on EOF (or when the deadline passes first)."""
    data = b""
    need = 4
    while len(data) < need:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return None
        chunk = os.read(fd, need - len(data))
        if not chunk:
            return None
        data += chunk
        if need == 4 and len(data) == 4:
            need = 4 + struct.unpack(">I", data)[0]
    return json.loads(data[4:])


def _import_all(names):
    failed = []
    for name in names:
        try:
            __import__(name)
        except Exception:
            failed.append(name)
    return failed


def _become_sandbox(cfg, libc):
    """Drop root for the worker's own uid (if root), forbid regaining it, and enter the scratch dir."""
    uid = cfg["uid"]
    if uid is not None:
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
        try:
            os.setuid(0)
            raise RuntimeError("privilege drop did not hold")
        except PermissionError:
            pass
    libc.prctl(38, 1, 0, 0, 0)   # PR_SET_NO_NEW_PRIVS: a setuid binary cannot give root back
    libc.prctl(4, 0, 0, 0, 0)    # PR_SET_DUMPABLE 0: a child cannot read or write our /proc files
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    os.chdir(cfg["scratch"])
    with open("/proc/self/status") as f:
        vm_kb = next(int(line.split()[1]) for line in f if line.startswith("VmSize:"))
    # the program may allocate memory_mb on top of what the interpreter already maps
    return dict(cfg, as_bytes=vm_kb * 1024 + cfg["memory_mb"] * (1 << 20))


def _serve(fd_in, fd_out, cfg, zygote=None, heavy_re=None):
    """Job loop: read a job, run it in a fresh child (or pass it to the light zygote), answer."""
    import gc
    gc.collect()
    gc.freeze()   # forked children then do not touch (and copy) the preloaded objects
    while True:
        job = _recv(fd_in)
        if job is None:
            os._exit(0)
        out = None
        if zygote and not heavy_re.search(job["code"] + "\n" + (job["expr"] or "")):
            try:
                _send(zygote[1], job)
                out = _recv(zygote[2], time.monotonic() + float(job["timeout"]) + 0.7 * GRACE)
            except (OSError, ValueError):
                out = None
            if out is None:   # the zygote died or hangs: stop using it, never run the job twice
                try:
                    os.kill(zygote[0], signal.SIGKILL)
                    os.waitpid(zygote[0], 0)
                except OSError:
                    pass
                zygote = None
                out = {"value": None, "reason": "sandbox zygote died", "stdout": "", "printed": False, "elapsed": 0.0}
        killed = None
        if out is None:
            out, killed = _run_job(job, cfg)
        out["id"] = job["id"]
        _send(fd_out, out)
        if killed:   # reap a killed child after answering: tearing down a big process takes a while
            os.waitpid(killed, 0)
        _wipe(cfg["scratch"])


def _worker_main(cfg):
    import ctypes
    import logging
    # the protocol moves off fds 0/1 so that nothing printed by an import (or a program) can corrupt it
    devnull = os.open(os.devnull, os.O_RDWR)
    fd_in, fd_out = os.dup(0), os.dup(1)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    sys.stdout = open(os.devnull, "w")
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        netns = bool(cfg["netns"]) and libc.unshare(0x40000000) == 0   # CLONE_NEWNET: no interfaces
        light = [n for n in cfg["preload"] if n in LIGHT_MODULES]
        heavy = [n for n in cfg["preload"] if n not in LIGHT_MODULES]
        failed = _import_all(light)
        zygote = None
        if heavy:
            # Forking a child costs time in proportion to the parent's memory: ~2 ms from a bare
            # interpreter, ~8 ms from one holding sympy. So a small "zygote" is forked off before the big
            # imports and runs the programs that use none of them (nearly all TinyGSM code).
            a_r, a_w = os.pipe()
            b_r, b_w = os.pipe()
            pid = os.fork()
            if pid == 0:
                try:
                    for fd in (fd_in, fd_out, a_w, b_r):
                        os.close(fd)
                    zcfg = _become_sandbox(cfg, libc)
                    libc = None
                    _serve(a_r, b_w, zcfg)
                finally:
                    os._exit(0)
            os.close(a_r)
            os.close(b_w)
            zygote = [pid, a_w, b_r]
        failed += _import_all(heavy)
        if cfg["warmup"] and heavy:
            scope = {}
            for line in WARMUP.strip().splitlines():
                try:
                    exec(line, scope)
                except Exception:
                    pass
        if "math_verify" in sys.modules:   # warm its lazy parser so each child starts hot
            logging.getLogger("math_verify").setLevel(logging.CRITICAL)
            from math_verify import parse, verify
            verify(parse("\\boxed{\\frac{1}{2}}", parsing_timeout=None), parse("\\boxed{0.5}", parsing_timeout=None),
                   timeout_seconds=None)
        cfg = _become_sandbox(cfg, libc)
        libc = None
    except Exception as e:
        _send(fd_out, {"error": f"{type(e).__name__}: {e}"})
        os._exit(1)
    os.dup2(devnull, 2)   # startup errors went to the caller's log; from here on, silence
    heavy_re = re.compile(r"\b(%s|__import__|importlib)\b" % "|".join(map(re.escape, heavy))) if heavy else None
    _send(fd_out, {"ready": True, "uid": os.getuid(), "netns": netns, "preload_failed": failed,
                   "zygote": zygote is not None, "vm_mb": cfg["as_bytes"] // (1 << 20) - cfg["memory_mb"]})
    _serve(fd_in, fd_out, cfg, zygote, heavy_re)


def _run_job(job, cfg):
    """Fork a child for one program and wait for it; (result, pid of a killed child still to reap)."""
    t0 = time.monotonic()
    timeout = float(job["timeout"])
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            _child(job, cfg, wfd, timeout)
        finally:
            os._exit(70)
    os.close(wfd)
    deadline = t0 + timeout
    data, eof = b"", False
    while not eof and len(data) <= MAX_MSG_BYTES:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([rfd], [], [], left)[0]:
            break
        chunk = os.read(rfd, 1 << 16)
        eof = not chunk
        data += chunk
    os.close(rfd)
    status = None
    if eof:   # the child closed its end: it should be exiting now
        while status is None and time.monotonic() < deadline + 0.1:
            p, st = os.waitpid(pid, os.WNOHANG)
            if p:
                status = st
            else:
                time.sleep(0.0005)
    killed = None
    if status is None:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
        killed = pid
    elapsed = round(time.monotonic() - t0, 4)
    try:
        out = json.loads(data) if eof else None
        out = out if isinstance(out, dict) and set(out) == {"value", "reason", "stdout", "printed"} else None
    except ValueError:
        out = None
    if out is None:
        if killed:
            reason = f"timeout after {timeout:g}s"
        elif os.WIFSIGNALED(status):
            sig = os.WTERMSIG(status)
            name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else str(sig)
            reason = f"crashed: killed by {name}" + (" (cpu limit)" if sig == signal.SIGXCPU else "")
        else:
            reason = f"exited with code {os.WEXITSTATUS(status)} before returning a value"
        out = {"value": None, "reason": reason, "stdout": "", "printed": False}
    out["elapsed"] = elapsed
    return out, killed


def _wipe(scratch):
    """Empty the scratch dir between programs (as the worker's uid, which owns everything in it)."""
    if not os.path.basename(os.path.dirname(os.path.abspath(scratch))).startswith("echo-sandbox-"):
        return   # never empty a directory this module did not create
    try:
        entries = os.listdir(scratch)
    except OSError:
        return
    for name in entries:
        path = os.path.join(scratch, name)
        if os.path.isdir(path) and not os.path.islink(path):
            for d, _, _ in os.walk(path):
                try:
                    os.chmod(d, 0o700)
                except OSError:
                    pass
            shutil.rmtree(path, ignore_errors=True)
        else:
            try:
                os.unlink(path)
            except OSError:
                pass


class _Capped:
    """A stdout that keeps the first MAX_STDOUT_CHARS and drops the rest (huge prints cost nothing)."""

    def __init__(self):
        self.parts, self.n = [], 0

    def write(self, s):
        s = str(s)
        if self.n < MAX_STDOUT_CHARS:
            self.parts.append(s[:MAX_STDOUT_CHARS - self.n])
        self.n += len(s)
        return len(s)

    def flush(self):
        pass

    def isatty(self):
        return False

    def getvalue(self):
        return "".join(self.parts)


def _make_hook(scratch, state):
    scratch = os.path.realpath(scratch)
    realpath, fspath, startswith = os.path.realpath, os.fspath, str.startswith

    def inside(path):
        try:
            p = realpath(fspath(path))
            if isinstance(p, bytes):
                p = p.decode(errors="replace")
        except Exception:
            return False
        return p == scratch or startswith(p, scratch + "/")

    def hook(event, args):
        bad = False
        if startswith(event, _DENY):
            bad = True
        elif event == "open":
            path, flags = args[0], args[2]
            if isinstance(path, int):
                pass
            elif isinstance(flags, int) and flags & _WRITE_FLAGS:
                bad = not inside(path)
            else:
                p = str(path)
                bad = startswith(p, "/proc/") and (p.endswith(("/environ", "/mem")) or "/fd/" in p)
        elif event in _PATH_EVENTS:
            bad = not (args and inside(args[0]) and (len(args) < 2 or not isinstance(args[1], str)
                                                     or inside(args[1])))
        if bad:
            if state[0] is None:
                state[0] = event
            raise PermissionError(f"sandbox: {event} is not allowed")
    return hook


def _child(job, cfg, wfd, timeout):
    """In the forked child: limits, then the program, then one JSON line on wfd, then _exit."""
    dumps, write, exit_, str_, type_ = json.dumps, os.write, os._exit, str, type
    os.closerange(3, wfd)
    os.closerange(wfd + 1, 1 << 16)
    cpu = int(timeout) + 2
    for lim, val in ((resource.RLIMIT_AS, cfg["as_bytes"]), (resource.RLIMIT_CPU, (cpu, cpu + 1)),
                     (resource.RLIMIT_FSIZE, cfg["file_mb"] << 20), (resource.RLIMIT_NOFILE, 64),
                     (resource.RLIMIT_NPROC, 1), (resource.RLIMIT_CORE, 0)):
        resource.setrlimit(lim, val if isinstance(val, tuple) else (val, val))
    out = _Capped()
    sys.stdout = sys.stderr = out
    sys.stdin = io.StringIO("")
    state = [None]
    if cfg["audit"]:
        sys.addaudithook(_make_hook(cfg["scratch"], state))
    value, reason, printed = None, None, False
    try:
        g = {"__name__": "__main__", "__builtins__": builtins}
        tree = ast.parse(job["code"], "<program>")
        last = None
        if job["expr"] is None and tree.body and isinstance(tree.body[-1], ast.Expr):
            last = ast.Expression(tree.body.pop().value)
        exec(compile(tree, "<program>", "exec"), g)
        if job["expr"] is not None:
            value = str_(eval(compile(job["expr"], "<expr>", "eval"), g))
        elif last is not None:
            v = eval(compile(last, "<program>", "eval"), g)
            value = None if v is None else str_(v)
        if value is None and job["expr"] is None:
            value = out.getvalue().strip() or None
            printed = value is not None
            reason = None if printed else "no value: the last line is not an expression and nothing was printed"
    except MemoryError:
        value, reason = None, "memory limit (MemoryError)"
    except BaseException as e:   # SystemExit and KeyboardInterrupt too: the program never ends the child
        try:
            msg = str_(e)[:300]
        except BaseException:
            msg = "?"
        value, reason = None, f"error: {type_(e).__name__}: {msg}".rstrip(": ")
    if state[0] is not None:
        value, reason, printed = None, f"blocked: {state[0]}", False
    if value is not None:
        value = value[:MAX_VALUE_CHARS]
    try:
        data = dumps({"value": value, "reason": reason, "stdout": out.getvalue(), "printed": printed}).encode()
        while data:
            data = data[write(wfd, data):]
    except BaseException:
        exit_(71)
    exit_(0)


if __name__ == "__main__" and sys.argv[1:2] == ["--sandbox-worker"]:
    _worker_main(json.loads(sys.argv[2]))
