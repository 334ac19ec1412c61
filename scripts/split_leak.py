"""
How many held-out synthetic questions are a pretraining question up to surface words (the near-duplicate leak).

    python scripts/split_leak.py [--seed 1337] [--docs 6500] [--test 200] [--rl 1024]

Two keys, each compared between the pretraining questions (every document of the three formats' sources, plus
the FineMath stand-in's practice questions) and the test / RL / hard questions:
  names:      the question with names, pronouns, gift words and the closing phrase masked (what the split hash uses)
  arithmetic: the problem's arithmetic only: its numbers and operations in order (stricter: any wording)
Prints one line per split and key; --json for a machine-readable record.
"""
import argparse
import json
import os
import random
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from data import synthetic  # noqa: E402


def arithmetic_key(p):
    # variable names hold people's names: keep only each line's expression, with variables numbered by order
    names, out = {}, []
    for var, expr in p["parts"]["code"]:
        expr = re.sub(r"[A-Za-z_][A-Za-z_0-9]*", lambda m: names.get(m.group(0), m.group(0)), expr)
        names[var] = f"v{len(names)}"
        out.append(expr)
    return "|".join(out)


def pretrain_problems(seed, docs):
    """The problems behind the pretraining documents, drawn exactly as synthetic.documents draws them."""
    out = []
    for fmt in synthetic.FORMATS:
        rng, seen = random.Random(f"docs-{fmt}-{seed}"), set()
        for _ in range(docs):
            out.append(synthetic._draw(rng, "pretrain", synthetic._style_for(rng, fmt), seen))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=1337, help="pretraining seed (pretrain.py --seed)")
    ap.add_argument("--docs", type=int, default=6500, help="documents per format source (data.mixture.DEFAULT_UNIT)")
    ap.add_argument("--test", type=int, default=200, help="test questions (the main job's eval)")
    ap.add_argument("--rl", type=int, default=1024, help="RL prompts (the toy preset's --prompts)")
    ap.add_argument("--hard", type=int, default=200, help="hard questions (echo_chamber --eval-limit)")
    ap.add_argument("--json", action="store_true", help="print one JSON record instead of lines")
    args = ap.parse_args()
    pre = pretrain_problems(args.seed, args.docs)
    keys = {"names": lambda p: synthetic.split_key(p["question"]), "arithmetic": arithmetic_key}
    seen = {k: {f(p) for p in pre} for k, f in keys.items()}
    res = {"seed": args.seed, "pretrain_questions": len(pre)}
    for split, n in (("test", args.test), ("rl", args.rl), ("hard", args.hard)):
        ps = synthetic.problems(split, n, seed=0)
        for k, f in keys.items():
            res[f"{split}_{k}"] = sum(f(p) in seen[k] for p in ps)
        res[f"{split}_n"] = n
    if args.json:
        print(json.dumps(res))
    else:
        for split in ("test", "rl", "hard"):
            print(f"{split}: {res[split + '_names']} of {res[split + '_n']} share a pretraining question up to names; "
                  f"{res[split + '_arithmetic']} share its arithmetic")


if __name__ == "__main__":
    main()
