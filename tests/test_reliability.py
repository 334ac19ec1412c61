"""
Fault tolerance and bad input across the scripts.

- kill -9 harness: pretrain.py and rl.py are SIGKILLed at seeded random moments during training and resumed with
  --resume; every checkpoint on disk must load after every kill, the final weights must equal an uninterrupted
  run's bitwise, and metrics.jsonl must hold each train step once.
- bad data in a real source's local jsonl (missing columns, non-UTF-8 bytes, an over-long question, an empty
  file, a truncated .gz): skipped and counted, or a one-line error naming the file.
- bad checkpoints for rl.py (truncated, another vocabulary) and an out dir that cannot be written (pretrain.py,
  rl.py, evaluate.py): one line on stderr, exit code != 0, before any work.
"""
import gzip
import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import asdict

import pytest
import torch

from common import UserError
from model import GPT, GPTConfig, CheckpointError, load_checkpoint, save_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIX = os.path.join(ROOT, "tests", "fixtures")
ENV = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")

PRETRAIN_TINY = ["--mix", "syn-tinygsm:1,syn-omi2:1,syn-finemath:0.5", "--unit", "300", "--n-layer", "1",
                 "--n-embd", "32", "--n-head", "2", "--block-size", "64", "--batch-size", "4",
                 "--total-batch-size", "8", "--warmup-iters", "2", "--lr", "3e-3", "--samples", "0", "--no-tqdm",
                 "--threads", "1", "--seed", "5", "--max-iters", "60", "--ckpt-interval", "2",
                 "--eval-interval", "0", "--log-interval", "1"]


def run(script, args, check=True):
    p = subprocess.run([sys.executable, script] + [str(a) for a in args], cwd=ROOT, capture_output=True, text=True,
                       env=ENV, timeout=300)
    if check and p.returncode != 0:
        raise AssertionError(p.stderr[-3000:])
    return p


def one_line_error(main, args, capsys):
    """Run a script's main(argv) in-process (no interpreter start-up: fast); it must exit != 0 with one stderr line.
    Anything but a UserError would escape main_guard as an exception and fail the test with its traceback."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in args])
    assert e.value.code not in (0, None)
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), lines
    return lines[0]


def checkpoints(out):
    """Every checkpoint a reader could pick up (the atomic writer's .tmp-* files are not checkpoints)."""
    return sorted(os.path.join(out, f) for f in os.listdir(out) if f.endswith(".pt") and not f.startswith("."))


def kill_and_resume(script, first_args, out, rng, kills=3, max_delay=0.3):
    """Start script, SIGKILL it a random time after it logs a new train step, resume with
    --resume (or start again if it died before its first checkpoint), `kills` times; then let it finish.
    After every kill every checkpoint on disk must load. Returns the step of ckpt.pt after each kill that landed."""
    landed = []
    for i in range(kills + 1):
        resume = os.path.exists(os.path.join(out, "ckpt.pt"))
        args = ["--out-dir", out, "--resume", "--no-tqdm", "--threads", "1"] if resume else first_args
        p = subprocess.Popen([sys.executable, script] + [str(a) for a in args], cwd=ROOT, env=ENV,
                             stdout=subprocess.DEVNULL if i < kills else subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True)
        try:
            if i == kills:  # the last invocation runs to the end
                outp, _ = p.communicate(timeout=300)
                assert p.returncode == 0, outp[-3000:]
                break
            # wait until this invocation has written a checkpoint (a new ckpt.pt inode: save is write + rename),
            # so the kill hits the training loop (or the next save), not start-up, and every kill makes progress
            ck, deadline = os.path.join(out, "ckpt.pt"), time.time() + 120
            ino0 = os.stat(ck).st_ino if resume else None
            while p.poll() is None and time.time() < deadline:
                try:
                    if os.stat(ck).st_ino != ino0:
                        break
                except FileNotFoundError:
                    pass
                time.sleep(0.01)
            time.sleep(rng.uniform(0.0, max_delay))
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
                landed.append(None)
            p.communicate(timeout=300)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
        for path in checkpoints(out):
            try:
                load_checkpoint(path)
            except CheckpointError as e:
                raise AssertionError(f"after kill {i + 1}: {e}")
        if landed and landed[-1] is None:
            ck = os.path.join(out, "ckpt.pt")
            landed[-1] = load_checkpoint(ck)["step"] if os.path.exists(ck) else 0
    return landed


def assert_same_weights(a, b):
    sa, sb = load_checkpoint(a), load_checkpoint(b)
    assert sa["step"] == sb["step"]
    for k in sa["model"]:
        assert torch.equal(sa["model"][k], sb["model"][k]), k  # bitwise


def train_steps(out):
    """Steps of the train records in metrics.jsonl (a line a running writer has not finished is ignored)."""
    steps = []
    try:
        with open(os.path.join(out, "metrics.jsonl")) as f:
            for ln in f:
                try:
                    rec = json.loads(ln)
                except json.JSONDecodeError:
                    continue
                if rec.get("type") == "train":
                    steps.append(rec["step"])
    except FileNotFoundError:
        pass
    return steps


# ------------------------------------------------------------------------------------------ kill -9
def test_pretrain_survives_kill_9(tmp_path):
    data = str(tmp_path / "data")
    from data import prepare_mixture  # build the mixture once, so the kills land in training, not in the build
    prepare_mixture("syn-tinygsm:1,syn-omi2:1,syn-finemath:0.5", 4096, data, seed=5, unit=300, quiet=True)
    ref, out = str(tmp_path / "ref"), str(tmp_path / "killed")
    run("pretrain.py", PRETRAIN_TINY + ["--data-dir", data, "--out-dir", ref])
    landed = kill_and_resume("pretrain.py", PRETRAIN_TINY + ["--data-dir", data, "--out-dir", out], out,
                             rng=random.Random(0))
    print(f"pretrain: kills landed with ckpt.pt at steps {landed}")
    # the first kill hit the training loop (60 steps: on a quiet machine 20 tiny steps ended inside the kill's delay)
    assert landed and all(0 < s < 60 for s in landed[:1])
    assert_same_weights(os.path.join(ref, "ckpt.pt"), os.path.join(out, "ckpt.pt"))
    assert train_steps(out) == list(range(1, 61))


def tiny_rl_ckpt(path, vocab=4096, tok_vocab=4096, block_size=256):
    from data.tokenizer import get_tokenizer
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=vocab, n_layer=1, n_head=2, n_embd=32, block_size=block_size)
    save_checkpoint(str(path), {"model": GPT(cfg, verbose=False).state_dict(), "config": asdict(cfg),
                                "tokenizer": get_tokenizer(tok_vocab).spec, "step": 0, "kind": "pretrain"})
    return str(path)


def test_rl_survives_kill_9(tmp_path):
    init = tiny_rl_ckpt(tmp_path / "init.pt")
    flags = ["--ckpt", init, "--prompts-per-step", "2", "--samples-per-prompt", "2", "--max-new-tokens", "8",
             "--eval-interval", "0", "--max-steps", "6", "--prompts", "32", "--ckpt-interval", "1",
             "--device", "cpu", "--threads", "1", "--no-tqdm"]
    ref, out = str(tmp_path / "ref"), str(tmp_path / "killed")
    run("rl.py", flags + ["--out-dir", ref])
    landed = kill_and_resume("rl.py", flags + ["--out-dir", out], out, rng=random.Random(1),
                             max_delay=0.5)
    print(f"rl: kills landed with ckpt.pt at steps {landed}")
    assert landed and all(0 < s < 6 for s in landed[:1])
    assert_same_weights(os.path.join(ref, "ckpt.pt"), os.path.join(out, "ckpt.pt"))
    assert train_steps(out) == list(range(1, 7))


# ------------------------------------------------------------------------------------------ bad data
def test_bad_rows_in_a_local_source_are_skipped_and_counted(tmp_path):
    from data import prepare_mixture, open_mixture
    from data.sources import load_documents
    good = json.loads(open(os.path.join(FIX, "tinygsm.jsonl")).readline())
    long_q = " ".join(["Ann has 3 pens and buys 4 more."] * 40)  # far longer than a 64-token context
    bad = tmp_path / "tinygsm.jsonl"
    bad.write_bytes(b"\n".join([
        json.dumps(good).encode(),
        json.dumps({"question": "no code column"}).encode(),              # missing a column
        b'{"question": "caf\xe9 costs 3", "code": "return 3"}',           # latin-1 byte: not UTF-8
        b"\xff\xfe\x00garbage",                                           # not JSON, not UTF-8
        json.dumps({"question": long_q, "code": good["code"]}).encode(),  # longer than the context: kept
        b"",
    ]))
    docs, c = load_documents("tinygsm", str(bad))
    assert len(docs) == 2 and c == {"rows": 5, "skipped": 3, "filtered": 0}
    d = prepare_mixture(f"tinygsm={bad}:1,syn-omi2:1", 4096, str(tmp_path / "data"), unit=60, quiet=True)
    s = open_mixture(d)["meta"]["sources"]["tinygsm"]
    assert s["documents"] == 2 and s["skipped"] == 3

    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    with pytest.raises(UserError, match="empty.jsonl"):
        prepare_mixture(f"omi2={empty}:1,syn-omi2:1", 4096, str(tmp_path / "data"), unit=60, quiet=True)

    cut = tmp_path / "cut.jsonl.gz"
    cut.write_bytes(gzip.compress((json.dumps(good) + "\n").encode() * 200)[:300])  # a truncated download
    with pytest.raises(UserError, match="cut.jsonl.gz"):
        load_documents("tinygsm", str(cut))


def test_pretrain_on_an_empty_source_file_is_one_line(tmp_path, capsys):
    import pretrain
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    line = one_line_error(pretrain.main, ["--mix", f"omi2={empty}:1,syn-omi2:1", "--unit", "60", "--data-dir",
                                          tmp_path / "data", "--out-dir", tmp_path / "out", "--max-iters", "1",
                                          "--no-tqdm"], capsys)
    assert "empty.jsonl" in line and "no usable documents" in line


# ------------------------------------------------------------------------------------------ bad checkpoints
@pytest.mark.parametrize("case", ["truncated", "bigger-tokenizer", "smaller-tokenizer", "resume-truncated"])
def test_rl_bad_checkpoint_is_one_line(tmp_path, case, capsys):
    import rl
    ck = tmp_path / "init.pt"
    out = tmp_path / "out"
    args = ["--ckpt", ck, "--out-dir", out, "--prompts-per-step", "2", "--samples-per-prompt", "2",
            "--max-new-tokens", "4", "--eval-interval", "0", "--max-steps", "1", "--prompts", "8", "--device", "cpu",
            "--no-tqdm"]
    if case == "truncated":
        tiny_rl_ckpt(ck)
        ck.write_bytes(ck.read_bytes()[:5000])
        want = "corrupt"
    elif case == "bigger-tokenizer":  # token ids past the model's embedding
        tiny_rl_ckpt(ck, vocab=2049, tok_vocab=4096)
        want = "vocab"
    elif case == "smaller-tokenizer":  # the model could sample ids the tokenizer does not have
        tiny_rl_ckpt(ck, vocab=4096, tok_vocab=2049)
        want = "vocab"
    else:
        out.mkdir()
        (out / "ckpt.pt").write_bytes(b"PK\x03\x04 not a whole checkpoint")
        args = ["--out-dir", out, "--resume", "--device", "cpu"]
        want = "cannot resume"
    line = one_line_error(rl.main, args, capsys)
    assert want in line, line


# ------------------------------------------------------------------------------------------ unwritable out dir
@pytest.mark.parametrize("script", ["pretrain", "rl", "evaluate"])
def test_unwritable_out_dir_is_one_line_before_any_work(tmp_path, script, capsys):
    import importlib
    blocker = tmp_path / "afile"
    blocker.write_text("x")  # a path under a regular file cannot be created, even by root
    out = blocker / "x"
    data = tmp_path / "data"
    if script == "pretrain":
        args = ["--mix", "syn-omi2:1", "--unit", "60", "--data-dir", data, "--out-dir", out, "--max-iters", "1"]
    elif script == "rl":
        args = ["--ckpt", tiny_rl_ckpt(tmp_path / "init.pt"), "--out-dir", out, "--device", "cpu"]
    else:
        args = ["--ckpt", tiny_rl_ckpt(tmp_path / "init.pt", block_size=128), "--limit", "2", "--out", out,
                "--device", "cpu"]
    line = one_line_error(importlib.import_module(script).main, args, capsys)
    assert "cannot write" in line and "afile" in line, line
    assert not data.exists()  # no mixture was built


def test_check_out_dir_removes_temp_files_of_a_killed_write(tmp_path):
    from common import check_out_dir
    (tmp_path / ".tmp-abcckpt.pt").write_bytes(b"half a checkpoint")
    (tmp_path / "ckpt.pt").write_bytes(b"the real one")
    check_out_dir(str(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt"]


def test_a_rollout_batch_of_hostile_outputs_is_graded_in_bounded_time():
    # RL under hostile model outputs: every rollout a fork bomb, an infinite loop, a memory bomb or a megabyte
    # of text. Grading must finish within (rounds of timeouts) x (timeout + grace), and give reward 0.
    import time
    from classify import analyze_batch
    from sandbox import Sandbox
    bodies = ["import os\n    while True:\n        os.fork()",
              "while True:\n        pass",
              "x = bytearray(1 << 34)\n    return len(x)",
              "x = [0] * (10 ** 10)\n    return 1"]
    texts = [f"def simple_math_problem() -> int:\n    {b}\n    return 18\n" for b in bodies] * 2
    texts.append("\\boxed{" + "9" * (1 << 20) + "}")  # a megabyte of text with an absurd answer
    texts.append("x" * (1 << 20))
    timeout, workers = 1.0, 2
    with Sandbox(workers=workers, timeout=timeout, preload=()) as pool:
        t = time.monotonic()
        res = analyze_batch(texts, ["18"] * len(texts), pool=pool)
        elapsed = time.monotonic() - t
        assert all(r["correct"] is False for r in res)
        assert elapsed < (len(texts) / workers) * (timeout + 1.0)
        # the pool still works afterwards
        assert analyze_batch(["def simple_math_problem() -> int:\n    return 18\n"], ["18"], pool=pool)[0]["correct"]


def test_a_full_disk_is_one_line_and_keeps_the_previous_file(tmp_path):
    # a 64 KiB tmpfs stands in for a full disk (needs root and mount rights; skipped elsewhere)
    import subprocess as sp
    import pytest
    import torch
    from common import UserError, atomic_write_bytes
    from model import save_checkpoint
    d = tmp_path / "small"
    d.mkdir()
    if sp.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(d)], capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (not root, or no mount rights)")
    try:
        atomic_write_bytes(d / "metrics.json", b"old")
        with pytest.raises(UserError, match="No space left") as e:
            atomic_write_bytes(d / "metrics.json", b"x" * (1 << 20))
        assert "\n" not in str(e.value)
        with pytest.raises(UserError, match="intact") as e:
            save_checkpoint(d / "ckpt.pt", {"model": {"w": torch.zeros(1 << 18)}, "config": {}})
        assert "\n" not in str(e.value)
        assert (d / "metrics.json").read_bytes() == b"old"
        assert sorted(p.name for p in d.iterdir()) == ["metrics.json"]  # no temp file left behind
    finally:
        sp.run(["umount", str(d)])
