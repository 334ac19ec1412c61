"""
Pretrain a GPT from scratch on a mixture of math corpora.

One CPU, the toy preset on the embedded synthetic three-format mixture (about 8 minutes on 2 quiet cores):
    python pretrain.py
One GPU, the paper's 150M model on a real mixture (hub ids in data/sources.py):
    python pretrain.py --preset 150m --mix tinygsm:1,omi1:1,omi2:1,finemath:1,algebraic-stack:1 --device cuda
Many GPUs (DDP; add --fsdp for the 1B model):
    torchrun --nproc_per_node=8 pretrain.py --preset 150m --mix ...
Resume an interrupted run exactly (same weights as an uninterrupted one, bitwise on the CPU):
    python pretrain.py --out-dir out/pretrain-toy --resume

Data order is a pure function of (seed, step): step s uses global sequences [s*G, (s+1)*G) of a seeded
per-epoch permutation of fixed-length chunks, and each rank reads its own slice of them. So resuming needs
only the step, and N ranks see exactly the sequences one process would.
"""
import math
import os
import time
from contextlib import nullcontext

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from common import ArgParser, UserError, main_guard, append_jsonl, atomic_write_json, check_out_dir, close_tracker, \
    cosine_lr, dist_env, merge_resumed_args, open_tracker, set_threads, setup_distributed, start_metrics
from model import GPT, GPTConfig, PRESETS, CheckpointError, estimate_mfu, load_checkpoint, save_checkpoint

from presets import PRETRAIN as TRAIN_PRESETS  # optimisation defaults per preset (model shapes: presets.MODEL)
from data.synthetic import add_synthetic_flags, synthetic_options

# flags that may differ on --resume; everything else comes from the checkpoint so the run continues as it was
RESUME_OVERRIDES = {"resume", "device", "threads", "stop_after", "eval_interval", "ckpt_interval", "max_iters",
                    "compile", "no_tqdm", "samples", "wandb", "wandb_project"}


def get_args(argv=None):
    from data.mixture import DEFAULT_MIX, DEFAULT_CACHE
    p = ArgParser(description="Pretrain a GPT from scratch on a mixture of math corpora. Flags left unset take "
                              "the --preset's value (presets.py).")
    p.add_argument("--preset", default="toy", choices=sorted(PRESETS),
                   help="model size and optimisation defaults; every flag below overrides them")
    p.add_argument("--mix", default=DEFAULT_MIX,
                   help="mixture spec 'source:copies,...' (a fraction subsamples); syn-* are the embedded "
                        "synthetic sources (syn-tinygsm, syn-omi1, syn-omi2, syn-finemath, and syn-arith, an "
                        "arithmetic drill of the prose's equations), 'name=path.jsonl:1' reads a local file in the "
                        "hub's columns")
    p.add_argument("--out-dir", default=None, help="where ckpt.pt, metrics.jsonl and config.json go "
                                                   "(default out/pretrain-<preset>)")
    p.add_argument("--data-dir", default=DEFAULT_CACHE, help="where tokenized sources and mixture manifests are "
                                                             "cached (python -m data.prepare builds the same ones)")
    p.add_argument("--max-docs", type=int, default=None, help="cap on documents per source (real sources)")
    p.add_argument("--unit", type=int, default=None,
                   help="documents in one copy of a synthetic source (default: data.mixture.DEFAULT_UNIT)")
    add_synthetic_flags(p)
    p.add_argument("--vocab-size", type=int, default=None, help="tokenizer vocabulary (cl100k prefix + EOT)")
    p.add_argument("--tokenizer", default=None,
                   help="a Hugging Face tokenizer instead of the cl100k prefix: a model folder with tokenizer.json "
                        "(or the file), e.g. the Llama-2 tokenizer the paper used; the vocab size follows from it")
    p.add_argument("--n-layer", type=int, default=None, help="override the preset's layer count")
    p.add_argument("--n-head", type=int, default=None, help="override the preset's head count")
    p.add_argument("--n-embd", type=int, default=None, help="override the preset's width")
    p.add_argument("--mlp-hidden", type=int, default=None,
                   help="SwiGLU hidden width (default: the preset's, 512 for the toy; 0 = 4 x n_embd, the paper's)")
    p.add_argument("--block-size", type=int, default=None, help="sequence length (context)")
    p.add_argument("--tie-embeddings", type=int, choices=[0, 1], default=None, help="1 ties input/output embeddings")
    p.add_argument("--batch-size", type=int, default=None,
                   help="sequences per micro-batch per process (default: the preset's, lowered under torchrun "
                        "until --total-batch-size splits evenly over the processes)")
    p.add_argument("--total-batch-size", type=int, default=None,
                   help="sequences per optimizer step over all processes (gradient accumulation fills the gap)")
    p.add_argument("--max-iters", type=int, default=None,
                   help="optimizer steps; 0 means one epoch over the mixture")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate")
    p.add_argument("--min-lr-ratio", type=float, default=0.1, help="cosine decays to this fraction of the peak")
    p.add_argument("--warmup-iters", type=int, default=None, help="linear warmup steps")
    p.add_argument("--weight-decay", type=float, default=0.1, help="AdamW weight decay (2-D weights)")
    p.add_argument("--beta1", type=float, default=0.9, help="AdamW beta1")
    p.add_argument("--beta2", type=float, default=0.95, help="AdamW beta2")
    p.add_argument("--grad-clip", type=float, default=1.0, help="clip the global gradient norm (0 = off)")
    p.add_argument("--eval-interval", type=int, default=None, help="steps between validation-loss evals")
    p.add_argument("--eval-iters", type=int, default=None, help="batches per source in each eval")
    p.add_argument("--ckpt-interval", type=int, default=None, help="steps between checkpoints (also at the end)")
    p.add_argument("--log-interval", type=int, default=10, help="steps between metrics.jsonl train records")
    p.add_argument("--resume", action="store_true", help="continue from <out-dir>/ckpt.pt exactly")
    p.add_argument("--stop-after", type=int, default=0,
                   help="stop (with a checkpoint) after this many steps in this invocation; 0 = run to the end")
    p.add_argument("--seed", type=int, default=1337, help="seed for init, data order and sampling")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "bf16-weights"],
                   help="bfloat16 = autocast; bf16-weights = bf16 activations end to end, weights cast to bf16 in "
                        "the forward, fp32 master weights and AdamW states (model.forward_dtype); auto = bfloat16 "
                        "on CUDA, float32 on the CPU")
    p.add_argument("--compile", type=int, choices=[0, 1], default=None, help="torch.compile (default: on for CUDA)")
    p.add_argument("--fsdp", action="store_true", help="shard the model with FSDP under torchrun (for 1b)")
    p.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0 = torch's default)")
    p.add_argument("--samples", type=int, default=2, help="samples per source printed at the end (0 = none)")
    p.add_argument("--no-tqdm", action="store_true", help="no progress bar (log lines instead)")
    p.add_argument("--wandb", action="store_true", help="also send every metrics.jsonl record to Weights & Biases "
                                                        "(needs `pip install wandb`; WANDB_MODE=offline works without "
                                                        "a network)")
    p.add_argument("--wandb-project", default="echo-chamber", help="the W&B project of --wandb")
    return p.parse_explicit(argv)


def resolve(args, world=1):
    """Fill preset defaults into every flag left unset, and check the combination makes sense."""
    batch_given = args.batch_size is not None
    for k, v in TRAIN_PRESETS[args.preset].items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if not batch_given and args.total_batch_size > 0 and args.total_batch_size % world == 0:
        # the preset's micro-batch is a memory budget, not a result: under torchrun take the largest size up to
        # it that splits the total batch evenly over the processes (toy, 2 processes: 8 = 2 x 4, no accumulation)
        per_rank = args.total_batch_size // world
        args.batch_size = max(d for d in range(1, min(args.batch_size, per_rank) + 1) if per_rank % d == 0)
    mcfg = dict(PRESETS[args.preset])
    if args.tokenizer is not None:  # the vocabulary is the tokenizer's; checkpoints save its full spec
        from data.tokenizer import get_tokenizer
        tok = get_tokenizer(args.tokenizer)
        if args.vocab_size not in (None, tok.vocab_size):
            raise UserError(f"--vocab-size {args.vocab_size} != the vocab of --tokenizer {args.tokenizer} "
                            f"({tok.vocab_size}): drop --vocab-size")
        args.vocab_size = tok.vocab_size
    for k in ("vocab_size", "n_layer", "n_head", "n_embd", "block_size", "mlp_hidden"):
        if getattr(args, k) is not None:
            mcfg[k] = getattr(args, k)
    if args.tie_embeddings is not None:
        mcfg["tie_embeddings"] = bool(args.tie_embeddings)
    args.model = mcfg
    args.vocab_size, args.block_size = mcfg["vocab_size"], mcfg["block_size"]
    for name in ("batch_size", "total_batch_size", "block_size", "eval_iters"):
        if getattr(args, name) <= 0:
            raise UserError(f"--{name.replace('_', '-')} must be positive")
    for k in ("vocab_size", "n_layer", "n_head", "n_embd"):
        if mcfg[k] <= 0:
            raise UserError(f"--{k.replace('_', '-')} must be positive, got {mcfg[k]}")
    if mcfg.get("mlp_hidden", 0) < 0:
        raise UserError(f"--mlp-hidden must be >= 0 (0 = 4 x n_embd), got {mcfg['mlp_hidden']}")
    if mcfg["n_embd"] % mcfg["n_head"] or (mcfg["n_embd"] // mcfg["n_head"]) % 2:
        raise UserError(f"--n-embd {mcfg['n_embd']} must split into --n-head {mcfg['n_head']} heads of even size")
    if args.max_iters < 0 or args.warmup_iters < 0:
        raise UserError("--max-iters and --warmup-iters must be >= 0")
    return args


def lr_at(step, args):
    """Linear warmup, then cosine from the peak down to min_lr_ratio * peak at max_iters."""
    return cosine_lr(step, args.max_iters, args.lr, args.warmup_iters, args.min_lr_ratio)


class Batches:
    """Step s, rank r, micro m -> a (B, T+1) token batch; a pure function of (seed, s, r, m).

    The train stream (a data.mixture.TokenStream over memmapped unit files) is cut into n_chunks sequences of T
    tokens (each read with the next token as its last target); epoch e visits them in the order of a permutation
    seeded by (seed, e), kept as int32 (100 MB at the paper's 52B tokens / 2048)."""

    def __init__(self, tokens, block_size, seed):
        self.tokens, self.T, self.seed = tokens, block_size, seed
        self.n_chunks = (len(tokens) - 1) // block_size
        if self.n_chunks < 1:
            raise UserError(f"the mixture has {len(tokens)} tokens: fewer than one sequence of {block_size}")
        self._perm_epoch, self._perm = -1, None

    def chunk(self, j):
        epoch, i = divmod(j, self.n_chunks)
        if epoch != self._perm_epoch:
            perm = np.random.default_rng([self.seed, epoch]).permutation(self.n_chunks)
            self._perm = perm.astype(np.int32) if self.n_chunks < 2 ** 31 else perm
            self._perm_epoch = epoch
        start = int(self._perm[i]) * self.T
        return self.tokens[start:start + self.T + 1]

    def get(self, first, count):
        return torch.from_numpy(np.stack([self.chunk(j) for j in range(first, first + count)]).astype(np.int64))


@torch.no_grad()
def eval_losses(model, val, args, device, ctx):
    """Mean loss on the first eval_iters batches of each source's held-out stream (the same ones every time)."""
    model.eval()
    out = {}
    for name, toks in val.items():
        n = (len(toks) - 1) // args.block_size
        if n < 1:
            continue
        losses = []
        for b in range(min(args.eval_iters, math.ceil(n / args.batch_size))):
            idx = range(b * args.batch_size, min(n, (b + 1) * args.batch_size))
            x = torch.from_numpy(np.stack([toks[j * args.block_size: j * args.block_size + args.block_size + 1]
                                           for j in idx]).astype(np.int64)).to(device)
            with ctx:
                _, loss = model(x[:, :-1], x[:, 1:])
            losses.append(loss.item())
        out[name] = sum(losses) / len(losses)
    model.train()
    return out


def show_samples(model, tok, val, args, device):
    """A few greedy continuations per source, so a person sees what the model writes."""
    from data import prompt_text
    prompts, names = [], []
    for name, toks in val.items():
        ids = np.asarray(toks[: 20 * args.block_size]).tolist()
        docs, cur = [], []
        for t in ids:
            if t == tok.eot_id:
                docs.append(cur)
                cur = []
            else:
                cur.append(t)
        for d in [d for d in docs if d][: args.samples]:
            q, sep, _ = tok.decode(d).partition("\n\n")
            # a question prompts its solution; answer-free prose (no blank line) is prompted by its start
            p = tok.encode(prompt_text(q)) if sep else d[:16]
            prompts.append(p[: args.block_size // 2])
            names.append(name)
    model.eval()
    outs = model.generate(prompts, args.block_size // 2, temperature=0, eos_id=tok.eot_id)
    model.train()
    for name, p, new in zip(names, prompts, outs):
        print(f"\n==== {name} (greedy sample)")
        print(tok.decode(p) + tok.decode([t for t in new if t != tok.eot_id]))


@main_guard
def main(argv=None):
    args, explicit = get_args(argv)
    # torchrun sets RANK/WORLD_SIZE; a plain run is rank 0 of 1 (the process group is joined below)
    ddp, rank, world, _ = dist_env()
    if args.out_dir is None:
        args.out_dir = os.path.join("out", f"pretrain-{args.preset}")
    if args.resume:
        ck_path = os.path.join(args.out_dir, "ckpt.pt")
        try:
            resume_ck = load_checkpoint(ck_path)
        except CheckpointError as e:
            raise UserError(f"cannot resume: {e}")
        args = merge_resumed_args(args, resume_ck["args"], explicit, overrides=RESUME_OVERRIDES)
    else:
        args = resolve(args, world)
    # from the flags after a resume too: a checkpoint from before these options has neither (the defaults apply)
    args.syn = synthetic_options(args.syn_steps, args.syn_hard_share)
    if args.total_batch_size % (args.batch_size * world):
        raise UserError(f"--total-batch-size {args.total_batch_size} is not a multiple of --batch-size "
                        f"{args.batch_size} x {world} processes: pick sizes that divide")
    grad_accum = args.total_batch_size // (args.batch_size * world)
    master = rank == 0
    device, ddp, rank, world = setup_distributed(args.device)
    set_threads(args.threads)
    device_type = "cuda" if device.startswith("cuda") else "cpu"
    dtype = args.dtype if args.dtype != "auto" else ("bfloat16" if device_type == "cuda" else "float32")
    from model import forward_dtype
    ctx = (torch.autocast(device_type, dtype=torch.bfloat16) if dtype == "bfloat16"
           else forward_dtype(torch.bfloat16) if dtype == "bf16-weights" else nullcontext())
    use_compile = args.compile if args.compile is not None else device_type == "cuda"
    if master:
        check_out_dir(args.out_dir)

    # ---- data: build (or reuse) the tokenized mixture before any collective. The first process on each machine
    # (LOCAL_RANK 0) builds it with every core (data.shards' worker pool); the others wait for its manifest file on
    # the filesystem. A real build takes hours; inside a collective (a broadcast) the waiting ranks would run into the
    # process group's timeout, and polling a file costs nothing. On a shared filesystem two machines may build the
    # same units at once: harmless (each unit is written atomically, with the same bytes), only wasted work, so
    # prepare big mixtures first with python -m data.prepare (see its --shard-index for SLURM arrays).
    from data import get_tokenizer, open_mixture, prepare_mixture
    from data.mixture import mixture_path, wait_for_mixture
    tok_spec = args.tokenizer or args.vocab_size
    data_args = dict(seed=args.seed, max_docs=args.max_docs, unit=args.unit, syn=args.syn)
    if dist_env()[3] == 0:
        mix_dir = prepare_mixture(args.mix, tok_spec, args.data_dir, quiet=not master, progress=not args.no_tqdm,
                                  **data_args)
    else:
        mix_dir = wait_for_mixture(mixture_path(args.mix, tok_spec, args.data_dir, **data_args),
                                   say=lambda m: print(f"rank {rank}: {m}", flush=True))
    mix = open_mixture(mix_dir)
    tok = get_tokenizer(mix["meta"]["tokenizer"])
    batches = Batches(mix["train"], args.block_size, args.seed)
    if args.max_iters == 0:  # one epoch over the mixture, as in the paper
        args.max_iters = max(1, batches.n_chunks // args.total_batch_size)
    if args.block_size > args.model["block_size"]:
        raise UserError(f"--block-size {args.block_size} is above the model's context {args.model['block_size']}")

    # ---- model and optimizer
    torch.manual_seed(args.seed)
    model = GPT(GPTConfig(**args.model), verbose=master).to(device)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(args.beta1, args.beta2), fused=device_type == "cuda")
    step = 0
    if args.resume:
        model.load_state_dict(resume_ck["model"])
        opt.load_state_dict(resume_ck["optimizer"])
        step = resume_ck["step"]
        torch.set_rng_state(resume_ck["rng"]["torch"])
        if master:
            print(f"resuming from {args.out_dir}/ckpt.pt at step {step}")
    raw_model = model
    if use_compile:
        model = torch.compile(model)
    if ddp:
        if args.fsdp:
            from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
            model = FSDP(model, use_orig_params=True, device_id=torch.device(device) if device_type == "cuda" else None)
        else:
            from torch.nn.parallel import DistributedDataParallel as DDP
            model = DDP(model, device_ids=[torch.device(device).index] if device_type == "cuda" else None)

    config_record = {"type": "config", **{k: v for k, v in vars(args).items()}, "world_size": world,
                     "grad_accum": grad_accum, "mix_dir": mix_dir, "mix_meta": mix["meta"]}
    if master:
        atomic_write_json(os.path.join(args.out_dir, "config.json"), config_record)
        start_metrics(os.path.join(args.out_dir, "metrics.jsonl"), step, args.resume)
        open_tracker(args.wandb, os.path.join(args.out_dir, "metrics.jsonl"), config_record, args.wandb_project)
        print(f"{batches.n_chunks} sequences of {args.block_size} in the mixture; {args.max_iters} steps of "
              f"{args.total_batch_size} x {args.block_size} tokens = {args.max_iters * args.total_batch_size / batches.n_chunks:.2f} epochs")
    metrics_path = os.path.join(args.out_dir, "metrics.jsonl")

    def state_dict_for_save():
        if ddp and args.fsdp:
            from torch.distributed.fsdp import FullyShardedDataParallel as FSDP, StateDictType, FullStateDictConfig
            with FSDP.state_dict_type(model, StateDictType.FULL_STATE_DICT,
                                      FullStateDictConfig(offload_to_cpu=True, rank0_only=True)):
                return model.state_dict(), FSDP.optim_state_dict(model, opt)
        return raw_model.state_dict(), opt.state_dict()

    def checkpoint(step):
        sd, osd = state_dict_for_save()  # every rank joins the FSDP gather; rank 0 writes
        if not master:
            return
        save_checkpoint(os.path.join(args.out_dir, "ckpt.pt"), {
            "model": sd, "optimizer": osd, "config": dict(args.model), "tokenizer": tok.spec,
            "step": step, "args": {k: v for k, v in vars(args).items()}, "kind": "pretrain",
            "rng": {"torch": torch.get_rng_state()}, "data": {"mix_dir": mix_dir, "seed": args.seed},
        })

    # ---- the training loop
    tokens_per_step = args.total_batch_size * args.block_size
    stop_at = args.max_iters
    if args.stop_after:
        stop_at = min(stop_at, step + args.stop_after)
    bar = tqdm(total=args.max_iters, initial=step, disable=not master or args.no_tqdm, desc="pretrain",
               dynamic_ncols=True)
    t_last, steps_since = time.time(), 0
    model.train()
    while step < stop_at:
        if args.eval_interval and step % args.eval_interval == 0 and master and not (ddp and args.fsdp):
            val = eval_losses(raw_model, mix["val"], args, device, ctx)
            if val:
                rec = {"type": "eval", "step": step, "val_loss": val, "val_loss_mean": sum(val.values()) / len(val)}
                append_jsonl(metrics_path, rec)
                bar.write(f"step {step}: val loss " + ", ".join(f"{k} {v:.3f}" for k, v in val.items()))
        lr = lr_at(step, args)
        for g in opt.param_groups:
            g["lr"] = lr
        first = step * args.total_batch_size + rank * (args.total_batch_size // world)
        loss_sum = 0.0
        for micro in range(grad_accum):
            x = batches.get(first + micro * args.batch_size, args.batch_size).to(device, non_blocking=True)
            # only sync gradients across ranks on the last micro-step
            sync = (not ddp) or micro == grad_accum - 1
            with (nullcontext() if sync else model.no_sync()), ctx:
                _, loss = model(x[:, :-1], x[:, 1:])
                loss = loss / grad_accum
            loss.backward()
            loss_sum += loss.item()
        gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip) if args.grad_clip > 0 else None
        if not math.isfinite(loss_sum):
            opt.zero_grad(set_to_none=True)
            raise UserError(f"loss is {loss_sum} at step {step}: lower --lr; the last checkpoint is intact")
        opt.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        steps_since += 1
        if ddp:  # the logged loss is the mean over ranks
            t = torch.tensor([loss_sum], device=device)
            dist.all_reduce(t)
            loss_sum = t.item() / world
        bar.update(1)
        if step % args.log_interval == 0 or step == stop_at:
            dt = time.time() - t_last
            tps = tokens_per_step * steps_since / dt
            mfu = estimate_mfu(raw_model.config, tps, args.block_size) if device_type == "cuda" else None
            t_last, steps_since = time.time(), 0
            if master:
                rec = {"type": "train", "step": step, "loss": loss_sum, "lr": lr, "tokens": step * tokens_per_step,
                       "tok_per_s": tps, "mfu": mfu, "grad_norm": None if gnorm is None else float(gnorm)}
                if device_type == "cuda":
                    rec["peak_mem_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
                append_jsonl(metrics_path, rec)
                bar.set_postfix(loss=f"{loss_sum:.3f}", tok_s=f"{tps:,.0f}", **({"mfu": f"{mfu:.1%}"} if mfu else {}))
        if step % args.ckpt_interval == 0 or step == stop_at:
            checkpoint(step)
    bar.close()
    if step >= args.max_iters and master and not (ddp and args.fsdp):
        val = eval_losses(raw_model, mix["val"], args, device, ctx)
        if val:
            append_jsonl(metrics_path, {"type": "eval", "step": step, "val_loss": val,
                                        "val_loss_mean": sum(val.values()) / len(val)})
            print("final val loss: " + ", ".join(f"{k} {v:.3f}" for k, v in val.items()))
        if args.samples:
            show_samples(raw_model, tok, mix["val"], args, device)
    if master:
        print(f"checkpoint: {os.path.join(args.out_dir, 'ckpt.pt')} (step {step}/{args.max_iters})")
        close_tracker(metrics_path)
    if ddp:
        dist.barrier()  # rank 0 may still be in its final eval: tearing gloo down under it can abort the peer
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
