"""
Read one model output: which pretraining format it follows, what its final answer is, whether it is right.

    python classify.py out/eval/generations.jsonl                       # format shares, accuracy per format
    python classify.py gen.jsonl --field response --gold-field gold --rule paper --json

Formats (../shared/PAPER.md, "The three formats"). The text is cut at its first EOS marker, then one of two rules:
  strict: <llm-code>..</llm-code> -> omi1; parsing `def simple_math_problem(` + return -> tinygsm; \\boxed{} or final "The answer is" -> omi2; else other
  paper (the authors' code): '<llm-code>' in text -> llm-code; else the substring 'def' -> tinygsm-code; else text
Strict, in detail: tinygsm takes the text from the `def` line, trimmed before an unindented line if the whole
does not parse (a tiny model may keep writing); truncated code that never parses is other, like an unclosed
code block, prose with no final answer, an empty output or garbage. The paper rule calls prose with "define"
or "default" code; it is here for comparison. OMI-1 also holds text-only solutions: they read as omi2, since
nothing in the text tells them apart. The rule only changes the label: answers and grading always follow
the strict reading.

Answers: tinygsm -> run the code and call simple_math_problem(); omi1 -> run the first code block and take its
last line's value (or, like a notebook, what it printed), falling back to the claimed <llm-code-output>, then
\\boxed{}, only if the run gives nothing; omi2 -> the last \\boxed{} (else the "answer is" line); other -> None.
Code runs only in sandbox.py. Grading: numbers compare as numbers ("1,000", "$18", "50%", "18.0", "1/2",
"\\frac{1}{2}"; within 1e-6 relative); anything else goes through math_verify (the authors' checker), which
also runs in the sandbox, so a pathological expression can neither hang nor crash grading (math_verify's own
timeouts use SIGALRM, which only works in the main thread; they are switched off there). GSM8K gold
"... #### 18" is accepted as it is.
"""
import ast
import json
import os
import re
import textwrap
from collections import Counter
from fractions import Fraction

import sandbox

FORMATS = ["tinygsm", "omi1", "omi2", "other"]
PAPER_FORMATS = ["tinygsm-code", "llm-code", "text"]
RULES = ("strict", "paper")
EOS_MARKERS = ("<|endoftext|>", "<|eot_id|>", "<|im_end|>", "</s>")
TINYGSM_CALL = "simple_math_problem()"

_DEF_RE = re.compile(r"^def simple_math_problem\s*\(", re.M)
_CODE_RE = re.compile(r"<llm-code>(.*?)</llm-code>", re.S)
_OUTPUT_RE = re.compile(r"<llm-code-output>(.*?)</llm-code-output>", re.S)
_BOXED_RE = re.compile(r"\\boxed\s*\{")
_ANSWER_IS_RE = re.compile(r"\banswer is\s*:?\s*(.+)$", re.I)


# ----------------------------------------------------------------------------- reading the text

def cut_eos(text):
    """The text up to the first EOS marker (a model that kept writing past it did not mean it)."""
    text = "" if text is None else str(text)
    cut = min((i for i in (text.find(m) for m in EOS_MARKERS) if i >= 0), default=len(text))
    return text[:cut]


def _has_tinygsm_shape(tree):
    return (any(isinstance(n, ast.FunctionDef) and n.name == "simple_math_problem" for n in tree.body)
            and any(isinstance(n, ast.Return) for n in ast.walk(tree)))


def tinygsm_program(text):
    """The TinyGSM function as runnable code, or None. Tries the whole text from the `def` line, then the
    prefixes that end before an unindented line, shortest first (the function alone, when a tiny model
    kept writing after `return`)."""
    m = _DEF_RE.search(text)
    if not m:
        return None
    lines = text[m.start():].rstrip().split("\n")
    cuts = [len(lines)] + [i for i in range(1, len(lines)) if lines[i][:1] not in ("", " ", "\t")]
    for n in cuts[:64]:
        src = "\n".join(lines[:n])
        try:
            tree = ast.parse(src)
        except Exception:   # SyntaxError, ValueError (NUL bytes), RecursionError (absurd nesting)
            continue
        if _has_tinygsm_shape(tree):
            return src
    return None


def boxed_all(text):
    """Contents of every \\boxed{...} with balanced braces, in order (nested braces are fine)."""
    out = []
    for m in _BOXED_RE.finditer(text):
        depth, i = 1, m.end()
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        if depth == 0:
            out.append(text[m.end():i - 1])
    return out


def _answer_is(text):
    """'The answer is X' (or 'The answer is: X', MetaMath's shape) on the last non-empty line."""
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    m = _ANSWER_IS_RE.search(lines[-1]) if lines else None
    if not m:
        return None
    ans = m.group(1).strip().rstrip(".").strip()
    if len(ans) > 1 and ans[0] == ans[-1] == "$":
        ans = ans[1:-1].strip()
    return ans or None


def _plan(text):
    """(format, sandbox job or None, fallback answers as (answer, kind)) under the strict rule."""
    text = cut_eos(text)
    m = _CODE_RE.search(text)
    if m:
        rest = text[m.end():].split("<llm-code>")[0]
        claimed = _OUTPUT_RE.search(rest)
        boxed = boxed_all(text)
        fallbacks = [(claimed.group(1).strip() if claimed else None, "text"),
                     (boxed[-1].strip() if boxed else _answer_is(text), "latex")]
        return "omi1", (textwrap.dedent(m.group(1)).strip("\n"), None), fallbacks
    program = tinygsm_program(text)
    if program is not None:
        return "tinygsm", (program, TINYGSM_CALL), []
    boxed = boxed_all(text)
    if boxed:
        return "omi2", None, [(boxed[-1].strip(), "latex")]
    ans = _answer_is(text)
    if ans is not None:
        return "omi2", None, [(ans, "latex")]
    return "other", None, []


def paper_label(text):
    """The authors' rule, verbatim: substring tests, nothing else."""
    text = cut_eos(text)
    return "llm-code" if "<llm-code>" in text else "tinygsm-code" if "def" in text else "text"


def classify(text, rule="strict"):
    """Format label: strict -> tinygsm | omi1 | omi2 | other; paper -> llm-code | tinygsm-code | text."""
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
    return paper_label(text) if rule == "paper" else _plan(text)[0]


# ----------------------------------------------------------------------------- comparing answers

def gold_answer(gold):
    """GSM8K's '... #### 1,234' -> '1234' (data.benchmarks.gsm8k_gold, the one parser); anything else stripped."""
    s = str(gold)
    if "####" in s:
        from data.benchmarks import gsm8k_gold
        return gsm8k_gold(s)
    return s.strip()


_NUM_RE = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")
_THOUSANDS_RE = re.compile(r"[-+]?\d{1,3}(,\d{3})+(\.\d+)?")
_RATIO_RE = re.compile(r"([-+]?\d+)/(\d+)")
_FRAC_RE = re.compile(r"([-+]?)\\[dt]?frac\{([-+]?\d+)\}\{([-+]?\d+)\}")
_FRAC_SHORT_RE = re.compile(r"([-+]?)\\[dt]?frac(\d)(\d)")
_TEXT_RE = re.compile(r"\\(?:text|textbf|mbox|mathrm)\{([^{}]*)\}")


def to_number(s):
    """A Fraction if s is plainly one number, else None.
    Accepts 1,000 / $18 / 50% / 18.0 / 1/2 / \\frac{1}{2} / 18 \\text{ cm}."""
    s = str(s).strip()
    if len(s) > 100:
        return None
    whole = _TEXT_RE.fullmatch(s)
    s = whole.group(1) if whole else _TEXT_RE.sub("", s)     # \text{18} is 18; 18\text{ cm} drops the unit
    for junk in ("\\!", "\\,", "\\;", "\\ ", "~", "\\$", "$", "\\%", "%", "^\\circ", "^{\\circ}", "°", " "):
        s = s.replace(junk, "")
    s = s.replace("{,}", ",").rstrip(".")
    while len(s) > 1 and s[0] == "{" and s[-1] == "}":
        s = s[1:-1]
    if _THOUSANDS_RE.fullmatch(s):
        s = s.replace(",", "")
    try:
        if _NUM_RE.fullmatch(s):
            return Fraction(s)
        m = _RATIO_RE.fullmatch(s)
        if m:
            return Fraction(int(m.group(1)), int(m.group(2)))
        m = _FRAC_RE.fullmatch(s) or _FRAC_SHORT_RE.fullmatch(s)
        if m:
            return (-1 if m.group(1) == "-" else 1) * Fraction(int(m.group(2)), int(m.group(3)))
    except (ValueError, ZeroDivisionError, OverflowError):
        return None
    return None


def normalize_answer(ans):
    """A canonical string for voting: numbers as their exact value ('18.0', '18', '$18' -> '18'), else the
    answer without spaces and \\left/\\right/\\dfrac noise."""
    if ans is None:
        return None
    n = to_number(ans)
    if n is not None:
        return str(n.numerator) if n.denominator == 1 else f"{n.numerator}/{n.denominator}"
    s = str(ans).strip().rstrip(".")
    for a, b in (("\\left", ""), ("\\right", ""), ("\\dfrac", "\\frac"), ("\\tfrac", "\\frac"), ("\\!", ""),
                 ("\\,", ""), ("\\;", ""), ("$", "")):
        s = s.replace(a, b)
    return "".join(s.split())


def _quick_match(pred, gold):
    """True / False when the cheap checks decide it, None when math_verify has to."""
    p, g = str(pred).strip(), gold_answer(gold)
    if not p or not g:
        return False
    pn, gn = to_number(p), to_number(g)
    if pn is not None and gn is not None:
        return abs(pn - gn) <= Fraction(1, 10**6) * max(1, abs(gn))
    if normalize_answer(p) == normalize_answer(g):
        return True
    if gn is not None and not re.search(r"\d", p):   # a number cannot equal a digit-free answer
        return False
    if len(p) > 1000 or len(g) > 1000:
        return False
    return None


# math_verify on (gold, prediction), run as a program in the sandbox: hard wall-clock and memory limits,
# from any thread. kind says how the prediction is written: latex (a boxed answer), python (str() of a value
# a program computed: sympify reads "sqrt(2)", "3/5", "(1, 4)"), text (printed or claimed output: math_verify
# picks the answer out of the text, as the authors' reward did).
_MV_PROGRAM = '''
from math_verify import parse, verify
def _latex(s):
    return parse("\\\\boxed{" + s + "}", parsing_timeout=None)
gold = _latex(GOLD)
if KIND == "latex":
    pred = _latex(PRED)
elif KIND == "python":
    import sympy
    try:
        pred = [sympy.sympify(PRED)]
    except Exception:
        pred = _latex(PRED)
else:
    pred = parse(PRED, parsing_timeout=None)
try:
    ok = bool(gold) and bool(pred) and bool(verify(gold, pred, timeout_seconds=None))
except Exception:
    ok = False
'''
_MV_CACHE = {}


def _verify_many(pairs, pool):
    """math_verify verdicts for (pred, kind, gold text) triples, through the sandbox; cached."""
    todo = [p for p in dict.fromkeys(pairs) if p not in _MV_CACHE]
    if todo:
        jobs = [(f"GOLD = {g!r}\nPRED = {p!r}\nKIND = {k!r}\n" + _MV_PROGRAM, "ok") for p, k, g in todo]
        if len(_MV_CACHE) > 100_000:
            _MV_CACHE.clear()
        for key, res in zip(todo, pool.run_many(jobs)):
            _MV_CACHE[key] = res.value == "True"
    return [_MV_CACHE[p] for p in pairs]


def answers_match(pred, gold, kind="latex", pool=None):
    """Is the answer pred equal to gold? Numbers numerically, the rest through math_verify."""
    if pred is None or gold is None:
        return False
    quick = _quick_match(pred, gold)
    if quick is not None:
        return quick
    return _verify_many([(str(pred).strip(), kind, gold_answer(gold))], pool or sandbox.default_sandbox())[0]


# ----------------------------------------------------------------------------- the API

def analyze_batch(texts, golds=None, rule="strict", pool=None):
    """[dict(format, answer, correct, error)] for many outputs. All code runs through the sandbox pool at
    once (in parallel across its workers), then every math_verify check in a second parallel round.
    correct is None where the gold is None; error says why a program gave no value (else None)."""
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
    texts = list(texts)
    golds = [None] * len(texts) if golds is None else list(golds)
    if len(golds) != len(texts):
        raise ValueError(f"{len(texts)} texts but {len(golds)} golds")
    plans = [_plan(t) for t in texts]
    need_pool = any(job for _, job, _ in plans)
    pool = pool or (sandbox.default_sandbox() if need_pool else None)
    runs = iter(pool.run_many([job for _, job, _ in plans if job]) if need_pool else [])

    answers, errors = [], []
    for fmt, job, fallbacks in plans:
        answer, kind, error = None, "latex", None
        if job:
            res = next(runs)
            error = res.reason
            if res.printed:   # the block printed its result (like a notebook): its last line
                answer, kind = res.value.strip().splitlines()[-1].strip(), "text"
            elif res.value is not None and not (fmt == "tinygsm" and res.value == "None"):
                answer, kind = res.value.strip(), "python"
            elif res.value is not None:
                error = "simple_math_problem() returned None"
        if answer is None:   # no value from the code (or no code): the written answer, if any
            answer, kind = next(((a, k) for a, k in fallbacks if a), (None, "latex"))
        answers.append((answer, kind))
        errors.append(error)

    verdicts, slow = [], []
    for i, ((answer, kind), gold) in enumerate(zip(answers, golds)):
        if gold is None or str(gold).strip() == "":
            verdicts.append(None)
        elif answer is None:
            verdicts.append(False)
        else:
            verdicts.append(_quick_match(answer, gold))
            if verdicts[-1] is None:
                slow.append(i)
    if slow:
        pool = pool or sandbox.default_sandbox()
        triples = [(answers[i][0], answers[i][1], gold_answer(golds[i])) for i in slow]
        for i, ok in zip(slow, _verify_many(triples, pool)):
            verdicts[i] = ok

    labels = [paper_label(t) for t in texts] if rule == "paper" else [p[0] for p in plans]
    return [{"format": f, "answer": a, "correct": v, "error": e}
            for f, (a, _), v, e in zip(labels, answers, verdicts, errors)]


def analyze(text, gold=None, rule="strict", pool=None):
    """dict(format, answer, correct, error) for one output (code runs once)."""
    return analyze_batch([text], [gold], rule=rule, pool=pool)[0]


def extract_answer(text, pool=None):
    """The final answer as a string, or None (tinygsm/omi1 run their code in the sandbox)."""
    return analyze(text, pool=pool)["answer"]


def grade(text, gold, pool=None):
    """True if the output's final answer equals gold (a number, a LaTeX answer, or GSM8K's '... #### 18')."""
    return bool(analyze(text, gold, pool=pool)["correct"])


# ----------------------------------------------------------------------------- the CLI

def summarize(results, rule="strict"):
    """Counts, shares and accuracy (among outputs with a gold) per format, and overall."""
    labels = list(FORMATS if rule == "strict" else PAPER_FORMATS)
    labels += sorted({r["format"] for r in results} - set(labels))
    n = len(results)
    formats = {}
    for f in labels:
        rs = [r for r in results if r["format"] == f]
        graded = [r for r in rs if r["correct"] is not None]
        right = sum(bool(r["correct"]) for r in graded)
        formats[f] = {"count": len(rs), "share": len(rs) / n if n else 0.0, "graded": len(graded),
                      "correct": right, "accuracy": right / len(graded) if graded else None}
    graded = sum(v["graded"] for v in formats.values())
    right = sum(v["correct"] for v in formats.values())
    return {"n": n, "rule": rule, "formats": formats, "graded": graded, "correct": right,
            "accuracy": right / graded if graded else None}


def format_labels(records):
    """The label set of the records' rule: classify.FORMATS (strict), or PAPER_FORMATS for --rule paper."""
    seen = {r["format"] for r in records}
    return list(PAPER_FORMATS) if seen and seen <= set(PAPER_FORMATS) else list(FORMATS)


def format_metrics(records, formats=None):
    """
    (shares, accuracy) over a list of outputs, each with "format" and "correct".
    shares: {fmt: fraction of outputs in fmt} for every label (classify.FORMATS, or the paper rule's labels),
    0.0 when absent; accuracy: {fmt: fraction correct among the outputs in fmt, or None when there are none}.
    A label outside the set counts as the last one ("other").
    """
    formats = formats or format_labels(records)
    count, right = Counter(), Counter()
    for r in records:
        f = r["format"] if r["format"] in formats else formats[-1]
        count[f] += 1
        right[f] += bool(r["correct"])
    total = sum(count.values())
    shares = {f: (count[f] / total if total else 0.0) for f in formats}
    accuracy = {f: (right[f] / count[f] if count[f] else None) for f in formats}
    return shares, accuracy


def format_table(summary):
    pct = lambda x: "-" if x is None else f"{100 * x:.1f}%"
    rows = [("format", "count", "share", "graded", "accuracy")]
    for f, v in summary["formats"].items():
        rows.append((f, str(v["count"]), pct(v["share"]), str(v["graded"]), pct(v["accuracy"])))
    rows.append(("all", str(summary["n"]), pct(1.0 if summary["n"] else 0.0), str(summary["graded"]),
                 pct(summary["accuracy"])))
    return "\n".join(f"{r[0]:<14}" + "".join(f"{c:>10}" for c in r[1:]) for r in rows)


def _main(argv=None):
    from common import ArgParser, UserError, read_jsonl
    ap = ArgParser(description="Format shares and per-format accuracy of the outputs in a JSONL file.")
    ap.add_argument("file", help="JSONL, one output per line")
    ap.add_argument("--field", default="response", help="the field holding the model output")
    ap.add_argument("--gold-field", default="gold", help="the gold answer's field (rows without one are not graded)")
    ap.add_argument("--rule", choices=RULES, default="strict", help="strict (default) or the authors' paper rule")
    ap.add_argument("--json", action="store_true", help="print one JSON line instead of a table")
    args = ap.parse_args(argv)
    if os.path.isdir(args.file):
        raise UserError(f"{args.file} is a directory, not a JSONL file")
    rows = read_jsonl(args.file)
    texts, golds = [], []
    for i, row in enumerate(rows, 1):
        if not isinstance(row, dict) or args.field not in row:
            raise UserError(f"{args.file}: record {i} has no field {args.field!r}")
        if not isinstance(row[args.field], str):
            raise UserError(f"{args.file}: record {i}: field {args.field!r} is not a string")
        texts.append(row[args.field])
        gold = row.get(args.gold_field)
        golds.append(None if gold is None or str(gold).strip() == "" else str(gold))
    summary = summarize(analyze_batch(texts, golds, rule=args.rule), args.rule)
    summary["file"] = args.file
    print(json.dumps(summary) if args.json else format_table(summary))


def main(argv=None):
    from common import main_guard   # imported here: common pulls in torch, which `import classify` does not need
    return main_guard(_main)(argv)


if __name__ == "__main__":
    main()
