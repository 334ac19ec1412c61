"""
rl.py: the RL math against hand-computed values on 2x4 tensors, then the three loops on a tiny model.

The loops are tested without the math grader: a reward_fn plugged into rl.train() scores "the first response
token is ' yes'". The tiny model is built so that its first response token is ' yes' or ' no' about half and half
(its blocks start as the identity, so the state that picks the first token is the same for every prompt ending
in "?\n\n"; both tokens' output rows point along it), which makes the task learnable in a few steps and its
success measurable exactly: P(' yes' | prompt) from one forward pass.
"""
import json
import math
import os
from dataclasses import asdict

import pytest
import torch

import rl
from common import UserError, log_steps
from model import GPT, GPTConfig, load_checkpoint, model_from_checkpoint, save_checkpoint


# ------------------------------------------------------------------------------------------ the math, by hand
def test_masked_mean_var_whiten():
    x = torch.tensor([[1.0, 2.0, 3.0, 100.0], [4.0, 5.0, 6.0, 7.0]])
    m = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    assert rl.masked_mean(x, m).item() == pytest.approx(28 / 7)
    assert rl.masked_mean(x, m, dim=-1).tolist() == pytest.approx([2.0, 5.5])
    # entries 1..7: mean 4, sum of squares 28, unbiased var 28 / 6
    assert rl.masked_var(x, m).item() == pytest.approx(28 / 6)
    w = rl.masked_whiten(x, m)
    assert w[0, 3].item() == 0.0  # padding stays 0
    assert w[0, 0].item() == pytest.approx((1 - 4) / math.sqrt(28 / 6), rel=1e-5)
    assert rl.masked_mean(w, m).item() == pytest.approx(0.0, abs=1e-6)


def test_gae_by_hand():
    r = torch.tensor([[0.0, 0.0, 0.0, 1.0], [0.0, 0.0, 1.0, 0.0]])
    v = torch.tensor([[0.5, 0.5, 0.5, 0.5], [0.2, 0.4, 0.6, 9.9]])  # 9.9 is padding: must be ignored
    m = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 0.0]])
    adv, ret = rl.compute_gae_advantage_return(r, v, m, gamma=1.0, lam=0.5)
    # row 0: delta = [0, 0, 0, 0.5] -> A3 .5, A2 .25, A1 .125, A0 .0625
    # row 1: delta2 = 1 - .6 = .4, delta1 = .6 - .4 = .2, delta0 = .4 - .2 = .2 -> A = [.4, .4, .4, 0]
    assert adv.tolist() == [pytest.approx([0.0625, 0.125, 0.25, 0.5]), pytest.approx([0.4, 0.4, 0.4, 0.0])]
    assert ret.tolist() == [pytest.approx([0.5625, 0.625, 0.75, 1.0]), pytest.approx([0.6, 0.8, 1.0, 0.0])]
    # gamma discounts: one step of gamma 0.5, lambda 1 on row 0 -> A0 = 0.5^3 * 1 - 0.5 + ... = returns - V
    adv2, ret2 = rl.compute_gae_advantage_return(r, torch.zeros_like(v), m, gamma=0.5, lam=1.0)
    assert adv2[0].tolist() == pytest.approx([0.125, 0.25, 0.5, 1.0])


def test_grpo_group_normalisation_by_hand():
    scores = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0])  # 2 prompts x 4 samples
    mask = torch.ones(8, 3)
    mask[1, 2] = 0.0
    adv = rl.compute_grpo_outcome_advantage(scores, mask, group_size=4)
    # group 0: mean .25, unbiased std .5 -> 1.5, -.5; group 1: mean .5, std sqrt(1/3) -> +-0.866
    s = math.sqrt(1 / 3)
    assert adv[:, 0].tolist() == pytest.approx([1.5, -0.5, -0.5, -0.5, 0.5 / s, 0.5 / s, -0.5 / s, -0.5 / s], rel=1e-5)
    assert adv[0].tolist() == pytest.approx([1.5, 1.5, 1.5], rel=1e-5)  # the same on every token
    assert adv[1, 2].item() == 0.0  # padding
    same = rl.compute_grpo_outcome_advantage(torch.ones(4), torch.ones(4, 2), group_size=4)
    assert same.abs().max().item() == 0.0  # a group that all agrees teaches nothing


def test_head_advantage_by_hand():
    adv = torch.tensor([[1.0, 2.0, 3.0, 9.0], [-1.0, -3.0, 0.0, 0.0], [4.0, 0.5, 7.0, 7.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 1.0, 0.0]])
    # first 2 tokens: rows 0 and 2 -> (1 + 2 + 4 + 0.5) / 4; row 1 -> (-1 - 3) / 2
    assert rl.head_advantage(adv, mask, ["a", "b", "a"], k=2) == pytest.approx({"a": 1.875, "b": -2.0})
    # k past a short row counts only its real tokens (row 1 has 2): (1 + 2 + 3 + 4 + 0.5 + 7) / 6, (-1 - 3) / 2
    assert rl.head_advantage(adv, mask, ["a", "b", "a"], k=3) == pytest.approx({"a": 17.5 / 6, "b": -2.0})
    rec = rl.head_record(adv, mask, [{"reward": 1.0, "format": "omi1"}, {"reward": 0.0, "format": "omi1"},
                                     {"reward": 0.0, "format": "omi2"}])
    # k 5: row 0 (1 + 2 + 3 + 9) / 4 = 3.75; row 1 -2; row 2 (4 + 0.5 + 7) / 3
    assert rec["adv_head_correct"] == pytest.approx(3.75)
    assert rec["adv_head_wrong"] == pytest.approx((-4 + 11.5) / 5)
    assert rec["adv_head_format"] == pytest.approx({"omi1": (15 - 4) / 6, "omi2": 11.5 / 3})
    assert rl.head_record(adv, mask, [{"reward": 1.0, "format": None}] * 3)["adv_head_wrong"] is None


def test_kl_estimators_by_hand():
    logp = torch.log(torch.tensor([[0.5, 0.25, 0.1, 0.1], [0.3, 0.3, 0.3, 0.3]]))
    ref = torch.log(torch.tensor([[0.25, 0.5, 0.1, 0.1], [0.3, 0.3, 0.3, 0.3]]))
    l2 = math.log(2)
    assert rl.kl_penalty(logp, ref, "k1")[0, :2].tolist() == pytest.approx([l2, -l2], rel=1e-5)
    assert rl.kl_penalty(logp, ref, "k2")[0, :2].tolist() == pytest.approx([l2 ** 2 / 2] * 2, rel=1e-5)
    # k3 = e^r - 1 - r with r = ref - logp: r = -ln2 -> .5 - 1 + ln2; r = ln2 -> 2 - 1 - ln2
    assert rl.kl_penalty(logp, ref, "k3")[0, :2].tolist() == pytest.approx([l2 - 0.5, 1 - l2], rel=1e-5)
    for kind in rl.KL_KINDS:
        assert rl.kl_penalty(logp, ref, kind)[1].abs().max().item() == 0.0  # equal policies: no KL
    with pytest.raises(ValueError):
        rl.kl_penalty(logp, ref, "k4")


def test_clipped_policy_loss_by_hand():
    ratio = torch.tensor([[1.5, 0.5, 1.1, 0.5], [1.0, 1.0, 1.0, 1.0]])
    old = torch.zeros(2, 4)
    adv = torch.tensor([[1.0, 1.0, -1.0, -1.0], [2.0, 2.0, 0.0, 0.0]])
    m = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 0.0, 0.0]])
    # row 0: max(-A r, -A clip(r)) = [-1.2 (clipped), -0.5, 1.1, 0.8 (clipped)]; row 1: [-2, -2]
    loss, clipfrac = rl.clipped_policy_loss(torch.log(ratio), old, adv, m, clip=0.2, agg="token-mean")
    assert loss.item() == pytest.approx((-1.2 - 0.5 + 1.1 + 0.8 - 2 - 2) / 6, rel=1e-5)
    assert clipfrac.item() == pytest.approx(2 / 6)
    loss, _ = rl.clipped_policy_loss(torch.log(ratio), old, adv, m, clip=0.2, agg="seq-mean-token-mean")
    assert loss.item() == pytest.approx(((-1.2 - 0.5 + 1.1 + 0.8) / 4 - 2) / 2, rel=1e-5)
    # on-policy (ratio 1): the gradient is -A * grad log p, whatever the clip
    logp = torch.zeros(2, 4, requires_grad=True)
    loss, clipfrac = rl.clipped_policy_loss(logp, logp.detach(), adv, m)
    loss.backward()
    assert clipfrac.item() == 0.0
    assert torch.allclose(logp.grad, -adv * m / 6)


def test_clipped_value_loss_by_hand():
    v = torch.tensor([[1.0, 0.0, 0.5, 0.5], [2.0, 2.0, 2.0, 2.0]])
    old = torch.tensor([[0.5, 0.5, 0.5, 0.0], [2.0, 2.0, 2.0, 2.0]])
    ret = torch.tensor([[1.0, 1.0, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0]])
    m = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 0.0, 0.0, 0.0]])
    # row 0: max(l1, l2) = [.09 (clipped to .7), 1, .25, .64 (clipped to .2)]; row 1: [4]
    loss, clipfrac = rl.clipped_value_loss(v, old, ret, m, clip=0.2)
    assert loss.item() == pytest.approx(0.5 * (0.09 + 1 + 0.25 + 0.64 + 4) / 5, rel=1e-5)
    assert clipfrac.item() == pytest.approx(2 / 5)


def test_agg_weight_splits_exactly():
    """Micro-batch losses times weight / total weight add up to the whole batch's aggregate."""
    torch.manual_seed(0)
    x = torch.randn(6, 5)
    m = (torch.rand(6, 5) > 0.3).float()
    m[:, 0] = 1.0
    for mode in rl.AGG_MODES:
        whole = rl.agg_loss(x, m, mode)
        W = rl.agg_weight(m, mode)
        parts = sum(rl.agg_loss(x[i:i + 2], m[i:i + 2], mode) * rl.agg_weight(m[i:i + 2], mode) / W for i in (0, 2, 4))
        assert parts.item() == pytest.approx(whole.item(), rel=1e-5)


def test_lr_schedule_and_snapshots():
    class A:
        warmup_ratio, min_lr_ratio, ckpt_interval = 0.1, 0.1, "log"
    assert rl.lr_at(0, 100, A, 1.0) == pytest.approx(0.1)
    assert rl.lr_at(9, 100, A, 1.0) == pytest.approx(1.0)
    assert rl.lr_at(100, 100, A, 1.0) == pytest.approx(0.1)
    assert sorted(log_steps(20, A.ckpt_interval)) == [1, 2, 4, 8, 16, 20]  # the snapshot steps (--ckpt-interval)
    A.ckpt_interval = "5"
    assert sorted(log_steps(12, A.ckpt_interval)) == [5, 10, 12]


def test_prompt_order_is_a_function_of_seed_and_step():
    a = [rl.prompts_for_step(10, 4, s, seed=1) for s in range(5)]
    assert a == [rl.prompts_for_step(10, 4, s, seed=1) for s in range(5)]
    flat = sum(a, [])
    assert sorted(flat[:10]) == list(range(10)) and sorted(flat[10:20]) == list(range(10))  # epochs cover all


def test_prompts_from_a_local_gsm8k_file(shared_data):
    from data.benchmarks import load_prompts
    recs = load_prompts(str(shared_data / "gsm8k" / "train.jsonl"), limit=5)
    assert len(recs) == 5 and recs[0]["gold"] == "72" and recs[0]["question"].startswith("Natalia")


# ------------------------------------------------------------------------------------------ the loops
PROMPTS = [{"id": f"p{i}", "question": f"What is {i} plus {i}?", "gold": str(2 * i)} for i in range(32)]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny GPT (1 layer, d 32, vocab 4096) whose first response token is ' yes' or ' no' about half and half."""
    from data import prompt_text
    from data.tokenizer import get_tokenizer
    tok = get_tokenizer(4096)
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=4096, n_layer=1, n_head=2, n_embd=32, block_size=64)
    m = GPT(cfg, verbose=False)
    yes, no = tok.encode(" yes")[0], tok.encode(" no")[0]
    with torch.no_grad():
        for b in m.blocks:  # blocks start as the identity: the state after "?\n\n" is the same for every prompt
            b.attn.proj.weight.zero_()
            b.mlp.down.weight.zero_()
        h = m.hidden_states(torch.tensor([tok.encode(prompt_text(PROMPTS[0]["question"]))]))[0, -1]
        m.lm_head.weight[yes] = 2.0 * h / h.norm()
        m.lm_head.weight[no] = 2.0 * h / h.norm()
    path = str(tmp_path_factory.mktemp("tiny") / "init.pt")
    save_checkpoint(path, {"model": m.state_dict(), "config": asdict(cfg), "tokenizer": tok.spec, "step": 0,
                           "kind": "pretrain"})
    prompt_ids = [tok.encode(prompt_text(p["question"])) for p in PROMPTS]
    return {"path": path, "yes": yes, "tok": tok, "prompt_ids": prompt_ids}


def yes_reward(tiny):
    def fn(texts, records, responses):
        return [{"correct": r[0] == tiny["yes"], "format": "yes" if r[0] == tiny["yes"] else "other"}
                for r in responses]
    return fn


def p_yes(model, tiny):
    """Mean P(first response token = ' yes') over the prompts, exactly (T = 1)."""
    with torch.no_grad():
        ps = [model(torch.tensor([ids]))[0][0, -1].softmax(-1)[tiny["yes"]].item() for ids in tiny["prompt_ids"]]
    return sum(ps) / len(ps)


def flags(tiny, out, algo, *extra):
    return ["--algo", algo, "--ckpt", tiny["path"], "--out-dir", str(out), "--prompts-per-step", "8",
            "--samples-per-prompt", "4", "--max-new-tokens", "3", "--temperature", "1.0", "--lr", "5e-3",
            "--critic-lr", "1e-2", "--grade-truncated", "--eval-interval", "0", "--micro-batch", "8",
            "--no-tqdm", *extra]


@pytest.mark.parametrize("algo,steps", [("grpo", 4), ("ppo", 4), ("ei", 2)])
def test_each_algorithm_learns_a_trivial_task(tiny, tmp_path, algo, steps):
    # lr 5e-3 and these step counts raise P(yes) from 0.49 to 0.70-0.82 for every seed tried (1-5, 1337); at
    # lr 1e-2 Adam's first, sign-like steps jolt every weight of a 32-wide model and PPO can overshoot
    start = p_yes(model_from_checkpoint(tiny["path"]), tiny)
    assert 0.35 < start < 0.65
    res = rl.train(flags(tiny, tmp_path, algo, "--max-steps", str(steps)), reward_fn=yes_reward(tiny), prompts=PROMPTS)
    end = p_yes(res["model"], tiny)
    assert end > start + 0.15, f"{algo}: P(yes) {start:.3f} -> {end:.3f}"
    assert res["step"] == steps and [r["step"] for r in res["train"]] == list(range(1, steps + 1))
    rec = res["train"][-1]
    for key in ("reward", "accuracy", "format_shares", "format_accuracy", "response_length", "truncated", "time"):
        assert key in rec, key
    assert set(rec["time"]) >= {"generate", "reward", "logprobs", "update"}
    if algo != "ei":
        for key in ("kl", "entropy", "clipfrac", "lr", "grad_norm"):
            assert key in rec, key
        assert rec["kl"] is None  # beta 0: no reference model, no KL to report
        assert "adv_head_correct" in rec and "adv_head_wrong" in rec and "adv_head_format" in rec
    if algo == "ppo":
        assert "value_loss" in rec and "value_clipfrac" in rec
    # the latest checkpoint and the log-spaced snapshots (1, 2, 4, ... and the last), loadable by evaluate.py
    snaps = {f"ckpt-step{s:06d}.pt" for s in (1, 2, 4) if s <= steps}
    assert snaps | {"ckpt.pt", "metrics.jsonl", "config.json"} <= set(os.listdir(tmp_path))
    assert not os.path.exists(tmp_path / "ckpt-step000003.pt")
    snap = load_checkpoint(str(tmp_path / f"ckpt-step{steps:06d}.pt"))
    assert snap["kind"] == "rl" and snap["step"] == steps and "optimizer" not in snap
    assert torch.equal(model_from_checkpoint(snap).lm_head.weight, res["model"].lm_head.weight)


def fake_eval(calls):
    """Stands in for evaluate.run_eval: records its arguments, returns a summary of the same shape."""
    def fn(model, tok, records, n=1, temperature=0.7, top_p=0.95, max_new_tokens=256, batch_size=64, seed=0,
           greedy=True, progress=True):
        calls.append({"n": n, "greedy": greedy, "temperature": temperature, "top_p": top_p, "problems": len(records)})
        s = {"pass@1": 0.25, "format_shares": {"yes": 0.5, "other": 0.5}, "format_accuracy": {"yes": 1.0, "other": 0.0},
             "num_problems": len(records)}
        if not greedy:
            s["sampled"] = {"n": n, "pass@n": 0.5, "maj@n": 0.25, "format_shares": s["format_shares"],
                            "format_accuracy": s["format_accuracy"]}
        return [], s
    return fn


def test_logging_evals_plot_and_config(tiny, tmp_path):
    calls = []
    rl.train(flags(tiny, tmp_path, "grpo", "--max-steps", "3", "--eval-interval", "2", "--eval-samples", "2",
                   "--eval-sampled-n", "3"),
             reward_fn=yes_reward(tiny), prompts=PROMPTS, eval_records=PROMPTS[:4], eval_fn=fake_eval(calls))
    recs = [json.loads(ln) for ln in open(tmp_path / "metrics.jsonl")]
    assert recs[0]["type"] == "config" and recs[0]["algo"] == "grpo" and recs[0]["kl_estimator"] == "k3"
    assert [r["step"] for r in recs if r["type"] == "train"] == [1, 2, 3]
    evals = [r for r in recs if r["type"] == "eval"]
    assert [r["step"] for r in evals] == [0, 2, 3]  # before any update, every 2 steps, and the last
    for r in evals:
        assert r["pass@1"] == 0.25 and r["format_shares"]["yes"] == 0.5 and "format_accuracy" in r
        assert r["sampled"]["n"] == 2 and r["sampled"]["pass@1"] == 0.25
        assert r["num_problems"] == 4 and r["sampled"]["num_problems"] == 3  # --eval-sampled-n: the first 3
    # greedy, then sampled at the rollout temperature with top-p 1 (the distribution RL trains)
    assert calls[0]["greedy"] and not calls[1]["greedy"]
    assert calls[1]["temperature"] == 1.0 and calls[1]["top_p"] == 1.0
    assert [c["problems"] for c in calls[:2]] == [4, 3]
    assert (tmp_path / "formats.png").stat().st_size > 1000
    cfg = json.load(open(tmp_path / "config.json"))
    assert cfg["lr"] == 5e-3 and cfg["max_steps"] == 3
    assert load_checkpoint(str(tmp_path / "ckpt.pt"))["args"]["samples_per_prompt"] == 4


def test_eval_interval_log_evaluates_at_log_spaced_steps_and_the_last(tiny, tmp_path):
    calls = []
    rl.train(flags(tiny, tmp_path, "grpo", "--max-steps", "5", "--eval-interval", "log"),
             reward_fn=yes_reward(tiny), prompts=PROMPTS, eval_records=PROMPTS[:4], eval_fn=fake_eval(calls))
    evals = [json.loads(ln) for ln in open(tmp_path / "metrics.jsonl")]
    assert [r["step"] for r in evals if r["type"] == "eval"] == [0, 1, 2, 4, 5]


@pytest.mark.parametrize("algo", ["ppo", "ei"])
def test_resume_is_exact(tiny, tmp_path, algo):
    extra = ["--max-steps", "3", "--minibatches", "2", "--micro-batch", "4"]
    rl.train(flags(tiny, tmp_path / "a", algo, *extra), reward_fn=yes_reward(tiny), prompts=PROMPTS)
    rl.train(flags(tiny, tmp_path / "b", algo, *extra, "--stop-after", "2"), reward_fn=yes_reward(tiny), prompts=PROMPTS)
    assert load_checkpoint(str(tmp_path / "b" / "ckpt.pt"))["step"] == 2
    res = rl.train(["--out-dir", str(tmp_path / "b"), "--resume", "--no-tqdm"], reward_fn=yes_reward(tiny),
                   prompts=PROMPTS)
    assert res["step"] == 3
    a, b = load_checkpoint(str(tmp_path / "a" / "ckpt.pt")), load_checkpoint(str(tmp_path / "b" / "ckpt.pt"))
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    if algo == "ppo":
        for k in a["critic"]:
            assert torch.equal(a["critic"][k], b["critic"][k]), k
    # the resumed log holds each step once
    steps = [json.loads(ln).get("step") for ln in open(tmp_path / "b" / "metrics.jsonl")]
    assert steps[1:] == [1, 2, 3]


def test_forward_chunks_puts_rows_back_in_order():
    R = 5
    lens = torch.tensor([5, 1, 3, 2])
    batch = {"seqs": torch.arange(4 * (R + 2)).view(4, R + 2), "starts": torch.full((4,), 2), "lens": lens,
             "resp": torch.zeros(4, R, dtype=torch.long), "mask": (torch.arange(R)[None] < lens[:, None]).float()}
    batch.update(host_starts=batch["starts"].clone(), host_lens=lens.clone())  # as make_batch keeps them
    fn = lambda mb: mb["seqs"][:, 2:].float() * mb["mask"]  # each row's own values, trimmed by take()
    want = batch["seqs"][:, 2:].float() * batch["mask"]
    for chunks in (torch.arange(4).split(2), torch.argsort(lens).split(3), torch.tensor([3, 0, 2, 1]).split(1)):
        assert torch.equal(rl.forward_chunks(fn, batch, chunks), want)


def test_micro_batch_size_does_not_change_the_update(tiny, tmp_path):
    w = []
    for mb in ("32", "3"):
        res = rl.train(flags(tiny, tmp_path / mb, "grpo", "--max-steps", "1", "--micro-batch", mb,
                             "--loss-agg", "seq-mean-token-mean", "--kl", "0.1"),
                       reward_fn=yes_reward(tiny), prompts=PROMPTS)
        w.append(res["model"].lm_head.weight.detach().clone())
        assert res["train"][-1]["kl"] is not None  # beta 0.1: the reference is built and the KL logged
    # equal up to float rounding (that Adam amplifies on near-zero gradients); an update is about 1e-2
    assert (w[0] - w[1]).abs().max().item() < 1e-5


def test_non_finite_updates_stop_the_run_with_a_usable_checkpoint(tiny, tmp_path):
    def nan_reward(texts, records, responses):
        return [{"correct": False, "reward": float("nan")} for _ in responses]
    with pytest.raises(UserError, match="non-finite"):
        rl.train(flags(tiny, tmp_path, "grpo", "--max-steps", "5"), reward_fn=nan_reward, prompts=PROMPTS)
    recs = [json.loads(ln) for ln in open(tmp_path / "metrics.jsonl")]
    assert [r["skipped_updates"] for r in recs if r["type"] == "train"] == [1, 1]
    ck = load_checkpoint(str(tmp_path / "ckpt.pt"))
    init = load_checkpoint(tiny["path"])
    assert all(torch.equal(ck["model"][k], init["model"][k]) for k in init["model"])  # never touched by NaN


def test_bad_input_is_one_line(tiny, tmp_path, capsys):
    cases = [
        ["--ckpt", str(tmp_path / "missing.pt"), "--out-dir", str(tmp_path / "o")],
        ["--algo", "dpo"],
        ["--ckpt", tiny["path"], "--out-dir", str(tmp_path / "o"), "--resume"],
        ["--ckpt", tiny["path"], "--out-dir", str(tmp_path / "o"), "--eval-interval", "often"],
    ]
    blocker = tmp_path / "file"
    blocker.write_text("x")
    cases.append(["--ckpt", tiny["path"], "--out-dir", str(blocker / "sub")])
    for argv in cases:
        with pytest.raises(SystemExit) as e:
            rl.main(argv)
        assert e.value.code == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error:") and "\n" not in err, (argv, err)


# ------------------------------------------------------------------------------------------ more numbers, pinned
def test_token_rewards_by_hand():
    """-beta * k1 on every response token, plus the score on the LAST real token (not the last column)."""
    logp = torch.tensor([[-1.0, -2.0, -0.5, 0.0], [-1.0, -1.0, 0.0, 0.0]])
    ref = torch.tensor([[-1.5, -1.0, -0.5, 0.0], [-2.0, -1.0, 0.0, 0.0]])
    m = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0]])
    r = rl.token_rewards(torch.tensor([1.0, 0.0]), logp, ref, m, beta=0.1)
    # k1 = logp - ref: row 0 (0.5, -1, 0), row 1 (1, 0): a reward of -0.1 * k1, the score on tokens 2 and 1
    expect = torch.tensor([[-0.05, 0.1, 1.0, 0.0], [-0.1, 0.0, 0.0, 0.0]])
    assert torch.allclose(r, expect, atol=1e-7)
    # beta 0 (or no reference): the score alone
    assert torch.equal(rl.token_rewards(torch.tensor([1.0, 0.0]), None, None, m, beta=0.0),
                       torch.tensor([[0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0]]))


def test_ppo_advantages_with_a_kl_reward_by_hand():
    """PPO with beta > 0, gamma 1, lambda 1 and a zero critic: the advantage of token t is the sum of the rewards
    from t on, then whitened over every response token of the batch."""
    logp = torch.tensor([[-1.0, -1.0, -1.0], [-1.0, -1.0, -1.0]])
    ref = torch.tensor([[-2.0, -1.0, -1.0], [-1.0, -3.0, -1.0]])
    m = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    r = rl.token_rewards(torch.tensor([1.0, 1.0]), logp, ref, m, beta=0.5)
    # k1: row 0 (1, 0, 0), row 1 (0, 2) -> rewards row 0 (-0.5, 0, 1), row 1 (0, -1 + 1)
    assert torch.allclose(r, torch.tensor([[-0.5, 0.0, 1.0], [0.0, 0.0, 0.0]]))
    adv, ret = rl.compute_gae_advantage_return(r, torch.zeros_like(r), m, gamma=1.0, lam=1.0)
    assert torch.allclose(adv, torch.tensor([[0.5, 1.0, 1.0], [0.0, 0.0, 0.0]]))
    assert torch.equal(adv, ret)  # a zero critic: returns = advantages
    w = rl.masked_whiten(adv, m)
    vals = torch.tensor([0.5, 1.0, 1.0, 0.0, 0.0])  # mean 0.5, unbiased var 0.25
    assert torch.allclose(w[m.bool()], (vals - 0.5) / 0.5, atol=1e-6)
    # a lambda below 1 discounts the outcome on the way back: lambda 0.5 gives 1 at t=2, 0.5 at t=1, -0.25 at t=0
    adv_l, _ = rl.compute_gae_advantage_return(r, torch.zeros_like(r), m, gamma=1.0, lam=0.5)
    assert torch.allclose(adv_l[0], torch.tensor([-0.25, 0.5, 1.0]))


def test_response_logprobs_are_taken_at_the_sampling_temperature(tiny):
    m = model_from_checkpoint(tiny["path"])
    p, resp = tiny["prompt_ids"][0], [tiny["yes"], 17, 5]
    seqs = torch.tensor([p + resp])
    logits = m(seqs)[0][0]
    for T in (1.0, 0.5):
        lp, _ = rl.response_logprobs(m, seqs, torch.tensor([len(p)]), torch.tensor([resp]), temperature=T)
        want = [(logits[len(p) - 1 + j] / T).log_softmax(-1)[t].item() for j, t in enumerate(resp)]
        assert lp[0].tolist() == pytest.approx(want, abs=1e-5), T


def test_value_head_starts_small_random_and_seeded(tiny):
    body = model_from_checkpoint(tiny["path"])
    a, b = rl.Critic(body, seed=3), rl.Critic(body, seed=3)
    w = a.head.weight
    assert torch.equal(w, b.head.weight) and not torch.equal(w, rl.Critic(body, seed=4).head.weight)
    d = body.config.n_embd  # OpenRLHF: normal(0, 1 / (d + 1))
    assert w.abs().max() > 0 and w.std().item() == pytest.approx(1 / (d + 1), rel=0.35)


def test_abbreviated_flags_are_errors_not_silent_overrides():
    from presets import rl_args  # rl.py's flags
    with pytest.raises(UserError, match="--max-st"):
        rl_args(["--max-st", "5"])
    args, explicit = rl_args(["--max-steps=5", "--kl", "0.1"])
    assert args.max_steps == 5 and explicit == {"max_steps", "kl"}


def test_ei_samples_at_top_p_and_restarts_each_round_from_the_original_weights(tiny, tmp_path, monkeypatch):
    """Each round's SFT starts from the pretrained weights (not the last round's policy), and EI rollouts sample
    at top-p 0.95 (the paper), PPO/GRPO at 1.0."""
    original = model_from_checkpoint(tiny["path"]).state_dict()
    starts, top_ps = [], []
    real_adamw, real_rollout = rl.adamw, rl.rollout

    def spy_adamw(module, lr):
        starts.append({k: v.detach().clone() for k, v in module.state_dict().items()})
        return real_adamw(module, lr)

    def spy_rollout(run, model, *a, **k):
        top_ps.append(run.args.top_p)
        return real_rollout(run, model, *a, **k)
    monkeypatch.setattr(rl, "adamw", spy_adamw)
    monkeypatch.setattr(rl, "rollout", spy_rollout)
    res = rl.train(flags(tiny, tmp_path, "ei", "--max-steps", "2"), reward_fn=yes_reward(tiny), prompts=PROMPTS)
    assert len(starts) == 2 and top_ps == [0.95, 0.95]
    for s in starts:
        assert all(torch.equal(s[k], original[k]) for k in original)
    assert not torch.equal(res["model"].lm_head.weight, original["lm_head.weight"])  # it did learn something
    assert res["train"][-1]["kept"] > 0 and "kept_format_shares" in res["train"][-1]


def test_cuda_rollouts_sample_from_a_bf16_copy_refreshed_in_place(tiny):
    """On CUDA rollouts use a bf16 copy of the policy (no autocast inside the decode graph), made once and refreshed
    in place before each rollout, so it always samples the current weights. Run here on the CPU by naming the
    device "cuda" in a stand-in run (the branch only reads the name)."""
    from types import SimpleNamespace
    from contextlib import nullcontext
    model = model_from_checkpoint(tiny["path"])
    run = SimpleNamespace(args=SimpleNamespace(gen_batch=8, max_new_tokens=2, temperature=1.0, top_p=1.0),
                          device="cuda", autocast=nullcontext, sampler=None, tok=tiny["tok"])
    rl.rollout(run, model, tiny["prompt_ids"][:2], 2, ("t", 0))
    first = run.sampler
    assert first is not model and first.lm_head.weight.dtype == torch.bfloat16
    with torch.no_grad():
        model.lm_head.weight.mul_(-1.0)  # an update
    out = rl.rollout(run, model, tiny["prompt_ids"][:2], 2, ("t", 1))
    assert run.sampler is first and len(out) == 4
    assert torch.equal(first.lm_head.weight, model.lm_head.weight.to(torch.bfloat16))


def test_ppo_critic_warmup_freezes_the_actor(tiny, tmp_path):
    # 2 warm-up steps of 3: after them the actor is bitwise the pretrained model and only the critic moved; the
    # third step moves the actor. Without the flag the actor moves from the first step.
    start = model_from_checkpoint(tiny["path"])
    rl.train(flags(tiny, tmp_path / "w", "ppo", "--max-steps", "2", "--critic-warmup-steps", "2"),
             reward_fn=yes_reward(tiny), prompts=PROMPTS)
    after2 = load_checkpoint(str(tmp_path / "w" / "ckpt.pt"))
    for k, v in start.state_dict().items():
        assert torch.equal(after2["model"][k], v), k
    assert any(not torch.equal(after2["critic"][f"body.{k}"], v) for k, v in start.state_dict().items())
    assert not after2["optimizer"]["state"]  # the actor's AdamW never stepped
    res = rl.train(["--out-dir", str(tmp_path / "w"), "--resume", "--max-steps", "3", "--no-tqdm"],
                   reward_fn=yes_reward(tiny), prompts=PROMPTS)
    recs = [json.loads(ln) for ln in open(tmp_path / "w" / "metrics.jsonl")]
    assert [r["actor_frozen"] for r in recs if r["type"] == "train"] == [True, True, False]
    assert [r["grad_norm"] is None for r in recs if r["type"] == "train"] == [True, True, False]
    assert any(not torch.equal(res["model"].state_dict()[k], v) for k, v in start.state_dict().items())
    res = rl.train(flags(tiny, tmp_path / "n", "ppo", "--max-steps", "1"), reward_fn=yes_reward(tiny), prompts=PROMPTS)
    assert any(not torch.equal(res["model"].state_dict()[k], v) for k, v in start.state_dict().items())


class FakeWandb:
    """Stands in for the wandb module: records what --wandb sends."""
    def __init__(self):
        self.inits, self.logged, self.finished = [], [], 0

    def init(self, **kw):
        self.inits.append(kw)
        fake = self

        class Run:
            def log(self, data, step=None):
                fake.logged.append((step, data))

            def finish(self):
                fake.finished += 1
        return Run()


def test_wandb_mirrors_every_metrics_record(tiny, tmp_path, monkeypatch):
    import sys
    fake = FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    rl.train(flags(tiny, tmp_path, "grpo", "--max-steps", "2", "--wandb", "--wandb-project", "p"),
             reward_fn=yes_reward(tiny), prompts=PROMPTS)
    assert len(fake.inits) == 1 and fake.inits[0]["project"] == "p" and fake.inits[0]["config"]["algo"] == "grpo"
    assert fake.finished == 1
    recs = [json.loads(ln) for ln in open(tmp_path / "metrics.jsonl")][1:]  # the config record goes to init
    assert [s for s, _ in fake.logged] == [r["step"] for r in recs] == [1, 2]
    assert fake.logged[1][1]["train/reward"] == recs[1]["reward"]
    assert fake.logged[1][1]["train/format_shares/other"] == recs[1]["format_shares"]["other"] == 1.0
    # off by default; without the package it is one clear error
    fake.inits.clear()
    rl.train(flags(tiny, tmp_path / "off", "grpo", "--max-steps", "1"), reward_fn=yes_reward(tiny), prompts=PROMPTS)
    assert not fake.inits
    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(UserError, match="pip install wandb"):
        rl.train(flags(tiny, tmp_path / "none", "grpo", "--max-steps", "1", "--wandb"), reward_fn=yes_reward(tiny),
                 prompts=PROMPTS)


def test_flat_record_keeps_numbers_by_type():
    from common import flat_record
    rec = {"type": "eval", "step": 4, "pass@1": 0.25, "sampled": {"n": 4, "pass@k": {"2": 0.5}}, "cpu": "x",
           "format_accuracy": {"omi2": None}, "actor_frozen": True, "bad": float("nan")}
    assert flat_record(rec) == {"eval/pass@1": 0.25, "eval/sampled/n": 4, "eval/sampled/pass@k/2": 0.5,
                                "eval/actor_frozen": 1}
