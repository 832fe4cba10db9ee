"""Convert C4 to MDS token rows for T5 span-corruption pre-training.

    python recipes/convert_c4.py --help     # the options and examples (convert_c4_main in t5composer/cli.py)
"""

from t5composer.cli import convert_c4_main as main

if __name__ == '__main__':
    raise SystemExit(main())
