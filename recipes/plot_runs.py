"""Overlay training loss, eval NLL and learning rate of several runs (nanoT5's comparison plots).

    python recipes/plot_runs.py runs/adamwscale runs/adafactor --out loss.png
    python recipes/plot_runs.py runs/*/metrics.jsonl --labels a b --smooth 50 --max_step 20000

Each RUN is a run's save folder (which holds metrics.jsonl) or the metrics.jsonl file itself.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from t5composer.errors import describe_os_error  # noqa: E402
from t5composer.plotting import RunFileError, load_run, plot_runs, run_labels  # noqa: E402
from t5composer.redaction import print_error, scrub_this_process  # noqa: E402


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('runs', nargs='+', metavar='RUN', help="a run's save folder (e.g. runs/demo) or its metrics.jsonl")
    parser.add_argument('--out', default='loss.png', help='image to write; .png, .pdf or .svg (default: loss.png)')
    parser.add_argument('--labels', nargs='+', help='legend names, one per RUN (default: the folder names)')
    parser.add_argument('--smooth', type=int, default=None, metavar='N',
                        help='training loss: mean of the last N steps (1: raw; default 100, or a 30th of a shorter run)')
    parser.add_argument('--title', help='figure title')
    parser.add_argument('--min_step', type=int, default=None, help='draw from this step on (skips the first steep drop)')
    parser.add_argument('--max_step', type=int, default=None, help='draw steps up to this one only')
    parser.add_argument('--yscale', choices=('auto', 'linear', 'log'), default='auto',
                        help='y axis of the loss and eval panels (auto: log for values spanning more than a factor of 3)')
    args = parser.parse_args(argv)
    if args.labels is not None and len(args.labels) != len(args.runs):
        parser.error(f'--labels has {len(args.labels)} name(s) for {len(args.runs)} run(s); give one per run.')
    if args.smooth is not None and args.smooth < 1:
        parser.error(f'--smooth must be at least 1 (1 draws the raw loss), got {args.smooth}.')
    scrub_this_process()
    labels = args.labels or run_labels(args.runs)
    try:
        runs = [load_run(run, label=label, min_step=args.min_step, max_step=args.max_step) for run, label in zip(args.runs, labels)]
    except (RunFileError, OSError) as e:
        print_error(e)
        return 2
    try:
        lines = plot_runs(runs, out=args.out, window=args.smooth, title=args.title, yscale=args.yscale)
    except OSError as e:  # --out in a folder that does not exist or cannot be written
        print_error(describe_os_error(e, what='--out'))
        return 2
    for line in lines:
        print(line)
    print(f'wrote {args.out}')
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
