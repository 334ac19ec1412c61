"""
Evaluate checkpoints on a benchmark: generate -> classify and grade -> pass@1, pass@k, maj@n, and the paper's
central table (the share of each format and the accuracy within each format).

The toy checkpoint on the embedded synthetic test set (greedy pass@1 and the format table):
    python evaluate.py                                   # = --ckpt out/pretrain-toy/ckpt.pt --benchmark synthetic
Add 8 samples per problem at T 0.7 / top-p 0.95 (pass@1,2,4,8 unbiased, pass@8 = any of 8, maj@8):
    python evaluate.py --ckpt out/rl-toy/ckpt.pt --n 8
Compare checkpoints (one table, one PNG of format shares and pass@1): a run dir means its ckpt-step*.pt
(log-spaced, written by rl.py) plus its final ckpt.pt:
    python evaluate.py --ckpt out/rl-toy
    python evaluate.py --ckpt out/pretrain-toy/ckpt.pt out/rl-toy/ckpt.pt
The paper's evaluation (GSM8K test, MATH-500, AIME; files under ../shared/data), on one GPU or many:
    python evaluate.py --ckpt out/pretrain-150m/ckpt.pt --benchmark gsm8k --data-dir ../shared/data --n 64
    torchrun --nproc_per_node=8 evaluate.py --ckpt ... --benchmark math500 --data-dir ../shared/data --num-samples 64
(--num-samples is --n; torchrun would take "--n" as an abbreviation of its own flags.)

Prompts are as in the paper: the raw question + "\\n\\n" (data.prompt_text; exactly the prefix of a pretraining
document), no template; the model writes the solution and stops at end-of-text, at --max-new-tokens, or at the
end of its context. A prompt that leaves no room in the context is skipped and counted (num_skipped), never
graded as wrong: metrics are over the evaluated problems.

Writes to --out (default: beside the checkpoint, <ckpt dir>/eval-<benchmark>/): generations.jsonl (one record per
output), summary.json (metrics + the resolved config); when comparing, one subfolder per checkpoint plus
compare.json and compare.png.

rl.py calls run_eval() in-process; the metrics are small pure functions (pass_at_k, majority_vote,
format_metrics, summarize) pinned by tests/test_evaluate.py.
"""
import glob
import json
import math
import os
import re
import time
from collections import Counter
from contextlib import nullcontext

import torch
from tqdm import tqdm

from classify import format_labels, format_metrics  # one implementation of format shares, used everywhere

from common import ArgParser, UserError, all_gather, atomic_write_bytes, atomic_write_json, check_out_dir, \
    main_guard, seed_everything, set_threads, setup_distributed


def default_max_new_tokens(benchmark):
    """The paper's limits for real benchmarks: 1024 new tokens, 2048 for MATH-500 and AIME. The synthetic
    solutions are 50-230 tokens and the toy context is 320 (generation stops at the context end anyway)."""
    if benchmark.startswith("synthetic"):
        return 256
    return 2048 if benchmark == "math500" or benchmark.startswith("aime") else 1024


# ---------------------------------------------------------------- metrics (pure functions)
def pass_at_k(n, c, k):
    """
    Unbiased pass@k from n samples of which c are correct: 1 - C(n-c, k) / C(n, k) (Chen et al. 2021).
    Python's integers are exact and int / int is correctly rounded, so this is stable for any n (no factorial
    overflow, no cancellation in a product of many floats).
    """
    if not (0 <= c <= n and 1 <= k <= n):
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n} c={c} k={k}")
    if n - c < k:
        return 1.0  # every k-subset contains a correct sample
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def majority_vote(answers):
    """
    The most common answer; None answers (nothing extracted) do not vote, and None comes back when nobody
    voted. Answers are compared by classify.normalize_answer ("18", "18.0" and "$18" are one vote each for 18).
    Ties go to the answer that appeared first in the list (the lowest sample index), so the result is
    deterministic; the winner is returned as first written.
    """
    from classify import normalize_answer
    counts, first = Counter(), {}
    for a in answers:
        key = None if a is None else normalize_answer(a)
        if key is None:
            continue
        counts[key] += 1
        first.setdefault(key, a)
    if not counts:
        return None
    # max() keeps the first maximal key, and a Counter iterates in first-insertion order
    return first[max(counts, key=counts.get)]


def _ks(n):
    """k = 1, 2, 4, ... below n, then n itself."""
    ks, k = [], 1
    while k < n:
        ks.append(k)
        k *= 2
    return ks + [n]


def format_accuracy_se(rows, labels):
    """{fmt: standard error of format_metrics' accuracy within fmt, or None}. Samples of one problem are not
    independent, so the SE is clustered by problem (the ratio estimator's: p = sum c_i / sum n_i over problems i
    with n_i outputs in fmt, c_i of them correct; SE = sqrt(G/(G-1) * sum (c_i - p n_i)^2) / sum n_i over the G
    problems with any). With one output a problem it is the usual sqrt(p(1-p)/(G-1)). None below 2 problems."""
    per = {}
    for r in rows:
        f = r["format"] if r["format"] in labels else labels[-1]
        n_c = per.setdefault(f, {}).setdefault(r["id"], [0, 0])
        n_c[0] += 1
        n_c[1] += bool(r["correct"])
    out = {}
    for f in labels:
        groups = list(per.get(f, {}).values())
        G, N = len(groups), sum(g[0] for g in groups)
        if G < 2:
            out[f] = None
            continue
        p = sum(g[1] for g in groups) / N
        out[f] = (G / (G - 1) * sum((c - p * k) ** 2 for k, c in groups)) ** 0.5 / N
    return out


def summarize(generations, n):
    """
    Metrics of a list of generation records (as in generations.jsonl; greedy rows have sample == -1).

    Returns {"num_problems", "pass@1", "format_shares", "format_accuracy", "format_accuracy_se", "decoding",
    ["sampled"]} (format_accuracy_se: format_accuracy_se's clustered standard errors):
    the top-level metrics come from the greedy outputs ("decoding": "greedy"); when there are none, from the
    sampled ones ("decoding": "sampled", pass@1 = mean fraction correct = unbiased pass@1).
    "sampled" (when sampled rows exist) = {"n", "pass@k": {"1": .., "2": .., "4": .., str(n): ..} (unbiased),
    "pass@n": any of the n correct (the paper's pass@64; equals pass@k[str(n)]), "maj@n": the majority answer
    (majority_vote over the samples in index order) is correct, "format_shares", "format_accuracy",
    "format_accuracy_se"}.
    Every problem must have exactly n sampled rows.
    """
    greedy = [g for g in generations if g["sample"] == -1]
    sampled = [g for g in generations if g["sample"] != -1]
    ids = {g["id"] for g in generations}
    labels = format_labels(generations)
    out = {"num_problems": len(ids)}
    if greedy:
        by_id = {}
        for g in greedy:
            by_id[g["id"]] = bool(g["correct"])
        out["pass@1"] = sum(by_id.values()) / len(by_id)
        out["format_shares"], out["format_accuracy"] = format_metrics(greedy, labels)
        out["format_accuracy_se"] = format_accuracy_se(greedy, labels)
        out["decoding"] = "greedy"
    if sampled:
        groups = {}
        for g in sorted(sampled, key=lambda g: g["sample"]):
            groups.setdefault(g["id"], []).append(g)
        bad = [i for i, rows in groups.items() if len(rows) != n]
        if bad:
            raise ValueError(f"{len(bad)} problems do not have n={n} samples (e.g. {bad[0]!r}: {len(groups[bad[0]])})")
        counts = [sum(bool(g["correct"]) for g in rows) for rows in groups.values()]
        P = len(groups)
        pass_k = {str(k): sum(pass_at_k(n, c, k) for c in counts) / P for k in _ks(n)}
        maj = 0
        for rows in groups.values():
            winner = majority_vote([g["answer"] for g in rows])
            if winner is not None:
                # the winner is returned as first written, so this row is the one that cast the first vote for it
                maj += next(bool(g["correct"]) for g in rows if g["answer"] is not None and g["answer"] == winner)
        shares, acc = format_metrics(sampled, labels)
        se = format_accuracy_se(sampled, labels)
        out["sampled"] = {"n": n, "pass@k": pass_k, "pass@n": sum(c > 0 for c in counts) / P, "maj@n": maj / P,
                          "format_shares": shares, "format_accuracy": acc, "format_accuracy_se": se}
        if not greedy:
            out["pass@1"], out["format_shares"], out["format_accuracy"] = pass_k["1"], shares, acc
            out["format_accuracy_se"], out["decoding"] = se, "sampled"
    if not generations:
        shares, acc = format_metrics([], labels)
        out.update({"pass@1": None, "format_shares": shares, "format_accuracy": acc,
                    "format_accuracy_se": {f: None for f in labels}, "decoding": "none"})
    return out


# ---------------------------------------------------------------- generation + grading
def run_eval(model, tokenizer, records, n=1, temperature=0.7, top_p=0.95, max_new_tokens=256, batch_size=64,
             seed=0, greedy=True, progress=True, rule="strict", answer_prefix=""):
    """
    Generate for benchmark records [{"id", "question", "gold"}], grade, summarize. Returns (generations, summary).

    greedy=True: one greedy output per problem (sample -1). n > 1 (or greedy=False): n samples per problem at
    temperature / top_p (samples 0..n-1). Prompts are sorted by length and decoded --batch-size sequences at
    a time (a chunk holds batch_size // n prompts with their samples, at least one prompt), so padding and
    memory stay small. Outputs depend on (seed, batch_size, device). Prompts with no room in the context
    are skipped and listed in summary["skipped_ids"]. The model is left in the mode it came in. answer_prefix:
    every answer starts with this text (forced into the prompt; the graded response includes it).
    """
    from classify import analyze_batch
    from data import encode_prompts, prompt_text

    model = getattr(model, "module", model)  # a DDP-wrapped model generates through its module
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    ids_seen = set()
    for r in records:
        if r["id"] in ids_seen:
            raise ValueError(f"duplicate problem id {r['id']!r}: metrics group outputs by id")
        ids_seen.add(r["id"])
    ctx_len = model.config.block_size
    device = next(model.parameters()).device
    prompts = [prompt_text(r["question"]) for r in records]
    tokens = encode_prompts(tokenizer, [r["question"] for r in records], answer_prefix)
    fits = [i for i in range(len(records)) if 0 < len(tokens[i]) < ctx_len]
    fit_set = set(fits)
    skipped = [records[i]["id"] for i in range(len(records)) if i not in fit_set]
    order = sorted(fits, key=lambda i: len(tokens[i]))

    passes = []  # (mode, samples per prompt, temperature, top_p)
    if greedy:
        passes.append(("greedy", 1, 0.0, 1.0))
    if n > 1 or not greedy:
        passes.append(("sampled", n, temperature, top_p))
    eos = tokenizer.eot_id
    amp = nullcontext()
    if device.type == "cuda" and torch.cuda.is_bf16_supported() and not torch.is_autocast_enabled("cuda"):
        amp = torch.autocast("cuda", dtype=torch.bfloat16)
    raw = []  # (record index, sample, new token ids)
    bar = tqdm(total=len(order) * sum(p[1] for p in passes), desc="eval", unit="seq", disable=not progress,
               dynamic_ncols=True)
    was_training = model.training
    model.eval()
    t0, new_tokens = time.time(), 0
    try:
        with amp:
            for pi, (mode, ns, temp, tp) in enumerate(passes):
                per_chunk = max(1, batch_size // ns)
                for ci, c0 in enumerate(range(0, len(order), per_chunk)):
                    chunk = order[c0:c0 + per_chunk]
                    # sorted by length: the chunk's first prompt is its shortest, and no row can go past the context
                    room = min(max_new_tokens, ctx_len - len(tokens[chunk[0]]))
                    outs = model.generate([tokens[i] for i in chunk], room, temperature=temp, top_p=tp, eos_id=eos,
                                          num_samples=ns, seed=(seed * 1_000_003 + pi * 100_003 + ci))
                    for j, out in enumerate(outs):
                        raw.append((chunk[j // ns], -1 if mode == "greedy" else j % ns, out))
                        new_tokens += len(out)
                    bar.update(len(outs))
    finally:
        model.train(was_training)
        bar.close()
    gen_seconds = time.time() - t0

    # benchmark order, greedy first, then samples 0..n-1; decode, then grade each distinct (response, gold) once:
    # a collapsed model repeats itself a lot
    raw.sort(key=lambda r: (r[0], r[1]))
    texts = [answer_prefix + tokenizer.decode(out[:-1] if out and out[-1] == eos else out) for _, _, out in raw]
    golds = [records[i]["gold"] for i, _, _ in raw]
    unique = list(dict.fromkeys(zip(texts, golds)))
    t1 = time.time()
    verdicts = dict(zip(unique, analyze_batch([u[0] for u in unique], [u[1] for u in unique], rule=rule)))
    grade_seconds = time.time() - t1

    generations = []
    for (i, s, out), text, gold in zip(raw, texts, golds):
        v = verdicts[(text, gold)]
        generations.append({
            "id": records[i]["id"], "prompt": prompts[i], "response": text, "format": v["format"],
            "answer": v["answer"], "gold": gold, "correct": bool(v["correct"]), "sample": s,
            "mode": "greedy" if s == -1 else "sampled", "stop": "eos" if out and out[-1] == eos else "length",
            "num_tokens": len(out)})
    summary = summarize(generations, n)
    summary.update({"num_skipped": len(skipped), "skipped_ids": skipped, "new_tokens": new_tokens,
                    "gen_seconds": round(gen_seconds, 3), "grade_seconds": round(grade_seconds, 3)})
    return generations, summary


# ---------------------------------------------------------------- readable output
def _pct(x):
    return "    -" if x is None else f"{100 * x:5.1f}"


def format_table(summary):
    """The per-checkpoint table printed on stdout: format shares / accuracy, pass@1, pass@k, maj@n."""
    formats = list(summary["format_shares"])
    lines = [f"{'':22}" + "".join(f"{f:>9}" for f in formats)]
    blocks = []
    if summary.get("decoding") == "greedy":
        blocks.append(("greedy", summary["format_shares"], summary["format_accuracy"]))
    if "sampled" in summary:
        s = summary["sampled"]
        blocks.append((f"sampled (n={s['n']})", s["format_shares"], s["format_accuracy"]))
    for name, shares, acc in blocks:
        lines.append(f"{name + ' share %':22}" + "".join(f"{_pct(shares[f]):>9}" for f in formats))
        lines.append(f"{name + ' accuracy %':22}" + "".join(f"{_pct(acc[f]):>9}" for f in formats))
    lines.append(f"pass@1 ({summary.get('decoding')}): {_pct(summary['pass@1']).strip()}%   "
                 f"problems {summary['num_problems']}, skipped (prompt longer than the context) "
                 f"{summary.get('num_skipped', 0)}")
    if "sampled" in summary:
        s = summary["sampled"]
        ks = "  ".join(f"pass@{k} {_pct(v).strip()}" for k, v in s["pass@k"].items())
        lines.append(f"sampled, unbiased: {ks}")
        lines.append(f"sampled: pass@{s['n']} (any of {s['n']}) {_pct(s['pass@n']).strip()}%   "
                     f"maj@{s['n']} {_pct(s['maj@n']).strip()}%")
    return "\n".join(lines)


def compare_rows(results):
    """One flat row per checkpoint: label, step, pass@1, shares and accuracies per format, pass@n, maj@n."""
    rows = []
    for label, s in results:
        row = {"label": label, "ckpt": s.get("ckpt"), "step": s.get("step"), "kind": s.get("kind"),
               "decoding": s["decoding"], "pass@1": s["pass@1"]}
        for f, v in s["format_shares"].items():
            row[f"share_{f}"] = v
        for f, v in s["format_accuracy"].items():
            row[f"acc_{f}"] = v
        if "sampled" in s:
            n = s["sampled"]["n"]
            row[f"pass@{n}"] = s["sampled"]["pass@n"]
            row[f"maj@{n}"] = s["sampled"]["maj@n"]
        rows.append(row)
    return rows


def compare_table(rows):
    """Checkpoints as rows; every metric in %."""
    keys = [k for k in rows[0] if k not in ("label", "ckpt", "kind", "decoding")]
    widths = [max(7, len(k) + 2) for k in keys]
    first = max(len("checkpoint"), *(len(r["label"]) for r in rows)) + 2
    lines = [f"{'checkpoint':{first}}" + "".join(f"{k:>{w}}" for k, w in zip(keys, widths)) + "   (metrics in %)"]
    for r in rows:
        cells = [f"{'-' if r[k] is None else r[k]:>{w}}" if k == "step" else f"{_pct(r.get(k)).strip():>{w}}"
                 for k, w in zip(keys, widths)]
        lines.append(f"{r['label']:{first}}" + "".join(cells))
    return "\n".join(lines)


def plot_compare(rows, path, title=""):
    """Stacked bars of format shares per checkpoint, with pass@1 (and pass@n, maj@n) on top; x = step when known."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    formats = [k[len("share_"):] for k in rows[0] if k.startswith("share_")]
    x = list(range(len(rows)))
    # checkpoints sit at even spacing with their step as the tick label: log-spaced RL steps stay readable
    mixed = len({r["kind"] for r in rows}) > 1  # e.g. a pretrain checkpoint next to RL steps: say which is which
    ticks = [r["label"] if r["step"] is None else f"{r['kind']} {r['step']}" if mixed else str(r["step"]) for r in rows]
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(max(6, 0.6 * len(rows) + 3), 7), sharex=True)
    bottom = [0.0] * len(rows)
    for f in formats:
        vals = [r[f"share_{f}"] for r in rows]
        ax1.bar(x, vals, bottom=bottom, label=f)
        bottom = [b + v for b, v in zip(bottom, vals)]
    ax1.set_ylabel(f"share of {rows[0]['decoding']} outputs")
    ax1.set_ylim(0, 1)
    ax1.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax1.set_title(title)
    for key in [k for k in rows[0] if k.startswith(("pass@", "maj@"))]:
        ax2.plot(x, [r[key] if r[key] is not None else float("nan") for r in rows], marker="o", label=key)
    ax2.set_ylabel("accuracy")
    ax2.set_ylim(-0.02, 1.02)
    ax2.set_xticks(x)
    ax2.set_xticklabels(ticks, rotation=45 if len(rows) > 8 else 0)
    ax2.set_xlabel("step" if all(r["step"] is not None for r in rows) else "checkpoint")
    ax2.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------- rl.py's evals
def eval_record(model, tokenizer, records, step, samples=0, temperature=0.7, top_p=1.0, max_new_tokens=256,
                batch_size=64, seed=0, eval_fn=None, sampled_n=0):
    """rl.py's "eval" record at one step: greedy pass@1 with format shares and accuracy, and with samples > 0 a
    "sampled" block at the given temperature / top-p (summarize's pass@k, pass@n, maj@n, format shares and
    accuracy) over the first sampled_n problems (0 = all). eval_fn replaces run_eval (tests)."""
    t0, eval_fn = time.time(), eval_fn or run_eval
    common = dict(max_new_tokens=max_new_tokens, batch_size=batch_size, seed=seed, progress=False)
    _, s = eval_fn(model, tokenizer, records, n=1, greedy=True, **common)
    rec = {"type": "eval", "step": step, "pass@1": s["pass@1"], "format_shares": s["format_shares"],
           "format_accuracy": s["format_accuracy"], "format_accuracy_se": s.get("format_accuracy_se"),
           "num_problems": s.get("num_problems")}
    if samples:
        _, s2 = eval_fn(model, tokenizer, records[:sampled_n] if sampled_n else records, n=samples,
                        temperature=temperature, top_p=top_p, greedy=False, **common)
        rec["sampled"] = {**s2.get("sampled", {}), "n": samples, "temperature": temperature, "top_p": top_p,
                          "pass@1": s2["pass@1"], "format_shares": s2["format_shares"],
                          "format_accuracy": s2["format_accuracy"], "format_accuracy_se": s2.get("format_accuracy_se"),
                          "num_problems": s2.get("num_problems")}
    rec["seconds"] = round(time.time() - t0, 2)
    return rec


def eval_line(rec):
    """One printed line for an eval_record: greedy pass@1, the format shares, sampled pass@1."""
    shares = " ".join(f"{f} {v:.0%}" for f, v in rec["format_shares"].items())
    extra = f" | sampled pass@1 {rec['sampled']['pass@1']:.3f}" if "sampled" in rec else ""
    return f"eval step {rec['step']}: pass@1 {rec['pass@1']:.3f} | {shares}{extra}"


def plot_formats(eval_records, path):
    """rl.py's formats.png. Left: stacked greedy format shares over RL steps with greedy (and sampled) pass@1 on
    top. Right, when the evals were sampled: pass@k for each k, and maj@n. The x-axis is symlog (linear below 1,
    log above) because the collapse is early: the paper plots it on a log scale, and evals sit at 0, 1, 2, 4, ..."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    recs = sorted(eval_records, key=lambda r: r["step"])
    if not recs:
        return
    steps = [r["step"] for r in recs]
    sampled = all("sampled" in r for r in recs)
    formats = list(dict.fromkeys(f for r in recs for f in r["format_shares"]))
    fig, axes = plt.subplots(1, 2 if sampled else 1, figsize=(11 if sampled else 7, 4), squeeze=False)
    ax = axes[0][0]
    ax.stackplot(steps, [[r["format_shares"].get(f, 0.0) for r in recs] for f in formats], labels=formats, alpha=0.6)
    ax.plot(steps, [r["pass@1"] or 0.0 for r in recs], "k-o", ms=3, label="pass@1 (greedy)")
    if sampled:
        ax.plot(steps, [r["sampled"]["pass@1"] for r in recs], "k--", label="pass@1 (sampled)")
    ax.set(xlabel="RL step", ylabel="share of outputs / pass@1", ylim=(0, 1), title="format shares (greedy), held-out")
    ax.legend(loc="upper left", fontsize=7)
    if sampled:
        ax2 = axes[0][1]
        ks = list(dict.fromkeys(k for r in recs for k in r["sampled"].get("pass@k", {})))
        for k in sorted(ks, key=int):
            ax2.plot(steps, [r["sampled"].get("pass@k", {}).get(k) for r in recs], "-o", ms=3, label=f"pass@{k}")
        ax2.plot(steps, [r["sampled"].get("maj@n") for r in recs], "k--s", ms=3,
                 label=f"maj@{recs[-1]['sampled'].get('n')}")
        ax2.set(xlabel="RL step", ylabel="fraction of problems", ylim=(0, 1),
                title=f"sampled at T {recs[-1]['sampled'].get('temperature')}: diversity")
        ax2.legend(loc="upper left", fontsize=7)
    for a in axes[0]:
        a.set_xscale("symlog", linthresh=1)
        a.set_xlim(steps[0], max(steps[-1], steps[0] + 1))
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


# ---------------------------------------------------------------- checkpoints
def expand_ckpts(paths):
    """--ckpt values -> [(path, from_run_dir)]: a directory means its ckpt-step*.pt by step, then its ckpt.pt."""
    out = []
    for p in paths:
        if os.path.isdir(p):
            steps = glob.glob(os.path.join(p, "ckpt-step*.pt"))
            steps.sort(key=lambda f: int(re.sub(r"\D", "", os.path.basename(f)) or 0))
            final = os.path.join(p, "ckpt.pt")
            found = steps + ([final] if os.path.isfile(final) else [])
            if not found:
                raise UserError(f"no ckpt.pt or ckpt-step*.pt in {p}")
            out += [(f, True) for f in found]
        elif not os.path.isfile(p):
            raise UserError(f"no checkpoint at {p}")
        else:
            out.append((p, False))
    return out


def load_model(path, device):
    """A checkpoint -> (model, tokenizer, ckpt dict); anything wrong with it is one UserError line (rl.py loads its
    start through this too)."""
    from data import get_tokenizer
    from model import CheckpointError, config_from_dict, model_from_checkpoint, load_checkpoint
    try:
        ckpt = load_checkpoint(path)
        if "tokenizer" not in ckpt:
            raise CheckpointError(f"{path} has no tokenizer spec (key 'tokenizer')")
        tok = get_tokenizer(ckpt["tokenizer"])
        try:
            cfg = config_from_dict(ckpt["config"])
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"{path} has a bad model config: {e}")
        if cfg.vocab_size != tok.vocab_size:
            raise CheckpointError(f"{path}: model vocab {cfg.vocab_size} != tokenizer vocab {tok.vocab_size} "
                                  f"({tok!r})")
        model = model_from_checkpoint(ckpt, device)
    except CheckpointError as e:
        raise UserError(str(e))
    return model.eval(), tok, ckpt


def _label(path, taken):
    """A short unique folder name for a checkpoint: <run dir>-<file stem>."""
    base = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{os.path.basename(os.path.dirname(os.path.abspath(path)))}-"
                                             f"{os.path.splitext(os.path.basename(path))[0]}")
    label, i = base, 1
    while label in taken:
        i += 1
        label = f"{base}-{i}"
    taken.add(label)
    return label


# ---------------------------------------------------------------- main
DEFAULT_CKPT = os.path.join("out", "pretrain-toy", "ckpt.pt")


def get_args(argv=None):
    from data import BENCHMARKS
    p = ArgParser(description="Evaluate checkpoints on a benchmark: pass@1 / pass@k / maj@n and per-format shares "
                              "and accuracy.")
    p.add_argument("--ckpt", nargs="+", default=[DEFAULT_CKPT],
                   help="checkpoint file(s), or run dir(s) meaning their ckpt-step*.pt and ckpt.pt; several give a "
                        "comparison table and PNG. The default is the toy pretrain checkpoint (pass out/rl-toy/ckpt.pt "
                        "or out/rl-toy for RL).")
    p.add_argument("--benchmark", default="synthetic",
                   help="; ".join(f"{k}: {v[2]}" for k, v in BENCHMARKS.items()))
    p.add_argument("--data-dir", default=None, help="local folder laid out like ../shared/data for the real "
                                                    "benchmarks (default: the Hugging Face hub)")
    p.add_argument("--split", default="test")
    p.add_argument("--limit", type=int, default=None, help="only the first N problems")
    p.add_argument("--n", "--num-samples", dest="n", type=int, default=1,
                   help="samples per problem; > 1 adds pass@k, pass@n and maj@n (the paper: 64). Under torchrun "
                        "write --num-samples: torchrun itself takes --n for one of its own flags")
    p.add_argument("--no-greedy", action="store_true", help="skip the greedy pass (only with --n > 1)")
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help="default: 256 for synthetic, 1024 for gsm8k, 2048 for math500 and aime (generation also "
                        "stops at the end of the model's context)")
    p.add_argument("--batch-size", type=int, default=64, help="sequences decoded together (batch_size // n "
                                                              "prompts with their n samples)")
    p.add_argument("--rule", default="strict", choices=["strict", "paper"],
                   help="format labels: strict (tinygsm/omi1/omi2/other), or the authors' substring rule "
                        "(<llm-code> -> llm-code, else 'def' -> tinygsm-code, else text); grading is the same")
    p.add_argument("--force-format", default=None,
                   help="start every answer with a format's first words (tinygsm 'def', omi1 \"Let's\", omi2 'To "
                        "find': the synthetic formats' openings), or with --answer-prefix's text: the accuracy a "
                        "model has in that format, whatever it would have chosen (issue 21's scale question)")
    p.add_argument("--answer-prefix", default=None, help="any text that starts every answer (instead of "
                                                         "--force-format)")
    p.add_argument("--out", "--out-dir", dest="out", default=None,
                   help="output folder (default <ckpt dir>/eval-<benchmark>; several checkpoints from different "
                        "folders: out/eval-<benchmark>)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 can beat 2 on a busy machine)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-tqdm", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    if args.n < 1:
        raise UserError("--n must be >= 1")
    if args.no_greedy and args.n < 2:
        raise UserError("--no-greedy needs --n > 1 (otherwise nothing is evaluated)")
    if args.batch_size < 1:
        raise UserError("--batch-size must be >= 1")
    if args.limit is not None and args.limit < 1:
        raise UserError("--limit must be >= 1")
    if not 0 < args.top_p <= 1 or args.temperature <= 0:
        raise UserError("--temperature must be > 0 and --top-p in (0, 1]")
    from data.synthetic import FIRST_WORDS
    if args.force_format is not None and args.answer_prefix is not None:
        raise UserError("give --force-format or --answer-prefix, not both")
    if args.force_format is not None and args.force_format not in FIRST_WORDS:
        raise UserError(f"--force-format must be one of {', '.join(FIRST_WORDS)}, got {args.force_format!r}")
    args.answer_prefix = FIRST_WORDS[args.force_format] if args.force_format else (args.answer_prefix or "")
    if args.max_new_tokens is None:
        args.max_new_tokens = default_max_new_tokens(args.benchmark)
    if args.max_new_tokens < 1:
        raise UserError("--max-new-tokens must be >= 1")
    return args


def default_out(args, ckpts):
    tag = f"eval-{args.benchmark}" + ("" if args.split == "test" else f"-{args.split}")
    if args.force_format or args.answer_prefix:
        tag += f"-forced-{args.force_format or 'prefix'}"
    dirs = {os.path.dirname(os.path.abspath(p)) for p, _ in ckpts}
    if len(dirs) == 1:
        return os.path.join(os.path.dirname(ckpts[0][0]) or ".", tag)
    return os.path.join("out", tag)


@main_guard
def main(argv=None):
    from data import load_benchmark
    args = get_args(argv)
    set_threads(args.threads)
    seed_everything(args.seed)
    device, _, rank, world = setup_distributed(args.device)  # torchrun: one GPU per local rank
    try:
        if args.ckpt == [DEFAULT_CKPT] and not os.path.exists(DEFAULT_CKPT):
            raise UserError(f"no checkpoint at {DEFAULT_CKPT}: run python pretrain.py first, or pass --ckpt")
        ckpts = expand_ckpts(args.ckpt)
        records = load_benchmark(args.benchmark, split=args.split, data_dir=args.data_dir, limit=args.limit)
        if not records:
            raise UserError(f"benchmark {args.benchmark} ({args.split}) has no problems")
        out_dir = args.out or default_out(args, ckpts)
        if rank == 0:
            check_out_dir(out_dir)
        compare = len(ckpts) > 1
        results, taken, seen_steps = [], set(), {}
        mine = records[rank::world]  # problems are split across ranks and the outputs gathered
        for path, from_dir in ckpts:
            model, tok, ckpt = load_model(path, device)
            step, kind = ckpt.get("step"), ckpt.get("kind")
            key = (os.path.dirname(os.path.abspath(path)), kind, step)
            if from_dir and step is not None and key in seen_steps:
                if rank == 0:
                    print(f"skip {path}: same step {step} as {seen_steps[key]}")
                continue
            seen_steps[key] = path
            if rank == 0:
                print(f"evaluating {path} (kind {kind}, step {step}) on {args.benchmark} {args.split}: "
                      f"{len(records)} problems, greedy {not args.no_greedy}, n {args.n}, device {device}"
                      + (f", {world} ranks" if world > 1 else ""))
            gens, part = run_eval(model, tok, mine, n=args.n, temperature=args.temperature, top_p=args.top_p,
                                  max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, seed=args.seed + rank,
                                  greedy=not args.no_greedy, progress=rank == 0 and not args.no_tqdm, rule=args.rule,
                                  answer_prefix=args.answer_prefix)
            del model
            parts = all_gather([(gens, part)], world)  # one (generations, summary) per rank
            if rank != 0:
                continue
            order = {r["id"]: i for i, r in enumerate(records)}
            gens = sorted((g for pg, _ in parts for g in pg), key=lambda g: (order[g["id"]], g["sample"]))
            summary = summarize(gens, args.n)
            skipped = sorted((i for _, pp in parts for i in pp["skipped_ids"]), key=order.get)
            summary.update({
                "num_skipped": len(skipped), "skipped_ids": skipped,
                "new_tokens": sum(pp["new_tokens"] for _, pp in parts),
                "gen_seconds": max(pp["gen_seconds"] for _, pp in parts),
                "grade_seconds": max(pp["grade_seconds"] for _, pp in parts),
                "ckpt": path, "step": step, "kind": kind, "benchmark": args.benchmark, "split": args.split,
                "data_dir": args.data_dir, "limit": args.limit, "n": args.n, "greedy": not args.no_greedy,
                "temperature": args.temperature, "top_p": args.top_p, "max_new_tokens": args.max_new_tokens,
                "batch_size": args.batch_size, "seed": args.seed, "rule": args.rule, "device": device,
                "force_format": args.force_format, "answer_prefix": args.answer_prefix,
                "world_size": world, "tokenizer": repr(tok)})
            summary["tokens_per_s"] = round(summary["new_tokens"] / max(summary["gen_seconds"], 1e-9), 1)
            label = _label(path, taken)
            d = os.path.join(out_dir, label) if compare else out_dir
            os.makedirs(d, exist_ok=True)
            atomic_write_bytes(os.path.join(d, "generations.jsonl"),
                               "".join(json.dumps(g) + "\n" for g in gens).encode())
            atomic_write_json(os.path.join(d, "summary.json"), summary)
            print(format_table(summary))
            print(f"{summary['new_tokens']} new tokens in {summary['gen_seconds']:.1f}s "
                  f"({summary['tokens_per_s']:.0f}/s), grading {summary['grade_seconds']:.1f}s -> {d}")
            results.append((label, summary))
        if rank == 0 and compare and results:
            rows = compare_rows(results)
            atomic_write_json(os.path.join(out_dir, "compare.json"), rows)
            png = os.path.join(out_dir, "compare.png")
            plot_compare(rows, png, title=f"{args.benchmark} ({args.split})")
            print(compare_table(rows))
            print(f"-> {os.path.join(out_dir, 'compare.json')}, {png}")
    finally:
        if world > 1:
            import torch.distributed as dist
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
