"""Benchmark case ``converter``: ``convert_c4`` tokens/s vs the tokenizer's own batch encode.

Data: the train file of ``--converter-source`` (default ``../shared/data/c4_sample``, 800 real
C4 documents, with the real T5 ``spiece.model``; without it, the demo corpus of CPython's docs
and a 2,000-piece tokenizer trained on it), its lines repeated ``--converter-copies`` times into
one gzip file in a temporary directory, so per-split start-up is a small part of the time.

Variants, on the same documents (tokens counted with one EOS per document, as the converter does):

- raw ``sentencepiece``: ``SentencePieceProcessor.encode(texts, num_threads=1)``, one batch;
- raw ``tokenizers``: the HF fast tokenizer's ``tokenizer(texts, add_special_tokens=False)``,
  one batch of one copy of the documents (it is ~10x slower), ``TOKENIZERS_PARALLELISM=false``
  (one thread);
- ``convert_c4`` with N workers (``--converter-workers``, default 1,2): tokens / the split's
  seconds (``t5composer_meta.json``: reading gzip, JSON, tokenizing, rows, MDS with zstd; pool
  start-up included), each run in a fresh interpreter as the command runs it. Per worker =
  tokens/s / N; ``vs raw`` compares that with the raw speed of the
  backend the converter used (its metadata's ``encoder``). With 1 worker the tokenizer is a
  thread of the converter's process, beside the thread that reads, parses and writes; with N >= 2
  the main process reads and writes beside N worker processes, so it needs N + 1 cores to reach
  N times one worker. ``main process cores``: the converter process's CPU time over its wall
  time (the whole call; with N >= 2 the workers' CPU is not in it).

Rounds: every variant runs once per round (``--warmup`` rounds dropped, then ``--repeats``), so
the medians compare runs made minutes apart under the same conditions.

Peak memory: this process's for the raw encoders, the converter's main process's for
``convert_c4`` (its workers are separate processes).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.measure import peak_memory_mib, reset_peak_memory

HELP = 'convert_c4 tokens/s per worker vs sentencepiece / HF tokenizers batch encode'

COLUMNS = (
    ('variant', 'variant', '{}'),
    ('tokens_per_s', 'tokens/s', '{:,.0f}'),
    ('tokens_per_s_per_worker', 'per worker', '{:,.0f}'),
    ('vs_raw', 'vs raw', '{:.0%}'),
    ('median_s', 'median s', '{:.2f}'),
    ('main_cores', 'main process cores', '{:.2f}'),
    ('peak_mib', 'peak MiB', '{:.0f}'),
)

_REPO = Path(__file__).resolve().parents[1]
_SHARED = _REPO.parent / 'shared' / 'data'


def add_args(parser: argparse.ArgumentParser) -> None:
    """Add the case's ``--converter-*`` options to ``parser``."""
    g = parser.add_argument_group('converter')
    g.add_argument('--converter-source', default=None,
                   help='C4-style folder (default: ../shared/data/c4_sample if present, else the demo corpus)')
    g.add_argument('--converter-tokenizer', default=None,
                   help='tokenizer (default: ../shared/data/tokenizer/t5/spiece.model with c4_sample, else a demo one)')
    g.add_argument('--converter-copies', type=int, default=20, help='times the source train file is repeated')
    g.add_argument('--converter-workers', default='1,2', help='comma-separated num_workers values')


def _source(args: argparse.Namespace, tmp: Path) -> tuple[Path, str, str]:
    """(train file, tokenizer, description) as chosen by the options (see the module docstring)."""
    source, tokenizer = args.converter_source, args.converter_tokenizer
    if source is None and (_SHARED / 'c4_sample').is_dir():
        source = str(_SHARED / 'c4_sample')
        tokenizer = tokenizer or str(_SHARED / 'tokenizer' / 't5' / 'spiece.model')
    if source is None:
        from t5composer.data.demo_corpus import write_demo_corpus

        write_demo_corpus(tmp / 'demo')
        source, what = str(tmp / 'demo'), 'demo corpus (CPython docs)'
    else:
        what = source
    if tokenizer is None:
        from t5composer.tokenizer_training import train_tokenizer

        tokenizer = str(train_tokenizer(out_dir=tmp / 'tokenizer', vocab_size=2000,
                                        input_files=sorted(Path(source).glob('c4-train.*'))))
    train = sorted(Path(source).glob('c4-train.*'))
    if not train:
        raise FileNotFoundError(f'no c4-train.* file in {source}')
    return train[0], tokenizer, what


_CONVERT = """
import json, sys, time
from t5composer.data.c4_convert import convert_c4
import streaming  # imported before the clocks start, as convert_c4 does before a split's clock
cpu, wall = time.process_time(), time.perf_counter()
meta = convert_c4(**json.loads(sys.argv[1]))['train']
meta['main_cores'] = (time.process_time() - cpu) / (time.perf_counter() - wall)
with open('/proc/self/status') as f:
    meta['peak_mib'] = next((int(line.split()[1]) / 1024 for line in f if line.startswith('VmHWM:')), None)
print(json.dumps(meta))
"""


def _convert_in_subprocess(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Run ``convert_c4(**kwargs)`` in a fresh interpreter, as ``recipes/convert_c4.py`` does.

    Not in this process: its pool workers (forkserver) would re-import this script's
    ``__main__`` (torch and every case) before starting, seconds that the converter command
    does not pay. Returns the split's metadata plus the process's ``peak_mib``.
    """
    out = subprocess.run([sys.executable, '-c', _CONVERT, json.dumps(kwargs)], cwd=_REPO, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f'convert_c4 failed:\n{out.stderr[-3000:]}')
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Time the raw encoders and ``convert_c4``; one row per variant.

    Args:
        args: the parsed command line (``warmup``, ``repeats`` and the ``converter_*`` options).
    """
    from t5composer.data.c4_source import parse_c4_line
    from t5composer.tokenization import BatchEncoder, load_tokenizer

    tmp = Path(tempfile.mkdtemp(prefix='t5composer-bench-conv-'))
    try:
        train, tokenizer_name, what = _source(args, tmp)
        opener = gzip.open if train.name.endswith('.gz') else open
        with opener(train, 'rb') as f:
            lines = f.read().splitlines(keepends=True)
        (tmp / 'en').mkdir()
        with gzip.open(tmp / 'en' / 'c4-train.00000-of-00001.json.gz', 'wb') as f:
            for _ in range(args.converter_copies):
                f.writelines(lines)
        texts = [t for t in (parse_c4_line(line)[0] for line in lines) if t is not None] * args.converter_copies
        tok = load_tokenizer(tokenizer_name)
        data = f'{what} x{args.converter_copies} ({len(texts):,} docs), tokenizer {tokenizer_name}'
        print(f'  [converter] {data}', flush=True)

        try:
            sp = BatchEncoder(tok, backend='sentencepiece')._sp
        except ValueError:
            sp = None  # no spiece.model behind this tokenizer
        # One copy of the documents for HF tokenizers: ~10x slower than sentencepiece, and
        # tokens/s does not depend on how many documents there are.
        once = texts[: len(texts) // args.converter_copies]
        raw_variants = [('raw HF tokenizers batch encode (1 thread)', 'tokenizers',
                         lambda: tok(once, add_special_tokens=False)['input_ids'], len(once))]
        if sp is not None:
            raw_variants.insert(0, ('raw sentencepiece encode (1 thread)', 'sentencepiece',
                                    lambda: sp.encode(texts, num_threads=1), len(texts)))
        workers_list = [int(w) for w in str(args.converter_workers).split(',') if w.strip()]

        # Rounds: each round times every variant once, so a load that changes over the minutes the
        # case takes hits them alike (this machine's single-thread speed drifted by 30% between
        # runs minutes apart); the first ``warmup`` rounds are dropped.
        raw_times: dict[str, list[float]] = {name: [] for name, *_ in raw_variants}
        raw_tokens: dict[str, int] = {}
        raw_peak: dict[str, float] = {}
        conversions: dict[int, list[dict[str, Any]]] = {w: [] for w in workers_list}
        old = os.environ.get('TOKENIZERS_PARALLELISM')
        os.environ['TOKENIZERS_PARALLELISM'] = 'false'  # one thread: the per-worker speed
        try:
            for round_ in range(args.warmup + args.repeats):
                keep = round_ >= args.warmup
                for name, _, encode, docs in raw_variants:
                    reset_peak_memory('cpu')
                    start = time.perf_counter()
                    ids = encode()
                    seconds = time.perf_counter() - start
                    raw_peak[name] = max(raw_peak.get(name, 0.0), peak_memory_mib('cpu'))
                    raw_tokens[name] = sum(len(x) for x in ids) + docs  # + one EOS per document, as converted
                    if keep:
                        raw_times[name].append(seconds)
                for workers in workers_list:
                    kwargs = dict(out_root=str(tmp / 'out'), source=str(tmp / 'en'), splits=['train'], tokenizer=tokenizer_name,
                                  num_workers=workers, overwrite=True, progress=False)
                    result = _convert_in_subprocess(kwargs)
                    if keep:
                        conversions[workers].append(result)
                print(f'  [converter] round {round_ + 1}/{args.warmup + args.repeats}' + ('' if keep else ' (warm-up)'), flush=True)
        finally:
            if old is None:
                os.environ.pop('TOKENIZERS_PARALLELISM', None)
            else:
                os.environ['TOKENIZERS_PARALLELISM'] = old

        rows: list[dict[str, Any]] = []
        raw: dict[str, float] = {}
        for name, backend, _, _ in raw_variants:
            median_s = statistics.median(raw_times[name])
            raw[backend] = raw_tokens[name] / median_s
            rows.append({'variant': name, 'backend': backend, 'tokens': raw_tokens[name], 'workers': 1,
                         'tokens_per_s': raw[backend], 'tokens_per_s_per_worker': raw[backend],
                         'median_s': median_s, 'times_s': raw_times[name], 'peak_mib': raw_peak[name], 'data': data})
            print(f'  [converter] {name}: {raw[backend]:,.0f} tokens/s', flush=True)
        for workers, runs in conversions.items():
            seconds = statistics.median(r['seconds'] for r in runs)
            tokens, backend = runs[0]['tokens'], runs[0]['encoder']
            per_worker = tokens / seconds / workers
            rows.append({
                'variant': f'convert_c4 ({workers} worker{"s" if workers > 1 else ""}, {backend})', 'backend': backend,
                'workers': workers, 'tokens': tokens, 'tokens_per_s': tokens / seconds, 'tokens_per_s_per_worker': per_worker,
                'vs_raw': per_worker / raw[backend] if backend in raw else None,
                'median_s': seconds, 'times_s': [r['seconds'] for r in runs], 'rows': runs[0]['rows'],
                'main_cores': statistics.median(r['main_cores'] for r in runs),
                'peak_mib': max(r['peak_mib'] for r in runs), 'data': data,
            })
            print(f'  [converter] {rows[-1]["variant"]}: {tokens / seconds:,.0f} tokens/s '
                  f'({per_worker:,.0f} per worker, {rows[-1]["vs_raw"] or 0:.0%} of raw)', flush=True)
        return rows
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
