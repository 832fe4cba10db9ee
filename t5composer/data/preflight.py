"""The checks of a run's data that need neither the tokenizer nor the model: splits that were
never converted (with the command that converts them), are empty, or are too small for one
batch, and an SNI root that is not a natural-instructions checkout.

Preflight (:func:`t5composer.run.preflight.preflight`) runs them within seconds of the command; the
checks that need the tokenizer (what the splits were converted with) are
:func:`t5composer.data.plan.check_splits`'s.
"""

from __future__ import annotations

import json
import os
from typing import Optional

from t5composer.config.batches import batch_sizes
from t5composer.config.schema import SNIDataConfig, TrainConfig
from t5composer.data import locations  # the module: tests stand in for the store through it
from t5composer.data.locations import is_remote, split_location

__all__ = ['convert_command', 'hf_split_name', 'split_size_problem', 'unconverted_split_problems']


def convert_command(cfg: TrainConfig, splits: list[str]) -> str:
    """The exact ``recipes/convert_c4.py`` command that produces the splits ``cfg`` expects."""
    return cfg.data.span_corruption.convert_command(out_root=cfg.data.local or 'data/c4', splits=splits,
                                                    tokenizer=cfg.tokenizer.name or '<tokenizer.name>')


def hf_split_name(split: str) -> str:
    """The converter's name of a split (``validation`` is written as ``val``)."""
    return {'val': 'val', 'validation': 'val'}.get(split, split)


def unconverted_split_problems(cfg: TrainConfig, *, train: bool = True, world_size: Optional[int] = None) -> list[str]:
    """Problems for splits that were never converted, are empty, too small for one batch of
    ``world_size`` processes (None: not checked), or whose remote cannot be reached.

    Args:
        cfg: the config.
        train: the train split is read too (else only the eval split).
        world_size: processes of the run (None: sizes are not checked).
    """
    d = cfg.data
    if isinstance(d, SNIDataConfig):
        return _sni_checkout_problems(d)
    if d.builtin_corpus is not None:
        return []
    splits = [s for s in (d.train_split if train else None, d.eval_split) if s]
    if is_remote(d.remote):
        # A split already in the local cache trains without the store; don't demand the network.
        cached = [s for s in splits if d.local is not None and os.path.isfile(os.path.join(split_location(d.local, s), 'index.json'))]
        return locations.remote_split_problems(d.remote, splits, timeout=min(d.download_timeout, 30.0), cached=cached)
    root = d.remote or d.local
    missing = [s for s in splits if not os.path.isfile(os.path.join(split_location(root, s), 'index.json'))]
    problems = []
    if missing:
        problems.append(
            f"No converted data for split(s) {', '.join(missing)} under '{root}'. Convert C4 first with:\n"
            f'    {convert_command(cfg, [hf_split_name(s) for s in missing])}\n'
            f"  or point 'data.local' at a directory that holds the converted splits.",
        )
    for s in splits:
        if s in missing:
            continue
        index = os.path.join(split_location(root, s), 'index.json')
        remake = f"{convert_command(cfg, [hf_split_name(s)])} --overwrite"
        try:
            with open(index, encoding='utf-8') as f:
                samples = sum(int(shard['samples']) for shard in json.load(f)['shards'])
        except (OSError, ValueError, KeyError, TypeError) as e:
            problems.append(f"{index} is unreadable or not an MDS index ({type(e).__name__}: {e}). Reconvert the split:\n    {remake}")
            continue
        if samples == 0:
            problems.append(
                f"Split '{s}' under '{root}' holds no samples ({index} lists none): its documents were shorter than one "
                f"row, or the conversion found no usable document. Reconvert it from more documents:\n    {remake}",
            )
        elif world_size is not None:
            problem = split_size_problem(cfg, what=f"Split '{s}' under '{root}'", rows=samples, world_size=world_size,
                                          train=s == d.train_split and train, more='Convert more documents (a larger --max_docs)')
            problems += [problem] if problem else []
    return problems


def split_size_problem(cfg: TrainConfig, *, what: str, rows: int, world_size: int, train: bool, more: Optional[str],
                        unit: str = 'rows') -> Optional[str]:
    """Why a split of ``rows`` rows would give the run no batch at all (None when it gives one).

    Training drops partial batches, and each of the ``world_size`` processes takes
    ``global_train_batch_size / world_size`` rows per step. Streaming gives every process
    ``ceil(rows / world_size)`` rows (padding with repeats) and Composer's DistributedSampler (SNI)
    ``floor(rows / world_size)``; both give every process a full batch exactly when ``rows >=
    global_train_batch_size``. Without one, every epoch is empty and the run never ends. An eval
    split drops its partial batch only under compile (a new batch shape would recompile), and then
    each process needs a full ``device_eval_batch_size``.

    Args:
        cfg: the config (batch sizes, compile).
        what: the split, as the message names it (where it is).
        rows: its rows (examples for SNI).
        world_size: processes of the run.
        train: the split trains (else it evaluates).
        more: how to get more rows, as the message's first fix (None: it cannot grow).
        unit: what a row is called in the message.
    """
    fixes = [more] if more else []
    if train:
        batch = cfg.global_train_batch_size
        if rows >= batch:
            return None
        cap = rows - rows % world_size
        multiple = f' (a multiple of the {world_size} processes)' if world_size > 1 else ''
        fixes.append(f'lower global_train_batch_size to at most {cap}{multiple}' if cap else f'run on fewer than {world_size} processes')
        return (f'{what} holds {rows:,} {unit}, fewer than one global batch (global_train_batch_size {batch}), so no training step '
                f'could run: every epoch would be empty and the run would never end. {_join_fixes(fixes)}.')
    if not cfg.compile:
        return None  # the partial batch is kept: any row gives every process one
    batch = batch_sizes(cfg, world_size, announce=False).eval
    if rows >= batch * world_size:
        return None
    cap = rows // world_size
    fixes.append(f'lower device_eval_batch_size to at most {cap}' if cap else f'run on fewer than {world_size} processes')
    fixes.append('set compile=false (the partial batch is then kept, at the cost of one recompile)')
    return (f'{what} holds {rows:,} {unit}, fewer than one eval batch on each of the {world_size} process(es) '
            f'(device_eval_batch_size {batch}): with compile=true the partial last eval batch is dropped, so evaluation would '
            f'see no data. {_join_fixes(fixes)}.')


def _join_fixes(fixes: list[str]) -> str:
    """``'A'``, ``'A or B'``, ``'A, B, or C'``, capitalised."""
    if len(fixes) == 1:
        text = fixes[0]
    else:
        text = ', '.join(fixes[:-1]) + (', or ' if len(fixes) > 2 else ' or ') + fixes[-1]
    return text[0].upper() + text[1:]


def _sni_checkout_problems(d: SNIDataConfig) -> list[str]:
    """A ``data.root`` that is not a natural-instructions checkout, or has no split ``data.split_name``."""
    if d.root is None:
        return []
    lists = [os.path.join(d.root, 'splits', d.split_name, f'{s}_tasks.txt') for s in ('train', 'test')]
    if os.path.isdir(os.path.join(d.root, 'tasks')) and all(os.path.isfile(p) for p in lists):
        return []
    splits_dir = os.path.join(d.root, 'splits')
    found = sorted(n for n in os.listdir(splits_dir) if os.path.isdir(os.path.join(splits_dir, n))) if os.path.isdir(splits_dir) else []
    if os.path.isdir(os.path.join(d.root, 'tasks')) and found and d.split_name not in found:
        # A checkout, but another split name: say which ones exist rather than "not a checkout".
        return [f"data.split_name '{d.split_name}' is not a split of {d.root}: there is no splits/{d.split_name}/. "
                f"Set data.split_name to one of {', '.join(found)}."]
    return [
        f"data.root '{d.root}' is not a natural-instructions checkout: it needs tasks/<task>.json and "
        f"splits/{d.split_name}/train_tasks.txt and test_tasks.txt. Clone allenai/natural-instructions there, "
        "or set data.split_name to a folder under splits/.",
    ]
