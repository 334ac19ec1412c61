"""
Hub-layout local files for the data benchmark (bench.py --sections data): a TinyGSM-like parquet (question, code)
and an OpenMathInstruct-2-like JSON-lines file (problem, generated_solution, expected_answer, problem_source), with
realistic lengths (about 160 and 400 tokens a row at vocab 32768), N rows each.

    python scripts/make_bench_data.py --rows 50000 200000 --out out/bench-data
    -> out/bench-data/rows-50000/TinyGSM/data/train-00000-of-00001.parquet           (row groups of 5,000 rows)
       out/bench-data/rows-50000/OpenMathInstruct-2/data/train-00000-of-00001.jsonl

Rows are built from the embedded synthetic problems (data/synthetic.py: 1-3 arithmetic steps, rendered in the
tinygsm and omi2 formats) with every number redrawn, so no two rows are alike; OMI-2 solutions add two to five
paragraphs of worked prose, as the real ones run longer than the toy's. Deterministic: the same N gives the same
bytes. Files that exist are kept (delete the folder to regenerate).
"""
import argparse
import functools
import json
import os
import random
import re
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

ROW_GROUP = 5000


@functools.lru_cache(maxsize=1)
def _pool():
    from data import synthetic
    ps = synthetic.problems("pretrain", 1500, seed=7) + synthetic.problems("hard", 1500, seed=7)
    return synthetic, ps


def _renumber(text, rng):
    return re.sub(r"\d+", lambda m: str(rng.randint(2, 999)), text)


def tinygsm_rows(n, seed=0):
    synthetic, ps = _pool()
    rng = random.Random(f"tinygsm-{seed}")
    for i in range(n):
        p = ps[rng.randrange(len(ps))]
        # one draw of numbers for question and code together, so the code still restates its question
        q, code = _renumber(p["question"] + "\x00" + synthetic.render(p, "tinygsm"), rng).split("\x00")
        yield {"question": q, "code": code}


def omi2_rows(n, seed=0):
    synthetic, ps = _pool()
    rng = random.Random(f"omi2-{seed}")
    for i in range(n):
        p = ps[rng.randrange(len(ps))]
        extra = []
        for _ in range(rng.randint(2, 5)):  # worked paragraphs borrowed from other problems, as checks
            other = ps[rng.randrange(len(ps))]
            extra.append("Let's double-check with a similar case. " + " ".join(other["parts"]["prose"]))
        sol = synthetic.render(p, "omi2")
        head, boxed = sol.rsplit("\n", 1)
        yield {"problem": _renumber(p["question"], rng), "generated_solution": _renumber(
            head + "\n" + "\n\n".join(extra) + "\n" + boxed, rng), "expected_answer": p["gold"],
            "problem_source": "augmented_gsm8k"}


def write(out, rows):
    """Both files for `rows` rows under out/rows-<rows>/ (skipped when already there); returns the folder."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    d = os.path.join(out, f"rows-{rows}")
    tg = os.path.join(d, "TinyGSM", "data", "train-00000-of-00001.parquet")
    om = os.path.join(d, "OpenMathInstruct-2", "data", "train-00000-of-00001.jsonl")
    if not os.path.exists(tg):
        os.makedirs(os.path.dirname(tg), exist_ok=True)
        writer, batch = None, []
        for r in tinygsm_rows(rows):
            batch.append(r)
            if len(batch) == ROW_GROUP:
                t = pa.Table.from_pylist(batch)
                writer = writer or pq.ParquetWriter(tg + ".tmp", t.schema)
                writer.write_table(t)
                batch = []
        if batch:
            t = pa.Table.from_pylist(batch)
            writer = writer or pq.ParquetWriter(tg + ".tmp", t.schema)
            writer.write_table(t)
        writer.close()
        os.replace(tg + ".tmp", tg)
    if not os.path.exists(om):
        os.makedirs(os.path.dirname(om), exist_ok=True)
        with open(om + ".tmp", "w") as f:
            for r in omi2_rows(rows):
                f.write(json.dumps(r) + "\n")
        os.replace(om + ".tmp", om)
    return d


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[50000, 200000], help="rows per file, one set each")
    ap.add_argument("--out", default=os.path.join("out", "bench-data"), help="where the rows-<N>/ folders go")
    args = ap.parse_args()
    for n in args.rows:
        t0 = time.time()
        print(f"{write(args.out, n)}  ({time.time() - t0:.1f}s)")


if __name__ == "__main__":
    main()
