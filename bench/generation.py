"""Benchmark case ``generation``: greedy decoding with and without the key/value cache.

Batch 32, source 1,024 tokens, 128 new tokens per row (EOS suppressed so every row generates all
128), random weights. Model: ``--gen-model`` (default google/t5-v1_1-small on CUDA; on CPU the
"bench-cpu" shape: t5-v1_1-small with d_model 256, d_ff 1024, 4 heads of 64, 4+4 layers, vocab
32128: the uncached run is already ~3.5 min per repeat on one CPU thread). Measured (2-core shared
machine, --threads 1): 154.8 tokens/s with the cache, 18.9 without (8.2x; 426 vs 20.5 tokens/s
after the 16.8 s encoder pass), identical tokens. The whole case takes ~14 minutes on CPU with the
default 3 repeats; --repeats 1 for a quicker look.
"""

from __future__ import annotations

import argparse
from typing import Any

import torch

from bench.measure import measure

HELP = 'greedy generation tokens/s with and without the KV cache'

COLUMNS = (
    ('variant', 'variant', '{}'),
    ('tokens_per_s', 'tokens/s', '{:.1f}'),
    ('decode_tokens_per_s', 'tokens/s excl. encoder', '{:.1f}'),
    ('median_s', 'median s', '{:.2f}'),
    ('encoder_s', 'encoder s', '{:.2f}'),
    ('speedup_vs_no_cache', 'speedup', '{:.2f}x'),
    ('peak_mib', 'peak MiB', '{:.0f}'),
)

# t5-v1_1-small narrowed so the uncached CPU run stays near a minute on 2 cores.
BENCH_CPU_SHAPE = dict(d_model=256, d_ff=1024, num_heads=4, d_kv=64, num_layers=4, num_decoder_layers=4)


def add_args(parser: argparse.ArgumentParser) -> None:
    """Add the case's ``--gen-*`` options to ``parser``."""
    g = parser.add_argument_group('generation')
    g.add_argument('--gen-model', default=None,
                   help="'bench-cpu' or a model name/dir (default: google/t5-v1_1-small on cuda, bench-cpu on cpu)")
    g.add_argument('--gen-batch', type=int, default=32)
    g.add_argument('--gen-source-len', type=int, default=1024)
    g.add_argument('--gen-new-tokens', type=int, default=128)
    g.add_argument('--gen-dtype', choices=['fp32', 'bf16'], default='fp32')


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Time cached and uncached generation; one row per variant.

    Args:
        args: the parsed command line (``device``, ``warmup``, ``repeats`` and the ``gen_*`` options).
    """
    from t5composer.models import T5ForConditionalGeneration, load_model_config

    device = args.device
    name = args.gen_model or ('google/t5-v1_1-small' if device == 'cuda' else 'bench-cpu')
    if name == 'bench-cpu':
        config = load_model_config('google/t5-v1_1-small', dropout_rate=0.0, **BENCH_CPU_SHAPE)
    else:
        config = load_model_config(name, dropout_rate=0.0)
    torch.manual_seed(0)
    model = T5ForConditionalGeneration(config, lm_head_std=config.d_model**-0.5).eval().to(device)
    if args.gen_dtype == 'bf16':
        model = model.to(torch.bfloat16)
    batch, source_len, new = args.gen_batch, args.gen_source_len, args.gen_new_tokens
    g = torch.Generator().manual_seed(0)
    input_ids = torch.randint(2, config.vocab_size - 100, (batch, source_len), generator=g).to(device)
    shape = (f'{name}: d_model {config.d_model}, d_ff {config.d_ff}, {config.num_heads}x{config.d_kv} heads, '
             f'{config.num_layers}+{config.num_decoder_layers} layers, vocab {config.vocab_size}, {args.gen_dtype}')
    print(f'[generation] {shape}; batch {batch}, source {source_len}, {new} new tokens (EOS suppressed)', flush=True)

    def generate(use_cache: bool, tokens: int) -> torch.Tensor:
        # min_new_tokens = max_new_tokens: every row generates every token.
        return model.generate(input_ids, max_new_tokens=tokens, min_new_tokens=tokens, use_cache=use_cache)

    encoder = measure(lambda: model.encode(input_ids), device=device, warmup=args.warmup, repeats=1)
    rows, outputs = [], {}
    for use_cache in (True, False):  # cached first: smaller peak memory (see bench.measure)
        m = measure(
            lambda: generate(use_cache, new),
            warmup_fn=lambda: generate(use_cache, min(new, 4)),  # warms kernels/allocator, far cheaper
            device=device, warmup=args.warmup, repeats=args.repeats,
        )
        outputs[use_cache] = m.pop('result')
        generated = batch * (outputs[use_cache].shape[1] - 1)
        rows.append({
            'variant': 'kv cache' if use_cache else 'no cache',
            'tokens_per_s': generated / m['median_s'],
            'decode_tokens_per_s': generated / max(m['median_s'] - encoder['median_s'], 1e-9),
            'median_s': m['median_s'],
            'times_s': m['times_s'],
            'encoder_s': encoder['median_s'],
            'peak_mib': m['peak_mib'],
            'model': shape,
            'batch': batch, 'source_len': source_len, 'new_tokens': new,
        })
        print(f"  {rows[-1]['variant']}: {m['median_s']:.2f} s median of {len(m['times_s'])}", flush=True)
    same = torch.equal(outputs[True], outputs[False])
    speedup = rows[1]['median_s'] / rows[0]['median_s']
    for row in rows:
        row['speedup_vs_no_cache'] = rows[1]['median_s'] / row['median_s']
        row['same_tokens'] = same
    print(f'  cache speedup {speedup:.2f}x; cached and uncached tokens identical: {same}')
    return rows
