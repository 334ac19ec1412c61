"""
RL post-training of a pretrained checkpoint: PPO, GRPO and Expert Iteration, each a plain loop in this file.

The toy echo chamber on a CPU, in minutes (GRPO on the embedded synthetic RL prompts, from the toy
pretraining checkpoint out/pretrain-toy/ckpt.pt, into out/rl-toy):
    python rl.py
    python rl.py --algo ppo            # -> out/rl-toy-ppo
    python rl.py --algo ei             # -> out/rl-toy-ei
The paper's 150M run on one GPU (GSM8K train as prompts, GSM8K test as the held-out eval):
    python rl.py --preset 150m --algo ppo --ckpt out/pretrain-150m/ckpt.pt --data-dir ../shared/data --device cuda
Many GPUs: every rank generates for its share of each step's prompts; gradients are all-reduced:
    torchrun --nproc_per_node=8 rl.py --preset 150m --algo ppo --ckpt ... --data-dir ../shared/data
Resume an interrupted run exactly (bitwise the same weights as an uninterrupted one on a CPU; --stop-after N
ends an invocation cleanly after N steps, --max-steps on resume extends a run):
    python rl.py --out-dir out/rl-toy --resume

Why GRPO is the toy's default: it has no critic, so a step costs one generation and one policy forward+backward
(with beta 0 the reference model is not even built; with one update per rollout the sampling policy's
log-probs are the policy's own, detached), where PPO adds a critic forward and update. A throwaway prototype
showed the whole echo chamber on 2 CPU cores in about 5 minutes (../shared/TOY.md point 4). Here, from the toy
checkpoint of the README's main job (seed 1337), 30 steps at lr 1.5e-4 take about 4 minutes on 2 cores: omi1
went from 36% of greedy outputs to 93%, omi2 died by step 10, pass@1 rose 0.195 -> 0.325 (README "Results").

Choices worth knowing (each a flag):
- a response cut at --max-new-tokens (or at the end of the context) has no end-of-text and gets reward 0:
  it is not a finished answer, and rewarding it would teach the policy that rambling past the answer is free.
  Its "accuracy" (graded as-is) is still logged. --grade-truncated grades it as-is instead (the authors'
  OpenRLHF setup did that).
- log-probs are computed at the sampling temperature (logits / T), rollouts use top-p 1, so the ratio and the
  KL are taken under the very distribution that was sampled.
- losses are averaged over all response tokens of a minibatch ("token-mean", as OpenRLHF) unless
  --loss-agg seq-mean-token-mean (the GRPO paper's per-sequence mean); micro-batching never changes the result.
- Expert Iteration: each round samples from the current policy, keeps the correct, finished, distinct
  responses of that round, and fine-tunes the ORIGINAL pretrained model on them (response tokens only).
- every random choice (prompt order, sampling, shuffles) is a pure function of (--seed, step), so resuming
  needs only the step, the weights and the optimizer state.

Outputs in --out-dir: metrics.jsonl (a "config" record, then "train" records every step and "eval" records every
--eval-interval steps and at step 0), config.json, formats.png (format shares and pass@1 over steps),
ckpt.pt (the latest, with optimizer state, for --resume) and ckpt-stepNNNNNN.pt at steps 1, 2, 4, 8, ... and the
last (model only; evaluate.py reads them: python evaluate.py --ckpt out/rl-toy).

The RL math is the block of small pure functions below (veRL core_algos.py / OpenRLHF loss.py style), pinned by
tests/test_rl.py on hand-computed 2x4 tensors; the loops that use them come after.
"""
import argparse
import copy
import functools
import hashlib
import json
import math
import os
import sys
import time
from contextlib import nullcontext

import torch
import torch.distributed as dist
import torch.nn as nn
from tqdm import tqdm

from common import UserError, main_guard, append_jsonl, atomic_write_bytes, atomic_write_json, check_out_dir, \
    pick_device, set_threads
from model import CheckpointError, load_checkpoint, model_from_checkpoint, save_checkpoint

ALGOS = ("ppo", "grpo", "ei")
AGG_MODES = ("token-mean", "seq-mean-token-mean")
KL_KINDS = ("k1", "k2", "k3")


# =====================================================================================================
# RL math: pure functions on (batch, response length) tensors; mask is 1.0 on response tokens, 0.0 on padding
# =====================================================================================================
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
    """
    Reduce a per-token loss to a scalar.
    token-mean:          sum over all tokens / number of tokens (long responses weigh more; OpenRLHF, DAPO)
    seq-mean-token-mean: mean over tokens within each sequence, then mean over sequences (the GRPO paper)
    """
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
    """
    Per-token estimate of KL(policy || reference) from log-probs of tokens sampled from the policy
    (Schulman, "Approximating KL divergence"); with r = ref_logp - logp:
    k1 = -r            unbiased, can be negative              (PPO's per-token reward penalty)
    k2 = r^2 / 2       biased, low variance, always >= 0
    k3 = e^r - 1 - r   unbiased, always >= 0                   (GRPO's loss term)
    """
    r = ref_logp - logp
    if kind == "k1":
        return -r
    if kind == "k2":
        return 0.5 * r ** 2
    if kind == "k3":
        r = r.clamp(-20, 20)  # e^r overflows far before a sane policy gets there
        return torch.exp(r) - 1 - r
    raise ValueError(f"unknown KL estimator {kind!r}; one of {KL_KINDS}")


def compute_gae_advantage_return(token_rewards, values, mask, gamma=1.0, lam=0.95):
    """
    Generalized advantage estimation over right-padded responses (token t of a row at column t).
    delta_t = r_t + gamma * V_{t+1} - V_t (V after the last token = 0);  A_t = delta_t + gamma * lam * A_{t+1};
    returns = A + V (the critic's regression target). Returns (advantages, returns), both 0 on padding.
    """
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
    """
    GRPO: each sequence's outcome score normalised within its group of samples of the same prompt,
    (r - group mean) / (group std + eps) with the unbiased std (torch.std, as veRL), on every token.
    scores: (B,) with groups contiguous (B = prompts * group_size, prompt-major); returns (B, R).
    """
    g = scores.view(-1, group_size)
    std = g.std(dim=1, keepdim=True) if group_size > 1 else torch.zeros_like(g[:, :1])
    adv = ((g - g.mean(dim=1, keepdim=True)) / (std + eps)).view(-1)
    return adv[:, None] * mask


def clipped_policy_loss(logp, old_logp, advantages, mask, clip=0.2, agg="token-mean"):
    """
    PPO's clipped surrogate: max(-A * ratio, -A * clamp(ratio, 1 - clip, 1 + clip)), ratio = pi / pi_old.
    Returns (loss, clip fraction = share of tokens where the clipped branch was taken).
    """
    ratio = torch.exp(logp - old_logp)
    pg1 = -advantages * ratio
    pg2 = -advantages * ratio.clamp(1 - clip, 1 + clip)
    loss = agg_loss(torch.maximum(pg1, pg2), mask, agg)
    clipfrac = masked_mean((pg2 > pg1).float(), mask)
    return loss, clipfrac


def clipped_value_loss(values, old_values, returns, mask, clip=0.2, agg="token-mean"):
    """
    PPO's clipped value loss: 0.5 * max((V - G)^2, (V_clipped - G)^2), V_clipped = V_old + clamp(V - V_old, +-clip).
    Returns (loss, clip fraction).
    """
    v_clipped = old_values + (values - old_values).clamp(-clip, clip)
    l1 = (values - returns) ** 2
    l2 = (v_clipped - returns) ** 2
    loss = 0.5 * agg_loss(torch.maximum(l1, l2), mask, agg)
    clipfrac = masked_mean((l2 > l1).float(), mask)
    return loss, clipfrac


# =====================================================================================================
# forward passes over rollouts: sequences are prompt + response, right-padded; only response tokens count
# =====================================================================================================
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
    ent = None
    if with_entropy:
        with torch.no_grad():
            ent = -(logp_all.exp() * logp_all).sum(-1)
    return logp, ent


class Critic(nn.Module):
    """PPO's value model: a copy of the pretrained GPT with a fresh scalar head, Linear(d, 1), on its final
    hidden states. The head starts at zero: every value is 0 at first, no random offset to unlearn."""

    def __init__(self, body):
        super().__init__()
        self.body = body
        self.head = nn.Linear(body.config.n_embd, 1, bias=False)
        nn.init.zeros_(self.head.weight)

    def forward(self, seqs, starts, resp):
        """Values (B, R) of the states before each response token (same inputs as response_logprobs)."""
        h = gather_response(self.body.hidden_states(seqs[:, :-1]), starts, resp.size(1))
        return self.head(h).squeeze(-1).float()


def make_batch(prompt_ids, responses, pad_id, device):
    """prompt_ids / responses: one token list per sample -> padded tensors (responses include their EOS)."""
    B = len(responses)
    lens = [len(r) for r in responses]
    starts = [len(p) for p in prompt_ids]
    L = max(s + n for s, n in zip(starts, lens))
    R = max(lens)
    seqs = torch.full((B, L), pad_id, dtype=torch.long)
    resp = torch.full((B, R), pad_id, dtype=torch.long)
    mask = torch.zeros(B, R)
    for b, (p, r) in enumerate(zip(prompt_ids, responses)):
        seqs[b, :len(p) + len(r)] = torch.tensor(p + r, dtype=torch.long)
        resp[b, :len(r)] = torch.tensor(r, dtype=torch.long)
        mask[b, :len(r)] = 1.0
    return {"seqs": seqs.to(device), "resp": resp.to(device), "mask": mask.to(device),
            "starts": torch.tensor(starts, device=device), "lens": torch.tensor(lens, device=device)}


def take(batch, idx):
    """Rows idx of a rollout batch, trimmed to their own longest sequence and response (less padding to run)."""
    idx = idx.to(batch["seqs"].device)
    starts, lens = batch["starts"][idx], batch["lens"][idx]
    R, L = int(lens.max()), int((starts + lens).max())
    out = {"starts": starts, "lens": lens, "seqs": batch["seqs"][idx, :L]}
    for k, v in batch.items():
        if k not in out and torch.is_tensor(v) and v.dim() == 2:
            out[k] = v[idx, :R]
    return out


# =====================================================================================================
# presets and flags
# =====================================================================================================
# toy: ../shared/TOY.md point 4 (16 prompts x 8 samples, T 0.7, beta 0, one update per rollout). lr is constant
# (min_lr_ratio 1): a short run leaves no room for a schedule. Measured from the toy checkpoint of seed 1337 (greedy
# pass@1 0.195; shares tinygsm 26 / omi1 36 / omi2 38%), greedy evals on 200 held-out problems:
#   lr 1e-4:   step 25 omi1 82%, pass@1 0.385     lr 1.5e-4: step 25 omi1 90%, pass@1 0.29
#   lr 2e-4:   step 20 omi1 100%, pass@1 0.24 (0.305 at step 10, then down)
# A larger step collapses the formats sooner but keeps less of the accuracy gain; 1.5e-4 for 30 steps fits the
# main job's 15 minutes. max_new_tokens 256: the longest correct toy solution (a 2-step tinygsm one) is ~200
# tokens; a response cut at the limit gets reward 0, so the limit must not decide the race between formats.
PRESETS = {
    "toy": dict(algo="grpo", prompt_set="synthetic", eval_set="synthetic", prompts=1024, prompts_per_step=16,
                samples_per_prompt=8, temperature=0.7, max_new_tokens=256, lr=1.5e-4, critic_lr=5e-4, kl=0.0,
                ppo_epochs=1, minibatches=1, micro_batch=32, gen_batch=128, max_steps=30, passes=None,
                warmup_ratio=0.0, min_lr_ratio=1.0, eval_interval=5, eval_n=200, eval_samples=0, eval_batch=128,
                sft_epochs=2, sft_batch=32),
    "150m": dict(algo="ppo", prompt_set="gsm8k", eval_set="gsm8k", prompts=0, prompts_per_step=64,
                 samples_per_prompt=8, temperature=0.7, max_new_tokens=1024, lr=1e-6, critic_lr=7e-6, kl=1e-3,
                 ppo_epochs=1, minibatches=8, micro_batch=16, gen_batch=512, max_steps=0, passes=10,
                 warmup_ratio=0.03, min_lr_ratio=0.1, eval_interval=20, eval_n=0, eval_samples=0, eval_batch=256,
                 sft_epochs=2, sft_batch=256),
    "1b": dict(algo="ppo", prompt_set="gsm8k", eval_set="gsm8k", prompts=0, prompts_per_step=64,
               samples_per_prompt=8, temperature=0.7, max_new_tokens=1024, lr=1e-6, critic_lr=7e-6, kl=1e-3,
               ppo_epochs=1, minibatches=8, micro_batch=4, gen_batch=128, max_steps=0, passes=10,
               warmup_ratio=0.03, min_lr_ratio=0.1, eval_interval=20, eval_n=0, eval_samples=0, eval_batch=128,
               sft_epochs=2, sft_batch=256),
}
# Expert Iteration differs: k samples per prompt at T 1.0 over all prompts each round; --max-steps = rounds.
# Paper: k 64, lr 1e-4, batch 256, 2 epochs, 3 rounds (150m) or 2 (1b). Toy: k 8 over 256 prompts (one round
# samples 2k responses, about a minute on 2 cores), batch 32.
EI_PRESETS = {
    "toy": dict(samples_per_prompt=8, temperature=1.0, lr=1e-4, prompts=256, max_steps=3, eval_interval=1,
                warmup_ratio=0.0, min_lr_ratio=1.0),
    "150m": dict(samples_per_prompt=64, temperature=1.0, lr=1e-4, max_steps=3, eval_interval=1,
                 warmup_ratio=0.03, min_lr_ratio=0.1),
    "1b": dict(samples_per_prompt=64, temperature=1.0, lr=1e-4, max_steps=2, eval_interval=1,
               warmup_ratio=0.03, min_lr_ratio=0.1),
}
# on --resume every flag comes from the checkpoint so the run continues as it was, except: RUNTIME flags, always
# this invocation's, and RESUME_OVERRIDES, this invocation's when given (a new --max-steps moves the lr schedule)
RUNTIME = {"resume", "device", "threads", "stop_after", "no_tqdm", "out_dir"}
RESUME_OVERRIDES = {"eval_interval", "eval_batch", "max_steps"}


class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line on stderr (via main_guard), not a usage block
        raise UserError(message)


def get_args(argv=None):
    p = Parser(description="RL post-training (PPO, GRPO, Expert Iteration) of a pretrained checkpoint. With no "
                           "flags: the toy echo chamber, GRPO from out/pretrain-toy/ckpt.pt on the synthetic RL "
                           "prompts, on a CPU in minutes (GRPO: no critic, the cheapest step, and it shows the "
                           "collapse in its 30 steps). Flags left unset take the --preset's value.",
               formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    a = p.add_argument
    a("--algo", default=None, choices=ALGOS, help="ppo | grpo | ei (default: grpo for toy, ppo for 150m/1b)")
    a("--preset", default="toy", choices=sorted(PRESETS), help="defaults for every unset flag")
    a("--ckpt", default=None, help="pretrained checkpoint (default out/pretrain-<preset>/ckpt.pt)")
    a("--out-dir", default=None, help="default out/rl-<preset> (out/rl-<preset>-<algo> for a non-default algo)")
    a("--prompt-set", default=None, help="RL prompts: a benchmark name, split train (synthetic, gsm8k)")
    a("--prompts-file", default=None, help="RL prompts from a local JSONL instead (question/problem + "
                                           "gold/answer columns, e.g. ../shared/data/gsm8k/train.jsonl) "
                                           "or a hub id (openai/gsm8k)")
    a("--data-dir", default=None, help="local folder laid out like ../shared/data (default: the HF hub, "
                                       "e.g. openai/gsm8k)")
    a("--prompts", type=int, default=None, help="cap on the number of RL prompts (0 = all)")
    a("--prompts-per-step", type=int, default=None, help="prompts per rollout (over all ranks)")
    a("--samples-per-prompt", type=int, default=None, help="samples per prompt (the GRPO group; EI's k)")
    a("--temperature", type=float, default=None, help="sampling temperature (log-probs use logits / T)")
    a("--max-new-tokens", type=int, default=None, help="response length cap in rollouts and evals")
    a("--grade-truncated", action="store_true", help="grade responses without EOS as-is (default: reward 0)")
    a("--max-steps", type=int, default=None, help="rollout/update steps (EI: rounds); 0 = --passes over prompts")
    a("--passes", type=float, default=None, help="passes over the prompts when --max-steps is 0")
    a("--lr", type=float, default=None, help="actor (policy) learning rate; EI's SFT learning rate")
    a("--critic-lr", type=float, default=None, help="PPO critic learning rate")
    a("--warmup-ratio", type=float, default=None, help="linear warmup over this fraction of optimizer steps")
    a("--min-lr-ratio", type=float, default=None, help="cosine decays to this fraction of the peak (1 = constant)")
    a("--grad-clip", type=float, default=1.0, help="clip the gradient norm (0 = off)")
    a("--clip", type=float, default=0.2, help="PPO/GRPO ratio clip")
    a("--value-clip", type=float, default=0.2, help="PPO value clip")
    a("--gamma", type=float, default=1.0, help="PPO discount")
    a("--gae-lambda", type=float, default=0.95, help="PPO GAE lambda")
    a("--kl", type=float, default=None, help="KL coefficient beta (PPO: in the reward; GRPO: in the loss)")
    a("--kl-estimator", default=None, choices=KL_KINDS, help="default k1 for PPO, k3 for GRPO")
    a("--loss-agg", default="token-mean", choices=AGG_MODES, help="how per-token losses become one number")
    a("--ppo-epochs", type=int, default=None, help="passes over each rollout")
    a("--minibatches", type=int, default=None, help="optimizer steps per rollout per epoch")
    a("--micro-batch", type=int, default=None, help="sequences per forward/backward (memory; not the result)")
    a("--gen-batch", type=int, default=None, help="sequences generated at once (memory)")
    a("--sft-epochs", type=int, default=None, help="EI: epochs over each round's correct samples")
    a("--sft-batch", type=int, default=None, help="EI: sequences per optimizer step")
    a("--eval-set", default=None, help="held-out benchmark (test split) for the evals")
    a("--eval-n", type=int, default=None, help="problems in the held-out eval (0 = all)")
    a("--eval-samples", type=int, default=None, help="samples per problem at the rollout temperature in each "
                                                     "eval, besides greedy (0 = greedy only)")
    a("--eval-interval", type=int, default=None, help="steps between evals (also at step 0 and the end; 0 = none)")
    a("--eval-batch", type=int, default=None, help="sequences generated at once in evals")
    a("--ckpt-interval", default="log", help="'log': snapshots at steps 1, 2, 4, 8, ...; N: every N steps "
                                             "(both plus the last; ckpt.pt is rewritten with each)")
    a("--resume", action="store_true", help="continue exactly from <out-dir>/ckpt.pt")
    a("--stop-after", type=int, default=0, help="exit cleanly after this many steps in this invocation (0 = off)")
    a("--seed", type=int, default=1337, help="seed of prompt order, sampling and shuffles")
    a("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    a("--threads", type=int, default=0, help="CPU threads for torch (0 = torch's default)")
    a("--no-tqdm", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    given = {t.split("=")[0] for t in (argv if argv is not None else sys.argv[1:]) if t.startswith("--")}
    explicit = {x.dest for x in p._actions if given & set(x.option_strings)}
    return args, explicit


def resolve(args):
    """Fill preset defaults into every flag left unset, then check the combination."""
    if args.algo is None:
        args.algo = PRESETS[args.preset]["algo"]
    defaults = dict(PRESETS[args.preset])
    if args.algo == "ei":
        defaults.update(EI_PRESETS[args.preset])
    for k, v in defaults.items():
        if k != "algo" and getattr(args, k) is None:
            setattr(args, k, v)
    if args.kl_estimator is None:
        args.kl_estimator = "k1" if args.algo == "ppo" else "k3"
    if args.ckpt is None:
        args.ckpt = os.path.join("out", f"pretrain-{args.preset}", "ckpt.pt")
    if args.out_dir is None:
        suffix = "" if args.algo == PRESETS[args.preset]["algo"] else f"-{args.algo}"
        args.out_dir = os.path.join("out", f"rl-{args.preset}{suffix}")
    for name in ("prompts_per_step", "samples_per_prompt", "max_new_tokens", "ppo_epochs", "minibatches",
                 "micro_batch", "gen_batch", "sft_epochs", "sft_batch"):
        if getattr(args, name) <= 0:
            raise UserError(f"--{name.replace('_', '-')} must be positive")
    if args.temperature <= 0:
        raise UserError("--temperature must be > 0 (log-probs are taken at logits / T)")
    if args.algo == "grpo" and args.samples_per_prompt < 2:
        raise UserError("GRPO needs --samples-per-prompt >= 2 (the advantage is relative to the group)")
    if args.ckpt_interval != "log" and not (args.ckpt_interval.isdigit() and int(args.ckpt_interval) > 0):
        raise UserError(f"--ckpt-interval must be 'log' or a positive integer, got {args.ckpt_interval!r}")
    if min(args.max_steps, args.prompts, args.eval_n, args.eval_samples, args.eval_interval) < 0:
        raise UserError("--max-steps, --prompts, --eval-n, --eval-samples, --eval-interval must be >= 0")
    return args


def lr_at(it, total, args, peak):
    """Linear warmup over warmup_ratio of the optimizer steps, then cosine down to min_lr_ratio * peak."""
    warm = int(round(args.warmup_ratio * total))
    if it < warm:
        return peak * (it + 1) / warm
    progress = min(1.0, (it - warm) / max(1, total - warm))
    return peak * (args.min_lr_ratio + (1 - args.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def derive_seed(*keys):
    """A seed from the run seed and a tag such as ("gen", step, rank): every random choice is a pure function of
    (seed, step), so a resumed run replays exactly what an uninterrupted one does."""
    # 31 bits: callees may do arithmetic on it (evaluate.run_eval multiplies it) and torch wants a signed 64-bit
    return int.from_bytes(hashlib.sha256(repr(keys).encode()).digest()[:4], "little") >> 1


def generator(*keys):
    g = torch.Generator()
    g.manual_seed(derive_seed(*keys))
    return g


@functools.lru_cache(maxsize=4)
def _epoch_perm(n, seed, epoch):
    return torch.randperm(n, generator=generator(seed, "prompts", epoch)).tolist()


def prompts_for_step(n, per_step, step, seed):
    """Indices of step's prompts: the global stream of seeded per-epoch permutations of the n prompts."""
    out = []
    for i in range(step * per_step, (step + 1) * per_step):
        epoch, j = divmod(i, n)
        out.append(_epoch_perm(n, seed, epoch)[j])
    return out


def load_prompts(args):
    """RL prompt records {"id", "question", "gold"}: a local JSONL (--prompts-file) or a benchmark's train split."""
    from data.benchmarks import BENCHMARKS, load_benchmark, gsm8k_gold
    from common import read_jsonl
    limit = args.prompts or None
    hub_ids = {hub: name for name, (_, hub, _) in BENCHMARKS.items() if hub}
    if args.prompts_file in hub_ids and not os.path.exists(args.prompts_file):  # e.g. openai/gsm8k
        return load_benchmark(hub_ids[args.prompts_file], "train", data_dir=None, limit=limit)
    if args.prompts_file:
        rows = read_jsonl(args.prompts_file)
        out = []
        for i, r in enumerate(rows[:limit] if limit else rows):
            q = r.get("question", r.get("problem", r.get("query")))
            gold = r.get("gold", r.get("answer"))
            if q is None or gold is None:
                raise UserError(f"{args.prompts_file}:{i + 1}: needs a question (or problem) and a gold (or answer) column")
            if "gold" not in r and "####" in str(gold):
                gold = gsm8k_gold(gold)
            out.append({"id": str(r.get("id", f"prompt-{i}")), "question": q, "gold": str(gold)})
        return out
    return load_benchmark(args.prompt_set, "train", data_dir=args.data_dir, limit=limit)


def math_reward(texts, records, responses=None):
    """The paper's reward: 1 if classify.py's graded answer equals the gold answer (model-written code only ever
    runs in classify's sandbox). A reward_fn returns one dict per text with "correct" and optionally "format",
    "answer" and "reward" (a number that replaces float(correct))."""
    from classify import analyze_batch
    return analyze_batch(texts, [r["gold"] for r in records])


def format_stats(samples):
    """(shares, accuracy within each format) over rollout samples with "format" and "correct"."""
    count, right = {}, {}
    for s in samples:
        f = s["format"] if s["format"] is not None else "none"
        count[f] = count.get(f, 0) + 1
        right[f] = right.get(f, 0) + int(bool(s["correct"]))
    total = max(1, len(samples))
    return ({f: c / total for f, c in sorted(count.items())},
            {f: right[f] / c for f, c in sorted(count.items())})


def plot_formats(eval_records, path):
    """Stacked greedy format shares over steps, with greedy (and sampled) pass@1 on top."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    recs = sorted(eval_records, key=lambda r: r["step"])
    if not recs:
        return
    steps = [r["step"] for r in recs]
    formats = list(dict.fromkeys(f for r in recs for f in r["format_shares"]))
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.stackplot(steps, [[r["format_shares"].get(f, 0.0) for r in recs] for f in formats], labels=formats, alpha=0.6)
    ax.plot(steps, [r["pass@1"] or 0.0 for r in recs], "k-o", ms=3, label="pass@1 (greedy)")
    if all("sampled" in r for r in recs):
        ax.plot(steps, [r["sampled"]["pass@1"] for r in recs], "k--", label="pass@1 (sampled)")
    ax.set_xlabel("RL step")
    ax.set_ylabel("share of outputs / pass@1")
    ax.set_ylim(0, 1)
    ax.set_xlim(steps[0], max(steps[-1], steps[0] + 1))
    ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8)
    ax.set_title("format shares (greedy) on the held-out set")
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


def snapshot_steps(args, max_steps):
    if args.ckpt_interval == "log":
        s, k = set(), 1
        while k <= max_steps:
            s.add(k)
            k *= 2
    else:
        s = set(range(int(args.ckpt_interval), max_steps + 1, int(args.ckpt_interval)))
    return s | {max_steps}


# =====================================================================================================
# the run: setup shared by the three loops (model, reference, prompts, logging, rollouts, evals, checkpoints)
# =====================================================================================================
class Run:
    def __init__(self, args, explicit, reward_fn, prompts, eval_records, eval_fn):
        self.ddp = "RANK" in os.environ and "WORLD_SIZE" in os.environ
        self.rank, self.world, local_rank = 0, 1, 0
        if args.resume:
            if args.out_dir is None:
                args.out_dir = resolve(copy.copy(args)).out_dir
            try:
                self.resume_ck = load_checkpoint(os.path.join(args.out_dir, "ckpt.pt"))
            except CheckpointError as e:
                raise UserError(f"cannot resume: {e}")
            for k, v in self.resume_ck["args"].items():
                if k in RUNTIME or (k in RESUME_OVERRIDES and k in explicit):
                    continue
                if k in explicit and getattr(args, k, v) != v:
                    print(f"note: --{k.replace('_', '-')} ignored on resume (the run uses {v!r})", file=sys.stderr)
                setattr(args, k, v)
            args.resume = True
        else:
            self.resume_ck = None
            args = resolve(args)
        self.args = args
        if self.ddp:
            self.rank, self.world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
            local_rank = int(os.environ["LOCAL_RANK"])
        self.master = self.rank == 0
        device = pick_device(args.device)
        if self.ddp:
            if device.startswith("cuda"):
                device = f"cuda:{local_rank}"
                torch.cuda.set_device(device)
            dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
        self.device = device
        set_threads(args.threads)
        cuda = device.startswith("cuda")
        self.autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if cuda else nullcontext
        if self.master:
            check_out_dir(args.out_dir)
        if args.prompts_per_step % self.world:
            raise UserError(f"--prompts-per-step {args.prompts_per_step} must be a multiple of {self.world} ranks")

        # the pretrained checkpoint: the policy's start, the frozen reference, the critic's body, EI's origin
        from data.tokenizer import get_tokenizer
        try:
            self.init_ck = load_checkpoint(args.ckpt)
            self.tok = get_tokenizer(self.init_ck.get("tokenizer", self.init_ck["config"].get("vocab_size")))
            self.model = model_from_checkpoint(self.init_ck, device)
            if self.model.config.vocab_size != self.tok.vocab_size:  # ids past the embedding, or unknown to the tokenizer
                raise CheckpointError(f"{args.ckpt}: model vocab {self.model.config.vocab_size} != tokenizer vocab "
                                      f"{self.tok.vocab_size}")
        except CheckpointError as e:
            hint = " (run python pretrain.py first, or pass --ckpt)" if not os.path.exists(args.ckpt) else ""
            raise UserError(f"{e}{hint}")
        self.block_size = self.model.config.block_size

        # prompts: tokenized once; a prompt that leaves no room for a response is dropped (and counted)
        records = prompts if prompts is not None else load_prompts(args)
        if prompts is not None and args.prompts:
            records = records[:args.prompts]
        from data import prompt_text
        ids = self.tok.encode_batch([prompt_text(r["question"]) for r in records]) if records else []
        keep = [i for i, p in enumerate(ids) if 0 < len(p) and len(p) + min(args.max_new_tokens, 32) <= self.block_size]
        self.dropped = len(records) - len(keep)
        self.records = [records[i] for i in keep]
        self.prompt_ids = [ids[i] for i in keep]
        if not self.records:
            raise UserError(f"no usable RL prompts ({len(records)} loaded, {self.dropped} too long for the context)")
        self.reward_fn = reward_fn or math_reward
        self.eval_fn = eval_fn
        self.eval_records = eval_records
        if args.eval_interval and self.eval_records is None:
            from data.benchmarks import load_benchmark
            self.eval_records = load_benchmark(args.eval_set, "test", data_dir=args.data_dir, limit=args.eval_n or None)

        if args.max_steps == 0:
            if args.algo == "ei":
                raise UserError("--max-steps (rounds) must be positive for ei")
            args.max_steps = max(1, math.ceil(args.passes * len(self.records) / args.prompts_per_step))
        self.metrics_path = os.path.join(args.out_dir, "metrics.jsonl")
        self.plot_path = os.path.join(args.out_dir, "formats.png")
        self.step = self.resume_ck["step"] if self.resume_ck else 0
        self.eval_log = []
        self.train_log = []
        if self.master:
            self._start_log()
        self.bar = None

    # ---------------------------------------------------------------- logging
    def _start_log(self):
        args = self.args
        config = {"type": "config", **vars(args), "world_size": self.world, "num_prompts": len(self.records),
                  "dropped_prompts": self.dropped, "init_step": self.init_ck.get("step"),
                  "init_kind": self.init_ck.get("kind")}
        atomic_write_json(os.path.join(args.out_dir, "config.json"), config)
        if not args.resume:
            with open(self.metrics_path, "w") as f:
                f.write(json.dumps(config) + "\n")
            return
        # drop what a killed run wrote after its last checkpoint: the resumed run writes it again
        keep = []
        if os.path.exists(self.metrics_path):
            with open(self.metrics_path) as f:
                for ln in f:
                    try:
                        rec = json.loads(ln)
                    except json.JSONDecodeError:
                        continue  # a line cut short by the kill
                    if rec.get("step", 0) <= self.step:
                        keep.append(ln if ln.endswith("\n") else ln + "\n")
                        if rec.get("type") == "eval":
                            self.eval_log.append(rec)
        atomic_write_bytes(self.metrics_path, "".join(keep).encode())

    def log(self, rec):
        if not self.master:
            return
        append_jsonl(self.metrics_path, rec)
        (self.eval_log if rec["type"] == "eval" else self.train_log).append(rec)

    def write(self, msg):
        if self.master:
            (self.bar.write if self.bar is not None else print)(msg)

    # ---------------------------------------------------------------- distributed helpers
    def all_sum(self, values):
        """Sum a list of numbers over ranks (identity on one process)."""
        if not self.ddp:
            return [float(v) for v in values]
        t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.tolist()

    def all_gather(self, items):
        """Concatenate a list over ranks, rank order."""
        if not self.ddp:
            return list(items)
        out = [None] * self.world
        dist.all_gather_object(out, list(items))
        return [x for part in out for x in part]

    def all_reduce_grads(self, params):
        """Sum gradients over ranks (every loss is already divided by the global weight, so the sum is the mean)."""
        if self.ddp:
            for p in params:
                if p.grad is None:  # a rank with no rows this step still joins every collective
                    p.grad = torch.zeros_like(p)
                dist.all_reduce(p.grad)

    # ---------------------------------------------------------------- rollouts and rewards
    @torch.no_grad()
    def rollout(self, model, prompt_ids, n, temperature, seed_key):
        """n samples per prompt (prompt-major), --gen-batch rows at a time, each chunk with its own derived seed."""
        per_chunk = max(1, self.args.gen_batch // n)
        out = []
        for c in range(0, len(prompt_ids), per_chunk):
            # a row also stops at the end of the context (prompts leaving < 32 tokens were dropped at load time)
            with self.autocast():
                out += model.generate(prompt_ids[c:c + per_chunk], self.args.max_new_tokens, temperature=temperature,
                                      top_p=1.0, eos_id=self.tok.eot_id, num_samples=n,
                                      seed=derive_seed(*seed_key, c))
        return out

    def grade(self, records, responses):
        """One dict per response: format, correct (graded as-is), reward (0 without EOS unless --grade-truncated),
        length, truncated."""
        eot = self.tok.eot_id
        finished = [len(r) > 0 and r[-1] == eot for r in responses]
        texts = [self.tok.decode(r[:-1] if f else r) for r, f in zip(responses, finished)]
        results = self.reward_fn(texts, records, responses)
        out = []
        for res, r, f in zip(results, responses, finished):
            correct = bool(res["correct"])
            reward = float(res["reward"]) if res.get("reward") is not None else float(correct)
            if not (f or self.args.grade_truncated):
                reward = 0.0
            out.append({"format": res.get("format"), "correct": correct, "reward": reward, "length": len(r),
                        "truncated": not f})
        return out

    def rollout_metrics(self, samples):
        """Step metrics over every rank's samples: reward, accuracy, format shares and per-format accuracy."""
        samples = self.all_gather(samples)
        shares, acc = format_stats(samples)
        n = len(samples)
        return {"reward": sum(s["reward"] for s in samples) / n, "accuracy": sum(s["correct"] for s in samples) / n,
                "format_shares": shares, "format_accuracy": acc,
                "response_length": sum(s["length"] for s in samples) / n,
                "truncated": sum(s["truncated"] for s in samples) / n, "samples": n}

    # ---------------------------------------------------------------- evaluation
    def evaluate(self, model):
        """Greedy (and sampled, at the rollout temperature) eval on the held-out set; rank 0 only."""
        args = self.args
        if self.master:
            t0 = time.time()
            eval_fn = self.eval_fn
            if eval_fn is None:
                from evaluate import run_eval as eval_fn
            seed = derive_seed(args.seed, "eval")
            _, s = eval_fn(model, self.tok, self.eval_records, n=1, max_new_tokens=args.max_new_tokens,
                           batch_size=args.eval_batch, seed=seed, greedy=True, progress=False)
            rec = {"type": "eval", "step": self.step, "pass@1": s["pass@1"], "format_shares": s["format_shares"],
                   "format_accuracy": s["format_accuracy"], "num_problems": s.get("num_problems")}
            if args.eval_samples:
                _, s2 = eval_fn(model, self.tok, self.eval_records, n=args.eval_samples, temperature=args.temperature,
                                top_p=1.0, max_new_tokens=args.max_new_tokens, batch_size=args.eval_batch, seed=seed,
                                greedy=False, progress=False)
                sampled = dict(s2.get("sampled", {}))
                sampled.update({"n": args.eval_samples, "temperature": args.temperature, "pass@1": s2["pass@1"],
                                "format_shares": s2["format_shares"], "format_accuracy": s2["format_accuracy"]})
                rec["sampled"] = sampled
            rec["seconds"] = round(time.time() - t0, 2)
            self.log(rec)
            plot_formats(self.eval_log, self.plot_path)
            shares = " ".join(f"{f} {v:.0%}" for f, v in rec["format_shares"].items())
            extra = f" | sampled pass@1 {rec['sampled']['pass@1']:.3f}" if "sampled" in rec else ""
            self.write(f"eval step {self.step}: pass@1 {rec['pass@1']:.3f} | {shares}{extra}")
        if self.ddp:
            dist.barrier()

    def maybe_evaluate(self, model):
        k = self.args.eval_interval
        if k and (self.step % k == 0 or self.step == self.args.max_steps):
            self.evaluate(model)

    # ---------------------------------------------------------------- checkpoints
    def save(self, state, snapshot):
        """ckpt.pt (everything --resume needs) and, at snapshot steps, ckpt-stepNNNNNN.pt (the model only)."""
        if not self.master:
            return
        args = self.args
        base = {"model": self.model.state_dict(), "config": self.init_ck["config"], "tokenizer": self.tok.spec,
                "step": self.step, "args": dict(vars(args)), "kind": "rl", "algo": args.algo,
                "init_ckpt": args.ckpt}
        if snapshot:
            save_checkpoint(os.path.join(args.out_dir, f"ckpt-step{self.step:06d}.pt"), base)
        save_checkpoint(os.path.join(args.out_dir, "ckpt.pt"), {**base, **state})

    def after_step(self, state_fn, snapshots):
        """Eval and checkpoints after a step; True when this invocation should stop (--stop-after)."""
        args = self.args
        self.maybe_evaluate(self.model)
        stop = bool(args.stop_after) and self.step - self.start_step >= args.stop_after
        if self.step in snapshots or stop:
            self.save(state_fn(), snapshot=self.step in snapshots)
        return stop


class Diverged(UserError):
    pass


def check_finite(run, bad_in_a_row, state_fn):
    """Guard rail: a skipped (non-finite) update is logged; 3 in a row stop the run with a usable checkpoint
    (skipped updates never touch the weights, so the saved ones are the last good ones)."""
    if bad_in_a_row >= 3:
        run.save(state_fn(), snapshot=False)
        raise Diverged(f"{bad_in_a_row} non-finite updates in a row at step {run.step}: stopping (lower --lr?); "
                       f"last good weights in {os.path.join(run.args.out_dir, 'ckpt.pt')}")


# =====================================================================================================
# PPO and GRPO: rollout -> reward -> advantages -> clipped policy-gradient updates
# =====================================================================================================
def train_pg(run):
    args, dev = run.args, run.device
    algo, beta, n = args.algo, args.kl, args.samples_per_prompt
    model = run.model
    # the reference policy only matters through the KL term: with beta 0 it is never built and its forward pass
    # over every rollout (~15% of a toy GRPO step) is skipped; "kl" is then logged as null
    ref = copy.deepcopy(model).requires_grad_(False) if beta > 0 else None
    critic = Critic(copy.deepcopy(model)).to(dev) if algo == "ppo" else None
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.0, eps=1e-8)
    copt = (torch.optim.AdamW(critic.parameters(), lr=args.critic_lr, betas=(0.9, 0.95), weight_decay=0.0, eps=1e-8)
            if critic is not None else None)
    if run.resume_ck:
        model.load_state_dict(run.resume_ck["model"])
        opt.load_state_dict(run.resume_ck["optimizer"])
        if critic is not None:
            critic.load_state_dict(run.resume_ck["critic"])
            copt.load_state_dict(run.resume_ck["critic_optimizer"])
        run.write(f"resuming from {args.out_dir}/ckpt.pt at step {run.step}")

    def state():
        s = {"optimizer": opt.state_dict()}
        if critic is not None:
            s.update(critic=critic.state_dict(), critic_optimizer=copt.state_dict())
        return s

    updates_per_step = args.ppo_epochs * args.minibatches
    total_updates = args.max_steps * updates_per_step
    # with one update per rollout the policy that sampled is the policy being updated: old log-probs are the
    # current ones, detached (ratio exactly 1), which saves a forward pass over the rollout
    # (PPO also needs them for its KL reward when beta > 0)
    reuse_old = updates_per_step == 1 and (algo == "grpo" or beta == 0)
    snapshots = snapshot_steps(args, args.max_steps)
    local_prompts = args.prompts_per_step // run.world
    run.start_step = run.step
    if run.step == 0:
        run.maybe_evaluate(model)
    bad_in_a_row = 0
    run.bar = tqdm(total=args.max_steps, initial=run.step, desc=algo, disable=not run.master or args.no_tqdm,
                   dynamic_ncols=True)
    while run.step < args.max_steps:
        step = run.step
        t0 = time.time()
        # ---- 1. rollouts: this rank's share of the step's prompts, n samples each
        idx = prompts_for_step(len(run.records), args.prompts_per_step, step, args.seed)
        idx = idx[run.rank * local_prompts:(run.rank + 1) * local_prompts]
        records = [run.records[i] for i in idx for _ in range(n)]
        prompt_ids = [run.prompt_ids[i] for i in idx for _ in range(n)]
        model.eval()
        responses = run.rollout(model, [run.prompt_ids[i] for i in idx], n, args.temperature,
                                (args.seed, "gen", step, run.rank))
        t1 = time.time()
        # ---- 2. rewards
        samples = run.grade(records, responses)
        scores = torch.tensor([s["reward"] for s in samples], device=dev)
        t2 = time.time()
        # ---- 3. log-probs of the rollout under the reference (and the sampling policy), values, advantages
        batch = make_batch(prompt_ids, responses, run.tok.eot_id, dev)
        B, mask = len(responses), batch["mask"]
        seq_len = (batch["starts"] + batch["lens"]).cpu()
        chunks = torch.argsort(seq_len, stable=True).split(args.micro_batch)
        with torch.no_grad(), run.autocast():
            logprobs_of = lambda m: (lambda mb: response_logprobs(m, *_inputs(mb), temperature=args.temperature)[0])
            if ref is not None:
                batch["ref_logp"] = forward_chunks(logprobs_of(ref), batch, chunks)
            if not reuse_old:
                batch["old_logp"] = forward_chunks(logprobs_of(model), batch, chunks)
            if critic is not None:
                batch["old_values"] = forward_chunks(lambda mb: critic(*_inputs(mb)), batch, chunks) * mask
        if algo == "ppo":
            # per-token reward: -beta * KL estimate (k1) against the reference, plus the 0/1 outcome on the last token
            token_rewards = torch.zeros_like(mask) if ref is None else \
                -beta * kl_penalty(batch["old_logp"], batch["ref_logp"], args.kl_estimator) * mask
            last = (batch["lens"] - 1).long()
            token_rewards[torch.arange(B, device=dev), last] += scores
            adv, returns = compute_gae_advantage_return(token_rewards, batch["old_values"], mask, args.gamma,
                                                        args.gae_lambda)
            batch["adv"] = _whiten_global(run, adv, mask)
            batch["returns"] = returns
        else:
            batch["adv"] = compute_grpo_outcome_advantage(scores, mask, n)
        t3 = time.time()
        # ---- 4. updates: ppo_epochs passes, each in --minibatches optimizer steps, each in micro-batches
        model.train()
        stats = dict(pg_loss=0.0, kl_loss=0.0, clip=0.0, vloss=0.0, vclip=0.0, ent=0.0, kl=0.0, tok=0.0, wsum=0.0)
        skipped, gnorms = 0, []
        for epoch in range(args.ppo_epochs):
            perm = torch.randperm(B, generator=generator(args.seed, "shuffle", step, run.rank, epoch))
            for mb_i, mb in enumerate(perm.tensor_split(args.minibatches)):
                it = step * updates_per_step + epoch * args.minibatches + mb_i
                for g in opt.param_groups:
                    g["lr"] = lr_at(it, total_updates, args, args.lr)
                if copt is not None:
                    for g in copt.param_groups:
                        g["lr"] = lr_at(it, total_updates, args, args.critic_lr)
                W = run.all_sum([agg_weight(mask[mb.to(dev)], args.loss_agg).item() if len(mb) else 0.0])[0]
                loss_ok = True
                # micro-batches of similar lengths pad less (take() trims each to its own longest row); the
                # accumulated gradient is the same sum whatever the grouping
                mb = mb[torch.argsort(seq_len[mb], stable=True)]
                for micro in mb.split(args.micro_batch):
                    mbat = take(batch, micro)
                    m = mbat["mask"]
                    w = agg_weight(m, args.loss_agg) / max(W, 1.0)
                    with run.autocast():
                        logp, ent = response_logprobs(model, *_inputs(mbat), temperature=args.temperature,
                                                      with_entropy=epoch == 0)
                    old_logp = logp.detach() if reuse_old else mbat["old_logp"]
                    pg_loss, clipfrac = clipped_policy_loss(logp, old_logp, mbat["adv"], m, args.clip, args.loss_agg)
                    loss = pg_loss
                    if algo == "grpo" and beta > 0:
                        kl_loss = agg_loss(kl_penalty(logp, mbat["ref_logp"], args.kl_estimator), m, args.loss_agg)
                        loss = loss + beta * kl_loss
                        stats["kl_loss"] += kl_loss.item() * w.item()
                    loss_ok &= bool(torch.isfinite(loss))
                    (loss * w).backward()
                    ntok = m.sum().item()
                    stats["pg_loss"] += pg_loss.item() * w.item()
                    stats["clip"] += clipfrac.item() * ntok
                    stats["wsum"] += ntok
                    if epoch == 0:  # entropy and KL of the policy on its own rollout, once per sample
                        stats["ent"] += (ent * m).sum().item()
                        if ref is not None:
                            stats["kl"] += (kl_penalty(logp.detach(), mbat["ref_logp"], "k1") * m).sum().item()
                        stats["tok"] += ntok
                    if critic is not None:
                        with run.autocast():
                            values = critic(*_inputs(mbat))
                        vloss, vclip = clipped_value_loss(values, mbat["old_values"], mbat["returns"], m,
                                                          args.value_clip, args.loss_agg)
                        loss_ok &= bool(torch.isfinite(vloss))
                        (vloss * w).backward()
                        stats["vloss"] += vloss.item() * w.item()
                        stats["vclip"] += vclip.item() * ntok
                # all ranks take the same decision: grads are summed, so a non-finite grad anywhere is seen everywhere
                run.all_reduce_grads(model.parameters())
                gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip or float("inf"))
                ok = run.all_sum([0.0 if loss_ok else 1.0])[0] == 0 and math.isfinite(float(gnorm))
                if critic is not None:
                    run.all_reduce_grads(critic.parameters())
                    cnorm = torch.nn.utils.clip_grad_norm_(critic.parameters(), args.grad_clip or float("inf"))
                    ok = ok and math.isfinite(float(cnorm))
                if ok:
                    opt.step()
                    if copt is not None:
                        copt.step()
                    gnorms.append(float(gnorm))
                    bad_in_a_row = 0
                else:
                    skipped += 1
                    bad_in_a_row += 1
                opt.zero_grad(set_to_none=True)
                if copt is not None:
                    copt.zero_grad(set_to_none=True)
                if bad_in_a_row:
                    run.write(f"step {step + 1}: non-finite loss or gradient, update skipped ({bad_in_a_row} in a row)")
                    check_finite(run, bad_in_a_row, state)
        t4 = time.time()
        run.step = step + 1
        # ---- 5. log: rollout metrics over all ranks, losses, timings
        rec = {"type": "train", "step": run.step, "epoch": run.step * args.prompts_per_step / len(run.records),
               **run.rollout_metrics(samples)}
        s = dict(zip(stats, run.all_sum(stats.values())))
        rec.update({"kl": None if ref is None else s["kl"] / max(s["tok"], 1), "entropy": s["ent"] / max(s["tok"], 1),
                    "clipfrac": s["clip"] / max(s["wsum"], 1),
                    "pg_loss": s["pg_loss"] / max(updates_per_step - skipped, 1),
                    "lr": opt.param_groups[0]["lr"], "grad_norm": sum(gnorms) / len(gnorms) if gnorms else None,
                    "skipped_updates": skipped})
        if algo == "grpo":
            rec["kl_loss"] = s["kl_loss"] / max(updates_per_step - skipped, 1)
        if critic is not None:
            rec.update({"value_loss": s["vloss"] / max(updates_per_step - skipped, 1),
                        "value_clipfrac": s["vclip"] / max(s["wsum"], 1),
                        "critic_lr": copt.param_groups[0]["lr"]})
        rec["time"] = {"generate": round(t1 - t0, 3), "reward": round(t2 - t1, 3), "logprobs": round(t3 - t2, 3),
                       "update": round(t4 - t3, 3), "total": round(t4 - t0, 3)}
        if str(dev).startswith("cuda"):
            rec["peak_mem_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)  # actor + critic + ref + rollout
        run.log(rec)
        run.bar.update(1)
        top = max(rec["format_shares"].items(), key=lambda kv: kv[1]) if rec["format_shares"] else ("-", 0)
        run.bar.set_postfix(reward=f"{rec['reward']:.3f}", kl="-" if rec["kl"] is None else f"{rec['kl']:.4f}",
                            top=f"{top[0]} {top[1]:.0%}")
        if run.after_step(state, snapshots):
            break
    run.bar.close()
    return model


def _inputs(mbat):
    return mbat["seqs"], mbat["starts"], mbat["resp"]


def forward_chunks(fn, batch, chunks):
    """fn(micro-batch) -> (b, r_i) for each chunk of rows (any rows, e.g. grouped by length), right-padded
    and put back in row order: (B, R)."""
    R = batch["resp"].size(1)
    parts = [fn(take(batch, c)).float() for c in chunks]
    out = torch.cat([nn.functional.pad(p, (0, R - p.size(1))) for p in parts], dim=0)
    order = torch.cat(list(chunks)).to(out.device)
    return torch.empty_like(out).index_copy_(0, order, out)


def _whiten_global(run, adv, mask):
    """masked_whiten over the whole rollout batch of every rank (identical to masked_whiten on one process)."""
    if not run.ddp:
        return masked_whiten(adv, mask)
    s, s2, c = run.all_sum([(adv * mask).sum().item(), (adv * adv * mask).sum().item(), mask.sum().item()])
    mean = s / c
    var = (s2 / c - mean ** 2) * c / max(c - 1, 1)
    return (adv - mean) * (var + 1e-8) ** -0.5 * mask


# =====================================================================================================
# Expert Iteration: sample k per prompt -> keep correct, distinct ones -> SFT the ORIGINAL model on them
# =====================================================================================================
def train_ei(run):
    args, dev = run.args, run.device
    model, n = run.model, args.samples_per_prompt
    original = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if run.resume_ck:
        model.load_state_dict(run.resume_ck["model"])
        run.write(f"resuming from {args.out_dir}/ckpt.pt after round {run.step}")
    snapshots = snapshot_steps(args, args.max_steps)
    run.start_step = run.step
    if run.step == 0:
        run.maybe_evaluate(model)
    run.bar = tqdm(total=args.max_steps, initial=run.step, desc="ei", disable=not run.master or args.no_tqdm,
                   dynamic_ncols=True)
    opt = None
    while run.step < args.max_steps:
        rnd = run.step
        t0 = time.time()
        # ---- 1. sample k per prompt from the current policy (this rank's share of all prompts)
        mine = list(range(run.rank, len(run.records), run.world))
        model.eval()
        responses = run.rollout(model, [run.prompt_ids[i] for i in mine], n, args.temperature,
                                (args.seed, "ei-gen", rnd, run.rank))
        t1 = time.time()
        # ---- 2. keep the correct, finished, distinct responses of each prompt
        records = [run.records[i] for i in mine for _ in range(n)]
        samples = run.grade(records, responses)
        data, seen = [], set()
        for j, (s, r) in enumerate(zip(samples, responses)):
            i = mine[j // n]
            if s["reward"] > 0 and (i, tuple(r)) not in seen:
                seen.add((i, tuple(r)))
                data.append((i, r))
        data = run.all_gather(data)
        t2 = time.time()
        # ---- 3. SFT from the original pretrained weights on response tokens (a fresh optimizer each round)
        policy = {k: v.detach().clone() for k, v in model.state_dict().items()}  # this round's sampler
        model.load_state_dict(original)
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.0, eps=1e-8)
        per_epoch = math.ceil(len(data) / args.sft_batch)
        total = per_epoch * args.sft_epochs
        losses, skipped, bad_in_a_row = [], 0, 0
        for epoch in range(args.sft_epochs):
            perm = torch.randperm(len(data), generator=generator(args.seed, "ei-shuffle", rnd, epoch)).tolist()
            for b in range(per_epoch):
                rows = perm[b * args.sft_batch:(b + 1) * args.sft_batch][run.rank::run.world]
                for g in opt.param_groups:
                    g["lr"] = lr_at(epoch * per_epoch + b, total, args, args.lr)
                part = [data[k] for k in rows]
                batch = make_batch([run.prompt_ids[i] for i, _ in part], [r for _, r in part], run.tok.eot_id, dev) \
                    if part else None
                W = run.all_sum([batch["mask"].sum().item() if part else 0.0])[0]
                loss_sum, ok = 0.0, True
                for micro in (torch.arange(len(part)).split(args.micro_batch) if part else []):
                    mbat = take(batch, micro)
                    with run.autocast():
                        logp, _ = response_logprobs(model, *_inputs(mbat), temperature=1.0)
                    m = mbat["mask"]
                    loss = -(logp * m).sum() / max(W, 1.0)  # token-mean over the whole batch
                    ok &= bool(torch.isfinite(loss))
                    loss.backward()
                    loss_sum += loss.item()
                run.all_reduce_grads(model.parameters())
                gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip or float("inf"))
                if run.all_sum([0.0 if ok else 1.0])[0] == 0 and math.isfinite(float(gnorm)):
                    opt.step()
                    losses.append(run.all_sum([loss_sum])[0])
                    bad_in_a_row = 0
                else:
                    skipped += 1
                    bad_in_a_row += 1
                    run.write(f"round {rnd + 1}: non-finite SFT loss or gradient, update skipped")
                opt.zero_grad(set_to_none=True)
                if bad_in_a_row >= 3:
                    model.load_state_dict(policy)  # the checkpoint is the start of this round: resumable
                    check_finite(run, bad_in_a_row, lambda: {})
        t3 = time.time()
        run.step = rnd + 1
        rec = {"type": "train", "step": run.step, "round": run.step, **run.rollout_metrics(samples),
               "kept": len(data), "sft_steps": total, "sft_loss": sum(losses) / len(losses) if losses else None,
               "skipped_updates": skipped, "lr": args.lr,
               "time": {"generate": round(t1 - t0, 3), "reward": round(t2 - t1, 3), "logprobs": 0.0,
                        "update": round(t3 - t2, 3), "total": round(t3 - t0, 3)}}
        run.log(rec)
        run.bar.update(1)
        run.bar.set_postfix(reward=f"{rec['reward']:.3f}", kept=len(data))
        if run.after_step(lambda: {}, snapshots):
            break
    run.bar.close()
    return model


# =====================================================================================================
# entry points
# =====================================================================================================
def train(argv=None, reward_fn=None, prompts=None, eval_records=None, eval_fn=None):
    """
    Run RL in-process. argv: the command-line flags (a list). reward_fn(texts, records, responses) -> one dict per
    text {"correct", ["format", "answer", "reward"]} replaces the math grader (tests plug in trivial tasks);
    prompts / eval_records: lists of {"id", "question", "gold"} instead of loading --prompt-set / --eval-set;
    eval_fn: replaces evaluate.run_eval. Returns {"model", "step", "train", "eval"} (the records logged).
    """
    args, explicit = get_args(argv)
    run = Run(args, explicit, reward_fn, prompts, eval_records, eval_fn)
    args = run.args
    if run.master:
        print(f"{args.algo} from {args.ckpt} (step {run.init_ck.get('step')}) on {len(run.records)} prompts "
              f"({run.dropped} too long dropped), {args.max_steps} {'rounds' if args.algo == 'ei' else 'steps'}, "
              f"device {run.device} x {run.world} -> {args.out_dir}")
    try:
        model = train_ei(run) if args.algo == "ei" else train_pg(run)
    finally:
        if run.bar is not None:
            run.bar.close()
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
