"""Benchmarks of t5composer and the baselines they are measured against (not tests, not installed).

``python -m bench`` (``bench/__main__.py``, run from the repository root) runs the cases. Each case
is a module holding ``HELP`` (one line for ``--help``), ``COLUMNS`` ((row key, header, format) of
its printed table), ``add_args(parser)`` (its own options, prefixed with its name) and
``run(args) -> list[dict]`` (its result rows); the registry of cases is ``CASES`` in
``bench/__main__.py``. ``measure`` holds the timing and memory helpers the cases share,
``span_corruption_reference`` and ``optimizer.NanoT5AdamWScale`` the baselines, ``train_loop``
the Composer-loop part of ``bench/gpu_check.sh``.
"""
