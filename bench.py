"""
Speed and memory of this codebase against a reference, side by side in one run, on whatever it runs on.

    python bench.py --quick --threads 2          # a 2-core CPU, under two minutes
    python bench.py                              # the CPU, more repeats
    python bench.py --device cuda --preset 150m  # a GPU: adds the 150m preset's MFU (bf16, compile, flash)
    python bench.py --smoke                      # tiny shapes, seconds: checks that every section runs
    python bench.py --sections data              # data.prepare: tokens/s at 1 and 2 workers, peak memory (opt-in)
    python bench.py --sections toyshape          # the toy preset's pretraining tokens/s vs the old toy shape (opt-in)

What it measures (each against a reference measured in the same process, runs alternated after warm-up):
- training tokens/s of model.py vs transformers' OlmoForCausalLM with the same config and weights (export.py's
  conversion), same batch, dtype and optimizer: forward, cross-entropy, backward, AdamW step
- on CUDA, the MFU of the 150m preset at its paper batch shape (512 x 2048 per step; bf16, torch.compile,
  flash attention), with its peak memory
- generation new tokens/s of model.generate vs transformers' generate (its KV cache), greedy, 128 new tokens,
  no end-of-text, at batch 1, 8 and 64 (8 prompts x 8 samples), with the outputs compared token by token;
  at batch 64 also a ceiling: ours with every decoding step's attention skipped (what the rest of a step costs).
  On CUDA instead (bench_generate_static): bf16, 256 new tokens, batch 512, 64 and 1; ours static (CUDA graphs)
  and dynamic vs transformers' static cache + torch.compile; ms/step, capture time, host syncs per 100 steps
- sandbox grading programs/s on rendered tinygsm outputs vs the paper's in-process exec of the same programs
- one RL step of the toy preset (rl.py's own phase timings: generation / reward / log-probs / update)
Memory: the peak growth above the level at the start of each measurement (CPU: resident set size, via
/proc/self/clear_refs; CUDA: torch.cuda.max_memory_allocated), so ours and the reference compare fairly.
The last line of stdout is one JSON object with every figure (also --json-out FILE). Speed is noisy on a
shared machine: read ratios from one run, not absolute numbers across runs.
"""
import contextlib
import ctypes
import io
import json
import os
import platform
import re
import resource
import shutil
import statistics
import sys
import tempfile
import time

import torch
import torch.nn.functional as F

from common import ArgParser, UserError, main_guard, pick_device, set_threads
from model import GPT, GPTConfig, PRESETS, estimate_mfu, save_checkpoint

GEN_BATCHES = (1, 8, 64)
# --mfu-attention: torch.nn.attention.SDPBackend member names (looked up only on CUDA); auto = every backend
SDPA_BACKENDS = {"flash": ["FLASH_ATTENTION"], "cudnn": ["CUDNN_ATTENTION"], "efficient": ["EFFICIENT_ATTENTION"],
                 "auto": ["FLASH_ATTENTION", "CUDNN_ATTENTION", "EFFICIENT_ATTENTION", "MATH"]}


def get_args(argv=None):
    p = ArgParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0 = torch's default)")
    p.add_argument("--quick", action="store_true", help="fewer repeats and smaller RL/sandbox batches (< 2 min on 2 cores)")
    p.add_argument("--smoke", action="store_true", help="tiny shapes, no meaningful timing: checks that everything runs")
    p.add_argument("--preset", default="toy", choices=sorted(PRESETS), help="model config of the train/gen sections")
    p.add_argument("--batch-size", type=int, default=0, help="training batch (default: 16 on the CPU, 8 on CUDA)")
    p.add_argument("--seq-len", type=int, default=0, help="training sequence length (default: the preset's context)")
    p.add_argument("--mfu-preset", default="150m", choices=["150m", "1b"], help="the paper preset the CUDA MFU "
                                                                                "section trains (bf16, compile, flash)")
    p.add_argument("--mfu-micro", type=int, default=0, help="micro-batch of the MFU section (default: 16 for 150m, "
                                                            "8 for 1b; accumulation fills the paper's 512 sequences)")
    p.add_argument("--mfu-attention", default="flash", choices=sorted(SDPA_BACKENDS),
                   help="SDPA backend of the MFU section: flash (the default), cudnn, efficient, or auto (SDPA picks)")
    p.add_argument("--mfu-compile-mode", default="default", choices=["default", "max-autotune-no-cudagraphs"],
                   help="torch.compile mode of the MFU section (max-autotune searches matmul configs: slow to compile)")
    p.add_argument("--rl-ckpt", default=None, help="checkpoint for the RL step (default: out/pretrain-toy/ckpt.pt "
                                                   "when it exists, else random toy weights)")
    p.add_argument("--sections", default="train,mfu,gen,sandbox,rl",
                   help="comma-separated subset to run: train, mfu, gen, sandbox, rl; opt-in: data, toyshape")
    p.add_argument("--profile", action="store_true", help="print torch.profiler's top ops for our train step and "
                                                          "for both generators at batch 64; on CUDA also the GPU "
                                                          "kernels of the compiled MFU step")
    p.add_argument("--json-out", default=None, help="also write the JSON object to this file")
    args = p.parse_args(argv)
    if args.mfu_micro < 0:
        raise UserError(f"--mfu-micro must be >= 0, got {args.mfu_micro}")
    args.sections = set(args.sections.split(","))
    bad = args.sections - {"train", "mfu", "gen", "sandbox", "rl", "data", "toyshape"}
    if bad:
        raise UserError(f"unknown --sections {sorted(bad)}")
    return args


# ---------------------------------------------------------------- memory and time
_libc = None


def _trim():
    """Hand freed heap pages back to the OS so the next measurement starts from what is really in use."""
    global _libc
    try:
        _libc = _libc or ctypes.CDLL("libc.so.6")
        _libc.malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _status_mb(field):
    try:
        with open("/proc/self/status") as f:
            m = re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.M)
        return int(m.group(1)) / 1024 if m else None
    except OSError:
        return None


class PeakMemory:
    """Peak memory growth (MB) inside the block: CUDA allocator peak, or the CPU's resident set (Linux: the
    high-water mark is reset through /proc/self/clear_refs; elsewhere ru_maxrss, which never goes down)."""

    def __init__(self, device):
        self.cuda = str(device).startswith("cuda")
        self.mb = None

    def __enter__(self):
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.start = torch.cuda.memory_allocated()
        else:
            _trim()
            try:
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")  # resets VmHWM to the current RSS
                self.start = _status_mb("VmRSS")
            except OSError:
                self.start = None
            if self.start is None:
                self.start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        return self

    def __exit__(self, *exc):
        if self.cuda:
            torch.cuda.synchronize()
            self.mb = (torch.cuda.max_memory_allocated() - self.start) / 2**20
        else:
            peak = _status_mb("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            self.mb = max(0.0, peak - self.start)


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            m = re.search(r"^model name\s*:\s*(.+)$", f.read(), re.M)
        return m.group(1).strip() if m else platform.machine()
    except OSError:
        return platform.processor() or platform.machine()


def sync(device):
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device):
    sync(device)
    t = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - t, out


def ratio(a, b):
    return round(a / b, 3) if a and b else None


def r1(x):
    return None if x is None else round(x, 1)


# ---------------------------------------------------------------- the two models
def build_pair(cfg, device, dtype, seed=0):
    """Our GPT and transformers' OlmoForCausalLM with identical weights (export.hf_model), both on device."""
    import export
    torch.manual_seed(seed)
    ours = GPT(cfg, verbose=False).to(device=device, dtype=dtype)
    theirs = export.hf_model(ours)
    return ours, theirs


def hf_logits(m, idx):
    return m(input_ids=idx, use_cache=False).logits


def our_logits(m, idx):
    return m(idx)[0]


# ---------------------------------------------------------------- training throughput
def _train_steps(models, x, y, cuda):
    """{name: (model, logits_fn)} -> {name: one training step (forward, cross-entropy, backward, AdamW)}."""
    ctx = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if cuda else contextlib.nullcontext
    runs = {}
    for name, (model, logits_fn) in models.items():
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1, fused=cuda)

        def step(model=model, logits_fn=logits_fn, opt=opt):
            with ctx():
                logits = logits_fn(model, x)
            loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), y.reshape(-1))
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            return loss.detach()
        runs[name] = step
    return runs


def _race(runs, tokens_per_call, device, args):
    """Median tokens/s and peak MB of each run, measured in alternating order after warm-up."""
    warm, rounds, per = (1, 1, 1) if args.smoke else (1, 3, 1) if args.quick else (2, 5, 3)
    for _ in range(warm):
        for fn in runs.values():
            fn()
    rates, mem = {k: [] for k in runs}, {k: 0.0 for k in runs}
    for r in range(rounds):
        order = list(runs) if r % 2 == 0 else list(runs)[::-1]  # alternate who goes first
        for k in order:
            with PeakMemory(device) as pm:
                dt, _ = timed(lambda: [runs[k]() for _ in range(per)], device)
            rates[k].append(per * tokens_per_call / dt)
            mem[k] = max(mem[k], pm.mb)
    return {k: statistics.median(v) for k, v in rates.items()}, mem


def bench_train(args, cfg, device, dtype):
    B = args.batch_size or (2 if args.smoke else 8 if args.quick or str(device).startswith("cuda") else 16)
    T = args.seq_len or (32 if args.smoke else cfg.block_size)
    if T > cfg.block_size:
        raise UserError(f"--seq-len {T} is above the preset's context {cfg.block_size}")
    ours, theirs = build_pair(cfg, device, dtype)
    cuda = str(device).startswith("cuda")
    g = torch.Generator().manual_seed(0)
    data = torch.randint(0, cfg.vocab_size, (B, T + 1), generator=g).to(device)
    x, y = data[:, :-1], data[:, 1:]
    runs = _train_steps({"ours": (ours, our_logits), "hf": (theirs, hf_logits)}, x, y, cuda)
    # same weights, same batch: the first losses agree (a cheap check that we time the same computation)
    l0 = {k: float(fn()) for k, fn in runs.items()}
    tps, mem = _race(runs, B * T, device, args)
    del ours, theirs
    return {"train_tokens_per_s_ours": r1(tps["ours"]), "train_tokens_per_s_hf": r1(tps["hf"]),
            "train_ratio_vs_hf": ratio(tps["ours"], tps["hf"]),
            "train_peak_mb_ours": r1(mem["ours"]), "train_peak_mb_hf": r1(mem["hf"]),
            "train_first_loss_diff": abs(l0["ours"] - l0["hf"]), "train_batch": B, "train_seq_len": T,
            "train_dtype": "bf16-autocast" if cuda else str(dtype).removeprefix("torch.")}


# The toy shape before issue 20 (TOY.md's 2.56M model), the reference of the toyshape section.
OLD_TOY = dict(vocab_size=2049, n_layer=4, n_head=6, n_embd=192, block_size=320, tie_embeddings=False, mlp_hidden=512)


def bench_toy_shape(args, device):
    """Pretraining tokens/s of the toy preset against the previous toy shape (d 192, SwiGLU 512), both model.py, at
    the toy's pretraining batch (8 x 320, fp32): the measurement behind the toy's choice of d 144 (docs/LOG.md)."""
    cfgs = {"toy": GPTConfig(**PRESETS["toy"]), "old": GPTConfig(**OLD_TOY)}
    if args.smoke:
        cfgs = {k: GPTConfig(**{**c.__dict__, "n_layer": 1, "block_size": 32}) for k, c in cfgs.items()}
    B, T = (2 if args.smoke else 8), cfgs["toy"].block_size
    torch.manual_seed(0)
    models = {k: (GPT(c).to(device), our_logits) for k, c in cfgs.items()}
    g = torch.Generator().manual_seed(0)
    data = torch.randint(0, cfgs["toy"].vocab_size, (B, T + 1), generator=g).to(device)
    runs = _train_steps(models, data[:, :-1], data[:, 1:], str(device).startswith("cuda"))
    tps, mem = _race(runs, B * T, device, args)
    out = {"toyshape_batch": B, "toyshape_seq_len": T, "toyshape_ratio": ratio(tps["toy"], tps["old"])}
    for k, (m, _) in models.items():
        out[f"toyshape_params_{k}"] = sum(p.numel() for p in m.parameters())
        out[f"toyshape_tokens_per_s_{k}"] = r1(tps[k])
        out[f"toyshape_peak_mb_{k}"] = r1(mem[k])
    return out


def bench_mfu(args, device):
    """A paper preset (150m, or 1b) at the paper's batch shape: 512 x 2048 tokens per optimizer step, in
    micro-batches (16 sequences for 150m, 8 for 1b unless --mfu-micro says otherwise)."""
    name = args.mfu_preset
    cfg = GPTConfig(**PRESETS[name])
    T, micro = cfg.block_size, args.mfu_micro or (16 if name == "150m" else 8)
    accum = max(1, 512 // micro // (4 if args.quick else 1))  # the paper's 512-sequence step; --quick: a quarter
    torch.manual_seed(0)
    model = GPT(cfg, verbose=False).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1, fused=True)
    cmodel = torch.compile(model, mode=args.mfu_compile_mode)
    from torch.nn.attention import SDPBackend, sdpa_kernel
    x = torch.randint(0, cfg.vocab_size, (micro, T + 1), device=device)
    attention = args.mfu_attention
    backend = [getattr(SDPBackend, b) for b in SDPA_BACKENDS[attention]]

    def step(n):
        for _ in range(n):
            with sdpa_kernel(backend), torch.autocast("cuda", dtype=torch.bfloat16):
                _, loss = cmodel(x[:, :-1], x[:, 1:])
            (loss / n).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    try:
        tc, _ = timed(lambda: step(2), device)  # compile + warm-up
    except RuntimeError as e:  # no such kernel for this GPU/dtype: let SDPA choose, and say so
        if attention == "auto":
            raise
        print(f"[bench] {attention} attention unavailable ({str(e).splitlines()[0][:120]}); SDPA's default",
              file=sys.stderr)
        attention, backend = "auto", [getattr(SDPBackend, b) for b in SDPA_BACKENDS["auto"]]
        torch._dynamo.reset()
        opt.zero_grad(set_to_none=True)
        tc, _ = timed(lambda: step(2), device)
    step(2)
    if args.profile:  # where a compiled step's GPU time goes, by kernel
        from torch.profiler import ProfilerActivity, profile as prof
        with prof(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as p:
            step(2)
            torch.cuda.synchronize()
        print(f"\n==== profile: {name} MFU step (2 micro-batches of {micro} x {T}), GPU kernels")
        print(p.key_averages().table(sort_by="self_device_time_total", row_limit=25))
    torch.cuda.reset_peak_memory_stats()
    dt, _ = timed(lambda: step(accum), device)
    tps = accum * micro * T / dt
    peak = torch.cuda.max_memory_allocated() / 2**20
    del model, cmodel, opt
    return {f"mfu_{name}": round(estimate_mfu(cfg, tps, T) or 0, 4) or None, f"mfu_{name}_tokens_per_s": r1(tps),
            f"mfu_{name}_peak_mb": r1(peak), f"mfu_{name}_compile_s": round(tc, 1),
            f"mfu_{name}_shape": f"{accum}x{micro}x{T} (accum x micro x seq)", "mfu_device": torch.cuda.get_device_name(),
            "mfu_attention": attention, "mfu_compile_mode": args.mfu_compile_mode}


# ---------------------------------------------------------------- generation throughput
def gen_prompts(cfg, n):
    from data import prompt_text
    from data.synthetic import problems
    from data.tokenizer import get_tokenizer
    tok = get_tokenizer(cfg.vocab_size)
    return [tok.encode(prompt_text(p["question"])) for p in problems("test", n)]


def hf_generate(model, prompts, n_new, samples, device, **kw):
    """kw: more generate() options (cache_implementation="static": its static cache, compiled on CUDA)."""
    rows = [p for p in prompts for _ in range(samples)]  # what num_return_sequences does: prefill every row
    P = max(map(len, rows))
    ids = torch.zeros(len(rows), P, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(rows):
        ids[i, P - len(p):], mask[i, P - len(p):] = torch.tensor(p), 1
    out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=n_new,
                         do_sample=False, pad_token_id=0, **kw)
    return out[:, P:].tolist()


@contextlib.contextmanager
def decode_attention_skipped():
    """A ceiling, not a result: every one-query attention call (a decoding step) returns its query unread, so
    what remains is the matmuls and small ops around it. Outputs are meaningless; only the speed is read."""
    real = F.scaled_dot_product_attention

    def skip(q, k, v, *a, **kw):
        return q.clone() if q.size(-2) == 1 else real(q, k, v, *a, **kw)
    F.scaled_dot_product_attention = skip  # model.py calls it through torch.nn.functional
    try:
        yield
    finally:
        F.scaled_dot_product_attention = real


def bench_generate(args, cfg, device, dtype):
    if str(device).startswith("cuda"):
        return bench_generate_static(args, cfg, device)
    n_new = 8 if args.smoke else 128
    gdtype = torch.bfloat16 if str(device).startswith("cuda") else dtype
    ours, theirs = build_pair(cfg, device, gdtype)
    ours.eval()
    theirs.generation_config.eos_token_id = None  # exactly n_new tokens on both sides, no token suppressed
    prompts = gen_prompts(cfg, 8)
    reps = 1 if (args.quick or args.smoke) else 3
    res = {}
    with torch.no_grad():
        for B in GEN_BATCHES:
            k = 8 if B == 64 else 1
            ps = prompts[:B // k]
            fns = {"ours": lambda n, ps=ps, k=k: ours.generate(ps, n, temperature=0, num_samples=k),
                   "hf": lambda n, ps=ps, k=k: hf_generate(theirs, ps, n, k, device)}
            if B == 64:  # how fast ours could be if decoding's attention cost nothing (see the README)
                def ceiling(n, ps=ps, k=k):
                    with decode_attention_skipped():
                        return ours.generate(ps, n, temperature=0, num_samples=k)
                fns["ceiling"] = ceiling
            for fn in fns.values():  # warm-up: a few tokens each
                fn(4)
            rates, outs, mem = {k2: [] for k2 in fns}, {}, {k2: 0.0 for k2 in fns}
            for r in range(reps):
                for name in (list(fns) if r % 2 == 0 else list(fns)[::-1]):
                    with PeakMemory(device) as pm:
                        dt, outs[name] = timed(lambda: fns[name](n_new), device)
                    rates[name].append(B * n_new / dt)
                    mem[name] = max(mem[name], pm.mb)
            assert all(len(o) == B and all(len(row) == n_new for row in o) for o in outs.values())
            tps = {k2: statistics.median(v) for k2, v in rates.items()}
            if "ceiling" in tps:
                res[f"gen_ratio_vs_hf_b{B}_attention_skipped"] = ratio(tps["ceiling"], tps["hf"])
            res.update({f"gen_tokens_per_s_ours_b{B}": r1(tps["ours"]), f"gen_tokens_per_s_hf_b{B}": r1(tps["hf"]),
                        f"gen_ratio_vs_hf_b{B}": ratio(tps["ours"], tps["hf"]),
                        f"gen_mismatches_b{B}": sum(a != b for a, b in zip(outs["ours"], outs["hf"])),
                        f"gen_peak_mb_ours_b{B}": r1(mem["ours"]), f"gen_peak_mb_hf_b{B}": r1(mem["hf"])})
    res["gen_new_tokens"] = n_new
    res["gen_prompt_tokens"] = [min(map(len, prompts)), max(map(len, prompts))]
    return res


# (rows, samples per prompt): 64 x 8, 8 x 8, 1; the largest first, so that a run cut short by its timeout
# still has it (each row is also printed to stderr as it is measured)
GEN_BATCHES_CUDA = ((512, 8), (64, 8), (1, 1))
GEN_IMPLS = ("static", "hf_static", "dynamic")


class SyncCounter:
    """Host syncs inside the block (CUDA's sync debug mode warns at each: .item(), .tolist(), nonzero, ...)."""

    def __enter__(self):
        import warnings
        self.n, self.cuda = 0, torch.cuda.is_available()
        self.rec = warnings.catch_warnings(record=True)
        self.log = self.rec.__enter__()
        warnings.simplefilter("always")
        if self.cuda:
            torch.cuda.set_sync_debug_mode("warn")
        return self

    def __exit__(self, *exc):
        if self.cuda:
            torch.cuda.set_sync_debug_mode(0)
        self.rec.__exit__(*exc)
        self.n = sum("synchroniz" in str(w.message) for w in self.log) if self.cuda else None


def bench_generate_static(args, cfg, device, n_new=None, batches=GEN_BATCHES_CUDA):
    """The GPU generation rows (issue 19): bf16 weights (no autocast), greedy, n_new new tokens (256), no
    end-of-text, at batch 1, 64 and 512. Ours on the static path (StaticDecoder, CUDA graphs) and on the dynamic
    one, and transformers' generate with its static cache (which it compiles on CUDA, reduce-overhead). Per row:
    ms per step (a call's wall time over its steps, prefill included), new tokens/s, the first call's time (it
    captures or compiles), our capture time, peak memory (growth over both calls) and host syncs per 100 steps
    (of the timed call). Runs on the CPU too (eager, no graph, no sync count) so the plumbing can be checked."""
    import model as M
    n_new = n_new or (16 if args.smoke else 256)
    ours, theirs = build_pair(cfg, device, torch.bfloat16 if str(device).startswith("cuda") else torch.float32)
    ours.eval()
    theirs.generation_config.eos_token_id = None
    prompts = gen_prompts(cfg, max(b // k for b, k in batches))
    res = {"gen_new_tokens": n_new, "gen_prompt_tokens": [min(map(len, prompts)), max(map(len, prompts))]}
    with torch.no_grad():
        for B, k in batches:
            ps, outs = prompts[:B // k], {}
            fns = {"static": lambda n, ps=ps, k=k: ours.generate(ps, n, temperature=0, num_samples=k, static=True),
                   "hf_static": lambda n, ps=ps, k=k: hf_generate(theirs, ps, n, k, device,
                                                                  cache_implementation="static"),
                   "dynamic": lambda n, ps=ps, k=k: ours.generate(ps, n, temperature=0, num_samples=k, static=False)}
            for name in GEN_IMPLS:
                key = f"gen_{name}_b{B}"
                try:
                    dec = M._DECODERS.get(ours)
                    cap0 = dec.capture_s if dec is not None else 0.0
                    with PeakMemory(device) as pm:
                        # the static paths warm up at full length (a new length recompiles / recaptures)
                        first, _ = timed(lambda: fns[name](n_new if name != "dynamic" else 4), device)
                        syncs = SyncCounter()

                        def counted(name=name, syncs=syncs):  # inside timed(): its own synchronize is not counted
                            with syncs:
                                return fns[name](n_new)
                        dt, outs[name] = timed(counted, device)
                except Exception as e:  # one failing implementation must not hide the others' numbers
                    print(f"[gen] {key}: failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}", file=sys.stderr)
                    res[f"{key}_error"] = f"{type(e).__name__}: {str(e)[:200]}"
                    continue
                dec = M._DECODERS.get(ours)
                row = {"ms_per_step": round(1e3 * dt / n_new, 3), "tokens_per_s": r1(B * n_new / dt),
                       "first_call_s": round(first, 2), "peak_mb": r1(pm.mb),
                       "syncs_per_100_steps": None if syncs.n is None else round(100 * syncs.n / n_new, 1)}
                if name == "static":
                    row["capture_s"] = round(dec.capture_s - cap0, 3) if dec is not None else None
                res.update({f"{key}_{m}": v for m, v in row.items()})
                print(f"[gen] {key}: " + ", ".join(f"{m} {v}" for m, v in row.items()), file=sys.stderr, flush=True)
            for a, b in (("static", "hf_static"), ("static", "dynamic")):
                if a in outs and b in outs:
                    res[f"gen_ratio_{a}_vs_{b}_b{B}"] = ratio(res[f"gen_{a}_b{B}_tokens_per_s"],
                                                              res[f"gen_{b}_b{B}_tokens_per_s"])
                    res[f"gen_mismatches_{a}_{b}_b{B}"] = sum(x != y for x, y in zip(outs[a], outs[b]))
            assert all(len(o) == B and all(len(r) == n_new for r in o) for o in outs.values())
    return res


def static_gen_rows(res, f):
    """Table rows of bench_generate_static."""
    rows = []
    for B, _ in GEN_BATCHES_CUDA:
        for name in GEN_IMPLS:
            key = f"gen_{name}_b{B}"
            if f"{key}_tokens_per_s" in res:
                ref = res.get(f"gen_ratio_static_vs_{name}_b{B}") if name != "static" else None
                rows.append((f"generate b{B} {name}: {res[key + '_ms_per_step']} ms/step, first call "
                             f"{res[key + '_first_call_s']} s, syncs/100 steps {res[key + '_syncs_per_100_steps']}",
                             f(res[f"{key}_tokens_per_s"]), "-", "-" if ref is None else f"static {f(ref, 'x')}",
                             f(res[f"{key}_peak_mb"])))
    return rows


# ---------------------------------------------------------------- sandbox grading
def exec_reference(code, expr):
    """The authors' grader, for comparison only: exec in this very process (our renders are trusted text)."""
    ns = {}
    exec(code, ns)
    return str(eval(expr, ns))


def bench_sandbox(args):
    import classify
    import sandbox
    from data.synthetic import problems, render
    n = 16 if args.smoke else 200 if args.quick else 1000
    probs = problems("test", n)
    texts = [render(p, "tinygsm") for p in probs]
    golds = [p["gold"] for p in probs]
    jobs = [(classify.tinygsm_program(t), classify.TINYGSM_CALL) for t in texts]
    dt_exec, ref = timed(lambda: [exec_reference(c, e) for c, e in jobs], "cpu")
    with sandbox.Sandbox(workers=2, timeout=3.0) as sb:
        t0 = time.perf_counter()
        sb.run_many(jobs[:2])  # start-up: workers import their modules once
        startup = time.perf_counter() - t0
        dt_run, results = timed(lambda: sb.run_many(jobs), "cpu")
        dt_grade, graded = timed(lambda: classify.analyze_batch(texts, golds, pool=sb), "cpu")
    agree = sum(r.value == v for r, v in zip(results, ref))
    worker_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"sandbox_programs_per_s": r1(n / dt_run), "sandbox_exec_programs_per_s": r1(n / dt_exec),
            "sandbox_ratio_vs_exec": ratio(n / dt_run, n / dt_exec), "grade_texts_per_s": r1(n / dt_grade),
            "sandbox_startup_s": round(startup, 2), "sandbox_programs": n, "sandbox_agree_with_exec": agree,
            "grade_correct": sum(bool(g["correct"]) for g in graded), "sandbox_worker_peak_mb": r1(worker_mb)}


# ---------------------------------------------------------------- one RL step
def bench_rl(args, device):
    """One GRPO step of rl.py's toy preset, timed by rl.py itself (its per-step "time" record)."""
    import rl
    tmp = tempfile.mkdtemp(prefix="echo-bench-rl-")
    ckpt = args.rl_ckpt or os.path.join("out", "pretrain-toy", "ckpt.pt")
    source = ckpt
    if not os.path.exists(ckpt) or (args.smoke and not args.rl_ckpt):
        if args.rl_ckpt:
            raise UserError(f"--rl-ckpt {ckpt} does not exist")
        cfg = GPTConfig(**(dict(PRESETS["toy"], vocab_size=512, n_layer=2, n_embd=64, n_head=4) if args.smoke
                           else PRESETS["toy"]))
        torch.manual_seed(0)
        ckpt = os.path.join(tmp, "init.pt")
        save_checkpoint(ckpt, {"model": GPT(cfg, verbose=False).state_dict(), "config": vars(cfg),
                               "tokenizer": {"name": "cl100k", "vocab_size": cfg.vocab_size}, "step": 0,
                               "kind": "pretrain"})
        source = "random weights" + ("" if args.smoke else " (no out/pretrain-toy/ckpt.pt)")
    shape = (["--prompts-per-step", "2", "--samples-per-prompt", "2", "--max-new-tokens", "8", "--prompts", "8"]
             if args.smoke else ["--prompts-per-step", "4", "--prompts", "64"] if args.quick else [])
    argv = ["--ckpt", ckpt, "--out-dir", os.path.join(tmp, "run"), "--max-steps", "1", "--eval-interval", "0",
            "--no-tqdm", "--device", str(device), "--threads", str(args.threads), *shape]
    import sandbox
    sandbox.default_sandbox().run("1")  # the grader's pool starts once per run, not in every step: start it now
    log = io.StringIO()
    try:
        with PeakMemory(device) as pm, contextlib.redirect_stdout(log):
            t0 = time.perf_counter()
            out = rl.train(argv)
            wall = time.perf_counter() - t0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    rec = out["train"][-1]
    t = rec["time"]
    return {"rl_generate_s": t.get("generate"), "rl_reward_s": t.get("reward"), "rl_logprobs_s": t.get("logprobs"),
            "rl_update_s": t.get("update"), "rl_step_s": t.get("total"), "rl_wall_s": round(wall, 2),
            "rl_peak_mb": r1(pm.mb), "rl_samples": rec.get("samples"),
            "rl_response_length": r1(rec.get("response_length")), "rl_source": source,
            "rl_flags": " ".join(shape) or "toy preset"}


# ---------------------------------------------------------------- profile
def profile(cfg, device, dtype, args):
    from torch.profiler import ProfilerActivity, profile as prof
    ours, theirs = build_pair(cfg, device, dtype)
    theirs.generation_config.eos_token_id = None
    B, T = args.batch_size or 16, args.seq_len or cfg.block_size
    x = torch.randint(0, cfg.vocab_size, (B, T), device=device)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if str(device).startswith("cuda") else [])
    prompts = gen_prompts(cfg, 8)
    jobs = {"train step (ours)": lambda: ours(x, x)[1].backward(),
            "train step (hf)": lambda: F.cross_entropy(hf_logits(theirs, x).flatten(0, 1), x.flatten()).backward(),
            "generate b64 (ours)": lambda: ours.generate(prompts, 32, temperature=0, num_samples=8),
            "generate b64 (hf)": lambda: hf_generate(theirs, prompts, 32, 8, device)}
    for name, fn in jobs.items():
        fn()
        with prof(activities=acts) as p:
            fn()
        print(f"\n==== profile: {name}")
        print(p.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


# ---------------------------------------------------------------- data: a mixture's tokenization (issue 18)
DATA_ROWS = (50000, 200000)  # rows per file (TinyGSM-like parquet + OMI-2-like JSON lines) of the two builds
DATA_INPUTS = os.path.join("out", "bench-data")  # scripts/make_bench_data.py's files, kept between runs


def _tree_pss_mb(pid):
    """Memory of a process and all its descendants, in MB of PSS (a page the forked workers share counts once)."""
    children = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    children.setdefault(int(f.read().rsplit(")", 1)[1].split()[1]), []).append(int(d))
            except (OSError, ValueError, IndexError):
                pass
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        todo += children.get(p, [])
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                m = re.search(r"^Pss:\s+(\d+) kB", f.read(), re.M)
            total += int(m.group(1)) if m else 0
        except OSError:
            pass
    return total / 1024


def bench_data(args):
    """python -m data.prepare (vocab 32768) on hub-layout local files that scripts/make_bench_data.py writes (kept in
    out/bench-data/), at two sizes with 1 and 2 workers, each into a fresh cache: tokens/s over the build's own
    time (meta.json "seconds", from planning to manifest; wall-clock with interpreter start-up beside it) and the
    peak memory of the whole process tree, sampled every 50 ms. Prints its own table; keys data_*."""
    import subprocess
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "scripts"))
    import make_bench_data
    from data.mixture import open_mixture
    sizes = (300, 1200) if args.smoke else DATA_ROWS
    res, rows = {"data_rows": list(sizes)}, []
    for n in sizes:
        t0 = time.perf_counter()
        src = make_bench_data.write(DATA_INPUTS, n)
        res[f"data_generate_s_{n}"] = round(time.perf_counter() - t0, 1)
        mix = f"tinygsm={src}/TinyGSM:1,omi2={src}/OpenMathInstruct-2:1"
        for w in (1, 2):
            cache = tempfile.mkdtemp(prefix="bench-data-")
            load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
            t0, peak = time.perf_counter(), 0.0
            p = subprocess.Popen([sys.executable, "-m", "data.prepare", "--mix", mix, "--vocab-size", "32768",
                                  "--workers", str(w), "--out", cache], stdout=subprocess.PIPE,
                                 stderr=subprocess.DEVNULL, text=True)
            while p.poll() is None:
                peak = max(peak, _tree_pss_mb(p.pid))
                time.sleep(0.05)
            wall = time.perf_counter() - t0
            out = p.stdout.read().strip().splitlines()
            if p.returncode or not out:
                raise UserError(f"data.prepare failed on {src} (rc {p.returncode})")
            meta = open_mixture(out[-1])["meta"]
            shutil.rmtree(cache, ignore_errors=True)
            tokens = sum(s["tokens"] + s["val_tokens"] for s in meta["sources"].values())
            k = f"{n}_w{w}"
            res.update({f"data_tokens_{n}": tokens, f"data_tok_per_s_{k}": round(tokens / meta["seconds"]),
                        f"data_build_s_{k}": meta["seconds"], f"data_wall_s_{k}": round(wall, 1),
                        f"data_peak_mb_{k}": round(peak, 1), f"data_load_avg_{k}": load})
            rows.append((f"{n:,} + {n:,} rows ({tokens / 1e6:.1f}M tokens)", str(w), f"{tokens / meta['seconds']:,.0f}",
                         f"{meta['seconds']:.1f} / {wall:.1f}", f"{peak:,.0f}", "-" if load is None else f"{load:.1f}"))
        res[f"data_speedup_2w_{n}"] = round(res[f"data_tok_per_s_{n}_w2"] / res[f"data_tok_per_s_{n}_w1"], 2)
    small, big = sizes
    res["data_peak_ratio_big_vs_small"] = round(max(res[f"data_peak_mb_{big}_w{w}"] / res[f"data_peak_mb_{small}_w{w}"]
                                                    for w in (1, 2)), 2)
    # the paper's 150m mixture (~52B tokens) on 16 cores, if 16 workers scale as 2 did here
    per_worker = res[f"data_tok_per_s_{big}_w2"] / 2
    res["data_52b_hours_16_cores"] = round(52e9 / (16 * per_worker) / 3600, 1)
    head = ("data.prepare, vocab 32768", "workers", "tokens/s", "build / wall s", "peak MB (all procs)", "load")
    widths = [max(len(r[i]) for r in rows + [head]) for i in range(len(head))]
    line = lambda r: "  ".join(c.ljust(wd) if i == 0 else c.rjust(wd) for i, (c, wd) in enumerate(zip(r, widths)))
    print("\n".join([line(head), "-" * len(line(head))] + [line(r) for r in rows]))
    print(f"2 workers vs 1: {', '.join(str(res[f'data_speedup_2w_{n}']) + 'x' for n in sizes)}; peak memory "
          f"{big:,} vs {small:,} rows: {res['data_peak_ratio_big_vs_small']}x; 52B tokens on 16 cores: about "
          f"{res['data_52b_hours_16_cores']} h\n")
    return res


# ---------------------------------------------------------------- report
def table(res):
    def f(x, unit=""):
        if x is None:
            return "-"
        if unit == "x":
            return f"{x:.3g}x"
        return f"{x:,.1f}{unit}" if isinstance(x, float) else f"{x}{unit}"
    rows = []
    if "train_ratio_vs_hf" in res:
        rows.append((f"train tokens/s (B {res['train_batch']} x T {res['train_seq_len']}, {res['train_dtype']})",
                     f(res["train_tokens_per_s_ours"]), f(res["train_tokens_per_s_hf"]), f(res["train_ratio_vs_hf"], "x"),
                     f"{f(res['train_peak_mb_ours'])} / {f(res['train_peak_mb_hf'])}"))
    for name in ("150m", "1b"):
        if res.get(f"mfu_{name}") is not None:
            rows.append((f"{name} MFU ({res[f'mfu_{name}_shape']})", f"{res[f'mfu_{name}']:.1%}", "-", "-",
                         f(res[f"mfu_{name}_peak_mb"])))
            rows.append((f"{name} train tokens/s", f(res[f"mfu_{name}_tokens_per_s"]), "-", "-", ""))
    for B in GEN_BATCHES:
        if f"gen_ratio_vs_hf_b{B}" in res:
            rows.append((f"generate new tokens/s, batch {B} ({res['gen_mismatches_b' + str(B)]} mismatched rows)",
                         f(res[f"gen_tokens_per_s_ours_b{B}"]), f(res[f"gen_tokens_per_s_hf_b{B}"]),
                         f(res[f"gen_ratio_vs_hf_b{B}"], "x"),
                         f"{f(res[f'gen_peak_mb_ours_b{B}'])} / {f(res[f'gen_peak_mb_hf_b{B}'])}"))
        if res.get(f"gen_ratio_vs_hf_b{B}_attention_skipped") is not None:
            rows.append(("  ceiling: the same with decoding's attention skipped", "-", "-",
                         f(res[f"gen_ratio_vs_hf_b{B}_attention_skipped"], "x"), ""))
    rows += static_gen_rows(res, f)  # CUDA generation (issue 19)
    if "toyshape_ratio" in res:
        rows.append((f"toy pretraining tokens/s (B {res['toyshape_batch']} x T {res['toyshape_seq_len']}; ref = the "
                     f"old d 192 toy)", f(res["toyshape_tokens_per_s_toy"]), f(res["toyshape_tokens_per_s_old"]),
                     f(res["toyshape_ratio"], "x"),
                     f"{f(res['toyshape_peak_mb_toy'])} / {f(res['toyshape_peak_mb_old'])}"))
    if "sandbox_programs_per_s" in res:
        rows.append((f"sandbox programs/s ({res['sandbox_programs']} tinygsm; ref = in-process exec)",
                     f(res["sandbox_programs_per_s"]), f(res["sandbox_exec_programs_per_s"]),
                     f(res["sandbox_ratio_vs_exec"], "x"), f(res["sandbox_worker_peak_mb"])))
        rows.append(("grading texts/s (classify.analyze_batch, same pool)", f(res["grade_texts_per_s"]), "-", "-", ""))
    if "rl_step_s" in res:
        rows.append((f"RL step s ({res['rl_samples']} samples x {res['rl_response_length']} tokens)",
                     f(res["rl_step_s"]), "-", "-", f(res["rl_peak_mb"])))
        rows.append(("  generate / reward / logprobs / update s",
                     " / ".join(f(res[k]) for k in ("rl_generate_s", "rl_reward_s", "rl_logprobs_s", "rl_update_s")),
                     "-", "-", ""))
    head = ("measure", "ours", "reference", "ratio", "peak MB ours / ref")
    widths = [max(len(r[i]) for r in rows + [head]) for i in range(5)]
    line = lambda r: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
    print(line(head))
    print("-" * len(line(head)))
    for r in rows:
        print(line(r))


@main_guard
def main(argv=None):
    args = get_args(argv)
    device = pick_device(args.device)
    set_threads(args.threads)
    cuda = device.startswith("cuda")
    try:
        import transformers
        transformers.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
    except ImportError:
        raise UserError("bench.py compares against transformers: pip install -r requirements-bench.txt")
    cfg = GPTConfig(**PRESETS[args.preset])
    if args.smoke:
        cfg = GPTConfig(vocab_size=512, n_layer=2, n_head=4, n_embd=64, block_size=256)
    dtype = torch.float32
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    policy = os.environ.get("OMP_WAIT_POLICY")
    res = {"device": torch.cuda.get_device_name(device) if cuda else cpu_name(),
           "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "preset": "smoke" if args.smoke else args.preset,
           "quick": args.quick, "torch": torch.__version__, "transformers": transformers.__version__,
           "load_avg_at_start": load, "omp_wait_policy": policy}
    if not cuda and load is not None and torch.get_num_threads() > 1 and policy is None \
            and load + torch.get_num_threads() > (os.cpu_count() or 1) + 0.5:
        # measured on a 2-core machine with one core busy: 2 spinning OpenMP threads ran generation ~45x and
        # training ~5x slower than 1 thread; OMP_WAIT_POLICY=PASSIVE (set before torch starts) brought them back
        print(f"[bench] warning: load average {load:.1f} on {os.cpu_count()} cores: with {torch.get_num_threads()} "
              f"threads OpenMP's spin-waiting can make everything many times slower; prefer --threads 1 or "
              f"OMP_WAIT_POLICY=PASSIVE", file=sys.stderr)
    if args.profile:
        profile(cfg, device, dtype, args)
    t_all = time.perf_counter()
    sections = [("train", lambda: bench_train(args, cfg, device, dtype)),
                ("mfu", lambda: bench_mfu(args, device) if cuda else {}),
                ("gen", lambda: bench_generate(args, cfg, device, dtype)),
                ("sandbox", lambda: bench_sandbox(args)),
                ("rl", lambda: bench_rl(args, device)),
                ("data", lambda: bench_data(args)),
                ("toyshape", lambda: bench_toy_shape(args, device))]
    for name, fn in sections:
        if name not in args.sections:
            continue
        t0 = time.perf_counter()
        print(f"[bench] {name} ...", file=sys.stderr, flush=True)
        res.update(fn())
        res[f"{name}_section_s"] = round(time.perf_counter() - t0, 1)
    for key in ("mfu_150m", "mfu_150m_tokens_per_s", "mfu_150m_peak_mb"):
        res.setdefault(key, None)  # CPU: no MFU (no peak FLOP/s to divide by)
    res["total_s"] = round(time.perf_counter() - t_all, 1)
    table(res)
    line = json.dumps(res)
    if args.json_out:
        with open(args.json_out, "w") as f:
            f.write(line + "\n")
    print(line)


if __name__ == "__main__":
    main()
