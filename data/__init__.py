"""
data/: where every token the project trains or evaluates on comes from.

    tokenizer.py   get_tokenizer(4096): a prefix of cl100k's merges + end-of-text, offline (or a tokenizer.json)
    synthetic.py   the embedded GSM-style generator, rendered in the tinygsm / omi1 / omi2 formats
    sources.py     real pretraining sources: hub id, pinned revision, the split's files, columns; streaming readers
                   (parquet, JSON lines, JSON arrays; plain, .gz, .zst) for hub files and local copies alike
    shards.py      each source tokenized once, in work units run by a pool of processes (resumable)
    mixture.py     "tinygsm:1,omi1:4,..." -> a manifest over tokenized units -> open_mixture() (memmapped streams)
    prepare.py     python -m data.prepare --mix ... --workers N : tokenize, write the manifest, print its table
    benchmarks.py  load_benchmark("gsm8k" | "math500" | "aime" | "synthetic" | ...) -> [{id, question, gold}]

A document is question + "\\n\\n" + solution + end-of-text, no chat template, no BOS (as in the paper).
A prompt is the raw question + "\\n\\n": the model continues with the solution exactly as in pretraining.
"""

SEP = "\n\n"


def prompt_text(question):
    """The text a model is prompted with (evaluate.py and rl.py both use this, so they agree)."""
    return question + SEP


def encode_prompts(tok, questions, answer_prefix=""):
    """Token ids of each question's prompt, the one place prompts are tokenized (rl.py, evaluate.py, pretrain.py).
    A tokenizer with tok.prompt_bos set (an imported Hugging Face model whose authors prompted with BOS) gets its
    BOS id first; our own cl100k-prefix tokenizer has none, as pretraining documents had none. answer_prefix: text
    that starts every answer (evaluate.py --force-format), tokenized with the prompt as pretraining tokenized the
    whole document."""
    ids = tok.encode_batch([prompt_text(q) + answer_prefix for q in questions]) if questions else []
    bos = getattr(tok, "bos_id", None) if getattr(tok, "prompt_bos", False) else None
    return [[bos] + p for p in ids] if bos is not None else ids


def document_text(question, solution):
    """One pretraining document, without the end-of-text token (added as an id when tokenizing)."""
    return question + SEP + solution


# the public API, imported after prompt_text so submodules can use it
from data.tokenizer import get_tokenizer  # noqa: E402
from data.benchmarks import load_benchmark, BENCHMARKS  # noqa: E402
from data.mixture import DEFAULT_MIX, prepare_mixture, open_mixture, mixture_path  # noqa: E402
