"""README's result tables are generated from the files in results/ (scripts/readme_tables.py), never by hand."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
import readme_tables  # noqa: E402


def test_readme_tables_match_their_result_files():
    p = subprocess.run([sys.executable, "scripts/readme_tables.py", "--check"], cwd=ROOT, capture_output=True,
                       text=True)
    assert p.returncode == 0, p.stderr


def test_tables_are_rendered_from_the_files(tmp_path):
    (tmp_path / "main-job").mkdir()
    bench = {"device": "cpu-x", "cpu_count": 2, "torch": "t", "data_rows": [10, 40], "data_52b_hours_16_cores": 7.5,
             "data_peak_ratio_big_vs_small": 1.05, "data_speedup_2w_10": 1.7, "data_speedup_2w_40": 1.9,
             "data_tokens_10": 1000, "data_tokens_40": 4000}
    for n in (10, 40):
        for w in (1, 2):
            bench.update({f"data_tok_per_s_{n}_w{w}": 1234 * w + n, f"data_build_s_{n}_w{w}": 1.0,
                          f"data_wall_s_{n}_w{w}": 2.0, f"data_peak_mb_{n}_w{w}": 300.0 + n})
    (tmp_path / "bench-data.json").write_text(json.dumps(bench))
    ev = lambda step, p1, omi1: {"step": step, "pass@1": p1, "format_shares": {"tinygsm": 1 - omi1, "omi1": omi1},
                                 "format_accuracy": {"tinygsm": 0.1, "omi1": 0.3}}
    res = {"seed": 1337, "out": "o", "winner": "omi1", "most_frequent_before": "tinygsm",
           "most_accurate_before": "omi1", "total_seconds": 780.0, "cpu": "cpu-x",
           "test_before": ev(0, 0.125, 0.4), "test_after": ev(30, 0.375, 0.95),
           "hard_before": {"pass@1": 0.01}, "hard_after": {"pass@1": 0.02},
           "checks": {"a": True, "b": False}, "evals": [ev(0, 0.125, 0.4), ev(30, 0.375, 0.95)]}
    (tmp_path / "main-job" / "seed1337.json").write_text(json.dumps(res))
    readme = tmp_path / "README.md"
    readme.write_text("x\n<!-- table: bench-data -->\nold\n<!-- /table -->\ny\n<!-- table: main-job-seeds -->\n"
                      "<!-- /table -->\n<!-- table: main-job-steps -->\n<!-- /table -->\n")
    assert readme_tables.main(["--readme", str(readme), "--results", str(tmp_path), "--check"]) == 1
    assert readme_tables.main(["--readme", str(readme), "--results", str(tmp_path)]) == 0
    text = readme.read_text()
    assert "old" not in text and text.startswith("x\n") and "\ny\n" in text
    assert "| 40 + 40 rows (0.0M tokens) | 2 | 2,508 | 1.0 / 2.0 | 340 |" in text  # 1234 * 2 + 40
    assert "about **7.5 hours**" in text
    assert "| 1337 | 60% (10%) / 40% (30%) / 0% (-) | 12.5% | omi1 95% | 37.5% |" in text
    assert "a: **1/1 seeds**; b: **0/1 seeds**" in text and "13.0 minutes" in text
    assert "| 30 | 5% (10%) | 95% (30%) | 0% (-) | 37.5% |" in text
    assert readme_tables.main(["--readme", str(readme), "--results", str(tmp_path), "--check"]) == 0


def _result(seed, command, winner, hard, test=(0.2, 0.5), sampled=None, carrier_hard=None):
    """A result.json with only the keys the transfer and frequent tables read."""
    shares = {f: float(f == winner) for f in readme_tables.FORMATS}
    hb = {"pass@1": hard[0], "num_problems": 200, "format_shares": {"omi1": 0.4, "omi2": 0.6},
          "format_accuracy": {"omi1": carrier_hard, "omi2": 0.0}}
    r = {"seed": seed, "command": command, "winner": winner, "hard_before": hb,
         "hard_after": {"pass@1": hard[1]}, "test_before": {"pass@1": test[0]},
         "test_after": {"pass@1": test[1], "format_shares": shares}}
    if sampled:
        r["test_before"]["sampled"] = sampled
        r["most_frequent_before_sampled"], r["most_accurate_before_sampled"] = "omi1", "tinygsm"
    return r


def test_transfer_and_frequent_tables(tmp_path):
    for d in ("transfer", "main-job", "frequent"):
        (tmp_path / d).mkdir()
    # arm A: the carrier won; its hard pass@1 rose by 1.0 and 2.0 points; the same seeds without rose 0.5 and 0.5
    # (paired: +0.5, +1.5 -> mean 1.0, SE 0.5). The old unquoted command form must parse too.
    cmd_old = "python echo_chamber.py --name t --seeds 1,2 --pretrain-args --syn-hard-share omi1=0.1"
    cmd_new = "python echo_chamber.py --name t --seeds 1,2 --pretrain-args '--syn-hard-share omi1=0.1'"
    (tmp_path / "transfer" / "omi1-0.1-seed1.json").write_text(json.dumps(
        _result(1, cmd_old, "omi1", (0.01, 0.02), carrier_hard=0.05)))
    (tmp_path / "transfer" / "omi1-0.1-seed2.json").write_text(json.dumps(_result(2, cmd_new, "omi1", (0.01, 0.03))))
    (tmp_path / "transfer" / "omi1-0.1-seed3.json").write_text(json.dumps(_result(3, cmd_new, "tinygsm", (0.02, 0.01))))
    for s, h in ((1, (0.01, 0.015)), (2, (0.02, 0.025))):
        (tmp_path / "main-job" / f"seed{s}.json").write_text(json.dumps(_result(s, "x", "omi1", h)))
    text = readme_tables.transfer(str(tmp_path))
    assert "| omi1=0.1 | 1 | omi1 100% | A | omi1 40% (5.0%) | 1.0% -> 2.0% | 1.0% -> 1.5% | 20.0% -> 50.0% |" in text
    assert ("omi1=0.1, arm A (in the winner): 2 seeds, hard pass@1 rose in 2, fell in 0; change +1.5 +- 0.5 points (mean +- "
            "SE), +1.0 +- 0.5 points against the same seeds without them.") in text
    assert "omi1=0.1, arm B (in a killed format): 1 seeds, hard pass@1 rose in 0, fell in 1; change -1.0 points" in text
    # frequent: omi1 holds 64% of 400 sampled outputs: SE sqrt(0.64 * 0.36 / 400) = 2.4 points
    samp = {"n": 4, "num_problems": 100, "temperature": 0.7,
            "format_shares": {"tinygsm": 0.2, "omi1": 0.64, "omi2": 0.16},
            "format_accuracy": {"tinygsm": 0.5, "omi1": 0.3, "omi2": None},
            "format_accuracy_se": {"tinygsm": 0.05, "omi1": 0.03, "omi2": None}}
    cmd = "python echo_chamber.py --name f --seeds 7 --pretrain-args '--mix syn-omi1:4,syn-tinygsm:1'"
    (tmp_path / "frequent" / "seed7.json").write_text(json.dumps(_result(7, cmd, "tinygsm", (0, 0), sampled=samp)))
    text = readme_tables.frequent(str(tmp_path))
    assert "--mix syn-omi1:4,syn-tinygsm:1" in text
    assert "| 7 | 20% +- 2 (50% +- 5) | 64% +- 2 (30% +- 3) | 16% +- 2 (-) | omi1 | tinygsm | tinygsm 100% |" in text
    assert "omi1 held more than half of the sampled outputs before RL in **1/1 seeds**" in text
    assert "most frequent format (sampled) in **0/1** seeds and the most accurate (sampled) in **1/1**" in text


def _algo_result(seed, winner, test, samples, adv_head=None, rounds=None, forced=None, params=1.59e6):
    """A result.json with the keys the algorithms, ei-rounds and scale tables read."""
    shares = lambda w, s: {f: (s if f == w else (1 - s) / 2) for f in readme_tables.FORMATS}
    before = {"pass@1": test[0], "format_shares": {"tinygsm": 0.3, "omi1": 0.4, "omi2": 0.3},
              "sampled": {"n": 4, "num_problems": 100, "pass@k": {"1": test[0] - 0.05}}}
    after = {"pass@1": test[1], "format_shares": shares(winner, 0.96), "sampled": {"pass@k": {"1": test[1] - 0.05}}}
    train = {"samples": samples, "steps": 30}
    if adv_head:
        train["adv_head"] = adv_head
    if rounds:
        train["rounds"] = rounds
    return {"seed": seed, "command": f"python echo_chamber.py --seeds {seed}", "winner": winner,
            "test_before": before, "test_after": after, "seconds": {"rl": 300.0}, "train": train, "params": params,
            "forced_before": forced,
            "evals": [dict(before, step=0), {"step": 4, "format_shares": shares(winner, 0.92)}, dict(after, step=30)]}


def test_algorithm_ei_and_scale_tables(tmp_path):
    (tmp_path / "algorithms").mkdir()
    (tmp_path / "scale").mkdir()
    # grpo: the head credit over the first 5 steps is (1.5 - -0.5 + 1.0 - 0.0) / 2 = 1.5 (None rows are skipped)
    # by format: tinygsm (0.2 + 0.4) / 2, omi1 1.0 (one step), omi2 none
    g = _algo_result(2, "omi1", (0.2, 0.5), 3840, adv_head=[[1, 1.5, -0.5, {"tinygsm": 0.2, "omi1": 1.0}],
                                                             [2, 1.0, 0.0, {"tinygsm": 0.4}], [3, None, -1.0, {}]])
    (tmp_path / "algorithms" / "grpo-seed2.json").write_text(json.dumps(g))
    (tmp_path / "algorithms" / "ppo-seed2.json").write_text(json.dumps(
        _algo_result(2, "tinygsm", (0.2, 0.1), 3840, adv_head=[[1, -0.21, -0.24]])))
    # ei: round 1 keeps 40% tinygsm / 60% omi1 and round 2 samples 35 / 65 (TV 0.05); round 1's own samples were
    # 30 / 40 / 30 (TV to round 2: 0.5 * (0.05 + 0.25 + 0.3) = 0.3)
    rounds = [{"round": 1, "kept": 50, "accuracy": 0.04, "sample_format_shares": {"tinygsm": 0.3, "omi1": 0.4, "omi2": 0.3},
               "kept_format_shares": {"tinygsm": 0.4, "omi1": 0.6, "omi2": 0.0}},
              {"round": 2, "kept": 80, "accuracy": 0.06, "sample_format_shares": {"tinygsm": 0.35, "omi1": 0.65},
               "kept_format_shares": {"tinygsm": 0.2, "omi1": 0.8}}]
    ei = _algo_result(2, "omi1", (0.2, 0.3), 3840, rounds=rounds)
    ei["evals"][1]["step"] = 1  # the greedy eval after round 1
    (tmp_path / "algorithms" / "ei-seed2.json").write_text(json.dumps(ei))
    text = readme_tables.algorithms(str(tmp_path))
    assert text.index("| grpo | 2 |") < text.index("| ppo | 2 |") < text.index("| ei | 2 |")
    assert "| grpo | 2 | 3,840 | 30% / 40% / 30% | omi1 96% | 4 | 20.0% -> 50.0% | 15.0% -> 45.0% | +1.50 | +0.30 / +1.00 / - | 5.0 |" in text
    assert "| ppo | 2 | 3,840 | 30% / 40% / 30% | tinygsm 96% | 4 | 20.0% -> 10.0% | 15.0% -> 5.0% | +0.03 | - | 5.0 |" in text
    assert "ppo: one format at 90%+ after in **1/1** seeds, pass@1 higher in **0/1**; pass@1 20.0% -> 10.0% " \
           "(change -10.0 points, mean +- SE); winners tinygsm 1." in text
    text = readme_tables.ei_rounds(str(tmp_path))
    assert "| 2 | 1 | 4.0% | 50 | 30% / 40% / 30% | 40% / 60% / 0% | 35% / 65% / 0% | 4% / 92% / 4% |" in text
    assert "| 2 | 2 | 6.0% | 80 | 35% / 65% / 0% | 20% / 80% / 0% | - | - |" in text
    assert "kept set **0.05**, this round's samples 0.30 (smaller is closer; kept closer in 1 of 1)" in text
    forced = {f: {"sampled_pass@1": p, "sampled_pass@1_se": 0.02, "n": 4, "num_problems": 100}
              for f, p in (("tinygsm", 0.21), ("omi1", 0.18), ("omi2", 0.3))}
    (tmp_path / "scale" / "d256-seed1.json").write_text(json.dumps(
        _algo_result(1, "omi2", (0.3, 0.6), 3840, forced=forced, params=5.77e6)))
    # within one SE of the best: a tie
    assert readme_tables._best_forced({"tinygsm": {"sampled_pass@1": 0.2, "sampled_pass@1_se": 0.03},
                                       "omi1": {"sampled_pass@1": 0.22, "sampled_pass@1_se": 0.01},
                                       "omi2": {"sampled_pass@1": 0.02, "sampled_pass@1_se": 0.01}}) == "tinygsm ~ omi1"
    text = readme_tables.scale(str(tmp_path))
    assert "| 5.77M | 1 | 21.0% +- 2.0 | 18.0% +- 2.0 | 30.0% +- 2.0 | omi2 | 30% / 40% / 30% | omi2 96% | " \
           "30.0% -> 60.0% |" in text
    # the base size comes from the GRPO arm of the algorithm comparison when it ran with --forced-formats
    assert "| 1.59M |" not in text  # grpo-seed2.json above has no forced_before
    (tmp_path / "algorithms" / "grpo-seed5.json").write_text(json.dumps(
        _algo_result(5, "omi1", (0.2, 0.5), 3840, forced=forced)))
    text = readme_tables.scale(str(tmp_path))
    assert text.index("| 1.59M | 5 | 21.0% +- 2.0 |") < text.index("| 5.77M | 1 |")
    # the drill arm: every size from its own folder (no base arm borrowed), with its own prose-arithmetic table
    assert readme_tables.scale_drill(str(tmp_path)).startswith("(no results/scale-drill/*.json yet")
    (tmp_path / "scale-drill").mkdir()
    (tmp_path / "scale-drill" / "d256-seed1.json").write_text(json.dumps(
        _algo_result(1, "omi2", (0.3, 0.6), 3840, forced=forced, params=5.77e6)))
    (tmp_path / "scale-drill" / "prose-arithmetic.json").write_text(json.dumps([
        {"file": "out/drill-d256-seed1/pretrain/eval-forced-omi2/generations.jsonl", "outputs": 400,
         "first_number_copied": 0.9, "equations": 600,
         "equations_right": 0.5, "pass@1_as_written": 0.3, "pass@1_arithmetic_redone": 0.45}]))
    text = readme_tables.scale_drill(str(tmp_path))
    assert "syn-arith:1" in text and "| 1.59M |" not in text and "| 5.77M | 1 | 21.0% +- 2.0 |" in text
    assert "| drill-d256-seed1 | 400 | 90.0% | 600 | 50.0% | 30.0% | 45.0% |" in text
    assert "results/scale-drill/prose-arithmetic.json" in text


def test_prose_arithmetic_redoes_each_equation_by_hand():
    sys.path.insert(0, os.path.join(ROOT, "scripts"))
    from fractions import Fraction as F
    import prose_arithmetic
    # 12 / 3 written as 3 (own arithmetic wrong: 4); 12 + 3 = 15 is right as written, but its 3 is the wrong result
    # above, so with the arithmetic redone it becomes 12 + 4 = 16
    pairs, last = prose_arithmetic.redo("so $12 / 3 = 3$ balloons; together $12 + 3 = 15$; \\boxed{15}")
    assert pairs == [(F(3), F(4)), (F(15), F(15))] and last == F(16)
    assert prose_arithmetic.redo("no equations here") == ([], None)
    assert prose_arithmetic.redo("$7 / 0 = 1$") == ([], None)  # division by zero is skipped, not a crash
    # the first number after the opening line: 12 is the question's, 81 is not, none at all is not copied
    q = "Hugo has 12 balloons. Ines has a third as many. How many?\n\n"
    assert prose_arithmetic.first_number_copied(q, "To find how many, we go step by step.\nHugo has 12 balloons.")
    assert not prose_arithmetic.first_number_copied(q, "To find 12 of them, we go.\nHugo has 81 balloons; 12 / 3 = 4")
    assert not prose_arithmetic.first_number_copied(q, "To find how many balloons Hugo has.")



def test_prose_arithmetic_file_summary_and_bad_rows(tmp_path):
    sys.path.insert(0, os.path.join(ROOT, "scripts"))
    import prose_arithmetic
    from common import UserError
    q = "Hugo has 12 balloons. Ines has a third as many. How many do they have together?\n\n"
    rows = [  # copies 12, both equations right, correct
        {"format": "omi2", "prompt": q, "gold": "16", "correct": True,
         "response": "To find it, we go.\nHugo has 12.\nSo $12 / 3 = 4$.\nTogether $12 + 4 = 16$. \\boxed{16}"},
        # copies 81 (not the question's), 1 of 2 right, wrong as written; redone: 81 / 3 = 27, 81 + 27 = 108 != 16
        {"format": "omi2", "prompt": q, "gold": "16", "correct": False,
         "response": "To find it, we go.\nHugo has 81.\nSo $81 / 3 = 27$.\nTogether $81 + 27 = 100$. \\boxed{100}"},
        # right plan, wrong arithmetic: redone 12 / 3 = 4, then 12 + 4 = 16 = gold
        {"format": "omi2", "prompt": q, "gold": "16", "correct": False,
         "response": "To find it, we go.\nHugo has 12.\nSo $12 / 3 = 3$.\nTogether $12 + 3 = 48$. \\boxed{48}"},
        {"format": "omi1", "prompt": q, "gold": "16", "correct": True, "response": "code, not counted"}]
    f = tmp_path / "generations.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    r = prose_arithmetic.analyse(str(f))
    assert r["outputs"] == 3 and r["equations"] == 6
    assert r["first_number_copied"] == pytest.approx(2 / 3) and r["equations_right"] == pytest.approx(3 / 6)
    assert r["pass@1_as_written"] == pytest.approx(1 / 3) and r["pass@1_arithmetic_redone"] == pytest.approx(2 / 3)
    f.write_text(json.dumps({"format": "omi2", "response": "x"}) + "\n")
    with pytest.raises(UserError, match="lack prompt/response/correct/gold"):
        prose_arithmetic.analyse(str(f))
