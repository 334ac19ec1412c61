"""
The main job: the echo chamber at toy scale, on a CPU, in minutes.

    python echo_chamber.py                       # seed 1337: pretrain -> evaluate -> RL (GRPO) -> evaluate
    python echo_chamber.py --seed 2              # another seed (its own pretraining and RL)
    python echo_chamber.py --seeds 1337,2,3,4,5  # several seeds one after another: each check as a count of seeds,
                                                 # each number as mean +- standard error (out/echo-seeds-<list>-grpo.json)
    python echo_chamber.py --algo ppo            # reuses this seed's pretraining, runs PPO instead
    python echo_chamber.py --kl 0.05             # reuses the pretraining, GRPO with a KL penalty

What it runs, each stage a script you can also run alone (the commands are printed as they start):
  1. pretrain.py   the toy GPT on the embedded synthetic three-format mixture     -> <out>/pretrain/ckpt.pt
                   (skipped when that checkpoint is already complete; resumed when it is partial)
  2. rl.py         RL on the synthetic RL prompts; greedy evals on the held-out test set at step 0 and every few
                   steps, a PNG of the format shares over steps                     -> <out>/<rl>/formats.png
  3. evaluate.py   before (pretrained) and after (RL) on the harder held-out set (more steps than pretraining
                   or RL ever saw: the transfer finding)             -> <out>/<rl>/eval-synthetic-hard-*/
                   (the held-out test set's before / after are rl.py's own step-0 and last evals)
  4. a table of each format's share and accuracy, before and after, and the checks the echo chamber predicts,
     printed and written to <out>/<rl>/result.json.
A result is a claim over seeds, not one run: CPUs differ in floating point (AVX2 against AVX-512), so the same seed
pretrains a different model on another machine. --seeds runs the whole job per seed and reports the spread.
"""
import json
import os
import re
import shlex
import subprocess
import sys
import time

from classify import FORMATS
from common import ArgParser, UserError, main_guard, atomic_write_json, read_jsonl, text_table

HERE = os.path.dirname(os.path.abspath(__file__))


def get_args(argv=None):
    p = ArgParser(description="The echo chamber at toy scale: pretrain, RL, evaluate before and after, print and "
                              "plot.")
    p.add_argument("--seed", type=int, default=1337, help="seed of pretraining (data, init) and RL")
    p.add_argument("--seeds", default=None, help="comma-separated seeds, run one after another (replaces --seed); "
                                                 "prints each check as a count of seeds and each number as mean +- "
                                                 "standard error, written to out/echo-seeds-<seeds>[-<rl>].json")
    p.add_argument("--name", default="echo", help="experiment name: each seed goes to out/<name>-seed<seed> (use one "
                                                  "per mixture or setting, e.g. --name freq with --pretrain-args)")
    p.add_argument("--out-dir", default=None, help="default out/<name>-seed<seed> (with --seeds: one per seed)")
    p.add_argument("--algo", default="grpo", choices=["grpo", "ppo", "ei"], help="RL algorithm")
    p.add_argument("--kl", type=float, default=None, help="KL coefficient (default: rl.py's toy default)")
    p.add_argument("--rl-steps", type=int, default=None, help="RL steps (EI: rounds; default: rl.py's toy default)")
    p.add_argument("--pretrain-iters", type=int, default=None, help="pretraining steps (default: the toy preset's)")
    p.add_argument("--eval-limit", type=int, default=200, help="problems of the harder set evaluated before and "
                                                               "after (0 = all 500); the test set's are rl.py's")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads for every stage (use 1 when "
                                                          "anything else runs: OpenMP spin-waits make 2 threads crawl)")
    p.add_argument("--pretrain-args", default="", help="extra flags for pretrain.py, as one string")
    p.add_argument("--rl-args", default="", help="extra flags for rl.py, as one string")
    p.add_argument("--rl-name", default=None,
                   help="the RL run's folder inside each seed's, out/<name>-seed<seed>/rl-<rl-name> (default: from "
                        "--algo, --kl, --rl-steps); name one per --rl-args setting, so settings on the same "
                        "pretrained model keep apart")
    p.add_argument("--forced-formats", action="store_true",
                   help="also evaluate the pretrained model with each format forced (every answer starts with the "
                        "format's first words; greedy, and sampled at T 0.7 with n 4, on the first --forced-limit "
                        "test problems): the accuracy the model has in each format, whatever it would pick "
                        "(result.json forced_before)")
    p.add_argument("--forced-limit", type=int, default=100, help="problems of the test set in each forced-format eval")
    p.add_argument("--no-tqdm", action="store_true", help="no progress bars in the stages")
    args = p.parse_args(argv)
    try:
        args.seed_list = [int(x) for x in args.seeds.split(",") if x.strip()] if args.seeds else [args.seed]
    except ValueError:
        raise UserError(f"--seeds must be comma-separated integers, got {args.seeds!r}")
    if not args.seed_list or len(set(args.seed_list)) != len(args.seed_list):
        raise UserError(f"--seeds must list distinct seeds, got {args.seeds!r}")
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", args.name):
        raise UserError(f"--name must be letters, digits, '_', '.' or '-', got {args.name!r}")
    if args.rl_name is not None and not re.fullmatch(r"[A-Za-z0-9_.-]+", args.rl_name):
        raise UserError(f"--rl-name must be letters, digits, '_', '.' or '-', got {args.rl_name!r}")
    if args.out_dir and len(args.seed_list) > 1:
        raise UserError("--out-dir names one seed's folder; with several --seeds each goes to out/<name>-seed<seed>")
    return args


def run(cmd):
    """Run one stage, its output streaming through; a failed stage stops the job with its exit code."""
    print("\n$ " + " ".join(cmd[1:]), flush=True)
    t0 = time.time()
    rc = subprocess.call(cmd, cwd=HERE)
    if rc != 0:
        raise UserError(f"stage failed (exit {rc}): {' '.join(cmd[1:])}")
    return time.time() - t0


def load_json(path):
    with open(path) as f:
        return json.load(f)


def table(title, before, after):
    pct = lambda x: "-" if x is None else f"{100 * x:.1f}%"
    rows = [[f, pct(before["format_shares"].get(f, 0.0)), pct(before["format_accuracy"].get(f)),
             pct(after["format_shares"].get(f, 0.0)), pct(after["format_accuracy"].get(f))] for f in FORMATS]
    rows.append(["pass@1", "", pct(before["pass@1"]), "", pct(after["pass@1"])])
    return title + "\n" + text_table(["format", "share before", "acc before", "share after", "acc after"], rows)


def rl_tag(args):
    if args.rl_name:
        return args.rl_name
    return args.algo + ("" if args.kl is None else f"-kl{args.kl:g}") + ("" if args.rl_steps is None else f"-s{args.rl_steps}")


def complete(ckpt, key):
    """(exists, complete) of a checkpoint: complete when its step reached its own args[key] (max_iters, max_steps)."""
    if not os.path.exists(ckpt):
        return False, False
    from model import load_checkpoint
    ck = load_checkpoint(ckpt)
    done = ck["step"] >= ck["args"][key]
    print(f"{ckpt}: step {ck['step']} of {ck['args'][key]}" + (" (complete, reused)" if done else " (resumed)"))
    return True, done


FORCED = dict(n=4, temperature=0.7)  # the forced-format evals: sampled like RL's evals


def run_seed(args, seed):
    """The whole job for one seed; returns its result dict (also written to <out>/<rl>/result.json)."""
    py = sys.executable
    out = args.out_dir or os.path.join("out", f"{args.name}-seed{seed}")
    pre_dir = os.path.join(out, "pretrain")
    rl_dir = os.path.join(out, f"rl-{rl_tag(args)}")
    common = ["--threads", str(args.threads)] + (["--no-tqdm"] if args.no_tqdm else [])
    times = {}
    t_start = time.time()

    # 1. pretraining (reused when complete, resumed when partial)
    ckpt = os.path.join(pre_dir, "ckpt.pt")
    exists, done = complete(ckpt, "max_iters")
    if not done:
        cmd = [py, "pretrain.py", "--out-dir", pre_dir, "--seed", str(seed)] + common
        if exists:
            cmd.append("--resume")
        elif args.pretrain_iters:
            cmd += ["--max-iters", str(args.pretrain_iters)]
        times["pretrain"] = run(cmd + args.pretrain_args.split())

    # 1b. (--forced-formats) the pretrained model's accuracy in each format, each forced from the first words on:
    #     which format would be best if RL picked by accuracy alone (reused when already evaluated)
    forced = {}
    if args.forced_formats:
        from data.synthetic import FIRST_WORDS
        for fmt in FIRST_WORDS:
            d = os.path.join(pre_dir, f"eval-forced-{fmt}")
            if not os.path.exists(os.path.join(d, "summary.json")):
                times[f"forced-{fmt}"] = run([py, "evaluate.py", "--ckpt", ckpt, "--force-format", fmt, "--out", d,
                                              "--limit", str(args.forced_limit), "--n", str(FORCED["n"]),
                                              "--temperature", str(FORCED["temperature"]), "--top-p", "1.0",
                                              "--seed", str(seed)] + common)
            sm = load_json(os.path.join(d, "summary.json"))
            smp = sm["sampled"]
            forced[fmt] = {"pass@1": sm["pass@1"], "sampled_pass@1": smp["pass@k"]["1"],
                           "sampled_pass@1_se": problem_se(os.path.join(d, "generations.jsonl")),
                           "sampled_share_held": smp["format_shares"].get(fmt, 0.0),
                           "num_problems": sm["num_problems"], "n": smp["n"]}

    # 2. RL, with its own step-0 and periodic held-out evaluations (reused when complete, resumed when partial)
    exists, done = complete(os.path.join(rl_dir, "ckpt.pt"), "max_steps")
    if not done:
        cmd = [py, "rl.py", "--out-dir", rl_dir] + common
        if exists:
            cmd.append("--resume")
        else:
            cmd += ["--algo", args.algo, "--ckpt", ckpt, "--seed", str(seed)]
            if args.kl is not None:
                cmd += ["--kl", str(args.kl)]
            if args.rl_steps is not None:
                cmd += ["--max-steps", str(args.rl_steps)]
            cmd += args.rl_args.split()
        times["rl"] = run(cmd)

    # 3. before / after. The held-out test set: rl.py's own greedy evals at step 0 and at the last step (the same
    #    problems, already in its metrics.jsonl: evaluating them again would only cost time). The harder set
    #    (more steps than pretraining or RL ever saw: the transfer finding): evaluate.py before and after.
    evals = [r for r in read_jsonl(os.path.join(rl_dir, "metrics.jsonl")) if r.get("type") == "eval"]
    if not evals or evals[0]["step"] != 0:
        raise UserError(f"{rl_dir}/metrics.jsonl has no step-0 eval record: run rl.py with --eval-interval > 0")
    summaries = {("synthetic", "before"): evals[0], ("synthetic", "after"): evals[-1]}  # the log is in step order
    limit = ["--limit", str(args.eval_limit)] if args.eval_limit else []
    trained = "pretrain" in times or "rl" in times
    for when, path in (("before", ckpt), ("after", os.path.join(rl_dir, "ckpt.pt"))):
        d = os.path.join(rl_dir, f"eval-synthetic-hard-{when}")
        summary = os.path.join(d, "summary.json")
        # reused when nothing was trained in this invocation and it covers the same problems
        if trained or not os.path.exists(summary) or load_json(summary).get("limit") != (args.eval_limit or None):
            times[f"eval-hard-{when}"] = run([py, "evaluate.py", "--ckpt", path, "--benchmark", "synthetic-hard",
                                              "--out", d, "--seed", str(seed)] + limit + common)
        summaries[("synthetic-hard", when)] = load_json(summary)

    # 4. the result, and the checks the echo chamber predicts (reported, never tuned)
    b, a = summaries[("synthetic", "before")], summaries[("synthetic", "after")]
    hb, ha = summaries[("synthetic-hard", "before")], summaries[("synthetic-hard", "after")]
    real = [f for f in FORMATS if f != "other"]
    top_before = max(real, key=lambda f: b["format_shares"].get(f, 0))
    top_after = max(real, key=lambda f: a["format_shares"].get(f, 0))
    acc_before = {f: b["format_accuracy"].get(f) for f in real}
    most_accurate = max(real, key=lambda f: acc_before[f] if acc_before[f] is not None else -1)
    checks = {
        "before: no format above 60% of greedy outputs": b["format_shares"][top_before] <= 0.60,
        "after: one format at 90% or more": a["format_shares"][top_after] >= 0.90,
        "pass@1 higher after RL": a["pass@1"] > b["pass@1"],
        "hard set pass@1 higher after RL (transfer)": ha["pass@1"] > hb["pass@1"],
    }
    keep = ("pass@1", "format_shares", "format_accuracy", "format_accuracy_se", "num_problems", "sampled")
    result = {
        "seed": seed, "algo": args.algo, "kl": args.kl, "out": rl_dir,
        "test_before": {k: b[k] for k in keep if k in b},
        "test_after": {k: a[k] for k in keep if k in a},
        "hard_before": {k: hb[k] for k in keep if k in hb},
        "hard_after": {k: ha[k] for k in keep if k in ha},
        "winner": top_after, "most_frequent_before": top_before, "most_accurate_before": most_accurate,
        # RL sees accuracy at its sampling temperature: the sampled eval's view of "most frequent / most accurate"
        "most_frequent_before_sampled": _top(b.get("sampled", {}).get("format_shares"), real),
        "most_accurate_before_sampled": _top(b.get("sampled", {}).get("format_accuracy"), real),
        "checks": checks, "seconds": {k: round(v, 1) for k, v in times.items()},
        "cpu": cpu_name(), "command": shlex.join(["python", "echo_chamber.py"] + sys.argv[1:]),
        "forced_before": forced or None,  # --forced-formats: the pretrained model's accuracy in each format
        "params": param_count(ckpt), "rl_args": args.rl_args, "pretrain_args": args.pretrain_args,
        "train": rl_summary(rl_dir),
        "evals": [{k: v for k, v in e.items() if k != "type"} for e in evals],  # the run's eval records, in step order
        "total_seconds": round(time.time() - t_start, 1),
    }
    atomic_write_json(os.path.join(rl_dir, "result.json"), result)
    print()
    print(table(f"held-out synthetic test set ({b['num_problems']} problems, greedy)", b, a))
    print()
    print(table(f"harder held-out set ({hb['num_problems']} problems, 3 steps, greedy)", hb, ha))
    print()
    print(f"winner after RL: {top_after} ({100 * a['format_shares'][top_after]:.1f}%); before RL the most frequent "
          f"was {top_before} ({100 * b['format_shares'][top_before]:.1f}%) and the most accurate {most_accurate}")
    for k, v in checks.items():
        print(f"[{'yes' if v else 'NO '}] {k}")
    print(f"\nformat shares over RL steps: {os.path.join(rl_dir, 'formats.png')}")
    print(f"result: {os.path.join(rl_dir, 'result.json')}  (total {result['total_seconds'] / 60:.1f} min: "
          + ", ".join(f"{k} {v / 60:.1f}" for k, v in times.items()) + ")")
    return result


def problem_se(generations_path):
    """Standard error of sampled pass@1 over problems (each problem's fraction correct is one observation)."""
    frac = {}
    for g in read_jsonl(generations_path):
        if g["sample"] >= 0:
            frac.setdefault(g["id"], []).append(bool(g["correct"]))
    return mean_se([sum(v) / len(v) for v in frac.values()])[1]


def param_count(ckpt):
    from model import load_checkpoint
    return sum(v.numel() for v in load_checkpoint(ckpt)["model"].values())


def rl_summary(rl_dir):
    """What the algorithm comparison reads from the train records: samples drawn, and EI's kept set per round
    (its format mix is what the next round's policy is fine-tuned on)."""
    recs = [r for r in read_jsonl(os.path.join(rl_dir, "metrics.jsonl")) if r.get("type") == "train"]
    out = {"samples": sum(r.get("samples", 0) for r in recs), "steps": len(recs)}
    if any("kept" in r for r in recs):
        out["rounds"] = [{"round": r["step"], "kept": r["kept"], "kept_format_shares": r["kept_format_shares"],
                          "sample_format_shares": r["format_shares"], "accuracy": r["accuracy"]} for r in recs]
    if any("adv_head_correct" in r for r in recs):
        out["adv_head"] = [[r["step"], r["adv_head_correct"], r["adv_head_wrong"], r.get("adv_head_format")]
                           for r in recs]
    return out


def cpu_name():
    """The CPU model (results differ between CPUs: AVX2 against AVX-512 floating point)."""
    try:
        with open("/proc/cpuinfo") as f:
            return next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        import platform
        return platform.processor() or platform.machine()


def _top(d, labels):
    """The label with the largest value in d (None values and missing labels lose), or None without d."""
    if not d:
        return None
    return max(labels, key=lambda f: -1 if d.get(f) is None else d[f])


def mean_se(xs):
    """(mean, standard error of the mean) of a list of numbers; SE is None for one value."""
    xs = [x for x in xs if x is not None]
    if not xs:
        return None, None
    m = sum(xs) / len(xs)
    if len(xs) < 2:
        return m, None
    return m, (sum((x - m) ** 2 for x in xs) / (len(xs) - 1) / len(xs)) ** 0.5


def aggregate(results):
    """Several seeds' results -> each check as a count of seeds, each headline number as mean +- SE."""
    real = [f for f in FORMATS if f != "other"]
    nums = {
        "test pass@1 before": [r["test_before"]["pass@1"] for r in results],
        "test pass@1 after": [r["test_after"]["pass@1"] for r in results],
        "top format share before": [max(r["test_before"]["format_shares"].get(f, 0) for f in real) for r in results],
        "top format share after": [max(r["test_after"]["format_shares"].get(f, 0) for f in real) for r in results],
        "hard pass@1 before": [r["hard_before"]["pass@1"] for r in results],
        "hard pass@1 after": [r["hard_after"]["pass@1"] for r in results],
        "minutes": [r["total_seconds"] / 60 for r in results],
    }
    for when in ("before", "after"):
        for k in ("pass@1", "pass@n", "maj@n"):
            vals = [r[f"test_{when}"].get("sampled", {}).get(k) for r in results]
            if any(v is not None for v in vals):
                nums[f"test sampled {k} {when}"] = vals
    checks = {k: sum(bool(r["checks"][k]) for r in results) for k in results[0]["checks"]}
    winners = {}
    for r in results:
        winners[r["winner"]] = winners.get(r["winner"], 0) + 1
    return {"seeds": [r["seed"] for r in results], "n": len(results), "checks": checks, "winners": winners,
            "winner_was_most_frequent": sum(r["winner"] == r["most_frequent_before"] for r in results),
            "winner_was_most_accurate": sum(r["winner"] == r["most_accurate_before"] for r in results),
            "winner_was_most_frequent_sampled": sum(r["winner"] == r.get("most_frequent_before_sampled")
                                                    for r in results),
            "winner_was_most_accurate_sampled": sum(r["winner"] == r.get("most_accurate_before_sampled")
                                                    for r in results),
            "numbers": {k: dict(zip(("mean", "se"), mean_se(v)), values=v) for k, v in nums.items()},
            "results": [os.path.join(r["out"], "result.json") for r in results]}


@main_guard
def main(argv=None):
    args = get_args(argv)
    results = [run_seed(args, s) for s in args.seed_list]
    if len(results) == 1:
        return
    agg = aggregate(results)
    path = os.path.join("out", f"{args.name}-seeds-{'-'.join(map(str, args.seed_list))}-{rl_tag(args)}.json")
    atomic_write_json(path, agg)
    n = agg["n"]
    print(f"\n{n} seeds ({', '.join(map(str, agg['seeds']))}), {args.algo}:")
    for k, c in agg["checks"].items():
        print(f"[{c}/{n}] {k}")
    for k, v in agg["numbers"].items():
        scale = 1 if k == "minutes" else 100
        se = "" if v["se"] is None else f" +- {scale * v['se']:.1f}"
        print(f"{k}: {scale * v['mean']:.1f}{se}" + ("" if k == "minutes" else " %"))
    print(f"winners: {agg['winners']}; the winner was the most frequent format before RL in "
          f"{agg['winner_was_most_frequent']}/{n} seeds, the most accurate (greedy) in {agg['winner_was_most_accurate']}/{n}")
    print(f"summary: {path}")


if __name__ == "__main__":
    main()
