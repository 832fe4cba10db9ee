"""The loaders and evaluators of a run's data: span-corrupted pre-training splits or SNI fine-tuning tasks."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from functools import partial
from typing import Any, Optional

import torch
from composer.core import DataSpec, Evaluator
from composer.utils import dist
from streaming import StreamingDataset
from torch.utils.data import DataLoader

from t5composer.config.batches import BatchSizes
from t5composer.config.loading import cache_dir
from t5composer.config.schema import TrainConfig
from t5composer.errors import ConfigError
from t5composer.data.denoising import MixtureCollator, mixture_num_samples, mixture_num_tokens, split_mixture_batch
from t5composer.data.plan import DataPlan, check_splits, hold_split_locks
from t5composer.data.preflight import split_size_problem
from t5composer.data.shared_memory import release_shared_memory
from t5composer.data.sni import SNICollator, SNIDataset, load_sni_split
from t5composer.data.sni_synthetic import prepare_synthetic_sni
from t5composer.data.span_corruption import SpanCorruptionCollator
from t5composer.data.streaming import build_span_dataloader
from t5composer.data.verify import SHARD_HASH
from t5composer.tokenization import NUM_SENTINELS, sentinel_ids

__all__ = ['DataParts', 'pretraining_loaders', 'shared_memory_releases', 'sni_loaders', 'sni_root']

log = logging.getLogger(__name__)


@dataclass
class DataParts:
    """What a task's data (pre-training or SNI fine-tuning) contributes to the Trainer.

    Args:
        train_loader: the training dataloader (None for an evaluation).
        evaluators: Composer Evaluators.
        eval_tasks: for generation evals (SNI), each test task's categories; None otherwise.
    """

    train_loader: Any
    evaluators: list
    eval_tasks: Optional[dict[str, list[str]]] = None


def pretraining_loaders(cfg: TrainConfig, plan: DataPlan, tokenizer: Any, model_config: Any, batches: BatchSizes, *, train: bool,
                        rows_tokenizer: Any = None) -> DataParts:
    """Pre-training loaders of the converted splits (span corruption or a mixture of denoisers), after locking and checking them.

    Args:
        cfg: the config.
        plan: where the tokenizer and the splits are.
        tokenizer: the run's tokenizer (with the objective's mode tokens).
        model_config: the model's T5Config (its decoder start token).
        batches: the per-device batch sizes.
        train: build the train loader too (else only the evaluator).
        rows_tokenizer: the tokenizer the rows were made with, before mode tokens were added (the
            split checks compare its fingerprint); None: ``tokenizer``.
    """
    d = cfg.data
    device_batch, _, eval_batch = batches
    spec = d.span_corruption
    raw_length = spec.expanded_length
    hold_split_locks(cfg, plan, train)  # before the checks: the splits checked are the splits read
    hashed = check_splits(cfg, plan, tokenizer if rows_tokenizer is None else rows_tokenizer, raw_length,
                          world_size=dist.get_world_size(), train=train)
    objective = d.pretraining_objective
    common = dict(sentinel_ids=sentinel_ids(tokenizer, NUM_SENTINELS), eos_id=tokenizer.eos_token_id,
                  decoder_start_id=model_config.decoder_start_token_id, seed=cfg.seed)
    if objective.is_span_corruption:  # T5's objective: today's collator, the same rows and masks
        collator = SpanCorruptionCollator(noise_density=spec.noise_density, mean_noise_span_length=spec.mean_noise_span_length, **common)
    else:
        vocab = tokenizer.get_vocab()
        collator = MixtureCollator(objective=objective, pad_id=tokenizer.pad_token_id,
                                   mode_token_ids={t: vocab[t] for t in objective.mode_tokens}, **common)
    loader_kwargs = dict(
        local=plan.local, remote=plan.remote, collator=collator,
        shuffle_seed=d.shuffle_seed if d.shuffle_seed is not None else cfg.seed,
        shuffle_algo=d.shuffle_algo, num_canonical_nodes=d.num_canonical_nodes,
        predownload=d.predownload, download_timeout=d.download_timeout,
        num_workers=d.num_workers, prefetch_factor=d.prefetch_factor,
        pin_memory=d.pin_memory, persistent_workers=d.persistent_workers,
        row_length=raw_length, vocab_size=len(tokenizer),
    )

    def validate_hash(split: str) -> Optional[str]:
        # Shards fetched or unpacked during the run are checked too (none to check on old splits).
        return SHARD_HASH if d.verify_hashes and hashed.get(split) else None

    def spec_of(loader: Any) -> Any:
        # A mixture's batch holds one group per denoiser (each its own sequence shape): Composer
        # splits it into microbatches group by group and weighs them by their target tokens.
        if objective.is_span_corruption:
            return loader
        return DataSpec(loader, split_batch=split_mixture_batch, get_num_samples_in_batch=mixture_num_samples,
                        get_num_tokens_in_batch=mixture_num_tokens)

    train_loader = None
    if train:
        train_loader = spec_of(build_span_dataloader(split=d.train_split, device_batch_size=device_batch, shuffle=d.shuffle, train=True,
                                                     validate_hash=validate_hash(d.train_split), **loader_kwargs))
    evaluators = []
    if d.eval_split:
        # Under torch.compile a short last batch costs a recompile (a minute for T5-base on an H100).
        eval_loader = build_span_dataloader(split=d.eval_split, device_batch_size=eval_batch, shuffle=False, train=False,
                                            drop_last=cfg.compile, validate_hash=validate_hash(d.eval_split), **loader_kwargs)
        evaluators.append(Evaluator(label='eval', dataloader=spec_of(eval_loader), metric_names=['LanguageNLL', 'TokenAccuracy']))
    return DataParts(train_loader=train_loader, evaluators=evaluators)


def sni_loaders(cfg: TrainConfig, tokenizer: Any, model_config: Any, batches: BatchSizes, *, train: bool) -> DataParts:
    """Super-Natural Instructions loaders (Tk-Instruct setup) and, with ``data.eval``, the test tasks' categories.

    Args:
        cfg: the config (``data`` is an SNI section).
        tokenizer: the loaded tokenizer.
        model_config: the model's T5Config (its decoder start token).
        batches: the per-device batch sizes.
        train: build the train loader too (else only the evaluator).
    """
    d = cfg.data
    device_batch, _, eval_batch = batches
    root = sni_root(cfg)
    common = dict(root=root, split_name=d.split_name, tokenizer=tokenizer, seed=cfg.seed, max_instances_per_task=d.max_instances_per_task,
                  max_source_length=d.max_source_length, max_target_length=d.max_target_length, num_pos_examples=d.num_pos_examples,
                  mode_token=d.mode_token)
    collator = SNICollator(pad_id=tokenizer.pad_token_id, decoder_start_id=model_config.decoder_start_token_id)

    def loader(subset: str, batch_size: int, train: bool) -> tuple[Any, Any]:
        try:
            split = load_sni_split(subset=subset, **common)
        except (OSError, ValueError) as e:
            raise ConfigError([f"data.root '{root}': {e}"]) from e
        for problem in split.problems:
            log.warning('SNI %s split: %s', subset, problem)
        if train:  # (the test split keeps its partial batch: any example evaluates)
            # Before the dataset and its sampler exist: a batch larger than the split must cost nothing.
            source = 'the builtin synthetic tasks' if d.builtin_tasks else root
            problem = split_size_problem(
                cfg, what=f'The SNI {subset} split ({source}, splits/{d.split_name}/{subset}_tasks.txt: {len(split.tasks)} task(s), '
                          f'at most {d.max_instances_per_task} instances each)',
                rows=len(split.examples), world_size=dist.get_world_size(), train=True, unit='examples',
                more=None if d.builtin_tasks else f'Add tasks to splits/{d.split_name}/{subset}_tasks.txt, raise data.max_instances_per_task')
            if problem:
                raise ConfigError([problem])
        dataset = SNIDataset(split.examples, tokenizer=tokenizer, max_source_length=d.max_source_length, max_target_length=d.max_target_length,
                             mode_token=d.mode_token)
        # A map-style dataset with Composer's distributed sampler: shards across ranks, shuffles
        # with the seed, and Composer resumes it mid-epoch by skipping the batches already seen.
        sampler = dist.get_sampler(dataset, shuffle=train and d.shuffle, drop_last=train, seed=cfg.seed)
        return split, DataLoader(dataset, batch_size=batch_size, sampler=sampler, collate_fn=collator, num_workers=d.num_workers,
                                 pin_memory=d.pin_memory and torch.cuda.is_available(), drop_last=train)

    train_loader = loader('train', device_batch, True)[1] if train else None
    evaluators = []
    eval_tasks = None
    if d.eval:
        test_split, test_loader = loader('test', eval_batch, False)
        eval_tasks = {e.task: list(e.categories) for e in test_split.examples}
        evaluators.append(Evaluator(label='sni', dataloader=test_loader, metric_names=['LanguageNLL', 'TokenAccuracy', 'RougeL', 'ExactMatch']))
    return DataParts(train_loader=train_loader, evaluators=evaluators, eval_tasks=eval_tasks)


def sni_root(cfg: TrainConfig) -> str:
    """The natural-instructions checkout of an SNI run: ``data.root``, or the builtin synthetic tasks (built on first use)."""
    d = cfg.data
    if d.builtin_tasks is None:
        assert d.root is not None
        return d.root
    return str(prepare_synthetic_sni(cache_dir=os.path.join(cache_dir(), 'sni_synthetic'), seed=cfg.seed))


def shared_memory_releases(parts: DataParts) -> list:
    """One function per Streaming dataset of ``parts`` that unmaps its shared memory (Streaming's own waits for exit)."""
    train = parts.train_loader.dataloader if isinstance(parts.train_loader, DataSpec) else parts.train_loader  # a mixture's
    loaders = [train] + [e.dataloader.dataloader for e in parts.evaluators]  # an Evaluator holds a DataSpec
    datasets = [getattr(loader, 'dataset', None) for loader in loaders if loader is not None]
    return [partial(release_shared_memory, d) for d in datasets if isinstance(d, StreamingDataset)]
