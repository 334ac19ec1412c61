"""
The embedded synthetic mixture: GSM-style word problems with known integer answers, rendered in the three
pretraining formats exactly as the real datasets write them, plus answer-free math prose (a FineMath stand-in).

    problems("rl", 1000, seed=0)       -> [{"id", "question", "gold", "steps", "style", "parts"}, ...]
    render(problem, "omi1")            -> the solution text in that format
    documents("tinygsm", 5000, seed=0) -> ["question\n\nsolution", ...]   (the caller appends end-of-text)
    documents("arith", 5000, seed=0)   -> arithmetic drill sheets: the prose's equations alone (see _drill)

Design (see ../shared/TOY.md):
- 1 or 2 arithmetic steps ("hard": 3, more than pretraining or RL ever see); every intermediate value
  is a non-negative integer below 1000. At the toy's vocab 2049 a document is about 160 tokens and a 3-step
  tinygsm one runs to ~300 (the toy context is 320). With 1-4 steps (~190 tokens a document) the toy model
  reached 14% greedy accuracy in 16 minutes of pretraining; with 1-2 it reaches ~20% in 9 (README "Results").
- question style carries format information, as in the real data: a problem's people come from one of three
  name groups (its "style"); style i is rendered in its home format FORMATS[i] with probability 0.6 and in
  each other format with 0.2. With style-free questions greedy decoding shows a single format before RL.
- each format's solution starts with its own first token ("def" / "Let's ..." / "To find ..."), so the
  format is decided at the first sampled token after "\n\n".
- the splits are disjoint by question text: a hash of the question picks its split (pretrain 80%, rl 15%,
  test 5%; "hard" has more steps than any other split, so it never shares a question with them).
- deterministic per seed: every function takes its own random.Random, never the global RNG.
Questions always end in "?", so encode(question + "\n\n") is a token prefix of the whole document
(cl100k's pattern keeps "?\n\n" in one piece): the prompt a model sees equals the pretraining prefix.
"""
import hashlib
import random
import re

from data import prompt_text

FORMATS = ("tinygsm", "omi1", "omi2")
HOME_P = 0.6  # style i -> its home format FORMATS[i] with this probability, each other format (1 - HOME_P) / 2

# three name groups = three question styles; a problem only uses names of its own group
NAMES = [
    [("Mia", "f"), ("Leo", "m"), ("Ava", "f"), ("Max", "m"), ("Emma", "f"), ("Jack", "m"), ("Lily", "f"), ("Sam", "m"),
     ("Grace", "f"), ("Ben", "m"), ("Chloe", "f"), ("Tom", "m"), ("Ella", "f"), ("Noah", "m"), ("Ruby", "f"), ("Owen", "m")],
    [("Priya", "f"), ("Ravi", "m"), ("Aisha", "f"), ("Omar", "m"), ("Mei", "f"), ("Kenji", "m"), ("Zara", "f"), ("Arjun", "m"),
     ("Leila", "f"), ("Hassan", "m"), ("Yuki", "f"), ("Tariq", "m"), ("Nadia", "f"), ("Jin", "m"), ("Amara", "f"), ("Kofi", "m")],
    [("Sofia", "f"), ("Mateo", "m"), ("Lucia", "f"), ("Diego", "m"), ("Elena", "f"), ("Pablo", "m"), ("Carmen", "f"), ("Luis", "m"),
     ("Rosa", "f"), ("Marco", "m"), ("Ines", "f"), ("Hugo", "m"), ("Clara", "f"), ("Bruno", "m"), ("Julia", "f"), ("Felix", "m")],
]

# objects by kind; each kind has its own verbs. (plural, container, "in"/"on" the container)
THINGS = [("marbles", "bag", "in"), ("stickers", "pack", "in"), ("pencils", "box", "in"), ("books", "box", "in"),
          ("cards", "pack", "in"), ("shells", "jar", "in"), ("coins", "jar", "in"), ("beads", "bag", "in"),
          ("stamps", "album", "in"), ("balloons", "bag", "in"), ("crayons", "box", "in"), ("buttons", "jar", "in"),
          ("toy cars", "box", "in"), ("rocks", "bucket", "in"), ("flowers", "vase", "in"), ("ribbons", "pack", "in")]
FOODS = [("apples", "basket", "in"), ("cookies", "tray", "on"), ("muffins", "tray", "on"), ("eggs", "carton", "in"),
         ("oranges", "crate", "in"), ("cupcakes", "tray", "on"), ("candies", "bag", "in"), ("strawberries", "basket", "in"),
         ("carrots", "bag", "in"), ("pancakes", "plate", "on")]
GIFTS = ["book", "scarf", "kite", "puzzle", "lamp", "backpack", "board game", "plant"]

# (sentence template, constant's variable name); {P} pronoun, {o} object pronoun, {F} a friend, {b} the number
ADD = {
    "thing": [("{P} buys {b} more {X}.", "bought"), ("{P} finds {b} more {X}.", "found"),
              ("{F} gives {o} {b} {X}.", "received"), ("{P} wins {b} {X} at a fair.", "won")],
    "food": [("{P} buys {b} more {X}.", "bought"), ("{P} picks up {b} more {X}.", "picked"),
             ("{F} gives {o} {b} {X}.", "received"), ("{P} makes {b} more {X}.", "made")],
    "money": [("{P} earns {b} more dollars.", "earned"), ("{F} gives {o} {b} dollars.", "received"),
              ("{P} finds {b} dollars.", "found")],
}
SUB = {
    "thing": [("{P} gives {b} {X} to {F}.", "given"), ("{P} loses {b} {X}.", "lost"), ("{P} sells {b} {X}.", "sold")],
    "food": [("{P} eats {b} {X}.", "eaten"), ("{P} gives {b} {X} to {F}.", "given"), ("{P} sells {b} {X}.", "sold")],
    "money": [("{P} spends {b} dollars on a {gift}.", "spent"), ("{P} gives {b} dollars to {F}.", "given")],
}
QUESTION_END = ["now", "in the end", "at the end"]


# words that carry no arithmetic: names, pronouns, gift names, the closing phrase. Two questions that differ only in
# them are the same problem to a model, so they must fall in the same split (hashing the raw text put a pretraining
# question with other names into the test set: 25 of the 200 test questions and 117 of 1,024 RL prompts for seed
# 1337, scripts/split_leak.py).
_SURFACE = re.compile(r"\b(" + "|".join(sorted({n for g in NAMES for n, _ in g} | set(GIFTS) | set(QUESTION_END) |
                                             {"She", "He", "she", "he", "her", "him", "his", "Her", "His"},
                                             key=len, reverse=True)) + r")\b")


def split_key(question):
    """The question with its surface words masked: what decides its split."""
    return _SURFACE.sub("_", question)


def _bucket(question):
    """Split membership from the masked question alone, so no two splits share a question up to names."""
    h = int(hashlib.sha1(split_key(question).encode()).hexdigest()[:8], 16) % 100
    return "pretrain" if h < 80 else "rl" if h < 95 else "test"


class _Builder:
    """Collects one problem: question sentences, code lines (var, expr), omi2 prose lines, the running value."""

    def __init__(self, rng, style):
        self.people = rng.sample(NAMES[style], 7)  # the hero first, then friends / compared people
        self.sentences, self.code, self.prose, self.vars = [], [], [], set()
        self.ops = 0

    def var(self, base):
        name, k = base, 2
        while name in self.vars:
            name, k = f"{base}_{k}", k + 1
        self.vars.add(name)
        return name

    def const(self, base, value):
        name = self.var(base)
        self.code.append((name, str(value)))
        return name

    def calc(self, base, expr):
        name = self.var(base)
        self.code.append((name, expr))
        self.ops += 1
        return name


def _pronouns(gender):
    return ("She", "she", "her", "her") if gender == "f" else ("He", "he", "him", "his")


def _obj(rng):
    kind = rng.choice(["thing", "thing", "food", "money"])
    if kind == "money":
        return kind, "dollars", "wallet", "in"
    return (kind,) + rng.choice(THINGS if kind == "thing" else FOODS)


def _ident(s):
    return s.replace(" ", "_")


def _chain(rng, style, steps):
    """People compared one after another: "Leo has 3 times as many marbles as Mia." (1 step each)."""
    b = _Builder(rng, style)
    kind, X, _, _ = _obj(rng)
    names = [n for n, _ in b.people]
    v = rng.randint(5, 60)
    cur = b.const(f"{names[0].lower()}_{_ident(X)}", v)
    b.sentences.append(f"{names[0]} has {v} {X}.")
    b.prose.append(f"{names[0]} has {v} {X}.")
    values = [(names[0], cur, v)]

    def relate(prev, name, cur, v):
        # every value stays >= 2 (no "1 apples"), below 1000, and divisions are exact
        divisors = [k for k in (2, 3, 4) if v % k == 0 and v // k >= 2]
        choices = [op for op, ok in (("more", v <= 997), ("fewer", v >= 4), ("times", v * 2 < 1000),
                                     ("part", bool(divisors))) if ok]
        op = rng.choice(choices)
        if op == "more":
            d = rng.randint(2, min(40, 999 - v))
            w, sent, expr, shown = v + d, f"{name} has {d} more {X} than {prev}.", f"{cur} + {d}", f"{v} + {d}"
        elif op == "fewer":
            d = rng.randint(2, min(40, v - 2))
            w, sent, expr, shown = v - d, f"{name} has {d} fewer {X} than {prev}.", f"{cur} - {d}", f"{v} - {d}"
        elif op == "times":
            k = rng.choice([k for k in (2, 3, 4, 5) if v * k < 1000])
            word = "twice" if k == 2 else f"{k} times"
            w, sent, expr, shown = v * k, f"{name} has {word} as many {X} as {prev}.", f"{cur} * {k}", f"{v} * {k}"
        else:
            k = rng.choice(divisors)
            word = {2: "half", 3: "a third", 4: "a quarter"}[k]
            w, sent, expr, shown = v // k, f"{name} has {word} as many {X} as {prev}.", f"{cur} // {k}", f"{v} / {k}"
        b.sentences.append(sent)
        b.prose.append(f"{sent[:-1]}, so {name} has ${shown} = {w}$ {X}.")
        return b.calc(f"{name.lower()}_{_ident(X)}", expr), w

    together = steps >= 2 and rng.random() < 0.25
    for i in range(1, steps if together else steps + 1):
        cur, v = relate(names[i - 1], names[i], cur, v)
        values.append((names[i], cur, v))
    if together and values[-2][2] + v < 1000:
        (n1, c1, v1), (n2, c2, v2) = values[-2], values[-1]
        cur = b.calc(f"total_{_ident(X)}", f"{c1} + {c2}")
        v = v1 + v2
        b.sentences.append(f"How many {X} do {n1} and {n2} have together?")
        b.prose.append(f"Together they have ${v1} + {v2} = {v}$ {X}.")
        return b, cur, v, f"how many {X} {n1} and {n2} have together", f"{n1} and {n2} have {{}} {X} together"
    if together:  # the sum would pass 1000: one more comparison instead
        cur, v = relate(names[steps - 1], names[steps], cur, v)
    last = names[steps]
    b.sentences.append(f"How many {X} does {last} have?")
    return b, cur, v, f"how many {X} {last} has", f"{last} has {{}} {X}"


def _plural(box):
    return box + "es" if box.endswith("x") else box + "s"


def _inventory(rng, style, steps):
    """One person's stock over time: a start, then buy / lose / get boxes, maybe share or sell at the end."""
    b = _Builder(rng, style)
    kind, X, box, on = _obj(rng)
    hero, gender = b.people[0]
    P, p, o, pos = _pronouns(gender)
    friends = [n for n, _ in b.people[1:]]
    x, boxes = _ident(X), _plural(box)

    def event(cur, v, sub):
        """A plain one-step event: gain or lose d items."""
        tmpl, name = rng.choice(SUB[kind] if sub else ADD[kind])
        d = rng.randint(2, min(40, v - 2)) if sub else rng.randint(2, min(40, 999 - v))
        w = v - d if sub else v + d
        sent = tmpl.format(P=P, o=o, F=rng.choice(friends), b=d, X=X, gift=rng.choice(GIFTS))
        dv = b.const(name, d)
        cur = b.calc(f"{x}_left" if sub else f"total_{x}", f"{cur} {'-' if sub else '+'} {dv}")
        b.sentences.append(sent)
        b.prose.append(f"{sent[:-1]}, so {p} has ${v} {'-' if sub else '+'} {d} = {w}$ {X}{' left' if sub else ''}.")
        return cur, w

    # the start: a plain count, or boxes of items (one multiplication)
    left = steps
    if rng.random() < 0.3:
        k, m = rng.randint(2, 9), rng.randint(2, 12)
        if kind == "money":
            sent = f"{hero} works {k} hours and earns {m} dollars per hour."
            kv, mv = b.const("hours", k), b.const("dollars_per_hour", m)
        else:
            sent = f"{hero} has {k} {boxes} of {X} with {m} {X} {on} each {box}."
            kv, mv = b.const(boxes, k), b.const(f"{x}_per_{box}", m)
        cur, v = b.calc(x, f"{kv} * {mv}"), k * m
        b.prose.append(f"{sent[:-1]}, so {p} has ${k} * {m} = {v}$ {X}.")
        left -= 1
    else:
        v = rng.randint(10, 90)
        sent = f"{hero} has {v} {X}."
        cur = b.const(x, v)
        b.prose.append(sent)
    b.sentences.append(sent)
    final = left >= 1 and rng.random() < 0.35
    left -= final
    last = None
    while left > 0:
        if left >= 2 and kind != "money" and v < 900 and rng.random() < 0.3:
            # buys k more boxes of m: two steps (k * m, then the sum)
            k = rng.randint(2, 5)
            m = rng.randint(2, min(12, (999 - v) // k))
            sent = f"{P} buys {k} more {boxes} with {m} {X} {on} each {box}."
            kv, mv = b.const(f"new_{boxes}", k), b.const(f"{x}_per_new_{box}", m)
            nv = b.calc(f"new_{x}", f"{kv} * {mv}")
            cur = b.calc(f"total_{x}", f"{cur} + {nv}")
            b.sentences.append(sent)
            b.prose.append(f"{sent[:-1]}, which is ${k} * {m} = {k * m}$ {X}.")
            b.prose.append(f"So {p} has ${v} + {k * m} = {v + k * m}$ {X}.")
            v, left, last = v + k * m, left - 2, "add"
            continue
        last = "sub" if v >= 4 and (v >= 990 or rng.random() < 0.5) else "add"
        cur, v = event(cur, v, last == "sub")
        left -= 1
    if final:
        divisors = [k for k in range(2, 9) if v % k == 0 and v // k >= 2]
        if divisors and (kind == "money" or v * 2 >= 1000 or rng.random() < 0.6):
            k = rng.choice(divisors)
            if kind != "money" and rng.random() < 0.5:
                sent = f"{P} puts them into {k} {boxes} with the same number {on} each {box}."
                kv = b.const(boxes, k)
                question, what, answer = (f"How many {X} are {on} each {box}?", f"how many {X} are {on} each {box}",
                                          f"each {box} holds {{}} {X}")
            else:
                sent = f"{P} shares {'the money' if kind == 'money' else 'them'} equally among {k} friends."
                kv = b.const("friends", k)
                question, what, answer = (f"How many {X} does each friend get?", f"how many {X} each friend gets",
                                          f"each friend gets {{}} {X}")
            cur = b.calc(f"{x}_each", f"{cur} // {kv}")
            b.sentences += [sent, question]
            b.prose.append(f"{sent[:-1]}, so {answer.format(f'${v} / {k} = {v // k}$')}.")
            return b, cur, v // k, what, answer
        if kind != "money" and v * 2 < 1000:
            price = rng.choice([k for k in range(2, 10) if v * k < 1000])
            item = X[:-3] + "y" if X.endswith("ies") else X[:-1]
            sent = f"{P} then sells all of {pos} {X} for {price} dollars each."
            pv = b.const(f"price_per_{_ident(item)}", price)
            cur = b.calc("money", f"{cur} * {pv}")
            b.sentences += [sent, f"How many dollars does {hero} make?"]
            b.prose.append(f"{sent[:-1]}, so {p} makes ${v} * {price} = {v * price}$ dollars.")
            return b, cur, v * price, f"how many dollars {hero} makes", f"{hero} makes {{}} dollars"
        # nothing fits (e.g. a prime number of dollars): one more plain step instead
        last = "sub" if v >= 4 else "add"
        cur, v = event(cur, v, last == "sub")
    end = {"sub": " left", "add": " " + rng.choice(QUESTION_END), None: ""}[last]
    b.sentences.append(f"How many {X} does {hero} have{end}?")
    return b, cur, v, f"how many {X} {hero} has{end}", f"{hero} has {{}} {X}{end}"


def _make(rng, style, steps):
    family = _chain if rng.random() < 0.4 else _inventory
    b, cur, value, what, answer = family(rng, style, steps)
    assert b.ops == steps and 2 <= value < 1000, (b.ops, steps, value)
    return {
        "question": " ".join(b.sentences),
        "gold": str(value),
        "steps": steps,
        "style": style,
        # everything render() needs, JSON-able
        "parts": {"sentences": b.sentences, "code": b.code, "answer_var": cur, "prose": b.prose,
                  "what": what, "answer": answer},
    }


STEPS = (1, 2)    # arithmetic steps of the ordinary splits (pretrain, rl, test)
HARD_STEPS = 3    # the "hard" split: one step more than pretraining or RL ever see


def _steps(rng, split):
    return HARD_STEPS if split == "hard" else rng.randint(*STEPS)


def _draw(rng, split, style, seen, steps=None):
    """One new problem of the split (rejection on the question's hash bucket), not already in `seen`; `steps` fixes
    its arithmetic steps (default: the split's own, drawn anew at each try)."""
    bucket = "test" if split == "hard" else split
    while True:
        p = _make(rng, style, steps or _steps(rng, split))
        if _bucket(p["question"]) == bucket and p["question"] not in seen:
            seen.add(p["question"])
            return p


SPLITS = ("pretrain", "rl", "test", "hard")


def problems(split, n, seed=0):
    """n distinct problems of one split; styles drawn uniformly. The first k of n are the same for any n >= k."""
    assert split in SPLITS, f"split must be one of {SPLITS}"
    rng = random.Random(f"problems-{split}-{seed}")
    seen, out = set(), []
    for i in range(n):
        p = _draw(rng, split, rng.randrange(3), seen)
        out.append({"id": f"syn-{split}-{i}", **p})
    return out


def render(problem, fmt):
    """The solution text of a problem in one format (what follows question + "\n\n" in a document)."""
    parts = problem["parts"]
    code, ans_var, gold = parts["code"], parts["answer_var"], problem["gold"]
    boxed = "Thus " + parts["answer"].format("\\boxed{" + gold + "}") + "."
    if fmt == "tinygsm":
        doc = "\n".join(f"    {s}" for s in parts["sentences"])
        body = "\n".join(f"    {v} = {e}" for v, e in code)
        return (f'def simple_math_problem() -> int:\n    """\n{doc}\n    """\n{body}\n'
                f"    result = {ans_var}\n    return result")
    if fmt == "omi1":
        body = "\n".join(f"{v} = {e}" for v, e in code)
        return (f"Let's solve this problem using Python code.\n<llm-code>\n{body}\n{ans_var}\n</llm-code>\n"
                f"<llm-code-output>\n{gold}\n</llm-code-output>\n{boxed}")
    if fmt == "omi2":
        lines = [f"To find {parts['what']}, we go step by step."] + parts["prose"] + [boxed]
        return "\n".join(lines)
    raise ValueError(f"unknown format {fmt!r}; formats: {FORMATS}")


def _style_for(rng, fmt):
    """P(style | format) when each style keeps its home format with HOME_P: the home style with HOME_P."""
    home = FORMATS.index(fmt)
    if rng.random() < HOME_P:
        return home
    return rng.choice([s for s in range(3) if s != home])


def documents(fmt, n, seed=0, steps=STEPS, hard_share=0.0):
    """n pretraining documents (question + "\n\n" + solution, or finemath-like prose), without end-of-text.

    steps: the arithmetic steps of a problem, drawn uniformly from this list (repeat a value to weight it: (1, 2, 2)
    is a third 1-step, two thirds 2-step). hard_share: the fraction of problems with HARD_STEPS steps instead, the
    harder set's length, drawn from the pretraining split (so never a harder-set question up to names). RL and the
    test sets keep STEPS; the defaults reproduce the embedded mixture exactly (no extra random draws)."""
    rng = random.Random(f"docs-{fmt}-{seed}")
    if fmt == "finemath":
        return [_lesson(rng) for _ in range(n)]
    if fmt == "arith":
        seen = set()
        return [_drill(rng, seen) for _ in range(n)]
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; formats: {FORMATS + ('finemath', 'arith')}")
    steps = tuple(steps)
    seen = set()
    out = []
    for _ in range(n):
        style = _style_for(rng, fmt)
        k = None  # the default: _draw's own 1-2 steps, redrawn at each rejection, as before these options
        if hard_share and rng.random() < hard_share:
            k = HARD_STEPS
        elif steps != STEPS:
            k = rng.choice(steps)
        p = _draw(rng, "pretrain", style, seen, k)
        out.append(prompt_text(p["question"]) + render(p, fmt))
    return out


def parse_steps(spec):
    """'1,2' -> (1, 2): the --syn-steps list (a repeated value weights it)."""
    try:
        steps = tuple(int(x) for x in str(spec).split(",") if x.strip())
    except ValueError:
        steps = ()
    if not steps or any(k not in range(1, HARD_STEPS + 1) for k in steps):
        raise ValueError(f"bad --syn-steps {spec!r}: expected comma-separated step counts in 1..{HARD_STEPS}, "
                         f"for example 1,2 or 1,2,2")
    return steps


# the first words of each format's solution (see the module docstring): evaluate.py --force-format starts every
# answer with them, so a model is measured in a format whatever it would have chosen
FIRST_WORDS = {"tinygsm": "def", "omi1": "Let's", "omi2": "To find"}


def parse_hard_share(spec):
    """'omi1=0.05' -> {"omi1": 0.05}: the --syn-hard-share of one or more formats (comma-separated)."""
    out = {}
    for item in (x.strip() for x in str(spec or "").split(",")):
        if not item:
            continue
        fmt, _, share = item.partition("=")
        try:
            v = float(share)
        except ValueError:
            v = -1.0
        if fmt.strip() not in FORMATS or not 0 <= v <= 1:
            raise ValueError(f"bad --syn-hard-share {item!r}: expected FORMAT=SHARE with FORMAT one of "
                             f"{', '.join(FORMATS)} and SHARE in [0, 1], for example omi1=0.05")
        out[fmt.strip()] = v
    return out


def add_synthetic_flags(parser):
    """--syn-steps and --syn-hard-share, the same in pretrain.py and data.prepare."""
    parser.add_argument("--syn-steps", default="1,2",
                        help="arithmetic steps of the synthetic pretraining problems, drawn uniformly from this list "
                             "(repeat one to weight it: 1,2,2); RL and test prompts always have 1-2")
    parser.add_argument("--syn-hard-share", default="",
                        help="FORMAT=SHARE[,...]: that share of one format's synthetic problems gets 3 steps, the "
                             "harder set's length (the transfer experiment, docs/LOG.md); default none")


def synthetic_options(steps_spec="1,2", hard_spec=""):
    """pretrain.py's / data.prepare's --syn-steps and --syn-hard-share -> the `syn` dict data.mixture takes, or one
    clear error line."""
    from common import UserError
    try:
        return {"steps": list(parse_steps(steps_spec)), "hard_share": parse_hard_share(hard_spec)}
    except ValueError as e:
        raise UserError(str(e)) from None


def source_options(fmt, steps=STEPS, hard_share=None):
    """The generator options that change a source's documents (empty at the defaults, so a default mixture keeps its
    identity and cache): what data/shards.py records in the unit's identity and passes back to documents()."""
    if fmt not in FORMATS:
        return {}
    opts = {}
    if tuple(steps) != STEPS:
        opts["steps"] = list(steps)
    share = (hard_share or {}).get(fmt, 0.0)
    if share:
        opts["hard_share"] = share
    return opts


# ---------------------------------------------------------------------------------------------------------
# FineMath stand-in: short lessons in plain prose, arithmetic written out, never a final boxed answer or code.
# Kept free of the substring "def" (as in "define"), which the paper's format rule would read as code.

def _lesson(rng):
    topic = rng.choice([_addition, _subtraction, _groups, _sharing, _comparing, _table, _multi_step])
    title, paras = topic(rng)
    return f"## {title}\n\n" + "\n\n".join(paras)


def _thing(rng):
    return rng.choice(THINGS + FOODS)[0]


def _addition(rng):
    a, b, X = rng.randint(5, 90), rng.randint(2, 60), _thing(rng)
    return "Adding whole numbers", [
        f"When we add, we put two groups together and count them as one. If a box holds {a} {X} and we put in "
        f"{b} more, the box now holds {a} + {b} = {a + b} {X}.",
        f"The order does not matter: {b} + {a} is also {a + b}. This is why we can start from the larger number "
        f"and count on, which is faster than counting from one.",
        rng.choice([f"Try it yourself with {rng.randint(10, 50)} + {rng.randint(10, 50)}.",
                    "Words such as more, in all, total and together often point to addition."]),
    ]


def _subtraction(rng):
    a = rng.randint(20, 99)
    b, X = rng.randint(1, a - 1), _thing(rng)
    return "Taking away", [
        f"Subtraction finds what is left when a part is taken away. From {a} {X}, taking away {b} leaves "
        f"{a} - {b} = {a - b} {X}.",
        f"We can check a subtraction with an addition: {a - b} + {b} = {a}, which is where we started.",
        rng.choice(["Words such as left, fewer, gave away and lost often point to subtraction.",
                    f"Unlike addition, the order matters here: {b} - {a} is not the same as {a} - {b}."]),
    ]


def _groups(rng):
    k, m, X = rng.randint(2, 9), rng.randint(2, 12), _thing(rng)
    return "Multiplication as equal groups", [
        f"Multiplication is a short way to add equal groups. Three groups of {m} is {m} + {m} + {m} = {3 * m}, "
        f"which we write as 3 * {m} = {3 * m}.",
        f"If there are {k} bags with {m} {X} in each bag, there are {k} * {m} = {k * m} {X} in all.",
        f"Swapping the numbers gives the same product: {m} * {k} = {k * m}.",
    ]


def _sharing(rng):
    k, q, X = rng.randint(2, 8), rng.randint(2, 15), _thing(rng)
    return "Division as fair sharing", [
        f"Division splits a number into equal parts. When {k * q} {X} are shared equally among {k} children, "
        f"each child gets {k * q} / {k} = {q} {X}.",
        f"Division undoes multiplication: since {k} * {q} = {k * q}, we know {k * q} / {k} = {q} "
        f"and {k * q} / {q} = {k}.",
        "Words such as each, per, equally and shared often point to division.",
    ]


def _comparing(rng):
    a, k, d, X = rng.randint(4, 40), rng.randint(2, 5), rng.randint(2, 20), _thing(rng)
    return "Comparing amounts", [
        f"Twice as many means two times as many. If one jar has {a} {X}, a jar with twice as many has "
        f"{a} * 2 = {2 * a} {X}, and a jar with {k} times as many has {a} * {k} = {a * k} {X}.",
        f"Some problems compare by a difference instead. A jar with {d} more {X} has {a} + {d} = {a + d}, "
        f"and a jar with {min(d, a - 1)} fewer has {a} - {min(d, a - 1)} = {a - min(d, a - 1)}.",
        "Reading carefully which amount is being compared to which is the main step in these problems.",
    ]


def _table(rng):
    m = rng.randint(2, 12)
    rows = "\n".join(f"{m} * {i} = {m * i}" for i in range(1, 11))
    return f"The {m} times table", [
        f"Here is the table for {m}. Each line adds {m} to the line above it.", rows,
        f"Knowing this table by heart makes problems with groups of {m} quick to solve.",
    ]


def _multi_step(rng):
    p = _draw(rng, "pretrain", rng.randrange(3), set())  # a pretraining question only, its answer left out
    return "Word problems with more than one step", [
        "Many word problems need more than one step. First find the amount the problem gives directly, then "
        "use it to find the next one, and keep going until you reach the amount the question asks for.",
        "It helps to write each step on its own line and to check that every number is used once.",
        f"Practice: {p['question']}",
    ]


# ---------------------------------------------------------------------------------------------------------
# Arithmetic drill (the scale experiment, docs/LOG.md "Issue 21"): the OMI-2 prose must compute every step itself,
# and a toy model sees each of its ~4k distinct facts about twice in a pass over the prose, so it gets 2-3% of its
# own equations right at 1.6M and at 5.8M parameters alike. A drill sheet is nothing but those equations, in the
# prose's own `$a op b = c$` form and drawn from the same generator (the steps of pretraining-split problems), so
# a mixture can give a model that many more looks at the facts; whether a larger model turns them into better prose
# than a smaller one is what the experiment measures. No question, no answer, no format's opening words.
DRILL_PROBLEMS = 12   # problems whose equations fill one sheet: about 18 equations, ~200 tokens at vocab 2049
_EQUATION = re.compile(r"\$\d+ [-+*/] \d+ = \d+\$")


def _drill(rng, seen):
    eqs = []
    for _ in range(DRILL_PROBLEMS):
        p = _draw(rng, "pretrain", rng.randrange(3), seen)
        eqs += [m for line in p["parts"]["prose"] for m in _EQUATION.findall(line)]
    rng.shuffle(eqs)  # the facts alone: no problem's order of steps
    return "## Practice\n\n" + "\n".join(eqs)


def split_of(question):
    """Which split a synthetic question belongs to (for tests and sanity checks)."""
    return _bucket(question)
