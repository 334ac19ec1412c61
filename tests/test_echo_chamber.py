"""The main job end to end at a tiny size: every stage runs, the result file holds the before/after tables."""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_main_job_runs_end_to_end(tmp_path):
    out = str(tmp_path / "echo")
    cmd = [sys.executable, "echo_chamber.py", "--out-dir", out, "--seed", "3", "--pretrain-iters", "4",
           "--rl-steps", "1", "--eval-limit", "3", "--no-tqdm", "--forced-formats", "--forced-limit", "3",
           "--pretrain-args", f"--n-layer 1 --n-embd 32 --n-head 2 --block-size 128 --batch-size 4 "
                              f"--total-batch-size 4 --unit 200 --samples 0 --eval-interval 0 "
                              f"--data-dir {tmp_path / 'cache'}",
           "--rl-args", "--eval-n 3 --prompts-per-step 2 --samples-per-prompt 2 --eval-samples 0 "
                        "--max-new-tokens 8"]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    res = json.load(open(os.path.join(out, "rl-grpo-s1", "result.json")))
    for k in ("test_before", "test_after", "hard_before", "hard_after"):
        assert set(res[k]) == {"pass@1", "format_shares", "format_accuracy", "format_accuracy_se", "num_problems"}
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
    keys = ("pass@1", "format_shares", "format_accuracy", "format_accuracy_se", "num_problems")
    assert res["test_before"] == {k: evals[0][k] for k in keys}
    assert res["test_after"] == {k: evals[1][k] for k in keys}
    assert res["hard_before"]["pass@1"] == json.load(open(os.path.join(
        out, "rl-grpo-s1", "eval-synthetic-hard-before", "summary.json")))["pass@1"]
    assert os.path.exists(os.path.join(out, "rl-grpo-s1", "formats.png"))
    assert "held-out synthetic test set" in p.stdout
    # --forced-formats: the pretrained model evaluated with each format's opening forced
    for fmt in ("tinygsm", "omi1", "omi2"):
        sm = json.load(open(os.path.join(out, "pretrain", f"eval-forced-{fmt}", "summary.json")))
        assert sm["force_format"] == fmt and sm["n"] == 4 and sm["temperature"] == 0.7 and sm["top_p"] == 1.0
        f = res["forced_before"][fmt]
        assert f["pass@1"] == sm["pass@1"] and f["sampled_pass@1"] == sm["sampled"]["pass@k"]["1"]
        assert f["num_problems"] == sm["num_problems"] == 3
    assert res["train"]["samples"] == 2 * 2 and res["train"]["steps"] == 1
    assert res["params"] > 0 and res["rl_args"].startswith("--eval-n 3")
    # a second run reuses the complete pretraining, forced evals and RL instead of running them again
    p2 = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert p2.returncode == 0 and p2.stdout.count("(complete, reused)") == 2, p2.stdout[-2000:]
    assert "$ rl.py" not in p2.stdout and "$ pretrain.py" not in p2.stdout and "$ evaluate.py" not in p2.stdout
    assert json.load(open(os.path.join(out, "rl-grpo-s1", "result.json")))["test_after"] == res["test_after"]
    # --rl-name: another setting on the same pretrained model gets its own folder
    p3 = subprocess.run(cmd + ["--rl-name", "other"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert p3.returncode == 0 and os.path.exists(os.path.join(out, "rl-other", "result.json")), p3.stderr[-2000:]


def test_seeds_aggregate_counts_checks_and_gives_mean_and_standard_error():
    sys.path.insert(0, ROOT)
    import echo_chamber
    m, se = echo_chamber.mean_se([0.1, 0.3])
    assert abs(m - 0.2) < 1e-12 and abs(se - 0.1) < 1e-12  # std 0.1414 / sqrt(2)
    assert echo_chamber.mean_se([0.5]) == (0.5, None)

    def res(seed, before, after, top_after, winner, ok):
        shares = lambda top: {"tinygsm": 1 - top, "omi1": top, "omi2": 0.0, "other": 0.0}
        return {"seed": seed, "out": f"o{seed}", "winner": winner, "most_frequent_before": "omi2",
                "most_accurate_before": "omi1", "total_seconds": 600.0,
                "test_before": {"pass@1": before, "format_shares": shares(0.5)},
                "test_after": {"pass@1": after, "format_shares": shares(top_after)},
                "hard_before": {"pass@1": 0.01}, "hard_after": {"pass@1": 0.02},
                "checks": {"after: one format at 90% or more": ok, "pass@1 higher after RL": after > before}}
    agg = echo_chamber.aggregate([res(1, 0.1, 0.3, 0.95, "omi1", True), res(2, 0.2, 0.1, 0.6, "tinygsm", False),
                                  res(3, 0.1, 0.2, 0.92, "omi1", True)])
    assert agg["checks"] == {"after: one format at 90% or more": 2, "pass@1 higher after RL": 2}
    assert agg["winners"] == {"omi1": 2, "tinygsm": 1}
    assert agg["winner_was_most_accurate"] == 2 and agg["winner_was_most_frequent"] == 0
    after = agg["numbers"]["test pass@1 after"]
    assert abs(after["mean"] - 0.2) < 1e-12 and abs(after["se"] - (0.01 / 3) ** 0.5) < 1e-12
    assert abs(agg["numbers"]["top format share after"]["mean"] - (0.95 + 0.6 + 0.92) / 3) < 1e-12


def test_bad_seeds_are_one_line_errors():
    for flags, needle in ((["--seeds", "1,x"], "comma-separated integers"), (["--seeds", "2,2"], "distinct"),
                          (["--seeds", "1,2", "--out-dir", "o"], "--out-dir names one seed"),
                          (["--rl-name", "a/b"], "--rl-name must be")):
        p = subprocess.run([sys.executable, "echo_chamber.py"] + flags, cwd=ROOT, capture_output=True, text=True)
        assert p.returncode != 0 and needle in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
