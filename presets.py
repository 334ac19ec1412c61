"""
Every preset in one place: the model shapes, pretraining's optimisation, RL's and Expert Iteration's settings,
for the toy (a 2-core CPU, minutes) and the paper's two sizes (150m, 1b). A script's flag left unset takes the
value of its --preset here; the experiments that chose the toy's numbers are in docs/LOG.md.

    python pretrain.py --preset toy      python rl.py --preset 150m --algo ppo      python rl.py --algo ei

rl.py's flags (rl_args) and how they fill in from these (resolve_rl) live here too, next to the values.
"""
import os

from common import ArgParser, UserError

# ---- model shapes (model.GPTConfig). The paper's sizes: OLMo-1 150M (d 768, 12 layers, untied) and 1B (d 2048,
# 16 layers, tied). The toy: 4 layers, d 144, SwiGLU 384, vocab 2049, context 320 (1.59M parameters): 1.5x the tokens/s
# of ../shared/TOY.md's 2.56M model, so it is pretrained past copying numbers within the main job's budget (docs/LOG.md).
MODEL = {
    "toy": dict(vocab_size=2049, n_layer=4, n_head=6, n_embd=144, block_size=320, tie_embeddings=False,
                mlp_hidden=384),
    "150m": dict(vocab_size=32768, n_layer=12, n_head=12, n_embd=768, block_size=2048, tie_embeddings=False),
    "1b": dict(vocab_size=32768, n_layer=16, n_head=16, n_embd=2048, block_size=2048, tie_embeddings=True),
}

# ---- pretraining (pretrain.py). 150m/1b: the paper (AdamW 1e-3, betas 0.9/0.95, wd 0.1, 5000 warmup steps,
# ~1M tokens a step = 512 x 2048, cosine to 10%). batch_size is per process; None = as large as the total batch
# allows on the world size (pretrain.py works it out). toy: 8 x 320 tokens x 1650 steps (docs/LOG.md).
PRETRAIN = {
    "toy": dict(batch_size=8, total_batch_size=8, lr=2.5e-3, warmup_iters=50, max_iters=1650,
                eval_interval=275, eval_iters=4, ckpt_interval=275),
    "150m": dict(batch_size=16, total_batch_size=512, lr=1e-3, warmup_iters=5000, max_iters=0,
                 eval_interval=500, eval_iters=20, ckpt_interval=1000),
    "1b": dict(batch_size=8, total_batch_size=512, lr=1e-3, warmup_iters=5000, max_iters=0,
               eval_interval=500, eval_iters=20, ckpt_interval=1000),
}

# ---- RL (rl.py; PPO and GRPO). 150m/1b: the paper's PPO (64 prompts x 8 samples at T 0.7, 8 minibatches of 64
# per rollout, actor lr 1e-6, critic 7e-6, cosine to 10% with 3% warmup, 10 passes over GSM8K train, at most
# 1024 new tokens, GAE lambda 0.95). toy: ../shared/TOY.md point 4 (16 x 8, T 0.7, beta 0, one update per
# rollout) at a constant lr (a 30-step run leaves no room for a schedule); max_new_tokens 256 because the longest
# correct toy answer runs ~200 tokens and a cut response gets reward 0, so the cap must not decide the race between
# formats.
# The toy's PPO uses GAE lambda 1.0: at 0.95 the outcome never reached the opening tokens and pass@1 fell at one of
# three seeds; at 1.0 it rose at all three, as GRPO's does (docs/LOG.md, issue 21).
RL = {
    "toy": dict(algo="grpo", prompt_set="synthetic", eval_set="synthetic", prompts=1024, prompts_per_step=16,
                samples_per_prompt=8, temperature=0.7, top_p=1.0, max_new_tokens=256, lr=1.5e-4, critic_lr=5e-4,
                gae_lambda=1.0, kl=0.0, ppo_epochs=1, minibatches=1, micro_batch=32, gen_batch=128, max_steps=30,
                passes=None,
                warmup_ratio=0.0, min_lr_ratio=1.0, eval_interval="log", eval_n=200, eval_samples=4, eval_sampled_n=100,
                eval_batch=128,
                sft_epochs=2, sft_batch=32),
    "150m": dict(algo="ppo", prompt_set="gsm8k", eval_set="gsm8k", prompts=0, prompts_per_step=64,
                 samples_per_prompt=8, temperature=0.7, top_p=1.0, max_new_tokens=1024, lr=1e-6, critic_lr=7e-6,
                 gae_lambda=0.95, kl=1e-3, ppo_epochs=1, minibatches=8, micro_batch=16, gen_batch=512, max_steps=0,
                 passes=10,
                 warmup_ratio=0.03, min_lr_ratio=0.1, eval_interval=20, eval_n=0, eval_samples=0, eval_sampled_n=0,
                 eval_batch=256,
                 sft_epochs=2, sft_batch=256),
    "1b": dict(algo="ppo", prompt_set="gsm8k", eval_set="gsm8k", prompts=0, prompts_per_step=64,
               samples_per_prompt=8, temperature=0.7, top_p=1.0, max_new_tokens=1024, lr=1e-6, critic_lr=7e-6,
               gae_lambda=0.95, kl=1e-3, ppo_epochs=1, minibatches=8, micro_batch=4, gen_batch=128, max_steps=0,
               passes=10,
               warmup_ratio=0.03, min_lr_ratio=0.1, eval_interval=20, eval_n=0, eval_samples=0, eval_sampled_n=0,
               eval_batch=128,
               sft_epochs=2, sft_batch=256),
}

# ---- Expert Iteration (rl.py --algo ei), on top of RL[preset]: k samples per prompt at T 1.0, top-p 0.95 over
# all prompts each round; --max-steps counts rounds. The paper: k 64, SFT lr 1e-4, batch 256, 2 epochs, 3 rounds
# (150m) or 2 (1b). toy: k 8 over 256 prompts (one round samples 2k responses, about a minute on 2 cores).
EI = {
    "toy": dict(samples_per_prompt=8, temperature=1.0, top_p=0.95, lr=1e-4, prompts=256, max_steps=3,
                eval_interval=1, warmup_ratio=0.0, min_lr_ratio=1.0),
    "150m": dict(samples_per_prompt=64, temperature=1.0, top_p=0.95, lr=1e-4, max_steps=3, eval_interval=1,
                 warmup_ratio=0.03, min_lr_ratio=0.1),
    "1b": dict(samples_per_prompt=64, temperature=1.0, top_p=0.95, lr=1e-4, max_steps=2, eval_interval=1,
               warmup_ratio=0.03, min_lr_ratio=0.1),
}


# ---- rl.py's flags. Every flag left unset (None) takes its --preset's value: RL[preset], with EI[preset] on top for
# --algo ei. On --resume every flag comes from the checkpoint so the run continues as it was, except RL_RUNTIME
# flags, always this invocation's, and RL_RESUME_OVERRIDES, this invocation's when given (a new --max-steps moves
# the lr schedule).
ALGOS = ("ppo", "grpo", "ei")
AGG_MODES = ("token-mean", "seq-mean-token-mean")
KL_KINDS = ("k1", "k2", "k3")
RL_RUNTIME = {"resume", "device", "threads", "stop_after", "no_tqdm", "out_dir", "wandb", "wandb_project"}
RL_RESUME_OVERRIDES = {"eval_interval", "eval_batch", "max_steps"}


def rl_args(argv=None):
    """rl.py's flags -> (args, the set of flags given), every preset-backed one None unless given."""
    p = ArgParser(description="RL post-training (PPO, GRPO, Expert Iteration) of a pretrained checkpoint. With no "
                              "flags: the toy echo chamber, GRPO from out/pretrain-toy/ckpt.pt on the synthetic RL "
                              "prompts, on a CPU in minutes (GRPO: no critic, the cheapest step, and it shows the "
                              "collapse in its 30 steps). Flags left unset take the --preset's value (presets.py).")
    a = p.add_argument
    a("--algo", default=None, choices=ALGOS, help="ppo | grpo | ei (default: grpo for toy, ppo for 150m/1b)")
    a("--preset", default="toy", choices=sorted(RL), help="defaults for every unset flag (presets.py)")
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
    a("--gae-lambda", type=float, default=None, help="PPO GAE lambda (toy 1.0: at 0.95 the 0/1 outcome reaches only "
                                                      "~20 tokens back and never the opening tokens that choose the "
                                                      "format, docs/LOG.md; 150m/1b 0.95, the paper's)")
    a("--critic-warmup-steps", type=int, default=0,
      help="PPO: the first this many steps update the critic only, the actor frozen (OpenRLHF's freezing_actor_steps): "
           "a fresh value head otherwise hands the actor noise for advantages; they count in --max-steps")
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
    a("--eval-sampled-n", type=int, default=None, help="the sampled evals use the first this many of the eval "
                                                       "problems (0 = all of them; sampling costs n times greedy)")
    a("--eval-interval", default=None, help="'log': evals at steps 0, 1, 2, 4, 8, ... and the last (the early "
                                           "collapse, on the paper's log x-axis); N: at 0, every N steps and the "
                                           "last; 0: none")
    a("--eval-batch", type=int, default=None, help="sequences generated at once in evals")
    a("--ckpt-interval", default="log", help="'log': snapshots at steps 1, 2, 4, 8, ...; N: every N steps "
                                             "(both plus the last; ckpt.pt is rewritten with each)")
    a("--resume", action="store_true", help="continue exactly from <out-dir>/ckpt.pt")
    a("--stop-after", type=int, default=0, help="exit cleanly after this many steps in this invocation (0 = off)")
    a("--seed", type=int, default=1337, help="seed of prompt order, sampling, shuffles and the value head")
    a("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    a("--threads", type=int, default=0, help="CPU threads for torch (0 = torch's default)")
    a("--no-tqdm", action="store_true", help="no progress bar")
    a("--wandb", action="store_true", help="also send every metrics.jsonl record to Weights & Biases (needs "
                                           "`pip install wandb`; WANDB_MODE=offline works without a network)")
    a("--wandb-project", default="echo-chamber", help="the W&B project of --wandb")
    return p.parse_explicit(argv)


def resolve_rl(args):
    """Fill preset defaults into every flag left unset, then check the combination."""
    if args.algo is None:
        args.algo = RL[args.preset]["algo"]
    defaults = dict(RL[args.preset], **(EI[args.preset] if args.algo == "ei" else {}))
    for k, v in defaults.items():
        if k != "algo" and getattr(args, k) is None:
            setattr(args, k, v)
    if args.kl_estimator is None:
        args.kl_estimator = "k1" if args.algo == "ppo" else "k3"
    if args.ckpt is None:
        args.ckpt = os.path.join("out", f"pretrain-{args.preset}", "ckpt.pt")
    if args.out_dir is None:
        suffix = "" if args.algo == RL[args.preset]["algo"] else f"-{args.algo}"
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
    if str(args.eval_interval) != "log":
        if not str(args.eval_interval).isdigit():
            raise UserError(f"--eval-interval must be 'log' or an integer >= 0, got {args.eval_interval!r}")
        args.eval_interval = int(args.eval_interval)
    if min(args.max_steps, args.prompts, args.eval_n, args.eval_samples, args.eval_sampled_n,
           args.critic_warmup_steps) < 0:
        raise UserError("--max-steps, --prompts, --eval-n, --eval-samples, --eval-sampled-n, --critic-warmup-steps "
                        "must be >= 0")
    return args
