"""evaluate.py: metrics pinned by hand, run_eval on a scripted model, the CLI end to end on a tiny checkpoint."""
import itertools
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from common import read_jsonl
from evaluate import format_metrics, majority_vote, pass_at_k, run_eval, summarize
from model import GPT, GPTConfig, save_checkpoint

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- pure metrics
def test_pass_at_k_by_hand_and_by_enumeration():
    assert pass_at_k(4, 1, 2) == pytest.approx(0.5)  # 1 - C(3,2)/C(4,2) = 1 - 3/6
    assert pass_at_k(4, 2, 2) == pytest.approx(5 / 6)  # 1 - C(2,2)/C(4,2) = 1 - 1/6
    assert pass_at_k(4, 0, 2) == 0.0 and pass_at_k(4, 3, 2) == 1.0 and pass_at_k(4, 4, 4) == 1.0
    assert pass_at_k(4, 1, 4) == 1.0 and pass_at_k(4, 0, 4) == 0.0  # k = n: "any of n"
    # the definition: the chance that a random k-subset of the n samples holds a correct one
    for n in range(1, 7):
        for c in range(n + 1):
            for k in range(1, n + 1):
                subsets = list(itertools.combinations(range(n), k))
                want = sum(any(i < c for i in s) for s in subsets) / len(subsets)
                assert pass_at_k(n, c, k) == pytest.approx(want, abs=1e-12)
    # k = 1 is the plain fraction correct; large n stays finite and matches the product form
    assert pass_at_k(64, 13, 1) == pytest.approx(13 / 64)
    prod = 1.0
    for i in range(1000 - 3 + 1, 1001):
        prod *= 1 - 500 / i
    assert pass_at_k(1000, 3, 500) == pytest.approx(1 - prod, rel=1e-12)
    for bad in [(4, 5, 1), (4, 1, 0), (4, 1, 5), (4, -1, 1)]:
        with pytest.raises(ValueError):
            pass_at_k(*bad)


def test_majority_vote_ignores_none_and_breaks_ties_by_first_appearance():
    assert majority_vote(["3", "5", "3", None]) == "3"
    assert majority_vote([None, None]) is None and majority_vote([]) is None
    assert majority_vote([None, "7", None]) == "7"  # None never wins, even when most common
    assert majority_vote(["5", "3", "3", "5"]) == "5"  # tie: the answer seen first wins
    assert majority_vote(["3", "5", "5", "3"]) == "3"
    assert majority_vote([" 18", "18 ", "4"]) == " 18"  # compared normalised, returned as first written
    assert majority_vote(["7", "18.0", "$18", "7", "18"]) == "18.0"  # three votes for 18 beat two for 7


def test_format_metrics_covers_every_format():
    shares, acc = format_metrics([{"format": "omi1", "correct": True}, {"format": "omi1", "correct": False},
                                  {"format": "weird", "correct": True}, {"format": "tinygsm", "correct": False}])
    assert shares == {"tinygsm": 0.25, "omi1": 0.5, "omi2": 0.0, "other": 0.25}
    assert acc == {"tinygsm": 0.0, "omi1": 0.5, "omi2": None, "other": 1.0}
    shares, acc = format_metrics([])
    assert shares == {f: 0.0 for f in shares} and set(acc.values()) == {None}


def _rows(pid, gold, greedy, samples):
    """greedy / samples: (format, answer, correct) tuples -> generation records as in generations.jsonl."""
    out = []
    for s, (fmt, ans, ok) in [(-1, greedy)] + list(enumerate(samples)):
        out.append({"id": pid, "prompt": f"{pid}?\n\n", "response": "...", "format": fmt, "answer": ans,
                    "gold": gold, "correct": ok, "sample": s, "mode": "greedy" if s == -1 else "sampled"})
    return out


def test_summarize_a_hand_built_generations_file(tmp_path):
    gens = (_rows("A", "1", ("tinygsm", "1", True), [("tinygsm", "1", True), ("tinygsm", "1", True),
                                                     ("omi1", "2", False), ("other", None, False)])
            + _rows("B", "5", ("omi2", "6", False), [("omi1", "5", True), ("omi2", "6", False),
                                                     ("omi2", "6", False), ("omi1", "7", False)])
            + _rows("C", "9", ("other", None, False), [("other", None, False)] * 4))
    path = tmp_path / "generations.jsonl"
    path.write_text("".join(json.dumps(g) + "\n" for g in reversed(gens)))  # order must not matter
    s = summarize(read_jsonl(str(path)), n=4)

    assert s["num_problems"] == 3 and s["decoding"] == "greedy"
    assert s["pass@1"] == pytest.approx(1 / 3)  # greedy: only A
    assert s["format_shares"] == pytest.approx({"tinygsm": 1 / 3, "omi1": 0.0, "omi2": 1 / 3, "other": 1 / 3})
    assert s["format_accuracy"] == {"tinygsm": 1.0, "omi1": None, "omi2": 0.0, "other": 0.0}
    sm = s["sampled"]
    assert sm["n"] == 4
    # c = 2, 1, 0 correct of 4: pass@1 = (2/4 + 1/4 + 0)/3; pass@2 = (5/6 + 1/2 + 0)/3; pass@4 = (1 + 1 + 0)/3
    assert sm["pass@k"] == pytest.approx({"1": 0.25, "2": 4 / 9, "4": 2 / 3})
    assert sm["pass@n"] == pytest.approx(2 / 3)
    # majority: A "1" (2 votes, right), B "6" (2 votes, wrong), C nobody voted (wrong)
    assert sm["maj@n"] == pytest.approx(1 / 3)
    # 12 samples: tinygsm 2 (2 right), omi1 3 (1 right), omi2 2 (0), other 5 (0)
    assert sm["format_shares"] == pytest.approx({"tinygsm": 2 / 12, "omi1": 3 / 12, "omi2": 2 / 12, "other": 5 / 12})
    assert sm["format_accuracy"] == pytest.approx({"tinygsm": 1.0, "omi1": 1 / 3, "omi2": 0.0, "other": 0.0})

    # standard errors clustered by problem: omi1 has A 0/1 and B 1/2 -> p 1/3, residuals -1/3 and +1/3:
    # sqrt(2/1 * 2/9) / 3 = 2/9; other: A 0/1, C 0/4 -> 0; a format seen in one problem has none
    assert sm["format_accuracy_se"] == pytest.approx({"tinygsm": None, "omi1": 2 / 9, "omi2": None, "other": 0.0})
    assert s["format_accuracy_se"] == {"tinygsm": None, "omi1": None, "omi2": None, "other": None}

    # sampled only: the top level falls back to the samples and says so
    s2 = summarize([g for g in gens if g["sample"] != -1], n=4)
    assert s2["decoding"] == "sampled" and s2["pass@1"] == pytest.approx(0.25)
    assert s2["format_shares"] == sm["format_shares"]
    # greedy only: no "sampled" block
    assert "sampled" not in summarize([g for g in gens if g["sample"] == -1], n=1)
    with pytest.raises(ValueError, match="n=8"):
        summarize(gens, n=8)


def test_format_accuracy_se_with_one_output_a_problem_is_the_binomial_one():
    # 4 problems, one greedy omi2 output each, 2 right: p 0.5, SE sqrt(p (1 - p) / (G - 1)) = sqrt(0.25 / 3)
    gens = [g for i in range(4) for g in _rows(f"P{i}", "1", ("omi2", "1", i < 2), [])]
    assert summarize(gens, n=1)["format_accuracy_se"]["omi2"] == pytest.approx((0.25 / 3) ** 0.5)


def test_pass_at_k_lists_powers_of_two_and_n():
    gens = [g for g in _rows("A", "1", ("omi2", "1", True), [("omi2", "1", i < 2) for i in range(6)])]
    ks = summarize(gens, n=6)["sampled"]["pass@k"]
    assert list(ks) == ["1", "2", "4", "6"]
    assert ks["6"] == 1.0 and ks["1"] == pytest.approx(2 / 6)


# ---------------------------------------------------------------- run_eval with a scripted model
class ScriptedModel(torch.nn.Module):
    """Answers each synthetic problem from a script: greedy in omi1 (right), samples alternate tinygsm (right)
    and a wrong omi2 line. Records what generate() was asked for."""

    def __init__(self, tok, problems, block_size=256):
        super().__init__()
        from data.synthetic import render
        self.config = GPTConfig(vocab_size=tok.vocab_size, n_layer=1, n_head=2, n_embd=8, block_size=block_size)
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.tok = tok
        self.by_prompt = {}
        for p in problems:
            key = tuple(tok.encode(p["question"] + "\n\n"))
            wrong = f"To find it, we go step by step.\nThus the answer is $\\boxed{{{int(p['gold']) + 1}}}$."
            self.by_prompt[key] = (render(p, "omi1"), render(p, "tinygsm"), wrong)
        self.calls = []

    def generate(self, prompts, max_new_tokens, temperature=1.0, top_p=1.0, top_k=None, eos_id=None,
                 num_samples=1, seed=None):
        self.calls.append((len(prompts), num_samples, temperature, max_new_tokens))
        out = []
        for p in prompts:
            greedy_text, right, wrong = self.by_prompt[tuple(p)]
            for j in range(num_samples):
                text = greedy_text if temperature == 0 else (right if j % 2 == 0 else wrong)
                out.append(self.tok.encode(text) + [eos_id])
        return out


def test_run_eval_grades_batches_and_skips_long_prompts():
    from data import get_tokenizer
    from data.synthetic import problems
    tok = get_tokenizer(4096)
    probs = problems("test", 5)
    model = ScriptedModel(tok, probs)
    long_q = {"id": "too-long", "question": "one two three " * 200 + "?", "gold": "1"}
    records = [{k: p[k] for k in ("id", "question", "gold")} for p in probs]
    gens, s = run_eval(model, tok, records[:2] + [long_q] + records[2:], n=4, max_new_tokens=300, batch_size=8,
                       progress=False)
    # greedy: chunks of 8 prompts; sampled: 8 // 4 = 2 prompts with their 4 samples per chunk
    assert [c[:3] for c in model.calls] == [(5, 1, 0.0), (2, 4, 0.7), (2, 4, 0.7), (1, 4, 0.7)]
    assert all(c[3] <= 256 - 1 for c in model.calls)  # never asks past the context
    assert s["num_skipped"] == 1 and s["skipped_ids"] == ["too-long"] and s["num_problems"] == 5
    assert len(gens) == 5 * (1 + 4)
    # benchmark order, greedy first, then samples 0..3
    assert [g["id"] for g in gens[::5]] == [p["id"] for p in probs]
    assert [g["sample"] for g in gens[:5]] == [-1, 0, 1, 2, 3]
    assert [g["mode"] for g in gens[:2]] == ["greedy", "sampled"]
    g0 = gens[0]
    assert g0["prompt"] == probs[0]["question"] + "\n\n" and "<llm-code>" in g0["response"]
    assert g0["stop"] == "eos" and "<|endoftext|>" not in g0["response"]
    assert {k for k in g0} >= {"id", "prompt", "response", "format", "answer", "gold", "correct", "sample"}
    assert s["pass@1"] == 1.0 and s["format_shares"]["omi1"] == 1.0 and s["format_accuracy"]["omi1"] == 1.0
    sm = s["sampled"]
    assert sm["pass@k"] == pytest.approx({"1": 0.5, "2": 5 / 6, "4": 1.0})
    assert sm["format_shares"] == pytest.approx({"tinygsm": 0.5, "omi1": 0.0, "omi2": 0.5, "other": 0.0})
    assert sm["format_accuracy"]["tinygsm"] == 1.0 and sm["format_accuracy"]["omi2"] == 0.0
    # maj@4: a 2-2 tie between the right and the wrong answer; sample 0 (right) was seen first
    assert sm["maj@n"] == 1.0
    assert all(g["answer"] == str(int(g["gold"]) + 1) for g in gens if g["format"] == "omi2")

    # the authors' rule only relabels: same grading, shares keyed by its own labels
    _, sp = run_eval(model, tok, records[:2], n=2, batch_size=8, progress=False, rule="paper")
    assert sp["format_shares"] == {"tinygsm-code": 0.0, "llm-code": 1.0, "text": 0.0} and sp["pass@1"] == 1.0
    assert sp["sampled"]["format_shares"] == {"tinygsm-code": 0.5, "llm-code": 0.0, "text": 0.5}


class ForcedModel(ScriptedModel):
    """Continues a forced tinygsm opening: the prompt must be question + "\n\n" + "def", tokenized as a whole."""

    def __init__(self, tok, problems):
        super().__init__(tok, problems)
        from data.synthetic import render
        self.by_prompt = {tuple(tok.encode(p["question"] + "\n\ndef")): render(p, "tinygsm")[len("def"):]
                          for p in problems}

    def generate(self, prompts, max_new_tokens, temperature=1.0, top_p=1.0, top_k=None, eos_id=None,
                 num_samples=1, seed=None):
        return [self.tok.encode(self.by_prompt[tuple(p)]) + [eos_id] for p in prompts for _ in range(num_samples)]


def test_run_eval_with_a_forced_format_opening():
    from data import get_tokenizer
    from data.synthetic import FIRST_WORDS, problems, render
    tok = get_tokenizer(4096)
    probs = problems("test", 3)
    for fmt, words in FIRST_WORDS.items():  # each format's opening is how its rendered solutions start
        assert all(render(p, fmt).startswith(words) for p in probs), fmt
    records = [{k: p[k] for k in ("id", "question", "gold")} for p in probs]
    gens, s = run_eval(ForcedModel(tok, probs), tok, records, n=2, batch_size=8, progress=False,
                       answer_prefix=FIRST_WORDS["tinygsm"])
    # a KeyError above would mean the prompt was not question + opening; the graded text starts with the opening
    assert all(g["response"].startswith("def simple_math_problem") for g in gens)
    assert s["format_shares"]["tinygsm"] == 1.0 and s["pass@1"] == 1.0 and s["sampled"]["pass@k"]["1"] == 1.0


# ---------------------------------------------------------------- the CLI on a tiny random checkpoint
def tiny_ckpt(path, step=0, vocab=4096, tok_vocab=4096, block_size=128, kind="pretrain"):
    torch.manual_seed(step)
    cfg = GPTConfig(vocab_size=vocab, n_layer=1, n_head=2, n_embd=16, block_size=block_size)
    model = GPT(cfg, verbose=False)
    save_checkpoint(str(path), {"model": model.state_dict(), "config": vars(cfg),
                                "tokenizer": {"name": "cl100k", "vocab_size": tok_vocab}, "step": step, "kind": kind})
    return path


def cli(*args, cwd=ROOT):
    return subprocess.run([sys.executable, str(ROOT / "evaluate.py"), "--threads", "1", "--no-tqdm", *map(str, args)],
                          cwd=cwd, capture_output=True, text=True, timeout=120)


def test_cli_compares_a_run_dir_on_synthetic(tmp_path):
    run = tmp_path / "rl-toy"
    tiny_ckpt(run / "ckpt-step000000.pt", step=0)
    tiny_ckpt(run / "ckpt-step000005.pt", step=5, kind="rl")
    tiny_ckpt(run / "ckpt.pt", step=5, kind="rl")  # the final checkpoint repeats the last step: evaluated once
    out = tmp_path / "eval"
    r = cli("--ckpt", run, "--limit", 4, "--max-new-tokens", 6, "--n", 2, "--out", out)
    assert r.returncode == 0, r.stderr
    assert "skip" in r.stdout and "pass@1" in r.stdout and "maj@2" in r.stdout
    rows = json.loads((out / "compare.json").read_text())
    assert [row["step"] for row in rows] == [0, 5] and [row["kind"] for row in rows] == ["pretrain", "rl"]
    assert (out / "compare.png").stat().st_size > 1000
    for row in rows:
        d = out / row["label"]
        s = json.loads((d / "summary.json").read_text())
        assert s["benchmark"] == "synthetic" and s["n"] == 2 and s["max_new_tokens"] == 6
        assert s["num_problems"] == 4 and set(s["sampled"]["pass@k"]) == {"1", "2"}
        gens = read_jsonl(str(d / "generations.jsonl"))
        assert len(gens) == 4 * 3 and all(g["num_tokens"] <= 6 for g in gens)
        assert sum(s["format_shares"].values()) == pytest.approx(1.0)


def test_cli_on_a_gsm8k_slice(tmp_path, shared_data):
    ck = tiny_ckpt(tmp_path / "run" / "ckpt.pt", block_size=64)  # a short context: some questions do not fit
    r = cli("--ckpt", ck, "--benchmark", "gsm8k", "--data-dir", shared_data, "--limit", 5, "--max-new-tokens", 4)
    assert r.returncode == 0, r.stderr
    out = tmp_path / "run" / "eval-gsm8k"  # default: beside the checkpoint
    s = json.loads((out / "summary.json").read_text())
    assert s["num_problems"] + s["num_skipped"] == 5 and s["num_skipped"] >= 1
    assert f"skipped (prompt longer than the context) {s['num_skipped']}" in r.stdout
    gens = read_jsonl(str(out / "generations.jsonl"))
    assert len(gens) == s["num_problems"] and all(g["sample"] == -1 for g in gens)
    assert "gsm8k-test-0" in {g["id"] for g in gens + [{"id": i} for i in s["skipped_ids"]]}
    assert all(g["gold"].isdigit() for g in gens)


def test_cli_force_format(tmp_path):
    ck = tiny_ckpt(tmp_path / "run" / "ckpt.pt")
    r = cli("--ckpt", ck, "--limit", 3, "--max-new-tokens", 3, "--force-format", "omi2")
    assert r.returncode == 0, r.stderr
    out = tmp_path / "run" / "eval-synthetic-forced-omi2"
    s = json.loads((out / "summary.json").read_text())
    assert s["force_format"] == "omi2" and s["answer_prefix"] == "To find"
    assert all(g["response"].startswith("To find") for g in read_jsonl(str(out / "generations.jsonl")))
    r = cli("--ckpt", ck, "--force-format", "latex")
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        "error: --force-format must be one of tinygsm, omi1, omi2, got 'latex'"]


@pytest.mark.parametrize("case", ["missing", "benchmark", "vocab", "corrupt"])
def test_cli_bad_input_is_one_line(tmp_path, case):
    ck = tmp_path / "ckpt.pt"
    args = ["--ckpt", ck, "--limit", 2, "--max-new-tokens", 2, "--out", tmp_path / "out"]
    if case == "benchmark":
        tiny_ckpt(ck)
        args += ["--benchmark", "gsm9k"]
    elif case == "vocab":
        tiny_ckpt(ck, vocab=4096, tok_vocab=2049)
    elif case == "corrupt":
        tiny_ckpt(ck)
        ck.write_bytes(ck.read_bytes()[:1000])
    r = cli(*args)
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    want = {"missing": "no checkpoint", "benchmark": "unknown benchmark", "vocab": "vocab", "corrupt": "corrupt"}
    assert want[case] in lines[0]


def test_torchrun_splits_problems_and_gathers_them(tmp_path):
    """2 CPU ranks (gloo) give the same greedy outputs, in benchmark order, as one process in-process."""
    from data import load_benchmark
    from evaluate import load_model
    ck = tiny_ckpt(tmp_path / "ckpt.pt", step=3)
    out = tmp_path / "ddp"
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                        str(ROOT / "evaluate.py"), "--ckpt", str(ck), "--limit", "5", "--max-new-tokens", "4",
                        "--threads", "1", "--no-tqdm", "--out", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    s = json.loads((out / "summary.json").read_text())
    assert s["world_size"] == 2 and s["num_problems"] == 5
    gens = read_jsonl(str(out / "generations.jsonl"))
    model, tok, _ = load_model(str(ck), "cpu")
    want, _ = run_eval(model, tok, load_benchmark("synthetic", limit=5), max_new_tokens=4, progress=False)
    assert [(g["id"], g["response"]) for g in gens] == [(g["id"], g["response"]) for g in want]
