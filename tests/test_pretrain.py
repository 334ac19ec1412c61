import json
import os
import subprocess
import sys

import pytest
import torch

from model import PRESETS, load_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--mix", "syn-tinygsm:1,syn-omi2:1,syn-finemath:0.5", "--unit", "300", "--n-layer", "1", "--n-embd", "32",
        "--n-head", "2", "--block-size", "64", "--batch-size", "4", "--total-batch-size", "8", "--warmup-iters", "2",
        "--lr", "3e-3", "--samples", "0", "--no-tqdm", "--threads", "1", "--seed", "5"]


def run(args, cwd=ROOT, env=None, check=True, cmd=None):
    p = subprocess.run((cmd or [sys.executable, "pretrain.py"]) + args, cwd=cwd, capture_output=True, text=True,
                       env=env, timeout=300)
    if check and p.returncode != 0:
        raise AssertionError(p.stderr[-3000:])
    return p


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("data_cache"))


def records(out):
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_loss_falls_and_checkpoint_is_complete(tmp_path, data_dir):
    out = str(tmp_path / "run")
    run(TINY + ["--data-dir", data_dir, "--out-dir", out, "--max-iters", "30", "--eval-interval", "15",
                "--ckpt-interval", "15"])
    recs = records(out)
    evals = [r for r in recs if r["type"] == "eval"]
    assert evals[0]["step"] == 0 and evals[-1]["step"] == 30
    assert set(evals[0]["val_loss"]) == {"syn-tinygsm", "syn-omi2", "syn-finemath"}  # per source
    assert evals[-1]["val_loss_mean"] < evals[0]["val_loss_mean"] - 1.0
    ck = load_checkpoint(os.path.join(out, "ckpt.pt"))
    assert ck["step"] == 30 and ck["kind"] == "pretrain"
    assert ck["tokenizer"]["vocab_size"] == PRESETS["toy"]["vocab_size"] and ck["config"]["n_layer"] == 1
    assert "optimizer" in ck and ck["args"]["mix"].startswith("syn-tinygsm")
    with open(os.path.join(out, "config.json")) as f:
        assert json.load(f)["max_iters"] == 30


def test_interrupted_then_resumed_equals_uninterrupted(tmp_path, data_dir):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    common = TINY + ["--data-dir", data_dir, "--max-iters", "12", "--eval-interval", "5", "--ckpt-interval", "5"]
    run(common + ["--out-dir", a])
    run(common + ["--out-dir", b, "--stop-after", "7"])
    assert load_checkpoint(os.path.join(b, "ckpt.pt"))["step"] == 7
    run(["--out-dir", b, "--resume", "--no-tqdm"])
    sa, sb = load_checkpoint(os.path.join(a, "ckpt.pt")), load_checkpoint(os.path.join(b, "ckpt.pt"))
    assert sb["step"] == 12
    for k in sa["model"]:
        assert torch.equal(sa["model"][k], sb["model"][k]), k  # bitwise
    # the log of the resumed run has each train step once
    steps = [r["step"] for r in records(b) if r["type"] == "train"]
    assert steps == sorted(set(steps))


def test_torchrun_two_processes_match_one(tmp_path, data_dir):
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    common = TINY + ["--data-dir", data_dir, "--max-iters", "4", "--eval-interval", "0", "--ckpt-interval", "4",
                     "--batch-size", "2"]
    run(common + ["--out-dir", one])
    env = dict(os.environ, OMP_NUM_THREADS="1")
    run(common + ["--out-dir", two], env=env,
        cmd=[sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "pretrain.py"])
    s1, s2 = load_checkpoint(os.path.join(one, "ckpt.pt")), load_checkpoint(os.path.join(two, "ckpt.pt"))
    assert s2["args"]["total_batch_size"] == 8
    for k in s1["model"]:
        assert torch.allclose(s1["model"][k], s2["model"][k], atol=1e-5), k


@pytest.mark.parametrize("flags, needle", [
    (["--mix", "nosuch:1"], "nosuch"),
    (["--mix", "syn-omi1:-2"], "weight"),
    (["--batch-size", "3", "--total-batch-size", "8"], "multiple"),
    (["--n-embd", "30", "--n-head", "4"], "n-head"),
    (["--mlp-hidden", "-4"], "--mlp-hidden"),
    (["--n-layer", "0"], "--n-layer"),
    (["--device", "cuda:0"], "no CUDA device") if not torch.cuda.is_available() else (["--batch-size", "0"], "--batch-size"),
    (["--max-it", "5"], "--max-it"),  # no abbreviations: a prefix is an error, never a silent --max-iters
])
def test_bad_flags_give_one_line_errors(tmp_path, data_dir, flags, needle):
    p = run(TINY + ["--data-dir", data_dir, "--out-dir", str(tmp_path / "x"), "--max-iters", "1"] + flags,
            check=False)
    assert p.returncode != 0
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), p.stderr[-2000:]
    assert needle in lines[0]


def test_unknown_flag_and_resume_without_checkpoint(tmp_path):
    p = run(["--no-such-flag"], check=False)
    assert p.returncode == 2 and "unrecognized arguments" in p.stderr
    p = run(["--out-dir", str(tmp_path / "empty"), "--resume"], check=False)
    assert p.returncode != 0 and len(p.stderr.strip().splitlines()) == 1 and "no checkpoint" in p.stderr


def test_batches_on_the_manifest_are_a_pure_function_of_seed_and_step(tmp_path):
    # the loader reads a mixture's unit files through memmaps; what a step sees depends on (seed, step) only, so a
    # fresh loader (a resumed run) gives exactly what one that has already walked through other epochs gives
    from data import open_mixture, prepare_mixture
    from pretrain import Batches
    d = prepare_mixture("syn-omi1:2,syn-finemath:0.5", 4096, str(tmp_path), unit=100, quiet=True)
    train = open_mixture(d)["train"]
    walked, fresh = Batches(train, 64, seed=3), Batches(train, 64, seed=3)
    n = walked.n_chunks
    for j in (0, n + 5, 3 * n + 1):  # three epochs, each its own permutation
        walked.get(j, 4)
    assert torch.equal(walked.get(7, 8), fresh.get(7, 8))
    assert torch.equal(walked.get(2 * n, 3), Batches(train, 64, seed=3).get(2 * n, 3))
    assert not torch.equal(Batches(train, 64, seed=4).get(7, 8), fresh.get(7, 8))
    epoch = sorted(map(tuple, torch.cat([fresh.get(j, 1) for j in range(n)]).tolist()))
    chunks = sorted(tuple(int(t) for t in train[k * 64:k * 64 + 65]) for k in range(n))
    assert epoch == chunks  # one epoch visits every chunk of the stream once


def test_torchrun_two_processes_on_the_toy_preset_defaults(tmp_path):
    # the toy preset's batch (8 sequences, micro-batch 8) under 2 processes: 4 each, no accumulation; the first
    # process builds the data while the second waits for its manifest on the filesystem, outside any collective
    out, data = str(tmp_path / "run"), str(tmp_path / "data")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    run(["--preset", "toy", "--max-iters", "2", "--unit", "300", "--eval-interval", "0", "--samples", "0",
         "--no-tqdm", "--data-dir", data, "--out-dir", out], env=env,
        cmd=[sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "pretrain.py"])
    ck = load_checkpoint(os.path.join(out, "ckpt.pt"))
    with open(os.path.join(out, "config.json")) as f:
        cfg = json.load(f)
    assert ck["step"] == 2 and cfg["world_size"] == 2 and cfg["batch_size"] == 4 and cfg["grad_accum"] == 1
    assert cfg["total_batch_size"] == 8 and cfg["mix"] == "syn-tinygsm:1,syn-omi1:1,syn-omi2:1,syn-finemath:0.25"
