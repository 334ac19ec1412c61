"""
RL post-training of a pretrained checkpoint: PPO, GRPO and Expert Iteration, each one plain loop in this file.

    python rl.py                          # the toy echo chamber: GRPO from out/pretrain-toy/ckpt.pt -> out/rl-toy
    python rl.py --algo ppo               # -> out/rl-toy-ppo        (python rl.py --algo ei -> out/rl-toy-ei)
    python rl.py --preset 150m --algo ppo --ckpt out/pretrain-150m/ckpt.pt --data-dir ../shared/data --device cuda
    torchrun --nproc_per_node=8 rl.py --preset 150m ...   # each rank rolls out its share; gradients all-reduced
    python rl.py --out-dir out/rl-toy --resume            # exact resume (--stop-after N, a larger --max-steps)

How to read it: (1) the RL math, pure functions on tensors pinned by hand-computed values in tests/test_rl.py
(veRL core_algos.py / OpenRLHF loss.py style); (2) forward passes over rollouts; (3) set-up and evals; (4) the
helpers the loops share; (5) one loop per algorithm: train_ppo, train_grpo, train_ei. Flags and presets: presets.py;
resume, logging, checkpoints, all-reduce, the update step and the divergence guard: common.py.

Choices worth knowing (each a flag):
- a response cut at --max-new-tokens has no end-of-text: reward 0 (--grade-truncated: graded as-is, as OpenRLHF)
- log-probs at the sampling temperature, PPO/GRPO at top-p 1 (EI 0.95): ratio and KL under the sampled distribution
- losses are a token-mean over the minibatch (--loss-agg); micro-batching never changes them
- every random choice is a pure function of (--seed, step): resuming needs only the step, weights and optimizer

Outputs in --out-dir: metrics.jsonl ("config", then "train" every step, "eval" at step 0, at --eval-interval's steps
and the last), config.json, formats.png, ckpt.pt (--resume), ckpt-stepNNNNNN.pt at steps 1, 2, 4, 8, ... and the last.
"""
import copy
import functools
import math
import os
import time
from contextlib import nullcontext
from types import SimpleNamespace

import torch
import torch.distributed as dist
import torch.nn as nn
from tqdm import tqdm

from common import UserError, main_guard, all_gather, all_sum, apply_update, check_out_dir, close_tracker, cosine_lr, \
    derive_seed, device_sums, generator, guard, log, log_steps, open_tracker, phase_times, read_sums, restore, \
    resume_or_resolve, save, say, set_lr, set_threads, setup_distributed, start_run_log
from presets import AGG_MODES, KL_KINDS, RL_RESUME_OVERRIDES, RL_RUNTIME, resolve_rl, rl_args


# ==== (1) RL math: pure functions on (batch, response length) tensors; mask is 1.0 on response tokens, 0.0 on padding
def masked_mean(x, mask, dim=None):
    """Mean of x where mask is 1 (over everything, or along dim)."""
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def masked_var(x, mask, unbiased=True):
    """Variance of the masked entries (Bessel-corrected by default, as veRL)."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    if unbiased:
        n = mask.sum()
        var = var * n / (n - 1).clamp(min=1)
    return var


def masked_whiten(x, mask, shift_mean=True, eps=1e-8):
    """(x - mean) / std over the masked entries; masked-out entries become 0."""
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out * mask


def agg_loss(loss_mat, mask, mode="token-mean"):
    """Reduce a per-token loss to a scalar.
    token-mean:          sum over all tokens / number of tokens (long responses weigh more; OpenRLHF, DAPO)
    seq-mean-token-mean: mean over tokens within each sequence, then mean over sequences (the GRPO paper)"""
    if mode == "token-mean":
        return masked_mean(loss_mat, mask)
    if mode == "seq-mean-token-mean":
        has = (mask.sum(-1) > 0).to(loss_mat.dtype)
        return (masked_mean(loss_mat, mask, dim=-1) * has).sum() / has.sum().clamp(min=1)
    raise ValueError(f"unknown loss aggregation {mode!r}; one of {AGG_MODES}")


def agg_weight(mask, mode="token-mean"):
    """What agg_loss divides by: tokens or sequences. A micro-batch's loss times weight / (the minibatch's
    total weight) sums to the minibatch's agg_loss, so micro-batching and ranks never change the gradient."""
    if mode == "token-mean":
        return mask.sum()
    if mode == "seq-mean-token-mean":
        return (mask.sum(-1) > 0).sum().to(mask.dtype)
    raise ValueError(f"unknown loss aggregation {mode!r}; one of {AGG_MODES}")


def kl_penalty(logp, ref_logp, kind="k1"):
    """Per-token estimate of KL(policy || reference) from log-probs of tokens sampled from the policy
    (Schulman, "Approximating KL divergence"); with r = ref_logp - logp:
    k1 = -r            unbiased, can be negative              (PPO's per-token reward penalty)
    k2 = r^2 / 2       biased, low variance, always >= 0
    k3 = e^r - 1 - r   unbiased, always >= 0                   (GRPO's loss term)"""
    r = ref_logp - logp
    if kind == "k1":
        return -r
    if kind == "k2":
        return 0.5 * r ** 2
    if kind == "k3":
        r = r.clamp(-20, 20)  # e^r overflows far before a sane policy gets there
        return torch.exp(r) - 1 - r
    raise ValueError(f"unknown KL estimator {kind!r}; one of {KL_KINDS}")


def token_rewards(scores, logp, ref_logp, mask, beta, kind="k1"):
    """PPO's per-token reward: -beta * KL estimate (k1 by default) against the reference on every response token,
    plus the sequence's 0/1 score on its last token. With beta 0 (or no reference: logp / ref_logp None) only
    the score remains. scores: (B,); logp, ref_logp, mask: (B, R); returns (B, R)."""
    if ref_logp is None or beta == 0:
        rewards = torch.zeros_like(mask)
    else:
        rewards = -beta * kl_penalty(logp, ref_logp, kind) * mask
    last = (mask.sum(-1) - 1).long().clamp(min=0)
    rewards[torch.arange(mask.size(0), device=mask.device), last] += scores
    return rewards


def compute_gae_advantage_return(token_rewards, values, mask, gamma=1.0, lam=0.95):
    """Generalized advantage estimation over right-padded responses (token t of a row at column t).
    delta_t = r_t + gamma * V_{t+1} - V_t (V after the last token = 0);  A_t = delta_t + gamma * lam * A_{t+1};
    returns = A + V (the critic's regression target). Returns (advantages, returns), both 0 on padding."""
    values = values * mask
    token_rewards = token_rewards * mask
    R = token_rewards.size(1)
    last = torch.zeros_like(token_rewards[:, 0])
    adv = torch.zeros_like(token_rewards)
    for t in reversed(range(R)):
        next_v = values[:, t + 1] if t + 1 < R else torch.zeros_like(last)
        delta = token_rewards[:, t] + gamma * next_v - values[:, t]
        last = (delta + gamma * lam * last) * mask[:, t]
        adv[:, t] = last
    return adv, (adv + values) * mask


def compute_grpo_outcome_advantage(scores, mask, group_size, eps=1e-6):
    """GRPO: each sequence's outcome score normalised within its group of samples of the same prompt,
    (r - group mean) / (group std + eps) with the unbiased std (torch.std, as veRL), on every token.
    scores: (B,) with groups contiguous (B = prompts * group_size, prompt-major); returns (B, R)."""
    g = scores.view(-1, group_size)
    std = g.std(dim=1, keepdim=True) if group_size > 1 else torch.zeros_like(g[:, :1])
    adv = ((g - g.mean(dim=1, keepdim=True)) / (std + eps)).view(-1)
    return adv[:, None] * mask


def head_advantage(adv, mask, groups, k=5):
    """Credit where the format is chosen: the mean advantage on the first k response tokens of each group of rows
    (groups: one label per row, e.g. correct / wrong, or the row's format) -> {label: mean}. GRPO puts each row's
    outcome advantage on every token; PPO's GAE passes the outcome back only lambda^t from the last token, so what
    reaches the first tokens is mostly the critic's own differences V(s_t+1) - V(s_t).
    adv, mask: (B, R) -> a dict of floats."""
    head = mask.clone()
    head[:, k:] = 0
    per_row, count = (adv * head).sum(-1).tolist(), head.sum(-1).tolist()
    sums = {}
    for g, a, c in zip(groups, per_row, count):
        s = sums.setdefault(g, [0.0, 0.0])
        s[0], s[1] = s[0] + a, s[1] + c
    return {g: a / c for g, (a, c) in sums.items() if c > 0}


def head_record(adv, mask, samples):
    """The train record's head-credit keys: correct against wrong rows, and by format (under torchrun, rank 0's
    rollouts: a diagnostic, not worth an all-gather of the advantages)."""
    by_ok = head_advantage(adv, mask, [s["reward"] > 0 for s in samples])
    return {"adv_head_correct": by_ok.get(True), "adv_head_wrong": by_ok.get(False),
            "adv_head_format": head_advantage(adv, mask, [s["format"] for s in samples])}


def clipped_policy_loss(logp, old_logp, advantages, mask, clip=0.2, agg="token-mean"):
    """PPO's clipped surrogate: max(-A * ratio, -A * clamp(ratio, 1 - clip, 1 + clip)), ratio = pi / pi_old.
    Returns (loss, clip fraction = share of tokens where the clipped branch was taken)."""
    ratio = torch.exp(logp - old_logp)
    pg1 = -advantages * ratio
    pg2 = -advantages * ratio.clamp(1 - clip, 1 + clip)
    loss = agg_loss(torch.maximum(pg1, pg2), mask, agg)
    clipfrac = masked_mean((pg2 > pg1).float(), mask)
    return loss, clipfrac


def clipped_value_loss(values, old_values, returns, mask, clip=0.2, agg="token-mean"):
    """PPO's clipped value loss: 0.5 * max((V - G)^2, (V_clipped - G)^2), V_clipped = V_old + clamp(V - V_old, +-clip).
    Returns (loss, clip fraction)."""
    v_clipped = old_values + (values - old_values).clamp(-clip, clip)
    l1 = (values - returns) ** 2
    l2 = (v_clipped - returns) ** 2
    loss = 0.5 * agg_loss(torch.maximum(l1, l2), mask, agg)
    clipfrac = masked_mean((l2 > l1).float(), mask)
    return loss, clipfrac


# ==== (2) forward passes over rollouts: sequences are prompt + response, right-padded; only response tokens count
def gather_response(h, starts, R):
    """(B, L-1, d) states of inputs seq[:, :-1] -> (B, R, d): the states that predict response tokens 0..R-1.
    Response token j of row b sits at starts[b] + j, so it is predicted from position starts[b] - 1 + j."""
    pos = (starts[:, None] - 1 + torch.arange(R, device=h.device)[None, :]).clamp(max=h.size(1) - 1)
    return h.gather(1, pos[..., None].expand(-1, -1, h.size(-1)))


def response_logprobs(model, seqs, starts, resp, temperature=1.0, with_entropy=False):
    """log pi(response token | prefix) at the sampling temperature, (B, R); optionally the entropy (no grad).
    The vocabulary projection runs on response positions only (prompts need no logits)."""
    h = gather_response(model.hidden_states(seqs[:, :-1]), starts, resp.size(1))
    logits = model.lm_head(h).float() / temperature
    logp_all = logits.log_softmax(-1)
    logp = logp_all.gather(-1, resp[..., None]).squeeze(-1)
    with torch.no_grad():
        ent = -(logp_all.exp() * logp_all).sum(-1) if with_entropy else None
    return logp, ent


class Critic(nn.Module):
    """PPO's value model: a copy of the pretrained GPT with a fresh scalar head, Linear(d, 1), on its final hidden
    states. The head starts at normal(0, 1/(d+1)) as OpenRLHF's does, drawn from a seeded generator."""
    def __init__(self, body, seed=0):
        super().__init__()
        self.body = body
        d = body.config.n_embd
        self.head = nn.Linear(d, 1, bias=False)
        with torch.no_grad():
            w = torch.randn(self.head.weight.shape, generator=torch.Generator().manual_seed(seed)) / (d + 1)
            self.head.weight.copy_(w)

    def forward(self, seqs, starts, resp):
        """Values (B, R) of the states before each response token (same inputs as response_logprobs)."""
        h = gather_response(self.body.hidden_states(seqs[:, :-1]), starts, resp.size(1))
        return self.head(h).squeeze(-1).float()


def make_batch(prompt_ids, responses, pad_id, device):
    """prompt_ids / responses: one token list per sample -> padded tensors (responses include their EOS)."""
    B, lens, starts = len(responses), [len(r) for r in responses], [len(p) for p in prompt_ids]
    L, R = max(s + n for s, n in zip(starts, lens)), max(lens)
    seqs = torch.full((B, L), pad_id, dtype=torch.long)
    resp = torch.full((B, R), pad_id, dtype=torch.long)
    mask = torch.zeros(B, R)
    for b, (p, r) in enumerate(zip(prompt_ids, responses)):
        seqs[b, :len(p) + len(r)] = torch.tensor(p + r, dtype=torch.long)
        resp[b, :len(r)] = torch.tensor(r, dtype=torch.long)
        mask[b, :len(r)] = 1.0
    return {"seqs": seqs.to(device), "resp": resp.to(device), "mask": mask.to(device),
            "starts": torch.tensor(starts, device=device), "lens": torch.tensor(lens, device=device),
            "host_starts": torch.tensor(starts), "host_lens": torch.tensor(lens)}


def take(batch, idx):
    """Rows idx of a rollout batch, trimmed to their own longest sequence and response (less padding to run).
    The trim lengths come from the host copies of the lengths, so taking a micro-batch never waits on the GPU."""
    hs, hl = batch["host_starts"][idx], batch["host_lens"][idx]
    R, L = int(hl.max()), int((hs + hl).max())
    idx = idx.to(batch["seqs"].device)
    out = {"starts": batch["starts"][idx], "lens": batch["lens"][idx], "seqs": batch["seqs"][idx, :L],
           "host_starts": hs, "host_lens": hl}
    for k, v in batch.items():
        if k not in out and torch.is_tensor(v) and v.dim() == 2:
            out[k] = v[idx, :R]
    return out


def forward_chunks(fn, batch, chunks):
    """fn(micro-batch) -> (b, r_i) for each chunk of rows (any rows, e.g. grouped by length), right-padded
    and put back in row order: (B, R)."""
    R = batch["resp"].size(1)
    parts = [fn(take(batch, c)).float() for c in chunks]
    out = torch.cat([nn.functional.pad(p, (0, R - p.size(1))) for p in parts], dim=0)
    order = torch.cat(list(chunks)).to(out.device)
    return torch.empty_like(out).index_copy_(0, order, out)


def _inputs(mbat):
    return mbat["seqs"], mbat["starts"], mbat["resp"]


# ==== (3) set-up and evals (resume, logging and checkpoints: common.py); nothing here knows which algorithm runs
def math_reward(texts, records, responses=None):
    """The paper's reward: 1 if classify.py's graded answer equals the gold (model-written code runs only in its
    sandbox). A reward_fn returns a dict per text: "correct", optionally "format", "answer", "reward" (a number)."""
    from classify import analyze_batch
    return analyze_batch(texts, [r["gold"] for r in records])


def setup(argv, reward_fn, prompts=None, eval_records=None, eval_fn=None):
    """Flags (presets.rl_args, and --resume's merge), device and torchrun, the pretrained model, prompts, eval set,
    the log. Returns `run`, the plain namespace the loops read from."""
    args, explicit = rl_args(argv)
    args, resume_ck = resume_or_resolve(args, explicit, resolve_rl, RL_RUNTIME, RL_RESUME_OVERRIDES)
    device, ddp, rank, world = setup_distributed(args.device)
    set_threads(args.threads)
    step, cuda = (resume_ck["step"] if resume_ck else 0), device.startswith("cuda")
    run = SimpleNamespace(args=args, device=device, ddp=ddp, rank=rank, world=world, master=rank == 0,
                          resume_ck=resume_ck, step=step, start_step=step, bar=None, sampler=None,
                          autocast=(lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if cuda else nullcontext,
                          metrics_path=os.path.join(args.out_dir, "metrics.jsonl"), train_log=[], eval_log=[],
                          plot_path=os.path.join(args.out_dir, "formats.png"), reward_fn=reward_fn, eval_fn=eval_fn)
    if run.master:
        check_out_dir(args.out_dir)
    if args.prompts_per_step % world:
        raise UserError(f"--prompts-per-step {args.prompts_per_step} must be a multiple of {world} ranks")

    # the pretrained checkpoint: the policy's start, the frozen reference, the critic's body, EI's origin
    from evaluate import load_model
    try:
        run.model, run.tok, run.init_ck = load_model(args.ckpt, device)
    except UserError as e:  # a missing one gets a hint
        raise e if os.path.exists(args.ckpt) else UserError(f"{e} (run python pretrain.py first, or pass --ckpt)")

    # prompts: tokenized once; a prompt that leaves no room for a response is dropped (and counted)
    from data import encode_prompts
    from data.benchmarks import load_benchmark, load_prompts
    records = prompts[:args.prompts or None] if prompts is not None else \
        load_prompts(args.prompts_file, args.prompt_set, args.data_dir, args.prompts or None)
    ids = encode_prompts(run.tok, [r["question"] for r in records])
    room = run.model.config.block_size - min(args.max_new_tokens, 32)
    keep = [i for i, p in enumerate(ids) if 0 < len(p) <= room]
    run.dropped = len(records) - len(keep)
    run.records, run.prompt_ids = [records[i] for i in keep], [ids[i] for i in keep]
    if not run.records:
        raise UserError(f"no usable RL prompts ({len(records)} loaded, {run.dropped} too long for the context)")
    run.eval_records = load_benchmark(args.eval_set, "test", data_dir=args.data_dir, limit=args.eval_n or None) \
        if args.eval_interval and eval_records is None else eval_records
    if args.max_steps == 0:
        if args.algo == "ei":
            raise UserError("--max-steps (rounds) must be positive for ei")
        args.max_steps = max(1, math.ceil(args.passes * len(run.records) / args.prompts_per_step))
    run.snapshots = log_steps(args.max_steps, args.ckpt_interval)  # steps that keep a ckpt-stepNNNNNN.pt
    run.eval_steps = log_steps(args.max_steps, args.eval_interval) | {0} if args.eval_interval else set()
    if run.master:
        kept = start_run_log(args.out_dir, run.step, args.resume, {
            "type": "config", **vars(args), "world_size": world, "num_prompts": len(run.records),
            "dropped_prompts": run.dropped, "init_step": run.init_ck.get("step"), "init_kind": run.init_ck.get("kind")})
        run.eval_log = [r for r in kept if r.get("type") == "eval"]
        open_tracker(args.wandb, run.metrics_path, kept[0] if kept else vars(args), args.wandb_project)
    return run


def evaluate(run, model):
    """At run.eval_steps (--eval-interval: 0, 1, 2, 4, ... or every N, and the last): the held-out eval on rank 0
    (evaluate.eval_record: greedy, and with --eval-samples sampled at the rollout's temperature and top-p), logged,
    plotted and printed."""
    a = run.args
    if run.step in run.eval_steps:
        if run.master:
            from evaluate import eval_line, eval_record, plot_formats
            log(run, eval_record(model, run.tok, run.eval_records, run.step, a.eval_samples, a.temperature, a.top_p,
                                 a.max_new_tokens, a.eval_batch, derive_seed(a.seed, "eval"), run.eval_fn,
                                 getattr(a, "eval_sampled_n", 0)))
            plot_formats(run.eval_log, run.plot_path)
            say(run, eval_line(run.eval_log[-1]))
        if run.ddp:
            dist.barrier()


# ==== (4) the helpers the three loops share
def lr_at(it, total, args, peak):
    """Linear warmup over warmup_ratio of the optimizer steps, then cosine down to min_lr_ratio * peak."""
    return cosine_lr(it, total, peak, int(round(args.warmup_ratio * total)), args.min_lr_ratio)


@functools.lru_cache(maxsize=4)
def _epoch_perm(n, seed, epoch):
    return torch.randperm(n, generator=generator(seed, "prompts", epoch)).tolist()


def prompts_for_step(n, per_step, step, seed):
    """Indices of step's prompts: the global stream of seeded per-epoch permutations of the n prompts."""
    return [_epoch_perm(n, seed, i // n)[i % n] for i in range(step * per_step, (step + 1) * per_step)]


def adamw(module, lr):
    return torch.optim.AdamW(module.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.0, eps=1e-8)


def start(run, model, desc):
    """The step-0 eval (a fresh run) and the progress bar."""
    if run.step == 0:
        evaluate(run, model)
    run.bar = tqdm(total=run.args.max_steps, initial=run.step, desc=desc, dynamic_ncols=True,
                   disable=not run.master or run.args.no_tqdm)


@torch.no_grad()
def rollout(run, model, prompt_ids, n, seed_key):
    """n samples per prompt (prompt-major), --gen-batch rows at a time, each chunk with its own derived seed. On
    CUDA the sampler is a bf16 copy of the policy refreshed in place (no autocast inside the decode graph)."""
    args = run.args
    sampler, ctx = model, run.autocast
    if run.device.startswith("cuda"):
        from model import inference_copy, refresh_
        run.sampler = run.sampler or inference_copy(model, torch.bfloat16)  # made once, refreshed in place
        sampler, ctx = refresh_(run.sampler, model), nullcontext
    sampler.eval()
    per_chunk = max(1, args.gen_batch // n)
    out = []
    for c in range(0, len(prompt_ids), per_chunk):
        # a row also stops at the end of the context (prompts leaving < 32 tokens were dropped at load time)
        with ctx():
            out += sampler.generate(prompt_ids[c:c + per_chunk], args.max_new_tokens, temperature=args.temperature,
                                    top_p=args.top_p, eos_id=run.tok.eot_id, num_samples=n,
                                    seed=derive_seed(*seed_key, c))
    return out


def grade(run, records, responses):
    """One dict per response: format, correct (graded as-is), reward (0 without EOS unless --grade-truncated),
    length, truncated."""
    finished = [len(r) > 0 and r[-1] == run.tok.eot_id for r in responses]
    texts = [run.tok.decode(r[:-1] if f else r) for r, f in zip(responses, finished)]
    out = []
    for res, r, f in zip(run.reward_fn(texts, records, responses), responses, finished):
        correct = bool(res["correct"])
        reward = float(res["reward"]) if res.get("reward") is not None else float(correct)
        out.append({"format": res.get("format"), "correct": correct, "length": len(r), "truncated": not f,
                    "reward": reward if f or run.args.grade_truncated else 0.0})
    return out


def rollout_step(run, model, step, times):
    """Phases 1-2 of a PPO/GRPO step: this rank's share of the step's prompts, n samples each, graded, as a padded
    batch; rows are grouped by length into micro-batches for the forward passes (less padding)."""
    args, n = run.args, run.args.samples_per_prompt
    local = args.prompts_per_step // run.world
    idx = prompts_for_step(len(run.records), args.prompts_per_step, step, args.seed)[run.rank * local:(run.rank + 1) * local]
    responses = rollout(run, model, [run.prompt_ids[i] for i in idx], n, (args.seed, "gen", step, run.rank))
    times["generate"] = time.time()
    samples = grade(run, [run.records[i] for i in idx for _ in range(n)], responses)
    times["reward"] = time.time()
    batch = make_batch([run.prompt_ids[i] for i in idx for _ in range(n)], responses, run.tok.eot_id, run.device)
    batch["scores"] = torch.tensor([s["reward"] for s in samples], device=run.device)
    seq_len = batch["host_starts"] + batch["host_lens"]
    chunks = torch.argsort(seq_len, stable=True).split(args.micro_batch)
    return samples, batch, seq_len, chunks


def logprobs_fn(model, temperature):
    return lambda mb: response_logprobs(model, *_inputs(mb), temperature=temperature)[0]


def whiten_global(run, adv, mask):
    """masked_whiten over the whole rollout batch of every rank (identical to masked_whiten on one process)."""
    if not run.ddp:
        return masked_whiten(adv, mask)
    s, s2, c = all_sum(torch.stack([(adv * mask).sum(), (adv * adv * mask).sum(), mask.sum()]).double(), run.ddp).tolist()
    mean = s / c
    var = (s2 / c - mean ** 2) * c / max(c - 1, 1)
    return (adv - mean) * (var + 1e-8) ** -0.5 * mask


def backward_minibatch(run, batch, rows, seq_len, loss_fn, stats):
    """Forward and backward one minibatch in micro-batches of similar lengths; loss_fn(micro) -> (loss, its float64
    stat sums, see policy_stats). Each micro-batch's loss is weighted by its share of the minibatch's tokens (or
    sequences) over all ranks, so the summed gradient is the minibatch's agg_loss whatever the micro-batching.
    Returns a device flag: was any loss non-finite (read once per update)."""
    agg = run.args.loss_agg
    W = all_sum(agg_weight(batch["mask"][rows.to(run.device)], agg).double(), run.ddp).float().clamp(min=1.0)
    bad = torch.zeros((), dtype=torch.bool, device=run.device)
    for micro in rows[torch.argsort(seq_len[rows], stable=True)].split(run.args.micro_batch):
        mb = take(batch, micro)
        w = agg_weight(mb["mask"], agg) / W
        loss, st = loss_fn(mb, w)
        bad |= ~torch.isfinite(loss)
        (loss * w).backward()
        for k, v in st.items():
            stats[k] = stats[k] + v
    return bad


def policy_updates(run, batch, seq_len, step, groups, loss_fn, keys, state_fn, bad_in_a_row):
    """Phase 5 of PPO and GRPO: --ppo-epochs seeded shuffles of the rollout, each cut into --minibatches optimizer
    steps of (module, optimizer, peak lr) groups; loss_fn(micro-batch, weight, first epoch?) -> (loss, stats). Returns
    (stats summed over ranks, updates taken (>= 1), skipped, mean grad norm, bad updates in a row)."""
    args, updates = run.args, run.args.ppo_epochs * run.args.minibatches
    stats, skipped, gnorms = device_sums(keys, run.device), 0, []
    for epoch in range(args.ppo_epochs):
        perm = torch.randperm(seq_len.size(0), generator=generator(args.seed, "shuffle", step, run.rank, epoch))
        for i, rows in enumerate(perm.tensor_split(args.minibatches)):
            for _, opt, peak in groups:
                set_lr(opt, lr_at(step * updates + epoch * args.minibatches + i, args.max_steps * updates, args, peak))
            bad = backward_minibatch(run, batch, rows, seq_len, functools.partial(loss_fn, first=epoch == 0), stats)
            ok, gnorm = apply_update([g[:2] for g in groups], bad, args.grad_clip, run.ddp)
            skipped += not ok
            gnorms += [gnorm] if ok else []
            # 3 non-finite updates in a row stop the run; skipped updates never touched the weights it saves
            bad_in_a_row = guard(ok, bad_in_a_row, run.step, lambda: save(run, state_fn(), snapshot=False),
                                 lambda m: say(run, m))
    gnorm = sum(gnorms) / len(gnorms) if gnorms else None
    return read_sums(stats, run.ddp), max(updates - skipped, 1), skipped, gnorm, bad_in_a_row


def policy_stats(pg_loss, clipfrac, w, mask, first_epoch, ent=None, kl=None):
    """A micro-batch's contribution to the step's logged stats, as float64 sums on the device (no host sync)."""
    ntok = mask.sum().double()
    st = {"pg_loss": pg_loss.detach().double() * w.double(), "clip": clipfrac.double() * ntok, "wsum": ntok}
    if first_epoch:  # entropy and KL of the policy on its own rollout, once per sample
        st["ent"] = (ent * mask).sum().double()
        st["tok"] = ntok
        if kl is not None:
            st["kl"] = (kl * mask).sum().double()
    return st


def step_record(run, samples, times, t0):
    """The rollout half of a train record, over every rank's samples: reward, accuracy, format shares and accuracy
    within each format (classify.format_metrics), lengths; and the seconds of each phase."""
    from classify import format_metrics
    samples = all_gather(samples, run.world)
    shares, acc = format_metrics(samples)
    n = len(samples)
    rec = {"type": "train", "step": run.step, "epoch": run.step * run.args.prompts_per_step / len(run.records),
           "reward": sum(s["reward"] for s in samples) / n, "accuracy": sum(s["correct"] for s in samples) / n,
           "format_shares": shares, "format_accuracy": acc,
           "response_length": sum(s["length"] for s in samples) / n,
           "truncated": sum(s["truncated"] for s in samples) / n, "samples": n}
    rec["time"] = phase_times(times, t0, ("generate", "reward", "logprobs", "update"))
    if run.device.startswith("cuda"):
        rec["peak_mem_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)  # actor + critic + ref + rollout
    return rec


def finish_step(run, rec, model, state_fn, **postfix):
    """Log the step, eval at its interval, checkpoint at snapshot steps; True when this invocation should stop."""
    log(run, rec)
    run.bar.update(1)
    top = max(rec["format_shares"].items(), key=lambda kv: kv[1]) if rec["format_shares"] else ("-", 0)
    run.bar.set_postfix(reward=f"{rec['reward']:.3f}", top=f"{top[0]} {top[1]:.0%}", **postfix)
    evaluate(run, model)
    stop = bool(run.args.stop_after) and run.step - run.start_step >= run.args.stop_after
    if run.step in run.snapshots or stop:
        save(run, state_fn(), snapshot=run.step in run.snapshots)
    return stop


# ==== (5) the loops. PPO: rollout -> reward -> values and per-token rewards -> GAE -> clipped actor and critic updates
def train_ppo(run):
    args, dev, model = run.args, run.device, run.model
    beta, T = args.kl, args.temperature
    # the reference only matters through the KL reward: with beta 0 it is never built and its forward is skipped
    ref = copy.deepcopy(model).requires_grad_(False) if beta > 0 else None
    critic = Critic(copy.deepcopy(model), seed=derive_seed(args.seed, "value-head")).to(dev)
    opt, copt = adamw(model, args.lr), adamw(critic, args.critic_lr)
    restore(run, model=model, optimizer=opt, critic=critic, critic_optimizer=copt)
    state = lambda: {"optimizer": opt.state_dict(), "critic": critic.state_dict(), "critic_optimizer": copt.state_dict()}
    # with one update per rollout and no KL reward the policy that sampled is the policy being updated: its
    # log-probs are the current ones, detached (ratio exactly 1), which saves a forward pass over the rollout
    need_old = args.ppo_epochs * args.minibatches > 1 or ref is not None
    bad_in_a_row = 0
    start(run, model, "ppo")
    while run.step < args.max_steps:
        step, t0, times = run.step, time.time(), {}
        # ---- 1-2. rollouts (this rank's prompts, n samples each) and their 0/1 rewards
        model.eval()
        samples, batch, seq_len, chunks = rollout_step(run, model, step, times)
        mask = batch["mask"]
        # ---- 3. log-probs under the sampling policy and the reference, the critic's values
        with torch.no_grad(), run.autocast():
            ref_logp = forward_chunks(logprobs_fn(ref, T), batch, chunks) if ref is not None else None
            if need_old:
                batch["old_logp"] = forward_chunks(logprobs_fn(model, T), batch, chunks)
            batch["old_values"] = forward_chunks(lambda mb: critic(*_inputs(mb)), batch, chunks) * mask
        # ---- 4. per-token rewards (-beta * k1 KL, the score on the last token), GAE, advantages whitened over
        # the rollout batch of every rank
        rewards = token_rewards(batch["scores"], batch.get("old_logp"), ref_logp, mask, beta, args.kl_estimator)
        adv, batch["returns"] = compute_gae_advantage_return(rewards, batch["old_values"], mask, args.gamma,
                                                             args.gae_lambda)
        batch["adv"] = whiten_global(run, adv, mask)
        if ref is not None:
            batch["ref_logp"] = ref_logp
        times["logprobs"] = time.time()

        # ---- 5. updates of actor and critic: the clipped policy loss and the clipped value loss. During the critic
        # warm-up the actor is frozen: a value head that knows nothing yet makes the GAE advantages noise
        frozen = step < args.critic_warmup_steps

        def loss_fn(mb, w, first):
            m = mb["mask"]
            with run.autocast():
                with torch.set_grad_enabled(not frozen):
                    logp, ent = response_logprobs(model, *_inputs(mb), temperature=T, with_entropy=first)
                values = critic(*_inputs(mb))
            old = mb["old_logp"] if need_old else logp.detach()
            pg_loss, clipfrac = clipped_policy_loss(logp, old, mb["adv"], m, args.clip, args.loss_agg)
            vloss, vclip = clipped_value_loss(values, mb["old_values"], mb["returns"], m, args.value_clip,
                                              args.loss_agg)
            kl = kl_penalty(logp.detach(), mb["ref_logp"], "k1") if ref is not None else None
            st = policy_stats(pg_loss, clipfrac, w, m, first, ent, kl)
            st.update(vloss=vloss.detach().double() * w.double(), vclip=vclip.double() * m.sum().double())
            return (vloss if frozen else pg_loss + vloss), st  # no shared weights: one backward serves both
        model.train()
        groups = [(critic, copt, args.critic_lr)] if frozen else [(model, opt, args.lr), (critic, copt, args.critic_lr)]
        s, done, skipped, gnorm, bad_in_a_row = policy_updates(
            run, batch, seq_len, step, groups, loss_fn,
            ("pg_loss", "clip", "wsum", "ent", "tok", "kl", "vloss", "vclip"), state, bad_in_a_row)
        times["update"] = time.time()
        run.step = step + 1
        # ---- 6. log: rollout metrics over all ranks, losses, timings
        rec = step_record(run, samples, times, t0)
        rec.update({"kl": None if ref is None else s["kl"] / max(s["tok"], 1), "entropy": s["ent"] / max(s["tok"], 1),
                    "clipfrac": s["clip"] / max(s["wsum"], 1), "pg_loss": s["pg_loss"] / done,
                    "value_loss": s["vloss"] / done, "value_clipfrac": s["vclip"] / max(s["wsum"], 1),
                    "lr": opt.param_groups[0]["lr"], "critic_lr": copt.param_groups[0]["lr"],
                    "grad_norm": None if frozen else gnorm, "skipped_updates": skipped,
                    "actor_frozen": frozen})
        rec.update(head_record(batch["adv"], mask, samples))
        if finish_step(run, rec, model, state, kl="-" if rec["kl"] is None else f"{rec['kl']:.4f}"):
            break
    return model


# ==== GRPO: rollout -> reward -> group-normalised advantage on every token -> clipped policy update (+ beta * k3 KL)
def train_grpo(run):
    args, model = run.args, run.model
    beta, T, n = args.kl, args.temperature, args.samples_per_prompt
    # the reference only matters through the KL loss: with beta 0 it is never built and its forward is skipped
    # (~15% of a toy step); "kl" is then logged as null
    ref = copy.deepcopy(model).requires_grad_(False) if beta > 0 else None
    opt = adamw(model, args.lr)
    restore(run, model=model, optimizer=opt)
    state = lambda: {"optimizer": opt.state_dict()}
    # with one update per rollout the sampling policy's log-probs are the policy's own, detached (ratio 1)
    need_old = args.ppo_epochs * args.minibatches > 1
    bad_in_a_row = 0
    start(run, model, "grpo")
    while run.step < args.max_steps:
        step, t0, times = run.step, time.time(), {}
        # ---- 1-2. rollouts (this rank's prompts, n samples each) and their 0/1 rewards
        model.eval()
        samples, batch, seq_len, chunks = rollout_step(run, model, step, times)
        mask = batch["mask"]
        # ---- 3. log-probs under the reference (for the KL loss) and the sampling policy (for the ratio)
        with torch.no_grad(), run.autocast():
            if ref is not None:
                batch["ref_logp"] = forward_chunks(logprobs_fn(ref, T), batch, chunks)
            if need_old:
                batch["old_logp"] = forward_chunks(logprobs_fn(model, T), batch, chunks)
        # ---- 4. advantages: each sample's score normalised within its prompt's group, on every token
        batch["adv"] = compute_grpo_outcome_advantage(batch["scores"], mask, n)
        times["logprobs"] = time.time()

        # ---- 5. updates of the policy: the clipped policy loss, plus beta * KL to the reference as a loss term
        def loss_fn(mb, w, first):
            m = mb["mask"]
            with run.autocast():
                logp, ent = response_logprobs(model, *_inputs(mb), temperature=T, with_entropy=first)
            old = mb["old_logp"] if need_old else logp.detach()
            pg_loss, clipfrac = clipped_policy_loss(logp, old, mb["adv"], m, args.clip, args.loss_agg)
            kl, loss, st = None, pg_loss, {}
            if ref is not None:  # the KL term is a loss (k3 by default), not a reward as in PPO
                kl_loss = agg_loss(kl_penalty(logp, mb["ref_logp"], args.kl_estimator), m, args.loss_agg)
                loss = loss + beta * kl_loss
                kl = kl_penalty(logp.detach(), mb["ref_logp"], "k1")
                st["kl_loss"] = kl_loss.detach().double() * w.double()
            st.update(policy_stats(pg_loss, clipfrac, w, m, first, ent, kl))
            return loss, st
        model.train()
        s, done, skipped, gnorm, bad_in_a_row = policy_updates(
            run, batch, seq_len, step, [(model, opt, args.lr)], loss_fn,
            ("pg_loss", "clip", "wsum", "ent", "tok", "kl", "kl_loss"), state, bad_in_a_row)
        times["update"] = time.time()
        run.step = step + 1
        # ---- 6. log: rollout metrics over all ranks, losses, timings
        rec = step_record(run, samples, times, t0)
        rec.update({"kl": None if ref is None else s["kl"] / max(s["tok"], 1), "entropy": s["ent"] / max(s["tok"], 1),
                    "clipfrac": s["clip"] / max(s["wsum"], 1), "pg_loss": s["pg_loss"] / done,
                    "kl_loss": s["kl_loss"] / done, "lr": opt.param_groups[0]["lr"],
                    "grad_norm": gnorm, "skipped_updates": skipped})
        rec.update(head_record(batch["adv"], mask, samples))
        if finish_step(run, rec, model, state, kl="-" if rec["kl"] is None else f"{rec['kl']:.4f}"):
            break
    return model


# ==== Expert Iteration: sample k per prompt -> keep correct, distinct ones -> SFT the ORIGINAL model on them
def train_ei(run):
    args, dev, model, n = run.args, run.device, run.model, run.args.samples_per_prompt
    original = {k: v.detach().clone() for k, v in model.state_dict().items()}
    restore(run, model=model)
    start(run, model, "ei")
    while run.step < args.max_steps:
        rnd, t0, times = run.step, time.time(), {}
        # ---- 1. sample k per prompt from the current policy (this rank's share of all prompts), top-p 0.95
        mine = list(range(run.rank, len(run.records), run.world))
        model.eval()
        responses = rollout(run, model, [run.prompt_ids[i] for i in mine], n, (args.seed, "ei-gen", rnd, run.rank))
        times["generate"] = time.time()
        # ---- 2. keep the correct, finished, distinct responses of each prompt
        samples = grade(run, [run.records[i] for i in mine for _ in range(n)], responses)
        kept, data, seen = [], [], set()
        for j, (s, r) in enumerate(zip(samples, responses)):
            i = mine[j // n]
            if s["reward"] > 0 and (i, tuple(r)) not in seen:
                seen.add((i, tuple(r)))
                data.append((i, r))
                kept.append(s)
        data, kept = all_gather(data, run.world), all_gather(kept, run.world)
        times["reward"] = time.time()
        # ---- 3. SFT from the ORIGINAL pretrained weights on response tokens, a fresh optimizer each round
        policy = {k: v.detach().clone() for k, v in model.state_dict().items()}  # this round's sampler
        model.load_state_dict(original)
        model.train()
        opt = adamw(model, args.lr)
        per_epoch = math.ceil(len(data) / args.sft_batch)
        total = per_epoch * args.sft_epochs
        losses, skipped, bad_in_a_row = [], 0, 0
        for epoch in range(args.sft_epochs):
            perm = torch.randperm(len(data), generator=generator(args.seed, "ei-shuffle", rnd, epoch)).tolist()
            for b in range(per_epoch):
                set_lr(opt, lr_at(epoch * per_epoch + b, total, args, args.lr))
                part = [data[k] for k in perm[b * args.sft_batch:(b + 1) * args.sft_batch][run.rank::run.world]]
                loss_sum = torch.zeros((), dtype=torch.float64, device=dev)
                bad = torch.zeros((), dtype=torch.bool, device=dev)
                if part:
                    batch = make_batch([run.prompt_ids[i] for i, _ in part], [r for _, r in part], run.tok.eot_id, dev)
                    W = all_sum(batch["mask"].sum().double(), run.ddp).float().clamp(min=1.0)
                    for micro in torch.arange(len(part)).split(args.micro_batch):
                        mb = take(batch, micro)
                        with run.autocast():
                            logp, _ = response_logprobs(model, *_inputs(mb), temperature=1.0)
                        loss = -(logp * mb["mask"]).sum() / W  # token-mean over the whole batch
                        bad |= ~torch.isfinite(loss)
                        loss.backward()
                        loss_sum = loss_sum + loss.detach().double()
                elif run.ddp:
                    all_sum(torch.zeros((), dtype=torch.float64, device=dev), run.ddp)  # join the weight's all-reduce
                ok, _ = apply_update([(model, opt)], bad, args.grad_clip, run.ddp)
                skipped += not ok
                losses += [float(all_sum(loss_sum, run.ddp))] if ok else []
                if not ok and bad_in_a_row >= 2:
                    model.load_state_dict(policy)  # the checkpoint is the start of this round: resumable
                bad_in_a_row = guard(ok, bad_in_a_row, run.step, lambda: save(run, {}, snapshot=False),
                                     lambda m: say(run, m), what="SFT update")
        times["update"] = time.time()
        run.step = rnd + 1
        # ---- 4. log: the round's samples, the kept set's format mix (what the next policy is trained on)
        from classify import format_metrics
        rec = step_record(run, samples, times, t0)
        rec.update({"round": run.step, "epoch": run.step, "kept": len(data), "kept_format_shares": format_metrics(kept)[0],
                    "sft_steps": total, "sft_loss": sum(losses) / len(losses) if losses else None,
                    "skipped_updates": skipped, "lr": args.lr})
        if finish_step(run, rec, model, lambda: {}, kept=len(data)):
            break
    return model


# ==== entry points
LOOPS = {"ppo": train_ppo, "grpo": train_grpo, "ei": train_ei}


def train(argv=None, reward_fn=None, prompts=None, eval_records=None, eval_fn=None):
    """Run RL in-process. argv: the command-line flags (a list). reward_fn(texts, records, responses) -> one dict per
    text {"correct", ["format", "answer", "reward"]} replaces the math grader (tests plug in trivial tasks);
    prompts / eval_records: lists of {"id", "question", "gold"} instead of loading --prompt-set / --eval-set;
    eval_fn: replaces evaluate.run_eval. Returns {"model", "step", "train", "eval"} (the records logged)."""
    run = setup(argv, reward_fn or math_reward, prompts, eval_records, eval_fn)
    args = run.args
    if run.master:
        print(f"{args.algo} from {args.ckpt} (step {run.init_ck.get('step')}) on {len(run.records)} prompts "
              f"({run.dropped} too long dropped), {args.max_steps} {'rounds' if args.algo == 'ei' else 'steps'}, "
              f"device {run.device} x {run.world} -> {args.out_dir}")
    try:
        model = LOOPS[args.algo](run)
    finally:
        if run.bar is not None:
            run.bar.close()
        close_tracker(run.metrics_path)
    if run.master:
        print(f"checkpoint: {os.path.join(args.out_dir, 'ckpt.pt')} (step {run.step}/{args.max_steps})")
    if run.ddp:
        dist.destroy_process_group()
    return {"model": model, "step": run.step, "train": run.train_log, "eval": run.eval_log}


@main_guard
def main(argv=None):
    train(argv)


if __name__ == "__main__":
    main()
