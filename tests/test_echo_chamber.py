"""The main job end to end at a tiny size: every stage runs, the result file holds the before/after tables."""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_main_job_runs_end_to_end(tmp_path):
    out = str(tmp_path / "echo")
    cmd = [sys.executable, "echo_chamber.py", "--out-dir", out, "--seed", "3", "--pretrain-iters", "4",
           "--rl-steps", "1", "--eval-limit", "3", "--no-tqdm",
           "--pretrain-args", f"--n-layer 1 --n-embd 32 --n-head 2 --block-size 128 --batch-size 4 "
                              f"--total-batch-size 4 --unit 200 --samples 0 --eval-interval 0 "
                              f"--data-dir {tmp_path / 'cache'}",
           "--rl-args", "--eval-n 3 --prompts-per-step 2 --samples-per-prompt 2 --eval-samples 0 "
                        "--max-new-tokens 8"]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    res = json.load(open(os.path.join(out, "rl-grpo-s1", "result.json")))
    for k in ("test_before", "test_after", "hard_before", "hard_after"):
        assert set(res[k]) == {"pass@1", "format_shares", "format_accuracy"}
        assert abs(sum(res[k]["format_shares"].values()) - 1.0) < 1e-9
    # each check is the value its numbers give (a check that always said True or False would fail here)
    b, a, hb, ha = res["test_before"], res["test_after"], res["hard_before"], res["hard_after"]
    real = [f for f in b["format_shares"] if f != "other"]
    assert res["checks"] == {
        "before: no format above 60% of greedy outputs": max(b["format_shares"][f] for f in real) <= 0.60,
        "after: one format at 90% or more": max(a["format_shares"][f] for f in real) >= 0.90,
        "pass@1 higher after RL": a["pass@1"] > b["pass@1"],
        "hard set pass@1 higher after RL (transfer)": ha["pass@1"] > hb["pass@1"]}
    # the test set's before / after are rl.py's own step-0 and last greedy evals, not a second evaluation
    evals = [json.loads(ln) for ln in open(os.path.join(out, "rl-grpo-s1", "metrics.jsonl"))]
    evals = [r for r in evals if r["type"] == "eval"]
    assert [r["step"] for r in evals] == [0, 1]
    assert res["test_before"] == {k: evals[0][k] for k in ("pass@1", "format_shares", "format_accuracy")}
    assert res["test_after"] == {k: evals[1][k] for k in ("pass@1", "format_shares", "format_accuracy")}
    assert res["hard_before"]["pass@1"] == json.load(open(os.path.join(
        out, "rl-grpo-s1", "eval-synthetic-hard-before", "summary.json")))["pass@1"]
    assert os.path.exists(os.path.join(out, "rl-grpo-s1", "formats.png"))
    assert "held-out synthetic test set" in p.stdout
    # a second run reuses the complete pretraining instead of training again
    p2 = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert p2.returncode == 0 and "(complete, reused)" in p2.stdout
