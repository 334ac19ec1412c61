"""
Why prose loses at toy scale: is it the plan or the arithmetic? For OMI-2-style outputs (arithmetic written out as
`$a op b = c$`), re-do every written equation with correct arithmetic, carrying corrected values into the later
equations that reuse them, and grade the last result against the gold answer. The code formats never face this:
their arithmetic runs in the sandbox.

    python scripts/prose_arithmetic.py out/echo-seed1337/pretrain/eval-forced-omi2/generations.jsonl [...]

Prints, per file: outputs, the share whose first number (after the opening line) is one of the question's numbers
(copying the givens, the first skill a toy model learns), equations written, the share of equations computed right,
pass@1 as written, and pass@1 with the arithmetic redone ("plan right"); --json FILE also writes them.
"""
import argparse
import os
import re
import sys
from fractions import Fraction

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common import UserError, main_guard, read_jsonl  # noqa: E402

EQ = re.compile(r"(-?\d+(?:\.\d+)?)\s*([-+*/×x])\s*(-?\d+(?:\.\d+)?)\s*=\s*(-?\d+(?:\.\d+)?)")
OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b, "×": lambda a, b: a * b,
       "x": lambda a, b: a * b, "/": lambda a, b: a / b if b != 0 else None}


def redo(text):
    """[(written result, a op b of the written operands)] for each equation in order (the model's own arithmetic),
    and the last result with the arithmetic redone (None without one): a number an earlier equation produced is
    replaced by that equation's redone result wherever it is reused."""
    fixed, out, last = {}, [], None
    for a, op, b, c in EQ.findall(text):
        a, b, c = (Fraction(x) for x in (a, b, c))
        own, right = OPS[op](a, b), OPS[op](fixed.get(a, a), fixed.get(b, b))
        if own is None or right is None:
            continue
        out.append((c, own))
        fixed[c] = right
        last = right
    return out, last


def first_number_copied(prompt, response):
    """Is the first number after the response's opening line one of the question's numbers?"""
    body = response.split("\n", 1)[1] if "\n" in response else ""
    m = re.search(r"\d+", body)
    return m is not None and m.group(0) in re.findall(r"\d+", prompt)


def gold_value(gold):
    try:
        return Fraction(str(gold).replace(",", ""))
    except (ValueError, ZeroDivisionError):
        return None


def analyse(path):
    rows = [g for g in read_jsonl(path) if g.get("format") == "omi2"]
    bad = [i for i, g in enumerate(rows) if not {"prompt", "response", "correct", "gold"} <= set(g)]
    if bad:
        raise UserError(f"{path}: {len(bad)} omi2 rows lack prompt/response/correct/gold (not an evaluate.py "
                        f"generations.jsonl?)")
    eqs = ok_eq = as_written = plan_right = copied = 0
    for g in rows:
        copied += first_number_copied(g["prompt"], g["response"])
        pairs, last = redo(g["response"])
        eqs += len(pairs)
        ok_eq += sum(c == r for c, r in pairs)
        as_written += bool(g["correct"])
        gold = gold_value(g["gold"])
        plan_right += last is not None and gold is not None and last == gold
    n = max(len(rows), 1)
    return {"file": path, "outputs": len(rows), "first_number_copied": copied / n, "equations": eqs,
            "equations_right": ok_eq / max(eqs, 1),
            "pass@1_as_written": as_written / n, "pass@1_arithmetic_redone": plan_right / n}


@main_guard
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="+", help="generations.jsonl files (evaluate.py --out)")
    ap.add_argument("--json", default=None, help="also write the numbers to this file")
    args = ap.parse_args(argv)
    res = [analyse(f) for f in args.files]
    for r in res:
        print(f"{r['file']}: {r['outputs']} omi2 outputs, first number copied from the question "
              f"{100 * r['first_number_copied']:.1f}%, {r['equations']} equations, "
              f"{100 * r['equations_right']:.1f}% computed right; pass@1 as written {100 * r['pass@1_as_written']:.1f}%, "
              f"with the arithmetic redone {100 * r['pass@1_arithmetic_redone']:.1f}%")
    if args.json:
        from common import atomic_write_json
        atomic_write_json(args.json, res)


if __name__ == "__main__":
    main()
