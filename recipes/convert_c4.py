"""Convert C4 to MDS token rows for T5 span-corruption pre-training.

Examples:
    python recipes/convert_c4.py --out_root ~/data/c4_t5 --max_docs 2000000 --num_workers 4
    python recipes/convert_c4.py --source /data/c4/en --out_root /data/c4_t5 \\
        --tokenizer /data/tok/spiece.model --splits val
    python recipes/convert_c4.py --out_root s3://my-bucket/c4_t5 --num_workers 4   # straight to S3
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

try:
    import t5composer  # noqa: F401
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    from t5composer.data.span_spec import SpanCorruptionSpec

    t5 = SpanCorruptionSpec()  # the flags' defaults: T5's span corruption
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--source', default='allenai/c4',
                   help="'allenai/c4' (hub, subset en), an fsspec URL, or a local dir like the hub's en/ folder")
    p.add_argument('--out_root', required=True,
                   help='output directory or object-store URL (s3://bucket/c4); splits go to OUT_ROOT/train, OUT_ROOT/val')
    p.add_argument('--local', default=None, help='with a remote --out_root: where shards are staged before upload (default: a temp dir)')
    p.add_argument('--splits', nargs='+', default=['train', 'val'], choices=['train', 'val'])
    p.add_argument('--tokenizer', default='google/t5-v1_1-base', help='hub name, tokenizer dir or spiece.model')
    p.add_argument('--input_length', type=int, default=t5.input_length, help='encoder input length the rows are made for')
    p.add_argument('--noise_density', type=float, default=t5.noise_density)
    p.add_argument('--mean_noise_span_length', type=float, default=t5.mean_noise_span_length)
    p.add_argument('--max_docs', type=int, default=None, help='stop each split after N good documents')
    p.add_argument('--num_workers', type=int, default=1, help='tokenizers: 1 = a thread beside the reader and writer; N >= 2 = N processes (useful up to ~4)')
    p.add_argument('--overwrite', action='store_true', help='replace existing split directories')
    p.add_argument('--compression', default='zstd', help="MDS compression ('none' for none)")
    p.add_argument('--size_limit', default='64mb', help='MDS shard size limit')
    p.add_argument('--subset', default='en', help='hub dataset folder')
    p.add_argument('--encoder', default='auto', choices=['auto', 'sentencepiece', 'tokenizers'],
                   help='tokenization backend (same ids; sentencepiece is faster when available)')
    p.add_argument('--no_progress', action='store_true', help='no progress bar')
    args = p.parse_args(argv)

    logging.basicConfig(level=logging.INFO, format='%(levelname)s %(name)s: %(message)s')
    from t5composer.data.c4_convert import convert_c4
    from t5composer.redaction import print_error, scrub_this_process

    scrub_this_process()

    try:
        results = convert_c4(
            source=args.source, out_root=args.out_root, splits=args.splits, tokenizer=args.tokenizer,
            spec=SpanCorruptionSpec(input_length=args.input_length, noise_density=args.noise_density,
                                    mean_noise_span_length=args.mean_noise_span_length),
            max_docs=args.max_docs,
            num_workers=args.num_workers, overwrite=args.overwrite,
            compression=None if args.compression.lower() == 'none' else args.compression,
            size_limit=args.size_limit, progress=not args.no_progress, subset=args.subset,
            encoder=args.encoder, local=args.local,
        )
    except (OSError, ValueError) as e:
        # Bad inputs (a missing source, an existing split, a tokenizer too large for uint16) are
        # explained by their message; a traceback would only bury it.
        print_error(e)
        return 2
    for split, m in results.items():
        secs = max(m['seconds'], 1e-9)
        skipped = f"{sum(m['skipped_lines'].values()):,} skipped"
        if m['skipped_lines']:
            skipped += f" {m['skipped_lines']}"
        print(f"{split}: {m['docs']:,} docs, {m['tokens']:,} tokens, {m['rows']:,} rows of {m['expanded_length']}, "
              f"{skipped}, {m['seconds']:.1f} s, {m['tokens'] / secs:,.0f} tokens/s ({m['encoder']}) "
              f"-> {args.out_root.rstrip('/')}/{split}")
    return 0


if __name__ == '__main__':
    sys.exit(main())
