"""
Evaluation sets (and RL prompt sets) as plain records {"id", "question", "gold"}.

    load_benchmark("synthetic")                              # embedded held-out test set, no files needed
    load_benchmark("gsm8k", "train", data_dir="../shared/data")
    load_benchmark("aime", data_dir="../shared/data")        # AIME 2022-2024, the paper's aime3 (90 problems)

With data_dir=None the hub is used; otherwise a local folder laid out like ../shared/data:
    gsm8k/{train,test}.jsonl  math500/test.jsonl  aime/aime24.jsonl  aime/aime_1983_2023_deepscaler.jsonl
    aime/aime2025-{I,II}_opencompass.jsonl  aime/aime_1983_2024.csv
Gold answers are normalised: GSM8K "#### 1,234" -> "1234", AIME "025" -> "25".
"""
import csv
import os
import re

from common import UserError, read_jsonl
from data import synthetic
from data.sources import hub_unreachable

# name -> (splits, hub id, a one-line description)
BENCHMARKS = {
    "synthetic": (("test", "train"), None, "embedded held-out synthetic problems (train = the RL prompts)"),
    "synthetic-hard": (("test",), None, "embedded synthetic problems with 3 steps, more than pretraining or RL ever see"),
    "gsm8k": (("train", "test"), "openai/gsm8k", "GSM8K (train 7,473 = RL prompts, test 1,319)"),
    "math500": (("test",), "HuggingFaceH4/MATH-500", "MATH-500"),
    "aime": (("test",), "AI-MO/aimo-validation-aime", "AIME 2022-2024, 90 problems (the paper's aime3)"),
    "aime2024": (("test",), "Maxwell-Jia/AIME_2024", "AIME 2024, 30 problems"),
    "aime2025": (("test",), "opencompass/AIME2025", "AIME 2025 I + II, 30 problems"),
    "aime1983-2024": (("test",), "gneubig/aime-1983-2024", "AIME 1983-2024, 933 problems (the paper's aime)"),
}
SYNTHETIC_SIZES = {"train": 8192, "test": 500, "hard": 500}


def gsm8k_gold(answer):
    """GSM8K's answer field ends in '#### 1,234' -> '1234'."""
    return answer.split("####")[-1].strip().replace(",", "")


def aime_gold(answer):
    """'025' -> '25', '336^\\circ' -> '336'; '080 or 081 (both were accepted)' -> '80' (the first)."""
    s = str(answer).strip().strip("$")
    m = re.match(r"0*(\d+)(\^\\circ|\^\{\\circ\})?(\s+or\s.*)?$", s)
    return str(int(m.group(1))) if m else s


def load_benchmark(name, split="test", data_dir=None, limit=None):
    if name not in BENCHMARKS:
        valid = ", ".join(BENCHMARKS)
        raise UserError(f"unknown benchmark {name!r}; valid: {valid}")
    splits = BENCHMARKS[name][0]
    if split not in splits:
        raise UserError(f"benchmark {name} has no split {split!r}; splits: {', '.join(splits)}")
    if name.startswith("synthetic"):
        part = "hard" if name == "synthetic-hard" else "rl" if split == "train" else "test"
        n = SYNTHETIC_SIZES["train" if split == "train" else part] if limit is None else limit
        return [{"id": p["id"], "question": p["question"], "gold": p["gold"]} for p in synthetic.problems(part, n)]
    if data_dir is not None and not os.path.isdir(data_dir):
        raise UserError(f"data dir {data_dir} does not exist (expected a folder laid out like ../shared/data)")
    try:
        records = (_local if data_dir else _hub)(name, split, data_dir)
    except KeyError as e:
        raise UserError(f"benchmark {name}: a row lacks the column {e} (is this the right file?)")
    return records if limit is None else records[:limit]


def load_prompts(prompts_file=None, prompt_set="gsm8k", data_dir=None, limit=None):
    """RL prompt records {"id", "question", "gold"}: a local JSONL (question/problem/query and gold/answer columns;
    a GSM8K-style "#### 42" answer is parsed), a benchmark's hub id (openai/gsm8k), or prompt_set's train split."""
    hub_ids = {hub: name for name, (_, hub, _) in BENCHMARKS.items() if hub}
    if prompts_file in hub_ids and not os.path.exists(prompts_file):  # e.g. openai/gsm8k
        return load_benchmark(hub_ids[prompts_file], "train", data_dir=None, limit=limit)
    if not prompts_file:
        return load_benchmark(prompt_set, "train", data_dir=data_dir, limit=limit)
    rows = read_jsonl(prompts_file)
    out = []
    for i, r in enumerate(rows[:limit] if limit else rows):
        q = r.get("question", r.get("problem", r.get("query")))
        gold = r.get("gold", r.get("answer"))
        if q is None or gold is None:
            raise UserError(f"{prompts_file}:{i + 1}: needs a question (or problem) and a gold (or answer) column")
        if "gold" not in r and "####" in str(gold):
            gold = gsm8k_gold(gold)
        out.append({"id": str(r.get("id", f"prompt-{i}")), "question": q, "gold": str(gold)})
    return out


def _rec(id_, question, gold):
    return {"id": str(id_), "question": question, "gold": gold}


def _local(name, split, d):
    if name == "gsm8k":
        rows = read_jsonl(os.path.join(d, "gsm8k", f"{split}.jsonl"))
        return [_rec(f"gsm8k-{split}-{i}", r["question"], gsm8k_gold(r["answer"])) for i, r in enumerate(rows)]
    if name == "math500":
        rows = read_jsonl(os.path.join(d, "math500", "test.jsonl"))
        return [_rec(r.get("unique_id", f"math500-{i}"), r["problem"], str(r["answer"]).strip()) for i, r in enumerate(rows)]
    if name in ("aime", "aime2024"):
        # aime24.jsonl = ids 60-89 of AI-MO/aimo-validation-aime; 2022 and 2023 come from the deepscaler copy
        rows = read_jsonl(os.path.join(d, "aime", "aime24.jsonl"))
        out = [_rec(f"aime2024-{r['id']}", r["problem"], aime_gold(r["answer"])) for r in rows]
        if name == "aime2024":
            return out
        older = read_jsonl(os.path.join(d, "aime", "aime_1983_2023_deepscaler.jsonl"))
        before = [_rec(f"aime{r['year']}-{r['aime_number']}-{r['problem_number']}", r["problem"], aime_gold(r["answer"]))
                  for r in older if r.get("year") in (2022, 2023)]
        return before + out
    if name == "aime2025":
        out = []
        for part in ("I", "II"):
            rows = read_jsonl(os.path.join(d, "aime", f"aime2025-{part}_opencompass.jsonl"))
            out += [_rec(f"aime2025-{part}-{i + 1}", r["question"], aime_gold(r["answer"])) for i, r in enumerate(rows)]
        return out
    if name == "aime1983-2024":
        path = os.path.join(d, "aime", "aime_1983_2024.csv")
        if not os.path.exists(path):
            raise UserError(f"no such file: {path}")
        with open(path, newline="", encoding="utf-8") as f:
            return [_rec(r["ID"], r["Question"], aime_gold(r["Answer"])) for r in csv.DictReader(f)]
    raise AssertionError(name)


def _hub(name, split, _):
    hub = BENCHMARKS[name][1]
    if name == "gsm8k":
        rows = _hub_rows(hub, "main", split)
        return [_rec(f"gsm8k-{split}-{i}", r["question"], gsm8k_gold(r["answer"])) for i, r in enumerate(rows)]
    if name == "math500":
        return [_rec(r["unique_id"], r["problem"], str(r["answer"]).strip()) for r in _hub_rows(hub, None, "test")]
    if name == "aime":
        return [_rec(f"aime-{r['id']}", r["problem"], aime_gold(r["answer"])) for r in _hub_rows(hub, None, "train")]
    if name == "aime2024":
        # column case differs between copies (ID/Problem/Answer here per the card, unverified): accept both
        rows = [{k.lower(): v for k, v in r.items()} for r in _hub_rows(hub, None, "train")]
        return [_rec(f"aime2024-{r.get('id', i)}", r["problem"], aime_gold(r["answer"])) for i, r in enumerate(rows)]
    if name == "aime2025":
        out = []
        for part in ("I", "II"):
            rows = _hub_rows(hub, f"AIME2025-{part}", "test")
            out += [_rec(f"aime2025-{part}-{i + 1}", r["question"], aime_gold(r["answer"])) for i, r in enumerate(rows)]
        return out
    if name == "aime1983-2024":
        return [_rec(r["ID"], r["Question"], aime_gold(r["Answer"])) for r in _hub_rows(hub, None, "train")]
    raise AssertionError(name)


def _hub_rows(hub, config, split):
    reason = hub_unreachable()
    if reason:
        raise UserError(f"cannot load {hub} from the hub: {reason}; "
                        f"pass a local folder laid out like ../shared/data (data_dir / --data-dir)")
    try:
        import datasets
        return list(datasets.load_dataset(hub, config, split=split))
    except Exception as e:  # offline, moved, gated: many exception types, one message
        raise UserError(f"cannot load {hub} from the hub ({type(e).__name__}); "
                        f"pass a local folder laid out like ../shared/data (data_dir / --data-dir)")
