"""
README's result tables, generated from the result files in results/ (never copied by hand).

    python scripts/readme_tables.py            # rewrite every generated block of README.md
    python scripts/readme_tables.py --check    # exit 1 if README.md is not what the result files give (a test runs it)

A generated block sits between `<!-- table: NAME -->` and `<!-- /table -->`; everything else in README.md is left
alone. The blocks and their files:
  bench-data       results/bench-data.json         python bench.py --sections data --json-out results/bench-data.json
  main-job-seeds   results/main-job/seed*.json     python echo_chamber.py --seeds ...; then each seed's
                                                   out/echo-seed<S>/rl-grpo/result.json copied to results/main-job/
  main-job-steps   results/main-job/seed1337.json  (the eval records inside it, one row per eval step)
  transfer         results/transfer/*.json         python echo_chamber.py --name transfer-... --seeds ...
                                                   --pretrain-args "--syn-hard-share FMT=SHARE"; each seed's
                                                   result.json copied to results/transfer/<FMTS>-<SHARE>-seed<S>.json
                                                   (the same seeds of results/main-job/ are the arm without them)
  frequent         results/frequent/*.json         python echo_chamber.py --name freq-... --seeds ...
                                                   --pretrain-args "--mix ..."; copied to results/frequent/
  algorithms       results/algorithms/ARM-seed*.json  python echo_chamber.py --seeds ... --algo ALGO [--rl-name ARM
                                                   --rl-args "..."]: each arm from the same pretrained models; each
                                                   result.json copied to results/algorithms/<ARM>-seed<S>.json
  ei-rounds        results/algorithms/ei-seed*.json   (the EI arm's rounds: kept set and the next round's mix)
  scale            results/scale/*-seed*.json      python echo_chamber.py --name scale-... --forced-formats
                                                   --pretrain-args "--n-layer ... --n-embd ..."; copied there (the
                                                   base size: results/algorithms/grpo-seed*.json with forced_before)
                   results/scale/prose-arithmetic.json  python scripts/prose_arithmetic.py ... --json ...
  scale-drill      results/scale-drill/*-seed*.json  the same with --pretrain-args "--mix ...,syn-arith:1 ...", every
                                                   size (d144-seed*.json, d256-seed*.json); its prose-arithmetic.json
A block whose files are missing says so instead of a table.
"""
import argparse
import glob
import json
import math
import os
import re
import shlex
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
FORMATS = ("tinygsm", "omi1", "omi2")


def pct(x, nd=1):
    return "-" if x is None else f"{100 * x:.{nd}f}%"


def md(header, rows):
    return "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] +
                     ["| " + " | ".join(map(str, r)) + " |" for r in rows])


def load(path):
    with open(path) as f:
        return json.load(f)


def bench_data(results):
    path = os.path.join(results, "bench-data.json")
    if not os.path.exists(path):
        return f"(no {os.path.relpath(path, ROOT)} yet: run `python bench.py --sections data --json-out {path}`)"
    d = load(path)
    rows = []
    for n in d["data_rows"]:
        for w in (1, 2):
            k = f"{n}_w{w}"
            rows.append([f"{n:,} + {n:,} rows ({d[f'data_tokens_{n}'] / 1e6:.1f}M tokens)", w,
                         f"{d[f'data_tok_per_s_{k}']:,}", f"{d[f'data_build_s_{k}']:.1f} / {d[f'data_wall_s_{k}']:.1f}",
                         f"{d[f'data_peak_mb_{k}']:,.0f}"])
    small, big = d["data_rows"]
    return (f"`python bench.py --sections data` on {d['device']} ({d['cpu_count']} cores), torch {d['torch']}: "
            f"`python -m data.prepare --vocab-size 32768` over a TinyGSM-like parquet and an OMI-2-like JSONL "
            f"(`scripts/make_bench_data.py`), each size and worker count into a fresh cache.\n\n"
            + md(["input", "workers", "tokens/s", "build / wall s", "peak MB (all processes)"], rows)
            + f"\n\n2 workers against 1: {d[f'data_speedup_2w_{small}']}x at {small:,} rows, "
              f"{d[f'data_speedup_2w_{big}']}x at {big:,}. Peak memory at {big:,} rows is "
              f"{d['data_peak_ratio_big_vs_small']}x that at {small:,} (flat in the input). The paper's 150m mixture "
              f"(about 52B tokens) on a 16-core machine, if 16 workers scale as 2 did here: about "
              f"**{d['data_52b_hours_16_cores']} hours**.")


def seed_files(results):
    files = glob.glob(os.path.join(results, "main-job", "seed*.json"))
    return sorted(files, key=lambda f: int(re.search(r"seed(\d+)", f).group(1)))


def top(shares):
    f = max(FORMATS, key=lambda f: shares.get(f, 0))
    return f, shares.get(f, 0)


def main_job_seeds(results):
    files = seed_files(results)
    if not files:
        return "(no results/main-job/seed*.json yet: run `python echo_chamber.py --seeds ...` and copy each result.json)"
    import echo_chamber
    res = [load(f) for f in files]
    agg = echo_chamber.aggregate(res)
    cpus = sorted({r.get("cpu", "?") for r in res})
    rows = []
    for r in res:
        b, a, hb, ha = r["test_before"], r["test_after"], r["hard_before"], r["hard_after"]
        sb, sa = b.get("sampled", {}), a.get("sampled", {})
        before = " / ".join(f"{pct(b['format_shares'].get(f, 0), 0)} ({pct(b['format_accuracy'].get(f), 0)})"
                            for f in FORMATS)
        w, ws = top(a["format_shares"])
        samp = (f"{pct(sb.get('pass@n'), 0)} -> {pct(sa.get('pass@n'), 0)} / {pct(sb.get('maj@n'), 0)} -> "
                f"{pct(sa.get('maj@n'), 0)}" if sb else "-")
        checks = "".join("y" if v else "n" for v in r["checks"].values())
        rows.append([r["seed"], before, pct(b["pass@1"]), f"{w} {pct(ws, 0)}", pct(a["pass@1"]), samp,
                     f"{pct(hb['pass@1'])} -> {pct(ha['pass@1'])}", checks, f"{r['total_seconds'] / 60:.1f}"])
    names = list(res[0]["checks"])
    n = agg["numbers"]
    ms = lambda k, s=100: ("-" if k not in n else f"{s * n[k]['mean']:.1f}" +
                           ("" if n[k]["se"] is None else f" +- {s * n[k]['se']:.1f}"))
    lines = [f"`python echo_chamber.py --seeds {','.join(str(r['seed']) for r in res)}` (GRPO; greedy evals on 200 "
             f"held-out problems, sampled ones at T 0.7 with n = {res[0]['test_before'].get('sampled', {}).get('n', '-')}"
             f"{_on(res[0]['test_before'])}), on {', '.join(cpus)}:", "",
             md(["seed", "before: tinygsm / omi1 / omi2 share (acc)", "pass@1 before", "after: winner",
                 "pass@1 after", "sampled pass@n / maj@n, before -> after", "hard set pass@1", "checks", "minutes"],
                rows), "",
             "Checks (the `checks` column, in this order): " + "; ".join(
                 f"{k}: **{agg['checks'][k]}/{agg['n']} seeds**" for k in names) + ".",
             f"Mean +- standard error over {agg['n']} seeds: pass@1 {ms('test pass@1 before')}% -> "
             f"{ms('test pass@1 after')}%; top format share {ms('top format share before')}% -> "
             f"{ms('top format share after')}%; hard set {ms('hard pass@1 before')}% -> {ms('hard pass@1 after')}%; "
             f"{ms('minutes', 1)} minutes a seed. Winners: " +
             ", ".join(f"{k} {v}" for k, v in sorted(agg["winners"].items())) +
             f"; the winner was the most frequent format before RL in {agg['winner_was_most_frequent']} of "
             f"{agg['n']} seeds and the most accurate (greedy) in {agg['winner_was_most_accurate']}."]
    return "\n".join(lines)


def _on(ev):
    """' on the first N problems' when the sampled evals used fewer problems than the greedy ones."""
    k = ev.get("sampled", {}).get("num_problems")
    return f" on the first {k}" if k and k != ev.get("num_problems") else ""


def main_job_steps(results, seed=1337):
    path = os.path.join(results, "main-job", f"seed{seed}.json")
    if not os.path.exists(path):
        return f"(no {os.path.relpath(path, ROOT)} yet)"
    r = load(path)
    rows = []
    for e in r.get("evals", []):
        s = e.get("sampled", {})
        se = e.get("format_accuracy_se", {})
        cells = [f"{pct(e['format_shares'].get(f, 0), 0)} ({pct(e['format_accuracy'].get(f), 0)}"
                 + ("" if se.get(f) is None else f" +- {100 * se[f]:.0f}") + ")" for f in FORMATS]
        pk = s.get("pass@k", {})
        rows.append([e["step"]] + cells + [pct(e["pass@1"]), pct(s.get("pass@1")), pct(pk.get("2")),
                                           pct(s.get("pass@n")), pct(s.get("maj@n"))])
    n = r["test_before"].get("sampled", {}).get("n", "n")
    return (f"Seed {seed} step by step (`python echo_chamber.py`; evals at log-spaced steps; greedy share (accuracy "
            f"+- its standard error) per format; sampled at T 0.7, {n} samples a problem{_on(r['test_before'])}):\n\n" +
            md(["RL step", "tinygsm", "omi1", "omi2", "greedy pass@1", "sampled pass@1", "pass@2",
                f"pass@{n}", f"maj@{n}"], rows))


def _seed_of(path):
    return int(re.search(r"seed(\d+)", os.path.basename(path)).group(1))


def _pretrain_flag(command, flag):
    """The value of one pretrain.py flag in a result's command, `--pretrain-args "..."` quoted or not (results
    written before echo_chamber.py quoted its command lack the quotes); None when absent."""
    words = [x for w in shlex.split(command) for x in (shlex.split(w) if " " in w else [w])]
    return words[words.index(flag) + 1] if flag in words[:-1] else None


def _mean_se(vals):
    import echo_chamber
    m, se = echo_chamber.mean_se(vals)
    return f"{100 * m:+.1f}" + ("" if se is None else f" +- {100 * se:.1f}")


def transfer(results):
    files = sorted(glob.glob(os.path.join(results, "transfer", "*.json")))
    if not files:
        return "(no results/transfer/*.json yet: run the transfer arms, docs/LOG.md)"
    base = {_seed_of(f): load(f) for f in seed_files(results)}
    rows, arms = [], {}
    for f in files:
        r = load(f)
        spec = _pretrain_flag(r["command"], "--syn-hard-share") or ""
        carriers = [x.split("=")[0] for x in spec.split(",") if x]
        hb, ha = r["hard_before"], r["hard_after"]
        w, ws = top(r["test_after"]["format_shares"])
        arm = "A (in the winner)" if w in carriers else "B (in a killed format)"
        d = ha["pass@1"] - hb["pass@1"]
        b = base.get(r["seed"])
        bd = None if b is None else b["hard_after"]["pass@1"] - b["hard_before"]["pass@1"]
        arms.setdefault((spec, arm), []).append((d, bd))
        carrier_acc = " / ".join(f"{c} {pct(hb['format_shares'].get(c, 0), 0)} ({pct(hb['format_accuracy'].get(c), 1)})"
                                 for c in carriers)
        rows.append([spec, r["seed"], f"{w} {pct(ws, 0)}", arm.split()[0], carrier_acc,
                     f"{pct(hb['pass@1'])} -> {pct(ha['pass@1'])}",
                     "-" if b is None else f"{pct(b['hard_before']['pass@1'])} -> {pct(b['hard_after']['pass@1'])}",
                     f"{pct(r['test_before']['pass@1'])} -> {pct(r['test_after']['pass@1'])}"])
    n_hard = load(files[0])["hard_before"]["num_problems"]
    lines = [f"`python echo_chamber.py --name transfer-... --seeds ... --pretrain-args \"--syn-hard-share FMT=SHARE\"` "
             f"(GRPO on 1-2 step prompts; greedy pass@1 on {n_hard} held-out 3-step problems before and after RL; the "
             f"same seed of the main job, without 3-step problems in pretraining, beside it):", "",
             md(["3-step problems in", "seed", "winner", "arm", "before RL, hard set: carrier share (acc)",
                 "hard pass@1", "same seed, none in pretraining", "test pass@1"], rows), ""]
    for (spec, arm), ds in sorted(arms.items()):
        mine = [d for d, _ in ds]
        paired = [d - bd for d, bd in ds if bd is not None]
        lines.append(f"{spec}, arm {arm}: {len(mine)} seeds, hard pass@1 rose in {sum(d > 0 for d in mine)}, fell in "
                     f"{sum(d < 0 for d in mine)}; change {_mean_se(mine)} points (mean +- SE)"
                     + (f", {_mean_se(paired)} points against the same seeds without them" if paired else "") + ".")
    lines.append(f"One problem of {n_hard} is {100 / n_hard:.1f} points.")
    return "\n".join(lines)


def frequent(results):
    files = sorted(glob.glob(os.path.join(results, "frequent", "*.json")), key=_seed_of)
    if not files:
        return "(no results/frequent/*.json yet: run the frequent-versus-accurate mixture, docs/LOG.md)"
    res = [load(f) for f in files]
    rows = []
    for r in res:
        s = r["test_before"]["sampled"]
        n_out = s["n"] * s["num_problems"]
        cells = []
        for f in FORMATS:
            sh, acc, se = s["format_shares"].get(f, 0), s["format_accuracy"].get(f), s["format_accuracy_se"].get(f)
            cells.append(f"{pct(sh, 0)} +- {100 * math.sqrt(sh * (1 - sh) / n_out):.0f} ({pct(acc, 0)}"
                         + ("" if se is None else f" +- {100 * se:.0f}") + ")")
        w, ws = top(r["test_after"]["format_shares"])
        rows.append([r["seed"]] + cells + [r["most_frequent_before_sampled"], r["most_accurate_before_sampled"],
                                           f"{w} {pct(ws, 0)}",
                                           f"{pct(r['test_before']['pass@1'])} -> {pct(r['test_after']['pass@1'])}"])
    mix = _pretrain_flag(res[0]["command"], "--mix")
    n = len(res)
    s0 = res[0]["test_before"]["sampled"]
    over = {f: sum(r["test_before"]["sampled"]["format_shares"].get(f, 0) > 0.5 for r in res) for f in FORMATS}
    most = max(FORMATS, key=lambda f: over[f])
    return "\n".join([
        f"`python echo_chamber.py --name freq-... --seeds {','.join(str(r['seed']) for r in res)} --pretrain-args "
        f"\"--mix {mix}\"` (GRPO; before RL, sampled at T {s0['temperature']} with n = {s0['n']} on "
        f"{s0['num_problems']} problems: each format's share of the outputs +- its standard error (binomial over "
        f"the {s0['n'] * s0['num_problems']} outputs) and its accuracy +- standard error):", "",
        md(["seed", "tinygsm", "omi1", "omi2", "most frequent", "most accurate", "after: winner", "pass@1"], rows), "",
        f"{most} held more than half of the sampled outputs before RL in **{over[most]}/{n} seeds**. The winner was "
        f"the most frequent format (sampled) in **{sum(r['winner'] == r['most_frequent_before_sampled'] for r in res)}"
        f"/{n}** seeds and the most accurate (sampled) in "
        f"**{sum(r['winner'] == r['most_accurate_before_sampled'] for r in res)}/{n}**."])


def _arm_key(arm):
    """Table order of the algorithm arms: grpo, then ppo and its variants, then ei and its variants."""
    return (["grpo", "ppo", "ei"].index(arm.split("-")[0]) if arm.split("-")[0] in ("grpo", "ppo", "ei") else 9, arm)


def _first_at(evals, share=0.9):
    """The first eval step at which one format held `share` of the greedy outputs, or '-' if none did."""
    return next((e["step"] for e in evals if max(e["format_shares"].get(f, 0) for f in FORMATS) >= share), "-")


def _head_gap(r, steps=5):
    """Mean over the first `steps` RL steps of (advantage on the first 5 tokens of correct rows) - (of wrong rows)."""
    gaps = [row[1] - row[2] for row in r.get("train", {}).get("adv_head", [])[:steps]
            if row[1] is not None and row[2] is not None]
    return None if not gaps else sum(gaps) / len(gaps)


def _head_by_format(r, steps=5):
    """'t / o1 / o2': each format's mean advantage on the first 5 tokens over the first `steps` RL steps."""
    rows = [row[3] for row in r.get("train", {}).get("adv_head", [])[:steps] if len(row) > 3 and row[3]]
    if not rows:
        return "-"
    cell = lambda f: [x[f] for x in rows if x.get(f) is not None]
    return " / ".join("-" if not cell(f) else f"{sum(cell(f)) / len(cell(f)):+.2f}" for f in FORMATS)


def algorithms(results):
    files = glob.glob(os.path.join(results, "algorithms", "*-seed*.json"))
    if not files:
        return "(no results/algorithms/*.json yet: run the algorithm comparison, docs/LOG.md)"
    import echo_chamber
    arm_of = lambda f: re.sub(r"-seed\d+\.json$", "", os.path.basename(f))
    files.sort(key=lambda f: (_arm_key(arm_of(f)), _seed_of(f)))
    rows, by_arm, cmds = [], {}, {}
    for f in files:
        r, arm = load(f), arm_of(f)
        b, a = r["test_before"], r["test_after"]
        sb, sa = b.get("sampled", {}), a.get("sampled", {})
        w, ws = top(a["format_shares"])
        gap = _head_gap(r)
        rows.append([arm, r["seed"], f"{r['train']['samples']:,}",
                     " / ".join(pct(b["format_shares"].get(x, 0), 0) for x in FORMATS), f"{w} {pct(ws, 0)}",
                     _first_at(r["evals"]), f"{pct(b['pass@1'])} -> {pct(a['pass@1'])}",
                     f"{pct(sb.get('pass@k', {}).get('1'))} -> {pct(sa.get('pass@k', {}).get('1'))}",
                     "-" if gap is None else f"{gap:+.2f}", _head_by_format(r),
                     f"{r['seconds'].get('rl', 0) / 60:.1f}"])
        by_arm.setdefault(arm, []).append(r)
        cmds.setdefault(arm, r["command"])
    first_sampled = by_arm[arm_of(files[0])][0]["test_before"].get("sampled", {})
    lines = ["Each arm from the same pretrained models (one per seed; `python echo_chamber.py --seeds ...` pretrains "
             "them, every arm reuses them):", ""]
    lines += [f"- {arm}: `{cmd}`" for arm, cmd in sorted(cmds.items(), key=lambda kv: _arm_key(kv[0]))]
    lines += ["", md(["arm", "seed", "samples", "before: tinygsm / omi1 / omi2", "after: winner", "step at 90%",
                      "greedy pass@1", "sampled pass@1", "head credit", "head credit by format", "RL min"], rows), "",
              "`head credit`: over the first 5 RL steps, the mean advantage on the first 5 response tokens (where the "
              "format is chosen) of correct rollouts minus that of wrong ones (rl.head_advantage); `by format`: "
              "the same mean for the rollouts of each format, tinygsm / omi1 / omi2; `step at 90%`: the "
              "first eval step with one format at 90% of greedy outputs. Sampled pass@1: at each arm's rollout setting "
              "(PPO, GRPO: T 0.7; EI: T 1.0, top-p 0.95), n = "
              f"{first_sampled.get('n', '-')} on the first {first_sampled.get('num_problems', '-')} problems.", ""]
    for arm, res in sorted(by_arm.items(), key=lambda kv: _arm_key(kv[0])):
        m = lambda xs: echo_chamber.mean_se(xs)
        pa, pb = m([r["test_after"]["pass@1"] for r in res]), m([r["test_before"]["pass@1"] for r in res])
        d = m([r["test_after"]["pass@1"] - r["test_before"]["pass@1"] for r in res])
        coll = sum(max(r["test_after"]["format_shares"].get(x, 0) for x in FORMATS) >= 0.9 for r in res)
        up = sum(r["test_after"]["pass@1"] > r["test_before"]["pass@1"] for r in res)
        fmt = lambda t, sign="": f"{100 * t[0]:{sign}.1f}" + ("" if t[1] is None else f" +- {100 * t[1]:.1f}")
        wins = {}
        for r in res:
            wins[r["winner"]] = wins.get(r["winner"], 0) + 1
        lines.append(f"{arm}: one format at 90%+ after in **{coll}/{len(res)}** seeds, pass@1 higher in "
                     f"**{up}/{len(res)}**; pass@1 {fmt(pb)}% -> {fmt(pa)}% (change {fmt(d, '+')} points, mean +- SE); "
                     "winners " + ", ".join(f"{k} {v}" for k, v in sorted(wins.items())) + ".")
    return "\n".join(lines)


def _tv(p, q):
    """Total variation distance between two format mixes (over the three formats and 'other')."""
    keys = set(p) | set(q)
    return 0.5 * sum(abs(p.get(k, 0) - q.get(k, 0)) for k in keys)


def ei_rounds(results):
    files = sorted(glob.glob(os.path.join(results, "algorithms", "ei-seed*.json")), key=_seed_of)
    if not files:
        return "(no results/algorithms/ei-seed*.json yet)"
    rows, pred = [], []
    mix = lambda d: " / ".join(pct(d.get(x, 0), 0) for x in FORMATS)
    for f in files:
        r = load(f)
        rounds = r["train"]["rounds"]
        evals = {e["step"]: e for e in r["evals"]}
        for i, rd in enumerate(rounds):
            nxt = rounds[i + 1]["sample_format_shares"] if i + 1 < len(rounds) else None
            ev = evals.get(rd["round"])
            rows.append([r["seed"], rd["round"], f"{rd['accuracy'] * 100:.1f}%", rd["kept"],
                         mix(rd["sample_format_shares"]), mix(rd["kept_format_shares"]),
                         "-" if nxt is None else mix(nxt), "-" if ev is None else mix(ev["format_shares"])])
            if nxt is not None:
                pred.append((_tv(rd["kept_format_shares"], nxt), _tv(rd["sample_format_shares"], nxt)))
    lines = ["Expert Iteration round by round (format mixes as tinygsm / omi1 / omi2): the round's samples (T 1.0, "
             "top-p 0.95) and their accuracy, the kept set (correct, distinct) the next policy is fine-tuned on, the "
             "next round's samples from that policy, and its greedy eval:", "",
             md(["seed", "round", "sample acc", "kept", "samples", "kept set", "next round's samples",
                 "greedy eval after"], rows)]
    if pred:
        k = sum(a for a, _ in pred) / len(pred)
        s = sum(b for _, b in pred) / len(pred)
        lines += ["", f"Does the kept set's mix predict the next round's? Mean total variation distance to the next "
                      f"round's sample mix over {len(pred)} round pairs: kept set **{k:.2f}**, this round's samples "
                      f"{s:.2f} (smaller is closer; kept closer in {sum(a < b for a, b in pred)} of {len(pred)})."]
    return "\n".join(lines)


def _best_forced(fb):
    """The format most accurate when forced, or 'a ~ b' for those within one standard error of the best."""
    if not fb:
        return "-"
    top_f = max(FORMATS, key=lambda x: fb.get(x, {}).get("sampled_pass@1", -1))
    best, se = fb[top_f]["sampled_pass@1"], fb[top_f].get("sampled_pass@1_se") or 0
    near = [x for x in FORMATS if x in fb and best - fb[x]["sampled_pass@1"] <= max(se, fb[x].get("sampled_pass@1_se") or 0)]
    return " ~ ".join(near)


def scale(results):
    # the other sizes' runs, and the base size's: the GRPO arm of the algorithm comparison run with --forced-formats
    base = [r for r in map(load, glob.glob(os.path.join(results, "algorithms", "grpo-seed*.json"))) if r.get("forced_before")]
    return _scale(results, "scale", base, "Each size pretrained on the same mixture")


def scale_drill(results):
    # every size's runs in results/scale-drill/ (the drill mixture is not the default one, so no base arm is reused)
    return _scale(results, "scale-drill", [], "Each size pretrained on the default mixture plus one copy of the "
                                              "arithmetic drill (syn-arith:1)")


def _scale(results, folder, base, intro):
    files = glob.glob(os.path.join(results, folder, "*-seed*.json"))
    if not files:
        return f"(no results/{folder}/*.json yet: run the scale experiment, docs/LOG.md)"
    res = sorted([load(f) for f in files] + base, key=lambda r: (r["params"], r["seed"]))
    rows, cmds = [], {}
    for r in res:
        fb = r.get("forced_before") or {}
        cells = [("-" if x not in fb else f"{pct(fb[x]['sampled_pass@1'], 1)}"
                  + ("" if fb[x].get("sampled_pass@1_se") is None else f" +- {100 * fb[x]['sampled_pass@1_se']:.1f}"))
                 for x in FORMATS]
        best = _best_forced(fb)
        b, a = r["test_before"], r["test_after"]
        w, ws = top(a["format_shares"])
        rows.append([f"{r['params'] / 1e6:.2f}M", r["seed"]] + cells + [
            best, " / ".join(pct(b["format_shares"].get(x, 0), 0) for x in FORMATS), f"{w} {pct(ws, 0)}",
            f"{pct(b['pass@1'])} -> {pct(a['pass@1'])}"])
        cmds.setdefault(f"{r['params'] / 1e6:.2f}M", r["command"])
    fb0 = next((r["forced_before"] for r in res if r.get("forced_before")), {})
    any_fmt = next(iter(fb0.values()), {})
    return "\n".join(
        [f"{intro}, then evaluated with each format forced (the answer starts "
         f"with the format's first words; sampled pass@1 +- SE over problems, T 0.7, n = {any_fmt.get('n', '-')} on "
         f"{any_fmt.get('num_problems', '-')} problems), then GRPO:", ""]
        + [f"- {k}: `{c}`" for k, c in cmds.items()]
        + ["", md(["params", "seed", "forced tinygsm", "forced omi1", "forced omi2", "best forced",
                   "before: tinygsm / omi1 / omi2 (greedy)", "after GRPO: winner", "greedy pass@1"], rows)]
        + _prose_arithmetic(results, folder))


def _prose_arithmetic(results, folder):
    path = os.path.join(results, folder, "prose-arithmetic.json")
    if not os.path.exists(path):
        return []
    rows = [[r["file"].split("/pretrain/")[0].replace("out/", ""), r["outputs"],
             pct(r["first_number_copied"]), r["equations"],
             pct(r["equations_right"]), pct(r["pass@1_as_written"]), pct(r["pass@1_arithmetic_redone"])]
            for r in load(path)]
    return ["", "The forced prose outputs, their arithmetic checked (`python scripts/prose_arithmetic.py "
                f"out/RUN/pretrain/eval-forced-omi2/generations.jsonl ... --json results/{folder}/prose-arithmetic.json`: "
                "every `a op b = c` recomputed, corrected values carried into the equations that reuse them; \"first number "
                "copied\": the first number after the opening line is one of the question's):", "",
            md(["run", "prose outputs", "first number copied", "equations", "computed right", "pass@1 as written",
                "pass@1 with the arithmetic redone"], rows)]


BLOCKS = {"bench-data": bench_data, "main-job-seeds": main_job_seeds, "main-job-steps": main_job_steps,
          "transfer": transfer, "frequent": frequent, "algorithms": algorithms, "ei-rounds": ei_rounds,
          "scale": scale, "scale-drill": scale_drill}


def render(text, results):
    def sub(m):
        name = m.group(1)
        if name not in BLOCKS:
            raise SystemExit(f"README.md: unknown table {name!r}; known: {', '.join(BLOCKS)}")
        return f"<!-- table: {name} -->\n{BLOCKS[name](results)}\n<!-- /table -->"
    return re.sub(r"<!-- table: ([\w-]+) -->\n.*?<!-- /table -->", sub, text, flags=re.S)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="exit 1 if README.md differs from what the files give")
    ap.add_argument("--readme", default=os.path.join(ROOT, "README.md"), help="the file to rewrite")
    ap.add_argument("--results", default=os.path.join(ROOT, "results"), help="folder of result files")
    args = ap.parse_args(argv)
    with open(args.readme) as f:
        text = f.read()
    new = render(text, args.results)
    if args.check:
        if new != text:
            print(f"{args.readme} differs from its result files: run python scripts/readme_tables.py", file=sys.stderr)
            return 1
        return 0
    if new != text:
        tmp = args.readme + ".tmp"
        with open(tmp, "w") as f:
            f.write(new)
        os.replace(tmp, args.readme)
    print(f"{args.readme}: {len(re.findall('<!-- table: ', new))} generated tables")
    return 0


if __name__ == "__main__":
    sys.exit(main())
