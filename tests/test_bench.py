"""bench.py --smoke: every section runs end to end on tiny shapes and the last stdout line is one JSON object
with every figure. Speed is never asserted here (a shared CI machine makes timings meaningless)."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

try:
    import transformers  # noqa: F401
except ImportError:
    pytest.skip("bench.py compares against transformers, which is not installed (pip install -r "
                "requirements-bench.txt)", allow_module_level=True)

KEYS = ["train_tokens_per_s_ours", "train_tokens_per_s_hf", "train_ratio_vs_hf", "train_peak_mb_ours",
        "train_peak_mb_hf", "mfu_150m", "mfu_150m_peak_mb", "sandbox_programs_per_s", "sandbox_exec_programs_per_s",
        "grade_texts_per_s", "rl_generate_s", "rl_reward_s", "rl_logprobs_s", "rl_update_s", "rl_step_s", "rl_peak_mb"]
KEYS += [f"{k}_b{b}" for b in (1, 8, 64) for k in ("gen_ratio_vs_hf", "gen_tokens_per_s_ours", "gen_tokens_per_s_hf",
                                                    "gen_mismatches", "gen_peak_mb_ours", "gen_peak_mb_hf")]


def test_smoke_run_prints_a_table_and_a_json_line_with_every_key(tmp_path):
    out = tmp_path / "bench.json"
    r = subprocess.run([sys.executable, "bench.py", "--smoke", "--threads", "1", "--json-out", str(out)],
                       capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = r.stdout.strip().splitlines()
    res = json.loads(lines[-1])
    missing = [k for k in KEYS if k not in res]
    assert not missing, missing
    assert res == json.loads(out.read_text())
    assert res["mfu_150m"] is None  # no MFU on a CPU
    for k in KEYS:
        if k.startswith(("train_", "gen_tokens", "gen_ratio", "sandbox_", "grade_")):
            assert res[k] > 0, k
    assert all(isinstance(res[f"gen_mismatches_b{b}"], int) for b in (1, 8, 64))
    assert res["sandbox_agree_with_exec"] == res["sandbox_programs"]  # the sandbox computes what exec does
    assert res["train_first_loss_diff"] < 1e-4  # both models really ran the same weights on the same batch
    assert any(line.startswith("measure") for line in lines)  # the table


def test_bad_flags_are_one_line():
    r = subprocess.run([sys.executable, "bench.py", "--smoke", "--sections", "train,bogus"],
                       capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == ["error: unknown --sections ['bogus']"]
