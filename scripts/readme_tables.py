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


BLOCKS = {"bench-data": bench_data, "main-job-seeds": main_job_seeds, "main-job-steps": main_job_steps,
          "transfer": transfer, "frequent": frequent}


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
