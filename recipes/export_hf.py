"""Export a Composer checkpoint of a t5composer T5 to a Hugging Face model directory.

    python recipes/export_hf.py --help     # the options and examples (export_hf_main in t5composer/cli.py)
"""

from t5composer.cli import export_hf_main as main

if __name__ == '__main__':
    raise SystemExit(main())
