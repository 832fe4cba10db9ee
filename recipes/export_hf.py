"""Export a Composer checkpoint of a t5composer T5 to a Hugging Face model directory.

    python recipes/export_hf.py runs/demo/latest-rank0.pt out/demo-hf
    python recipes/export_hf.py old.pt out/hf --config google/t5-v1_1-base --tokenizer tok_dir
    python recipes/export_hf.py runs/demo out/demo-hf --overwrite      # replace an earlier export

The result loads with ``transformers.T5ForConditionalGeneration.from_pretrained(out_dir)`` (and
``AutoTokenizer.from_pretrained(out_dir)`` when tokenizer files were available). Checkpoints are
Python pickles: only export checkpoints you trust.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import argparse  # noqa: E402


def main(argv: list[str]) -> int:
    """Parse the arguments and export; clear one-line errors instead of tracebacks."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('checkpoint', help='Composer checkpoint (.pt), or a save folder with latest-rank0.pt')
    parser.add_argument('out_dir', help='directory to write the Hugging Face model into')
    parser.add_argument('--config', default=None,
                        help="model config (name such as google/t5-v1_1-base, or HF config dir); overrides the checkpoint's")
    parser.add_argument('--tokenizer', default=None,
                        help="tokenizer directory or spiece.model; overrides the checkpoint's")
    parser.add_argument('--overwrite', action='store_true',
                        help='replace an earlier export in out_dir (only a directory holding Hugging Face model files)')
    args = parser.parse_args(argv)

    from t5composer.errors import describe_os_error
    from t5composer.models.hf_interchange import export_composer_checkpoint
    from t5composer.redaction import print_error, scrub_this_process

    scrub_this_process()

    try:
        out = export_composer_checkpoint(args.checkpoint, args.out_dir, config=args.config, tokenizer=args.tokenizer,
                                         overwrite=args.overwrite)
    except (FileNotFoundError, FileExistsError, ValueError) as e:  # a missing or corrupt checkpoint, an occupied out_dir
        print_error(e)
        return 2
    except OSError as e:  # writing the export failed (a full disk, permissions)
        print_error(describe_os_error(e, what='out_dir') if e.strerror else e)
        return 1
    print(f'Wrote {out} ({", ".join(sorted(p.name for p in out.iterdir()))}).')
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
