"""
Build a pretraining mixture's token shards and print its table of sources, documents, tokens and shares.

    python -m data.prepare                                   # the embedded toy mixture (CPU, seconds)
    python -m data.prepare --mix 'syn-tinygsm:1,syn-omi1:4,syn-omi2:1,syn-finemath:0.5'
    python -m data.prepare --mix 'tinygsm:1,omi1:4,omi2:1,finemath:1' --vocab-size 32768 --max-docs 100000
    python -m data.prepare --mix 'tinygsm=tinygsm_sample.parquet:1,syn-omi2:1'

The result lands in <out>/mix-<hash>/ (train.bin, val_<source>.bin, meta.json); the same arguments reuse it.
"""
import argparse

from common import main_guard
from data.mixture import DEFAULT_CACHE, DEFAULT_MIX, DEFAULT_UNIT, prepare_mixture


@main_guard
def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mix", default=DEFAULT_MIX, help=f"mixture spec (default {DEFAULT_MIX})")
    ap.add_argument("--vocab-size", type=int, default=2049, help="cl100k prefix + end-of-text: 2049 toy, 32768 150m/1b")
    ap.add_argument("--out", default=DEFAULT_CACHE, help="cache root (default data_cache/ in the repo)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-docs", type=int, default=None, help="cap on documents read per source (before copies)")
    ap.add_argument("--unit", type=int, default=DEFAULT_UNIT, help="documents in one copy of a synthetic source")
    args = ap.parse_args()
    print(prepare_mixture(args.mix, args.vocab_size, args.out, seed=args.seed, max_docs=args.max_docs, unit=args.unit))


if __name__ == "__main__":
    main()
