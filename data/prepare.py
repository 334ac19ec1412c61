"""
Tokenize a pretraining mixture's sources and write its manifest; print its table of sources, documents, tokens.

    python -m data.prepare                                   # the embedded toy mixture (CPU, seconds)
    python -m data.prepare --mix 'syn-tinygsm:1,syn-omi1:4,syn-omi2:1,syn-finemath:0.5'
    python -m data.prepare --mix 'tinygsm:1,omi1:4,omi2:1,finemath:1,algebraic-stack:1' --vocab-size 32768
    python -m data.prepare --mix 'tinygsm=path/to/TinyGSM:1,omi2=path/to/OpenMathInstruct-2:1' --workers 16

Each source is tokenized once into work units under <out>/tokens/ (one file, or a part of a big one, per unit;
--workers processes, default all cores); any later mixture over the same sources only writes a new manifest,
<out>/mix-<hash>/meta.json, in seconds. A killed build resumes where it stopped: finished units are kept.
If an input file cannot be read (a corrupt parquet, a cut-short .gz or .zst), the build finishes every other
unit, then stops with one line naming the file and writes no mixture; fix or remove the file and rerun.

Past one machine, over a shared filesystem, give each SLURM array task its share of the units:
    python -m data.prepare --mix ... --shard-index $SLURM_ARRAY_TASK_ID --num-shards $SLURM_ARRAY_TASK_COUNT \\
        --workers $SLURM_CPUS_PER_TASK
The last task to finish writes the mixture (or run the command once more without --shard-index: it finds every
unit built and only writes the manifest). The per-unit function, data.shards.build_unit(unit, tok, root), is
also plain enough to run under another engine (datatrove's executors, datasets.map(num_proc=...)).
"""
from common import ArgParser, UserError, main_guard
from data.mixture import DEFAULT_CACHE, DEFAULT_MIX, DEFAULT_UNIT, prepare_mixture
from data.shards import default_workers
from data.synthetic import add_synthetic_flags, synthetic_options


def get_args(argv=None):
    import argparse
    ap = ArgParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mix", default=DEFAULT_MIX, help=f"mixture spec (default {DEFAULT_MIX})")
    ap.add_argument("--vocab-size", type=int, default=2049, help="cl100k prefix + end-of-text: 2049 toy, 32768 150m/1b")
    ap.add_argument("--tokenizer", default=None, help="a folder with a Hugging Face tokenizer.json instead of the "
                                                      "cl100k prefix (then --vocab-size is the tokenizer's)")
    ap.add_argument("--out", default=DEFAULT_CACHE, help="cache root (default data_cache/ in the repo)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the synthetic sources (pretrain.py passes its --seed)")
    ap.add_argument("--max-docs", type=int, default=None, help="cap on documents read per source (before copies)")
    ap.add_argument("--unit", type=int, default=DEFAULT_UNIT, help="documents in one copy of a synthetic source")
    add_synthetic_flags(ap)
    ap.add_argument("--workers", type=int, default=default_workers(), help="tokenizing processes (default: all cores)")
    ap.add_argument("--shard-index", type=int, default=None, help="build only this share of the units (0-based)")
    ap.add_argument("--num-shards", type=int, default=None, help="how many shares the units are split into")
    args = ap.parse_args(argv)
    if (args.shard_index is None) != (args.num_shards is None):
        raise UserError("--shard-index and --num-shards go together")
    if args.num_shards is not None and not 0 <= args.shard_index < args.num_shards:
        raise UserError(f"--shard-index must be in 0..{args.num_shards - 1}, got {args.shard_index}")
    if args.workers < 1:
        raise UserError(f"--workers must be >= 1, got {args.workers}")
    if args.max_docs is not None and args.max_docs < 1:
        raise UserError(f"--max-docs must be >= 1, got {args.max_docs}")
    args.syn = synthetic_options(args.syn_steps, args.syn_hard_share)
    return args


@main_guard
def main(argv=None):
    args = get_args(argv)
    shard = None if args.num_shards is None else (args.shard_index, args.num_shards)
    d = prepare_mixture(args.mix, args.tokenizer or args.vocab_size, args.out, seed=args.seed,
                        max_docs=args.max_docs, unit=args.unit, workers=args.workers, shard=shard,
                        syn=args.syn)
    if d:
        print(d)


if __name__ == "__main__":
    main()
