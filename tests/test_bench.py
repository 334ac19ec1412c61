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
KEYS += ["gen_ratio_vs_hf_b64_attention_skipped"]


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
    r = subprocess.run([sys.executable, "bench.py", "--mfu-attention", "fast"], capture_output=True, text=True,
                       cwd=ROOT, timeout=120)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "--mfu-attention" in r.stderr


def test_ceiling_skips_only_decoding_attention_and_restores_it():
    import torch
    import torch.nn.functional as F
    import bench
    from model import GPT, GPTConfig
    torch.manual_seed(0)
    m = GPT(GPTConfig(vocab_size=101, n_layer=2, n_head=4, n_embd=32, block_size=64), verbose=False).eval()
    real = F.scaled_dot_product_attention
    q, k = torch.randn(2, 4, 1, 8), torch.randn(2, 4, 5, 8)
    with bench.decode_attention_skipped():
        assert torch.equal(F.scaled_dot_product_attention(q, k, k), q)  # one query: returned unread
        full = torch.randn(2, 4, 5, 8)
        assert torch.equal(F.scaled_dot_product_attention(full, k, k), real(full, k, k))  # prefill untouched
        skipped = m.generate([[1, 2, 3]], 8, temperature=0)
    assert F.scaled_dot_product_attention is real
    assert len(skipped[0]) == 8 and skipped != m.generate([[1, 2, 3]], 8, temperature=0)
    with pytest.raises(RuntimeError):
        with bench.decode_attention_skipped():
            raise RuntimeError("boom")
    assert F.scaled_dot_product_attention is real


def test_toyshape_section_races_the_toy_against_the_old_shape():
    r = subprocess.run([sys.executable, "bench.py", "--smoke", "--threads", "1", "--sections", "toyshape"],
                       capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    # the smoke shapes keep each model's width (one layer): d 144 / SwiGLU 384 and d 192 / SwiGLU 512, vocab 2049
    # untied: embeddings 2 * 2049 * d, attention 4 d^2, MLP 3 d h
    assert res["toyshape_params_toy"] == 2 * 2049 * 144 + 4 * 144 ** 2 + 3 * 144 * 384
    assert res["toyshape_params_old"] == 2 * 2049 * 192 + 4 * 192 ** 2 + 3 * 192 * 512
    assert abs(res["toyshape_ratio"] - res["toyshape_tokens_per_s_toy"] / res["toyshape_tokens_per_s_old"]) < 2e-3
    assert "toy pretraining tokens/s" in r.stdout
