"""Where a pre-training run's tokenizer and splits come from (:class:`DataPlan`), and the checks
of those splits that need the tokenizer: converted with it and this length, intact, big enough.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from t5composer.config.loading import cache_dir
from t5composer.config.schema import TrainConfig
from t5composer.errors import ConfigError
# Modules, not their functions: tests stand in for the corpus build and the store through them.
from t5composer.data import demo_corpus, locations
from t5composer.data.locations import is_remote, split_location
from t5composer.data.metadata import META_FILENAME, check_split_metadata, read_split_metadata
from t5composer.data.preflight import hf_split_name, split_size_problem
from t5composer.data.split_lock import SplitInUseError, hold_reader_lock
from t5composer.data.verify import SHARD_HASH, check_files, check_hashes, index_rows, read_index, repair_advice, verify_command
from t5composer.tokenization import tokenizer_fingerprint

__all__ = ['DataPlan', 'check_splits', 'hold_split_locks', 'plan_data']

log = logging.getLogger(__name__)


@dataclass
class DataPlan:
    """Where the tokenizer and the splits of a run come from, once resolved."""

    tokenizer_name: str
    local: Optional[str]
    remote: Optional[str]


def plan_data(cfg: TrainConfig) -> DataPlan:
    """Resolve tokenizer and data locations, building the builtin corpus on first use."""
    d = cfg.data
    if d.builtin_corpus is not None:
        tok_dir, mds_root = demo_corpus.prepare_demo_data(
            cache_dir=os.path.join(cache_dir(), 'demo'),
            vocab_size=d.builtin_vocab_size,
            input_length=d.input_length,
            noise_density=d.noise_density,
            mean_noise_span_length=d.mean_noise_span_length,
        )
        return DataPlan(tokenizer_name=str(tok_dir), local=str(mds_root), remote=None)
    assert cfg.tokenizer.name is not None
    return DataPlan(tokenizer_name=cfg.tokenizer.name, local=d.local, remote=d.remote)


def check_splits(cfg: TrainConfig, plan: DataPlan, tokenizer: Any, expanded_length: int, *,
                          world_size: Optional[int] = None, train: bool = True) -> dict[str, bool]:
    """Check the splits before anything reads them; raise :class:`ConfigError` listing every problem.

    - Data converted with another tokenizer or length is refused (local splits, and remote ones
      through their ``t5composer_meta.json``, fetched like the shards).
    - The shards: each one ``index.json`` lists is present with its recorded size, and the rows
      add up to the metadata's (for a remote split: the shards already in the local cache, and an
      index there that is not the store's); with ``data.verify_hashes`` their checksums too.
    - With ``world_size``: a split too small for one batch (:func:`t5composer.data.preflight.split_size_problem`), for the
      builtin corpus and remote splits too, which preflight cannot see.

    Args:
        cfg: the config.
        plan: where the tokenizer and the splits are.
        tokenizer: the loaded tokenizer.
        expanded_length: the row length the config needs.
        world_size: processes of the run (None: sizes are not checked).
        train: the train split is read too (else only the eval split is checked).

    Returns:
        ``{split: whether its index.json records shard checksums}``.
    """
    d = cfg.data
    remote = plan.remote if is_remote(plan.remote) else None
    root = remote or plan.local or plan.remote
    if root is None:
        return {}
    fingerprint = tokenizer_fingerprint(tokenizer)
    problems: list[str] = []
    hashed: dict[str, bool] = {}
    for split in (d.train_split if train else None, d.eval_split):
        if not split:
            continue
        split_dir = split_location(root, split)
        cache = split_location(plan.local, split) if remote is not None else None
        try:
            if remote is not None:
                with tempfile.TemporaryDirectory() as tmp:
                    try:
                        locations.fetch_remote_file(f'{split_dir}/{META_FILENAME}', os.path.join(tmp, META_FILENAME), timeout=d.download_timeout)
                    except FileNotFoundError as e:
                        raise FileNotFoundError(
                            f'{split_dir} has no {META_FILENAME}: it was not converted by t5composer, or its conversion did not '
                            f'finish. Convert it with: python recipes/convert_c4.py --out_root {remote} --splits {hf_split_name(split)} '
                            f'--tokenizer {plan.tokenizer_name} --input_length {d.input_length} --overwrite',
                        ) from e
                    meta = read_split_metadata(tmp)
                    locations.fetch_remote_file(f'{split_dir}/index.json', os.path.join(tmp, 'index.json'), timeout=d.download_timeout)
                    try:
                        index = read_index(tmp)
                    except ValueError as e:
                        raise ValueError(str(e).replace(os.path.join(tmp, 'index.json'), f'{split_dir}/index.json') + ' '
                                         + repair_advice(split_dir, meta)) from e
                    cached_index = Path(cache, 'index.json') if cache else None
                    if cached_index and cached_index.is_file() and cached_index.read_bytes() != Path(tmp, 'index.json').read_bytes():
                        problems.append(
                            f'{cached_index} differs from {split_dir}/index.json: the split in data.remote was converted again '
                            f'since the local cache was filled, and the run would mix the two. Delete {cache} (it is filled '
                            'again from data.remote as training reads it).',
                        )
                        continue
            else:
                meta = read_split_metadata(split_dir)
                try:
                    index = read_index(split_dir)
                except ValueError as e:
                    raise ValueError(f'{e} {repair_advice(split_dir, meta)}') from e
            check_split_metadata(
                meta,
                tokenizer_fingerprint=fingerprint,
                vocab_size=len(tokenizer),
                expanded_length=expanded_length,
                split_dir=split_dir,
                tokenizer_name=plan.tokenizer_name,
                input_length=d.input_length,
            )
        except (OSError, ValueError) as e:
            problems.append(str(e))
            continue
        hashed[split] = all(SHARD_HASH in (s.get('zip_data') or s['raw_data']).get('hashes', {}) for s in index['shards'])
        files_dir = cache if remote is not None else split_dir
        damaged = check_files(files_dir, index, meta_rows=meta['rows'], cache=remote is not None) if files_dir else []
        if d.verify_hashes and files_dir and os.path.isdir(files_dir):
            found, notes = check_hashes(files_dir, index)
            damaged += found
            for note in notes:
                log.warning('%s: %s', split_dir, note)
        if damaged and remote is not None:
            problems.append(f'The local cache {cache} of data.remote holds damaged files:\n    - ' + '\n    - '.join(damaged)
                            + f'\n  Delete them (or all of {cache}): they are fetched again from {split_dir}.')
        elif damaged:
            problems.append(f"Split '{split}' at {split_dir} is damaged:\n    - " + '\n    - '.join(damaged)
                            + f'\n  Check every shard with: {verify_command(split_dir)}. {repair_advice(split_dir, meta)}')
        elif world_size is not None:
            if d.builtin_corpus is not None:
                what, more = f"The builtin corpus's split '{split}' ({split_dir})", None
            else:
                what, more = f"Split '{split}' under {'data.remote ' if remote else ''}'{root}'", 'Convert more documents (a larger --max_docs)'
            problem = split_size_problem(cfg, what=what, rows=index_rows(index), world_size=world_size,
                                          train=train and split == d.train_split, more=more)
            problems += [problem] if problem else []
    if problems:
        raise ConfigError(problems)
    return hashed


def hold_split_locks(cfg: TrainConfig, plan: DataPlan, train: bool) -> None:
    """Hold a reader lock on each local split this process reads, so ``convert_c4.py --overwrite``
    refuses to replace it while the run lives (see :mod:`t5composer.data.split_lock`)."""
    if is_remote(plan.remote) or plan.local is None:
        return  # a remote split's local cache is Streaming's; the store is replaced only by deleting it first
    for split in (cfg.data.train_split if train else None, cfg.data.eval_split):
        split_dir = split_location(plan.local, split) if split else None
        if split_dir and os.path.isdir(split_dir):
            try:
                hold_reader_lock(split_dir)
            except SplitInUseError as e:
                raise ConfigError([str(e)]) from e
