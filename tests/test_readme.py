"""README's result tables are generated from the files in results/ (scripts/readme_tables.py), never by hand."""
import json
import os
import subprocess
import sys

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
