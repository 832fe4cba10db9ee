"""Overlay training loss, eval NLL and learning rate of several runs (nanoT5's comparison plots).

    python recipes/plot_runs.py --help     # the options and examples (plot_runs_main in t5composer/cli.py)
"""

from t5composer.cli import plot_runs_main as main

if __name__ == '__main__':
    raise SystemExit(main())
