"""Benchmarks of t5composer (not tests): a table of named cases, each timed with warm-up + repeats.

Run from the repository root (``python -m`` puts it on the path; ``bench`` is not installed with
the library):

    python -m bench                                   # every case, cuda if present
    python -m bench --only generation --device cpu --json bench.json
    python -m bench --only generation --gen-model google/t5-v1_1-small --repeats 1

Each case prints a table and adds rows to the JSON output (``{"device": ..., "cases": {name:
[row, ...]}}``). Times are the median over ``--repeats`` runs after ``--warmup`` runs; peak memory
is measured per variant (see ``bench/measure.py``). The cases live in ``bench/<name>.py`` (each
module's docstring says what it measures); this module only holds the registry below and the
command line.
"""

from __future__ import annotations

import argparse
import json
import sys
from types import ModuleType

import torch

from bench import collator, converter, dataloader, generation, kernels, model, objectives, optimizer, scaling
from bench.measure import format_table

# name -> case module (HELP, COLUMNS, add_args(parser), run(args) -> rows); one line per case.
CASES: dict[str, ModuleType] = {
    'generation': generation,
    'collator': collator,
    'dataloader': dataloader,
    'objectives': objectives,
    'converter': converter,
    'model': model,
    'kernels': kernels,
    'optimizer': optimizer,
    'scaling': scaling,
}


def build_parser() -> argparse.ArgumentParser:
    """The command line: the common options, then each case's own (prefixed with its name)."""
    epilog = 'cases:\n' + '\n'.join(f'  {name:<12} {case.HELP}' for name, case in CASES.items())
    parser = argparse.ArgumentParser(prog='python -m bench', description=__doc__, epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--only', action='append', choices=list(CASES), help='run only this case (repeatable)')
    parser.add_argument('--device', choices=['cpu', 'cuda'], default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--warmup', type=int, default=1, help='untimed runs before timing')
    parser.add_argument('--repeats', type=int, default=3, help='timed runs; the median is reported')
    parser.add_argument('--json', default=None, help='write the results to this file')
    parser.add_argument('--threads', type=int, default=None,
                        help='torch CPU threads (default: torch\'s choice). On a shared machine 1 thread avoids '
                             'OpenMP barrier stalls that slow small ops (the cached decode step) by orders of magnitude')
    for case in CASES.values():
        case.add_args(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run the selected cases, print tables, write JSON."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.device == 'cuda' and not torch.cuda.is_available():
        parser.error('--device cuda but CUDA is not available')
    if args.repeats < 1 or args.warmup < 0:
        parser.error('--repeats must be >= 1 and --warmup >= 0')

    if args.threads is not None:
        torch.set_num_threads(args.threads)

    results: dict[str, object] = {
        'device': torch.cuda.get_device_name() if args.device == 'cuda' else f'cpu ({torch.get_num_threads()} threads)',
        'torch': torch.__version__,
        'cases': {},
    }
    for name in args.only or list(CASES):
        rows = CASES[name].run(args)
        results['cases'][name] = rows
        print(f'\n## {name} ({results["device"]})\n')
        print(format_table(CASES[name].COLUMNS, rows))
        print()
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(results, f, indent=2)
        print(f'wrote {args.json}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
