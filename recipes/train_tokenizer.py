"""Train a T5-style SentencePiece unigram tokenizer (pad 0, eos 1, unk 2, + 100 sentinels).

Writes spiece.model and the Hugging Face tokenizer files into --out, so that the directory can be
given as tokenizer.name in a YAML or as --tokenizer to recipes/convert_c4.py.

Example:
    python recipes/train_tokenizer.py --input /data/c4/en/c4-train.0000*-of-01024.json.gz \\
        --out ~/tok/c4_32k --vocab_size 32000 --max_sentences 5000000
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

try:
    import t5composer  # noqa: F401
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--input', nargs='+', required=True,
                   help='text files (.txt[.gz], one document each) or C4-style .json[l][.gz] files')
    p.add_argument('--out', required=True, help='output directory')
    p.add_argument('--vocab_size', type=int, required=True, help='pieces, sentinels excluded (T5: 32000)')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--character_coverage', type=float, default=0.9999)
    p.add_argument('--max_sentences', type=int, default=10_000_000, help='lines to train on (sampled if more)')
    p.add_argument('--num_threads', type=int, default=1, help='training threads (output depends on it)')
    args = p.parse_args(argv)

    from t5composer.redaction import print_error, scrub_this_process
    from t5composer.tokenization import load_tokenizer, sentinel_ids
    from t5composer.tokenizer_training import train_tokenizer

    scrub_this_process()
    t = time.perf_counter()
    try:
        out = train_tokenizer(
            out_dir=args.out, vocab_size=args.vocab_size, input_files=args.input, seed=args.seed,
            character_coverage=args.character_coverage, max_sentences=args.max_sentences,
            num_threads=args.num_threads,
        )
    except (OSError, ValueError) as e:  # a missing input, a corpus too small for the vocabulary: said, not traced
        print_error(e)
        return 2
    tok = load_tokenizer(out)
    print(f'{out}: {len(tok)} ids ({args.vocab_size} pieces + 100 sentinels, <extra_id_0> = '
          f'{sentinel_ids(tok, 1)[0]}) in {time.perf_counter() - t:.1f} s')
    return 0


if __name__ == '__main__':
    sys.exit(main())
