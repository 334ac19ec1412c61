"""classify.py: labels on the real format samples (strict and the authors' rule), answers and grading on
GSM8K golds written in all three formats, MATH-500 answers through math_verify, and the CLI."""
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import classify
from classify import (FORMATS, analyze, analyze_batch, answers_match, boxed_all, classify as label, extract_answer,
                      grade, main)
from sandbox import Sandbox

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"


@pytest.fixture(scope="module")
def data():
    if not DATA.is_dir():
        pytest.skip(f"{DATA} is absent (a fresh clone has no ../shared/data)")
    return DATA


def read(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def authors_rule(text):
    """The authors' reward code (rosieyzh/openrlhf-pretrain, openrlhf/utils/math_verifier.py), verbatim."""
    return "llm-code" if "<llm-code>" in text else "tinygsm-code" if "def" in text else "text"


def tinygsm(question, value):
    return (f'def simple_math_problem() -> int:\n    """\n    {question}\n    """\n    base = {value} + 7\n'
            f'    result = base - 7\n    return result\n')


def omi1(value, claimed, code_value=None):
    code_value = value if code_value is None else code_value
    return (f"Let's solve this problem using Python code.\n<llm-code>\ntotal = {code_value} * 2\nanswer = total / 2\n"
            f"answer\n</llm-code>\n<llm-code-output>\n{claimed}\n</llm-code-output>\n"
            f"Thus the answer is \\boxed{{{claimed}}}.")


def omi2(value):
    return f"First we add the amounts, then take away what was used.\nSo we get {value}.\nThus \\boxed{{{value}}} in total."


# ----------------------------------------------------------------------------- labels

def test_format_metrics_owns_the_label_set():
    """classify.format_metrics (the one implementation rl.py, evaluate.py and echo_chamber.py use) lists every label,
    maps an unknown one to "other", and computes accuracy within each format."""
    from classify import format_metrics
    recs = [{"format": "omi1", "correct": True}, {"format": "omi1", "correct": False},
            {"format": "tinygsm", "correct": True}, {"format": None, "correct": True}]
    shares, acc = format_metrics(recs)
    assert list(shares) == FORMATS == ["tinygsm", "omi1", "omi2", "other"]
    assert shares == {"tinygsm": 0.25, "omi1": 0.5, "omi2": 0.0, "other": 0.25}
    assert acc == {"tinygsm": 1.0, "omi1": 0.5, "omi2": None, "other": 1.0}


def test_strict_rule_on_format_samples(data):
    """Unambiguous rows carry their source's marker and must get their own label: every tinygsm row (a
    `def simple_math_problem(`), every omi1 row with <llm-code>, every omi2 row (all end in \\boxed{}).
    Ambiguous: the 9 omi1 rows without <llm-code> are genuine text-only OMI-1 solutions ending in \\boxed{},
    indistinguishable from OMI-2 by form, so they are expected to be omi2."""
    rows = read(DATA / "format_samples.jsonl")
    got = analyze_batch([r["solution"] for r in rows])
    seen = {"tinygsm": 0, "omi1": 0, "omi2": 0, "ambiguous": 0}
    for i, (r, a) in enumerate(zip(rows, got)):
        src, sol = r["source"], r["solution"]
        if src == "omi1" and "<llm-code>" not in sol:
            assert a["format"] == "omi2", i
            seen["ambiguous"] += 1
        else:
            assert a["format"] == src, (i, src, a)
            seen[src] += 1
        assert label(sol) == a["format"]
    assert seen == {"tinygsm": 52, "omi1": 31, "omi2": 44, "ambiguous": 9}
    # row 134 (a llama-3.1-8b regeneration) has its body dedented to column 0: it still parses (a `return`
    # outside a function is a compile error, not a parse error), so it is TinyGSM in form, but it cannot run
    bad = next(i for i, r in enumerate(rows) if r["source"] == "tinygsm" and "\nreturn result" in r["solution"])
    assert got[bad]["format"] == "tinygsm" and got[bad]["answer"] is None and "SyntaxError" in got[bad]["error"]
    # answers: every text-format row's answer is its last \boxed{}; code answers come from running the code
    for r, a in zip(rows, got):
        if a["format"] == "omi2":
            assert a["answer"] == boxed_all(r["solution"])[-1].strip()
    assert sum(a["answer"] is not None for r, a in zip(rows, got) if r["source"] == "tinygsm") >= 50


def test_paper_rule_on_format_samples(data):
    rows = read(DATA / "format_samples.jsonl")
    got = analyze_batch([r["solution"] for r in rows], rule="paper")
    for r, a in zip(rows, got):
        assert a["format"] == label(r["solution"], rule="paper") == authors_rule(r["solution"])
    # the authors' rule calls OMI-2 prose "tinygsm-code" when it says "undefined" or "defined"; strict does not
    mislabeled = [r for r, a in zip(rows, got) if r["source"] == "omi2" and a["format"] == "tinygsm-code"]
    assert len(mislabeled) == 3 and all(label(r["solution"]) == "omi2" for r in mislabeled)


def test_paper_rule_mislabels_define_and_default_strict_does_not():
    for text in ("Let's define x as the number of apples. Then x = 5, so \\boxed{5}.",
                 "By default each box holds 3 pens, so 4 boxes hold \\boxed{12} pens."):
        assert label(text, rule="paper") == "tinygsm-code"
        assert label(text) == "omi2"
    assert label("We define nothing and answer nothing.") == "other"
    with pytest.raises(ValueError):
        label("x", rule="nope")


def test_strict_rule_edge_cases():
    fn = "def simple_math_problem() -> int:\n    \"\"\"Q\"\"\"\n    result = 2 + 3\n    return result\n"
    assert label(fn) == "tinygsm"
    assert label("\n\n" + fn + "\nQuestion: what comes next?\nA tiny model kept writing\n") == "tinygsm"  # trimmed
    assert label(fn[:-25]) == "other"                                       # truncated: no return
    assert label("def simple_math_problem() -> int:\n    \"\"\"Jo has 3 app") == "other"   # does not parse
    assert label("def helper(x):\n    return x\n") == "other"             # not the TinyGSM shape
    assert label("<llm-code>\nx = 1\n") == "other"                        # truncated code block
    assert label("") == label(None) == label("I am not sure.") == label("The answer is") == "other"
    assert label("Step 1 ... The answer is: 18") == "omi2"                # MetaMath's final line
    assert label("\\boxed{\\frac{1}{2") == "other"                          # unbalanced braces
    assert boxed_all("a \\boxed{\\frac{1}{2}} b \\boxed {x^{2}}") == ["\\frac{1}{2}", "x^{2}"]
    assert extract_answer("So \\boxed{5}.<|endoftext|>Next question ... \\boxed{6}") == "5"   # cut at EOS
    assert extract_answer("so she has 4.\nThe answer is: $18$.") == "18"
    assert extract_answer(fn + "\n\nGarbage line\n") == "5"
    assert extract_answer("nothing here") is None


# ----------------------------------------------------------------------------- GSM8K in three formats

def test_gsm8k_golds_in_three_formats(data):
    rows = read(DATA / "gsm8k" / "test.jsonl")[:30]
    texts, golds, want, kinds = [], [], [], []
    for r in rows:
        n = int(r["answer"].split("####")[-1].strip().replace(",", ""))
        cases = [
            (tinygsm(r["question"], n), True, "tinygsm"),
            (tinygsm(r["question"], n + 1), False, "tinygsm"),
            (omi1(n, f"{n}.0"), True, "omi1"),
            (omi1(n, n + 1), True, "omi1"),                       # wrong claimed output under correct code
            (omi1(n, n, code_value=n + 1), False, "omi1"),        # the code wins over its claimed output
            (omi2(n), True, "omi2"),
            (omi2(f"{n:,}.00" if n >= 1000 else f"\\${n}"), True, "omi2"),
            (omi2(n + 1), False, "omi2"),
        ]
        for text, ok, fmt in cases:
            texts.append(text)
            golds.append(r["answer"])                              # GSM8K gold as it is: "... #### 18"
            want.append(ok)
            kinds.append(fmt)
    t = time.monotonic()
    got = analyze_batch(texts, golds)
    assert time.monotonic() - t < 30
    for text, a, ok, fmt in zip(texts, got, want, kinds):
        assert a["format"] == fmt, text
        assert a["correct"] is ok, (text, a)
    assert grade(texts[0], golds[0]) is True and grade(texts[1], golds[1]) is False


def test_omi1_falls_back_to_claimed_output_only_when_the_code_fails():
    broken = ("<llm-code>\nx = 1 / 0\nx\n</llm-code>\n<llm-code-output>\n18\n</llm-code-output>\n"
              "The answer is \\boxed{17}.")
    assert analyze(broken, "18")["answer"] == "18" and grade(broken, "18")
    no_output = "<llm-code>\nundefined_name\n</llm-code>\nSo the answer is \\boxed{18}."
    assert extract_answer(no_output) == "18"
    printed = "<llm-code>\nx = 6 * 3\nprint('The result is', x)\n</llm-code>\n<llm-code-output>\n17\n</llm-code-output>\n"
    assert grade(printed, "18")                                     # like a notebook: what the cell printed
    only_first = "<llm-code>\n5\n</llm-code>\n<llm-code-output>\n5\n</llm-code-output>\n<llm-code>\n18\n</llm-code>"
    assert extract_answer(only_first) == "5"                       # the first block is the one that counts


def test_hostile_code_in_an_answer_is_just_wrong():
    with Sandbox(workers=1, timeout=1.0, preload=()) as pool:
        for body in ("while True:\n        pass", "import os\n    os.system('true')", "import sys\n    sys.exit(0)"):
            text = f"def simple_math_problem() -> int:\n    {body}\n    return 18\n"
            t = time.monotonic()
            a = analyze(text, "18", pool=pool)
            assert a["format"] == "tinygsm" and a["correct"] is False and a["answer"] is None and a["error"]
            assert time.monotonic() - t < 1.0 + 1.0


class CountingPool:
    def __init__(self, pool):
        self.pool, self.calls = pool, []

    def run_many(self, jobs):
        self.calls.append(len(jobs))
        return self.pool.run_many(jobs)


def test_code_runs_once_and_batches_run_together():
    with Sandbox(workers=2, timeout=3.0, preload=()) as real:
        pool = CountingPool(real)
        a = analyze(tinygsm("How many?", 18), "18", pool=pool)
        assert a == {"format": "tinygsm", "answer": "18", "correct": True, "error": None}
        assert pool.calls == [1]
        pool.calls.clear()
        texts = [tinygsm("Q", i) for i in range(10)] + [omi1(i, i) for i in range(10)] + [omi2(i) for i in range(10)]
        got = analyze_batch(texts, [str(i % 10) for i in range(30)], pool=pool)
        assert pool.calls == [20] and all(a["correct"] for a in got)   # all 20 programs in one parallel batch
        assert analyze(omi2(3)) == {"format": "omi2", "answer": "3", "correct": None, "error": None}


# ----------------------------------------------------------------------------- answers

def test_numbers_compare_as_numbers():
    for pred, gold in [("1,000", "1000"), ("\\$18", "18"), ("$18$", "18"), ("50\\%", "50"), ("18.0", "18"),
                       ("18", "#### 18"), ("1/2", "0.5"), ("\\frac{1}{2}", "0.5"), ("\\dfrac12", "1/2"),
                       ("-\\frac{3}{4}", "-0.75"), ("2.9999999999999996", "3"), ("1{,}234", "1234"),
                       ("18 \\text{ dollars}", "18"), ("\\text{18}", "18"), ("{18}", "18"), ("1e3", "1000")]:
        assert classify._quick_match(pred, gold) is True, (pred, gold)
    for pred, gold in [("17", "18"), ("1/3", "0.33"), ("18.5", "18"), ("", "18"), ("None", "18")]:
        assert classify._quick_match(pred, gold) is False, (pred, gold)
    assert classify._quick_match("1,2", "12") is None and answers_match("1,2", "12") is False   # a list, not 12
    assert classify.normalize_answer("18.0") == classify.normalize_answer("$18") == "18"


def test_math500_answers_against_themselves_and_equivalent_forms(data):
    golds = [r["answer"] for r in read(DATA / "math500" / "test.jsonl")]
    assert len(golds) == 500
    texts, want = [], []
    for g in golds:
        squeezed, dfrac = g.replace(" ", ""), g.replace("\\frac", "\\dfrac")
        texts += [f"So the answer is $\\boxed{{{g}}}$.", f"\\boxed{{ {squeezed} }}", f"\\boxed{{{dfrac}}}"]
    got = analyze_batch(texts, [g for g in golds for _ in range(3)])
    assert all(a["format"] == "omi2" and a["correct"] for a in got), [
        (t, a) for t, a in zip(texts, got) if not a["correct"]][:5]


def test_math_verify_decides_what_strings_cannot(data):
    golds = [r["answer"] for r in read(DATA / "math500" / "test.jsonl")]
    symbolic = [g for g in golds if classify.to_number(g) is None and "\\text" not in g][:16]
    # the real checker, not string equality: every gold verifies against itself through math_verify
    assert all(classify._verify_many([(g, "latex", g) for g in symbolic], classify.sandbox.default_sandbox()))
    same = [("0.5", "\\frac{1}{2}"), ("2\\sqrt{2}", "\\sqrt{8}"), ("\\frac{\\sqrt3}{2}", "\\frac{\\sqrt{3}}{2}"),
            ("x^2+1", "1 + x^{2}"), ("\\pi/2", "\\frac{\\pi}{2}"), ("(1,4)", "(1, 4)"), ("0.25", "\\frac14")]
    different = [("\\frac{1}{3}", "0.5"), ("(1,5)", "(1, 4)"), ("2\\sqrt{3}", "\\sqrt{8}"), ("x^2-1", "x^2+1")]
    texts = [f"\\boxed{{{p}}}" for p, _ in same + different]
    got = analyze_batch(texts, [g for _, g in same + different])
    assert [a["correct"] for a in got] == [True] * len(same) + [False] * len(different)
    assert answers_match("sqrt(2)/2", "\\frac{\\sqrt{2}}{2}", kind="python")   # a sympy value from code


class ShortTimeout:
    """The shared pool (already warm) with a 1 s limit per program."""
    def run_many(self, jobs):
        return classify.sandbox.default_sandbox().run_many(jobs, timeout=1.0)


def test_math_verify_never_hangs_or_needs_the_main_thread():
    pool = ShortTimeout()
    t = time.monotonic()
    assert answers_match("10^{10^{10}}", "5", pool=pool) is False          # sympy would grind for minutes
    assert time.monotonic() - t < 1.0 + 1.0
    out = []   # math_verify's own timeouts use SIGALRM (main thread only); from a thread it must still work
    th = threading.Thread(target=lambda: out.append(answers_match("\\frac{\\pi}{2}", "\\pi/2", pool=pool)))
    th.start()
    th.join(30)
    assert out == [True]


# ----------------------------------------------------------------------------- the CLI

def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_cli_table_and_json(tmp_path, capsys):
    rows = [{"response": tinygsm("Q", 18), "gold": "#### 18"}, {"response": tinygsm("Q", 17), "gold": "18"},
            {"response": omi1(5, 5), "gold": "5"}, {"response": omi2(7), "gold": "7"},
            {"response": "I do not know.", "gold": "3"}, {"response": omi2(9)}]
    f = _jsonl(tmp_path / "gen.jsonl", rows)
    main([f, "--json"])
    s = json.loads(capsys.readouterr().out)
    assert s["n"] == 6 and s["graded"] == 5 and s["correct"] == 3
    assert s["formats"]["tinygsm"] == {"count": 2, "share": 2 / 6, "graded": 2, "correct": 1, "accuracy": 0.5}
    assert s["formats"]["omi2"]["count"] == 2 and s["formats"]["omi2"]["graded"] == 1
    assert s["formats"]["other"]["accuracy"] == 0.0
    main([f])
    table = capsys.readouterr().out
    assert table.splitlines()[0].split() == ["format", "count", "share", "graded", "accuracy"]
    assert "50.0%" in table and table.splitlines()[-1].split()[:2] == ["all", "6"]
    main([f, "--rule", "paper", "--json"])
    assert set(json.loads(capsys.readouterr().out)["formats"]) == {"tinygsm-code", "llm-code", "text"}
    g = _jsonl(tmp_path / "other.jsonl", [{"text": omi2(4), "answer": "4"}])
    main([g, "--field", "text", "--gold-field", "answer", "--json"])
    assert json.loads(capsys.readouterr().out)["accuracy"] == 1.0


def test_cli_errors_are_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"response": "x"}\n{not json\n')
    nofield = _jsonl(tmp_path / "nofield.jsonl", [{"response": "x"}, {"output": "y"}])
    for argv in ([str(tmp_path / "missing.jsonl")], [str(bad)], [nofield], [str(tmp_path)]):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code != 0
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and err.startswith("error:"), err
    r = subprocess.run([sys.executable, str(ROOT / "classify.py"), str(tmp_path / "missing.jsonl")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and r.stdout == "" and len(r.stderr.strip().splitlines()) == 1


def test_gsm8k_gold_is_parsed_once():
    """classify and data.benchmarks read a GSM8K answer field the same way (commas stripped)."""
    from classify import gold_answer
    from data.benchmarks import gsm8k_gold
    assert gold_answer("so 3 + 4 = 7\n#### 1,234") == gsm8k_gold("so 3 + 4 = 7\n#### 1,234") == "1234"
    assert gold_answer(" 42 ") == "42"
