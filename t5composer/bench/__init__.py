"""Benchmark cases for ``recipes/benchmark.py`` (not tests).

Each case is a module holding ``HELP`` (one line for ``--help``), ``COLUMNS`` ((row key, header,
format) of its printed table), ``add_args(parser)`` (its own options, prefixed with its name) and
``run(args) -> list[dict]`` (its result rows). ``measure`` holds the timing and memory helpers the
cases share. The registry of cases lives in ``recipes/benchmark.py``.
"""
