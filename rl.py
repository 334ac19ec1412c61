"""
RL post-training of a pretrained checkpoint: PPO, GRPO and Expert Iteration, each one plain loop in this file.

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

How to read this file: (1) the RL math, small pure functions on tensors pinned by tests/test_rl.py on
hand-computed 2x4 tensors (veRL core_algos.py / OpenRLHF loss.py style); (2) forward passes over rollouts;
(3) flags (presets live in presets.py); (4) the run's set-up and the helpers the loops share (rollouts,
grading, updates, evals, checkpoints); (5) one loop per algorithm: train_ppo, train_grpo, train_ei.

Choices worth knowing (each a flag):
- a response cut at --max-new-tokens (or at the end of the context) has no end-of-text and gets reward 0:
  it is not a finished answer, and rewarding it would teach the policy that rambling past the answer is free.
  --grade-truncated grades it as-is instead (the authors' OpenRLHF setup did that).
- log-probs are computed at the sampling temperature (logits / T) and PPO/GRPO sample at top-p 1, so the ratio
  and the KL are taken under the very distribution that was sampled. Expert Iteration samples at top-p 0.95.
- losses are averaged over all response tokens of a minibatch ("token-mean", as OpenRLHF) unless
  --loss-agg seq-mean-token-mean (the GRPO paper's per-sequence mean); micro-batching never changes the result.
- every random choice (prompt order, sampling, shuffles, the value head's init) is a pure function of
  (--seed, step), so resuming needs only the step, the weights and the optimizer state.

Outputs in --out-dir: metrics.jsonl (a "config" record, then a "train" record every step and "eval" records at
step 0, every --eval-interval steps and the last), config.json, formats.png (format shares and pass@1 over
steps), ckpt.pt (the latest, with optimizer state, for --resume) and ckpt-stepNNNNNN.pt at steps 1, 2, 4, 8, ...
and the last (model only; evaluate.py reads them: python evaluate.py --ckpt out/rl-toy).
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

from common import ArgParser, UserError, main_guard, append_jsonl, atomic_write_json, check_out_dir, cosine_lr, \
    derive_seed, generator, merge_resumed_args, set_threads, setup_distributed, start_metrics
from model import CheckpointError, load_checkpoint, model_from_checkpoint, save_checkpoint
from presets import EI as EI_PRESETS, RL as PRESETS

ALGOS = ("ppo", "grpo", "ei")
AGG_MODES = ("token-mean", "seq-mean-token-mean")
KL_KINDS = ("k1", "k2", "k3")


# =====================================================================================================
# (1) RL math: pure functions on (batch, response length) tensors; mask is 1.0 on response tokens, 0.0 on padding
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


def token_rewards(scores, logp, ref_logp, mask, beta, kind="k1"):
    """
    PPO's per-token reward: -beta * KL estimate (k1 by default) against the reference on every response token,
    plus the sequence's 0/1 score on its last token. With beta 0 (or no reference: logp / ref_logp None) only
    the score remains. scores: (B,); logp, ref_logp, mask: (B, R); returns (B, R).
    """
    if ref_logp is None or beta == 0:
        rewards = torch.zeros_like(mask)
    else:
        rewards = -beta * kl_penalty(logp, ref_logp, kind) * mask
    last = (mask.sum(-1) - 1).long().clamp(min=0)
    rewards[torch.arange(mask.size(0), device=mask.device), last] += scores
    return rewards


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
# (2) forward passes over rollouts: sequences are prompt + response, right-padded; only response tokens count
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


# =====================================================================================================
# (3) flags: every one left unset takes its --preset's value (presets.RL, and presets.EI for --algo ei)
# =====================================================================================================
# on --resume every flag comes from the checkpoint so the run continues as it was, except: RUNTIME flags, always
# this invocation's, and RESUME_OVERRIDES, this invocation's when given (a new --max-steps moves the lr schedule)
RUNTIME = {"resume", "device", "threads", "stop_after", "no_tqdm", "out_dir"}
RESUME_OVERRIDES = {"eval_interval", "eval_batch", "max_steps"}


def get_args(argv=None):
    p = ArgParser(description="RL post-training (PPO, GRPO, Expert Iteration) of a pretrained checkpoint. With no "
                              "flags: the toy echo chamber, GRPO from out/pretrain-toy/ckpt.pt on the synthetic RL "
                              "prompts, on a CPU in minutes (GRPO: no critic, the cheapest step, and it shows the "
                              "collapse in its 30 steps). Flags left unset take the --preset's value (presets.py).")
    a = p.add_argument
    a("--algo", default=None, choices=ALGOS, help="ppo | grpo | ei (default: grpo for toy, ppo for 150m/1b)")
    a("--preset", default="toy", choices=sorted(PRESETS), help="defaults for every unset flag (presets.py)")
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
    a("--top-p", type=float, default=None, help="nucleus sampling in rollouts: 1.0 for PPO/GRPO (the ratio needs "
                                                "the sampled distribution), 0.95 for EI (the paper)")
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
    a("--seed", type=int, default=1337, help="seed of prompt order, sampling, shuffles and the value head")
    a("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    a("--threads", type=int, default=0, help="CPU threads for torch (0 = torch's default)")
    a("--no-tqdm", action="store_true", help="no progress bar")
    return p.parse_explicit(argv)


def resolve(args):
    """Fill preset defaults into every flag left unset, then check the combination."""
    if args.algo is None:
        args.algo = PRESETS[args.preset]["algo"]
    defaults = dict(PRESETS[args.preset], **(EI_PRESETS[args.preset] if args.algo == "ei" else {}))
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
    if not 0 < args.top_p <= 1:
        raise UserError(f"--top-p must be in (0, 1], got {args.top_p}")
    if args.algo == "grpo" and args.samples_per_prompt < 2:
        raise UserError("GRPO needs --samples-per-prompt >= 2 (the advantage is relative to the group)")
    if args.ckpt_interval != "log" and not (args.ckpt_interval.isdigit() and int(args.ckpt_interval) > 0):
        raise UserError(f"--ckpt-interval must be 'log' or a positive integer, got {args.ckpt_interval!r}")
    if min(args.max_steps, args.prompts, args.eval_n, args.eval_samples, args.eval_interval) < 0:
        raise UserError("--max-steps, --prompts, --eval-n, --eval-samples, --eval-interval must be >= 0")
    return args


def lr_at(it, total, args, peak):
    """Linear warmup over warmup_ratio of the optimizer steps, then cosine down to min_lr_ratio * peak."""
    return cosine_lr(it, total, peak, int(round(args.warmup_ratio * total)), args.min_lr_ratio)


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
    if not args.prompts_file:
        return load_benchmark(args.prompt_set, "train", data_dir=args.data_dir, limit=limit)
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


def math_reward(texts, records, responses=None):
    """The paper's reward: 1 if classify.py's graded answer equals the gold answer (model-written code only ever
    runs in classify's sandbox). A reward_fn returns one dict per text with "correct" and optionally "format",
    "answer" and "reward" (a number that replaces float(correct))."""
    from classify import analyze_batch
    return analyze_batch(texts, [r["gold"] for r in records])


def snapshot_steps(args, max_steps):
    """Steps that keep a ckpt-stepNNNNNN.pt: 1, 2, 4, 8, ... ('log') or every N, and the last."""
    n = int(args.ckpt_interval) if args.ckpt_interval != "log" else 0
    steps = set(range(n, max_steps + 1, n)) if n else {2 ** i for i in range(max_steps.bit_length()) if 2 ** i <= max_steps}
    return steps | {max_steps}


# =====================================================================================================
# (4) set-up and the helpers the three loops share
# =====================================================================================================
def setup(argv, reward_fn=None, prompts=None, eval_records=None, eval_fn=None):
    """Flags (and --resume's merge), device and torchrun, the pretrained model, prompts, eval set, the log.
    Returns `run`, a plain namespace the loops read from; nothing here knows which algorithm runs."""
    args, explicit = get_args(argv)
    resume_ck = None
    if args.resume:
        if args.out_dir is None:
            args.out_dir = resolve(copy.copy(args)).out_dir
        try:
            resume_ck = load_checkpoint(os.path.join(args.out_dir, "ckpt.pt"))
        except CheckpointError as e:
            raise UserError(f"cannot resume: {e}")
        args = merge_resumed_args(args, resume_ck["args"], explicit, RUNTIME, RESUME_OVERRIDES)
    else:
        args = resolve(args)
    device, ddp, rank, world = setup_distributed(args.device)
    set_threads(args.threads)
    cuda = device.startswith("cuda")
    run = SimpleNamespace(args=args, device=device, ddp=ddp, rank=rank, world=world, master=rank == 0,
                          resume_ck=resume_ck, step=resume_ck["step"] if resume_ck else 0, bar=None,
                          autocast=(lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if cuda else nullcontext,
                          sampler=None, train_log=[], eval_log=[], reward_fn=reward_fn or math_reward, eval_fn=eval_fn)
    if run.master:
        check_out_dir(args.out_dir)
    if args.prompts_per_step % world:
        raise UserError(f"--prompts-per-step {args.prompts_per_step} must be a multiple of {world} ranks")

    # the pretrained checkpoint: the policy's start, the frozen reference, the critic's body, EI's origin
    from data.tokenizer import get_tokenizer
    try:
        run.init_ck = load_checkpoint(args.ckpt)
        run.tok = get_tokenizer(run.init_ck.get("tokenizer", run.init_ck["config"].get("vocab_size")))
        run.model = model_from_checkpoint(run.init_ck, device)
        if run.model.config.vocab_size != run.tok.vocab_size:  # ids past the embedding, or unknown to the tokenizer
            raise CheckpointError(f"{args.ckpt}: model vocab {run.model.config.vocab_size} != tokenizer vocab "
                                  f"{run.tok.vocab_size}")
    except CheckpointError as e:
        hint = " (run python pretrain.py first, or pass --ckpt)" if not os.path.exists(args.ckpt) else ""
        raise UserError(f"{e}{hint}")

    # prompts: tokenized once; a prompt that leaves no room for a response is dropped (and counted)
    from data import encode_prompts
    records = prompts if prompts is not None else load_prompts(args)
    if prompts is not None and args.prompts:
        records = records[:args.prompts]
    ids = encode_prompts(run.tok, [r["question"] for r in records])
    block = run.model.config.block_size
    keep = [i for i, p in enumerate(ids) if 0 < len(p) and len(p) + min(args.max_new_tokens, 32) <= block]
    run.dropped = len(records) - len(keep)
    run.records, run.prompt_ids = [records[i] for i in keep], [ids[i] for i in keep]
    if not run.records:
        raise UserError(f"no usable RL prompts ({len(records)} loaded, {run.dropped} too long for the context)")
    run.eval_records = eval_records
    if args.eval_interval and eval_records is None:
        from data.benchmarks import load_benchmark
        run.eval_records = load_benchmark(args.eval_set, "test", data_dir=args.data_dir, limit=args.eval_n or None)
    if args.max_steps == 0:
        if args.algo == "ei":
            raise UserError("--max-steps (rounds) must be positive for ei")
        args.max_steps = max(1, math.ceil(args.passes * len(run.records) / args.prompts_per_step))

    run.metrics_path = os.path.join(args.out_dir, "metrics.jsonl")
    run.plot_path = os.path.join(args.out_dir, "formats.png")
    run.snapshots = snapshot_steps(args, args.max_steps)
    run.start_step = run.step
    if run.master:
        config = {"type": "config", **vars(args), "world_size": world, "num_prompts": len(run.records),
                  "dropped_prompts": run.dropped, "init_step": run.init_ck.get("step"),
                  "init_kind": run.init_ck.get("kind")}
        atomic_write_json(os.path.join(args.out_dir, "config.json"), config)
        kept = start_metrics(run.metrics_path, run.step, args.resume, config)
        run.eval_log = [r for r in kept if r.get("type") == "eval"]
    return run


def log(run, rec):
    if run.master:
        append_jsonl(run.metrics_path, rec)
        (run.eval_log if rec["type"] == "eval" else run.train_log).append(rec)


def say(run, msg):
    if run.master:
        (run.bar.write if run.bar is not None else print)(msg)


def all_sum(run, t):
    """Sum a float64 tensor of stats over ranks in place (identity on one process); read it once with .tolist()."""
    if run.ddp:
        dist.all_reduce(t)
    return t


def all_gather(run, items):
    """Concatenate a list over ranks, rank order."""
    if not run.ddp:
        return list(items)
    out = [None] * run.world
    dist.all_gather_object(out, list(items))
    return [x for part in out for x in part]


def adamw(module, lr):
    return torch.optim.AdamW(module.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.0, eps=1e-8)


def frozen_copy(model):
    return copy.deepcopy(model).requires_grad_(False)


def restore(run, **states):
    """On --resume, load each named state (model, optimizer, critic, ...) from the run's checkpoint."""
    if run.resume_ck:
        for name, obj in states.items():
            obj.load_state_dict(run.resume_ck[name])
        say(run, f"resuming from {run.args.out_dir}/ckpt.pt at step {run.step}")


def start(run, model, desc):
    """The step-0 eval (a fresh run) and the progress bar."""
    if run.step == 0:
        maybe_evaluate(run, model)
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
        if run.sampler is None:
            run.sampler = inference_copy(model, torch.bfloat16)
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
    eot = run.tok.eot_id
    finished = [len(r) > 0 and r[-1] == eot for r in responses]
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
    t = all_sum(run, torch.stack([(adv * mask).sum(), (adv * adv * mask).sum(), mask.sum()]).double())
    s, s2, c = t.tolist()
    mean = s / c
    var = (s2 / c - mean ** 2) * c / max(c - 1, 1)
    return (adv - mean) * (var + 1e-8) ** -0.5 * mask


def minibatches(run, B, step, updates):
    """(epoch, rows, optimizer-step index) for --ppo-epochs passes of --minibatches seeded shuffles of B rows."""
    args = run.args
    for epoch in range(args.ppo_epochs):
        perm = torch.randperm(B, generator=generator(args.seed, "shuffle", step, run.rank, epoch))
        for i, rows in enumerate(perm.tensor_split(args.minibatches)):
            yield epoch, rows, step * updates + epoch * args.minibatches + i


def backward_minibatch(run, batch, rows, seq_len, loss_fn, stats):
    """Forward and backward one minibatch in micro-batches of similar lengths. loss_fn(micro) -> (loss, stats of
    that micro-batch as float64 sums, see policy_stats). Each micro-batch's loss is weighted by its share of the
    minibatch's tokens (or sequences) over all ranks, so the summed gradient is the minibatch's agg_loss
    whatever the micro-batching. Returns a device flag: was any loss non-finite (read once per update)."""
    agg = run.args.loss_agg
    W = all_sum(run, agg_weight(batch["mask"][rows.to(run.device)], agg).double()).float().clamp(min=1.0)
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


def apply_update(run, pairs, bad):
    """All-reduce, clip and step each (module, optimizer); skip every step if a loss or a grad is non-finite (all
    ranks decide alike: the grads are summed, so one bad rank is seen everywhere). Returns (ok, policy grad norm)."""
    args, norms = run.args, []
    for module, _ in pairs:
        if run.ddp:
            for p in module.parameters():
                if p.grad is None:  # a rank with no rows this step still joins every collective
                    p.grad = torch.zeros_like(p)
                dist.all_reduce(p.grad)
        norms.append(torch.nn.utils.clip_grad_norm_(module.parameters(), args.grad_clip or float("inf")))
    bad = all_sum(run, bad.double().reshape(1))
    ok_t = (bad == 0).all() & torch.stack([torch.isfinite(g) for g in norms]).all()
    ok = bool(ok_t)  # the one host sync of an update
    for _, opt in pairs:
        if ok:
            opt.step()
        opt.zero_grad(set_to_none=True)
    return ok, float(norms[0])


class Diverged(UserError):
    pass


def guard(run, ok, bad_in_a_row, state_fn, what="update"):
    """Count non-finite updates in a row; 3 in a row stop the run with a usable checkpoint (skipped updates never
    touch the weights, so the saved ones are the last good ones). Returns the new count."""
    bad_in_a_row = 0 if ok else bad_in_a_row + 1
    if bad_in_a_row:
        say(run, f"step {run.step + 1}: non-finite loss or gradient, {what} skipped ({bad_in_a_row} in a row)")
    if bad_in_a_row >= 3:
        save(run, state_fn(), snapshot=False)
        raise Diverged(f"{bad_in_a_row} non-finite updates in a row at step {run.step}: stopping (lower --lr?); "
                       f"last good weights in {os.path.join(run.args.out_dir, 'ckpt.pt')}")
    return bad_in_a_row


def set_lr(opt, lr):
    for g in opt.param_groups:
        g["lr"] = lr


def step_record(run, samples, times, t0):
    """The rollout half of a train record, over every rank's samples: reward, accuracy, format shares and accuracy
    within each format (classify.format_metrics), lengths; and the seconds of each phase."""
    from classify import format_metrics
    samples = all_gather(run, samples)
    shares, acc = format_metrics(samples)
    n = len(samples)
    rec = {"type": "train", "step": run.step, "epoch": run.step * run.args.prompts_per_step / len(run.records),
           "reward": sum(s["reward"] for s in samples) / n, "accuracy": sum(s["correct"] for s in samples) / n,
           "format_shares": shares, "format_accuracy": acc,
           "response_length": sum(s["length"] for s in samples) / n,
           "truncated": sum(s["truncated"] for s in samples) / n, "samples": n}
    last, t = t0, {}
    for k in ("generate", "reward", "logprobs", "update"):
        t[k] = round(times.get(k, last) - last, 3)
        last = times.get(k, last)
    t["total"] = round(last - t0, 3)
    rec["time"] = t
    if run.device.startswith("cuda"):
        rec["peak_mem_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)  # actor + critic + ref + rollout
    return rec


def finish_step(run, rec, model, state_fn, **postfix):
    """Log the step, eval at its interval, checkpoint at snapshot steps; True when this invocation should stop."""
    log(run, rec)
    run.bar.update(1)
    top = max(rec["format_shares"].items(), key=lambda kv: kv[1]) if rec["format_shares"] else ("-", 0)
    run.bar.set_postfix(reward=f"{rec['reward']:.3f}", top=f"{top[0]} {top[1]:.0%}", **postfix)
    maybe_evaluate(run, model)
    stop = bool(run.args.stop_after) and run.step - run.start_step >= run.args.stop_after
    if run.step in run.snapshots or stop:
        save(run, state_fn(), snapshot=run.step in run.snapshots)
    return stop


def save(run, state, snapshot):
    """ckpt.pt (everything --resume needs) and, at snapshot steps, ckpt-stepNNNNNN.pt (the model only)."""
    if not run.master:
        return
    args = run.args
    base = {"model": run.model.state_dict(), "config": run.init_ck["config"], "tokenizer": run.tok.spec,
            "step": run.step, "args": dict(vars(args)), "kind": "rl", "algo": args.algo, "init_ckpt": args.ckpt}
    if snapshot:
        save_checkpoint(os.path.join(args.out_dir, f"ckpt-step{run.step:06d}.pt"), base)
    save_checkpoint(os.path.join(args.out_dir, "ckpt.pt"), {**base, **state})


def maybe_evaluate(run, model):
    k = run.args.eval_interval
    if k and (run.step % k == 0 or run.step == run.args.max_steps):
        evaluate(run, model)


def evaluate(run, model):
    """Greedy (and, with --eval-samples, sampled at the rollout temperature) eval on the held-out set; rank 0."""
    args = run.args
    from evaluate import plot_formats
    if run.master:
        t0 = time.time()
        eval_fn = run.eval_fn
        if eval_fn is None:
            from evaluate import run_eval as eval_fn
        seed = derive_seed(args.seed, "eval")
        common = dict(max_new_tokens=args.max_new_tokens, batch_size=args.eval_batch, seed=seed, progress=False)
        _, s = eval_fn(model, run.tok, run.eval_records, n=1, greedy=True, **common)
        rec = {"type": "eval", "step": run.step, "pass@1": s["pass@1"], "format_shares": s["format_shares"],
               "format_accuracy": s["format_accuracy"], "num_problems": s.get("num_problems")}
        if args.eval_samples:
            _, s2 = eval_fn(model, run.tok, run.eval_records, n=args.eval_samples, temperature=args.temperature,
                            top_p=args.top_p, greedy=False, **common)
            rec["sampled"] = {**s2.get("sampled", {}), "n": args.eval_samples, "temperature": args.temperature,
                              "pass@1": s2["pass@1"], "format_shares": s2["format_shares"],
                              "format_accuracy": s2["format_accuracy"]}
        rec["seconds"] = round(time.time() - t0, 2)
        log(run, rec)
        plot_formats(run.eval_log, run.plot_path)
        shares = " ".join(f"{f} {v:.0%}" for f, v in rec["format_shares"].items())
        extra = f" | sampled pass@1 {rec['sampled']['pass@1']:.3f}" if "sampled" in rec else ""
        say(run, f"eval step {run.step}: pass@1 {rec['pass@1']:.3f} | {shares}{extra}")
    if run.ddp:
        dist.barrier()


def _stats_zero(run, keys):
    return {k: torch.zeros((), dtype=torch.float64, device=run.device) for k in keys}


def _read_stats(run, stats):
    """Sum the step's device stats over ranks and read them in one host sync."""
    keys = list(stats)
    return dict(zip(keys, all_sum(run, torch.stack([stats[k] for k in keys])).tolist()))


# =====================================================================================================
# (5) the loops. PPO: rollout -> reward -> values and per-token rewards -> GAE -> clipped actor and critic updates
# =====================================================================================================
def train_ppo(run):
    args, dev, model = run.args, run.device, run.model
    beta, T = args.kl, args.temperature
    # the reference only matters through the KL reward: with beta 0 it is never built and its forward is skipped
    ref = frozen_copy(model) if beta > 0 else None
    critic = Critic(copy.deepcopy(model), seed=derive_seed(args.seed, "value-head")).to(dev)
    opt, copt = adamw(model, args.lr), adamw(critic, args.critic_lr)
    restore(run, model=model, optimizer=opt, critic=critic, critic_optimizer=copt)
    state = lambda: {"optimizer": opt.state_dict(), "critic": critic.state_dict(), "critic_optimizer": copt.state_dict()}
    updates = args.ppo_epochs * args.minibatches
    # with one update per rollout and no KL reward the policy that sampled is the policy being updated: its
    # log-probs are the current ones, detached (ratio exactly 1), which saves a forward pass over the rollout
    need_old = updates > 1 or ref is not None
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
        # ---- 5. updates: --ppo-epochs passes, each in --minibatches optimizer steps, each in micro-batches
        model.train()
        stats = _stats_zero(run, ("pg_loss", "clip", "wsum", "ent", "tok", "kl", "vloss", "vclip"))
        skipped, gnorms = 0, []
        for epoch, rows, it in minibatches(run, len(samples), step, updates):
            set_lr(opt, lr_at(it, args.max_steps * updates, args, args.lr))
            set_lr(copt, lr_at(it, args.max_steps * updates, args, args.critic_lr))

            def loss_fn(mb, w, first=epoch == 0):
                m = mb["mask"]
                with run.autocast():
                    logp, ent = response_logprobs(model, *_inputs(mb), temperature=T, with_entropy=first)
                    values = critic(*_inputs(mb))
                old = mb["old_logp"] if need_old else logp.detach()
                pg_loss, clipfrac = clipped_policy_loss(logp, old, mb["adv"], m, args.clip, args.loss_agg)
                vloss, vclip = clipped_value_loss(values, mb["old_values"], mb["returns"], m, args.value_clip,
                                                  args.loss_agg)
                kl = kl_penalty(logp.detach(), mb["ref_logp"], "k1") if ref is not None else None
                st = policy_stats(pg_loss, clipfrac, w, m, first, ent, kl)
                st.update(vloss=vloss.detach().double() * w.double(), vclip=vclip.double() * m.sum().double())
                return pg_loss + vloss, st  # actor and critic share no weights: one backward serves both

            bad = backward_minibatch(run, batch, rows, seq_len, loss_fn, stats)
            ok, gnorm = apply_update(run, [(model, opt), (critic, copt)], bad)
            skipped += not ok
            gnorms += [gnorm] if ok else []
            bad_in_a_row = guard(run, ok, bad_in_a_row, state)
        times["update"] = time.time()
        run.step = step + 1
        # ---- 6. log: rollout metrics over all ranks, losses, timings
        s, done = _read_stats(run, stats), max(updates - skipped, 1)
        rec = step_record(run, samples, times, t0)
        rec.update({"kl": None if ref is None else s["kl"] / max(s["tok"], 1), "entropy": s["ent"] / max(s["tok"], 1),
                    "clipfrac": s["clip"] / max(s["wsum"], 1), "pg_loss": s["pg_loss"] / done,
                    "value_loss": s["vloss"] / done, "value_clipfrac": s["vclip"] / max(s["wsum"], 1),
                    "lr": opt.param_groups[0]["lr"], "critic_lr": copt.param_groups[0]["lr"],
                    "grad_norm": sum(gnorms) / len(gnorms) if gnorms else None, "skipped_updates": skipped})
        if finish_step(run, rec, model, state, kl="-" if rec["kl"] is None else f"{rec['kl']:.4f}"):
            break
    return model


# =====================================================================================================
# GRPO: rollout -> reward -> group-normalised advantage on every token -> clipped policy update (+ beta * k3 KL)
# =====================================================================================================
def train_grpo(run):
    args, model = run.args, run.model
    beta, T, n = args.kl, args.temperature, args.samples_per_prompt
    # the reference only matters through the KL loss: with beta 0 it is never built and its forward is skipped
    # (~15% of a toy step); "kl" is then logged as null
    ref = frozen_copy(model) if beta > 0 else None
    opt = adamw(model, args.lr)
    restore(run, model=model, optimizer=opt)
    state = lambda: {"optimizer": opt.state_dict()}
    updates = args.ppo_epochs * args.minibatches
    # with one update per rollout the sampling policy's log-probs are the policy's own, detached (ratio 1)
    need_old = updates > 1
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
        # ---- 5. updates: --ppo-epochs passes, each in --minibatches optimizer steps, each in micro-batches
        model.train()
        stats = _stats_zero(run, ("pg_loss", "clip", "wsum", "ent", "tok", "kl", "kl_loss"))
        skipped, gnorms = 0, []
        for epoch, rows, it in minibatches(run, len(samples), step, updates):
            set_lr(opt, lr_at(it, args.max_steps * updates, args, args.lr))

            def loss_fn(mb, w, first=epoch == 0):
                m = mb["mask"]
                with run.autocast():
                    logp, ent = response_logprobs(model, *_inputs(mb), temperature=T, with_entropy=first)
                old = mb["old_logp"] if need_old else logp.detach()
                pg_loss, clipfrac = clipped_policy_loss(logp, old, mb["adv"], m, args.clip, args.loss_agg)
                kl, loss = None, pg_loss
                st = {}
                if ref is not None:  # the KL term is a loss (k3 by default), not a reward as in PPO
                    kl_loss = agg_loss(kl_penalty(logp, mb["ref_logp"], args.kl_estimator), m, args.loss_agg)
                    loss = loss + beta * kl_loss
                    kl = kl_penalty(logp.detach(), mb["ref_logp"], "k1")
                    st["kl_loss"] = kl_loss.detach().double() * w.double()
                st.update(policy_stats(pg_loss, clipfrac, w, m, first, ent, kl))
                return loss, st

            bad = backward_minibatch(run, batch, rows, seq_len, loss_fn, stats)
            ok, gnorm = apply_update(run, [(model, opt)], bad)
            skipped += not ok
            gnorms += [gnorm] if ok else []
            bad_in_a_row = guard(run, ok, bad_in_a_row, state)
        times["update"] = time.time()
        run.step = step + 1
        # ---- 6. log: rollout metrics over all ranks, losses, timings
        s, done = _read_stats(run, stats), max(updates - skipped, 1)
        rec = step_record(run, samples, times, t0)
        rec.update({"kl": None if ref is None else s["kl"] / max(s["tok"], 1), "entropy": s["ent"] / max(s["tok"], 1),
                    "clipfrac": s["clip"] / max(s["wsum"], 1), "pg_loss": s["pg_loss"] / done,
                    "kl_loss": s["kl_loss"] / done, "lr": opt.param_groups[0]["lr"],
                    "grad_norm": sum(gnorms) / len(gnorms) if gnorms else None, "skipped_updates": skipped})
        if finish_step(run, rec, model, state, kl="-" if rec["kl"] is None else f"{rec['kl']:.4f}"):
            break
    return model


# =====================================================================================================
# Expert Iteration: sample k per prompt -> keep correct, distinct ones -> SFT the ORIGINAL model on them
# =====================================================================================================
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
        data, kept = all_gather(run, data), all_gather(run, kept)
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
                    W = all_sum(run, batch["mask"].sum().double()).float().clamp(min=1.0)
                    for micro in torch.arange(len(part)).split(args.micro_batch):
                        mb = take(batch, micro)
                        with run.autocast():
                            logp, _ = response_logprobs(model, *_inputs(mb), temperature=1.0)
                        loss = -(logp * mb["mask"]).sum() / W  # token-mean over the whole batch
                        bad |= ~torch.isfinite(loss)
                        loss.backward()
                        loss_sum = loss_sum + loss.detach().double()
                elif run.ddp:
                    all_sum(run, torch.zeros((), dtype=torch.float64, device=dev))  # join the weight's all-reduce
                ok, _ = apply_update(run, [(model, opt)], bad)
                skipped += not ok
                losses += [float(all_sum(run, loss_sum))] if ok else []
                if not ok and bad_in_a_row >= 2:
                    model.load_state_dict(policy)  # the checkpoint is the start of this round: resumable
                bad_in_a_row = guard(run, ok, bad_in_a_row, lambda: {}, what="SFT update")
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


# =====================================================================================================
# entry points
# =====================================================================================================
LOOPS = {"ppo": train_ppo, "grpo": train_grpo, "ei": train_ei}


def train(argv=None, reward_fn=None, prompts=None, eval_records=None, eval_fn=None):
    """
    Run RL in-process. argv: the command-line flags (a list). reward_fn(texts, records, responses) -> one dict per
    text {"correct", ["format", "answer", "reward"]} replaces the math grader (tests plug in trivial tasks);
    prompts / eval_records: lists of {"id", "question", "gold"} instead of loading --prompt-set / --eval-set;
    eval_fn: replaces evaluate.run_eval. Returns {"model", "step", "train", "eval"} (the records logged).
    """
    run = setup(argv, reward_fn, prompts, eval_records, eval_fn)
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
