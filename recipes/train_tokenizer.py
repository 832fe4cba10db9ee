"""Train a T5-style SentencePiece unigram tokenizer.

    python recipes/train_tokenizer.py --help     # the options and examples (train_tokenizer_main in t5composer/cli.py)
"""

from t5composer.cli import train_tokenizer_main as main

if __name__ == '__main__':
    raise SystemExit(main())
