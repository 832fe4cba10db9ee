"""From a validated :class:`TrainConfig` to a ready Composer :class:`Trainer`.

The order matters for first contact: cheap checks that need no model (data present, data
converted with this tokenizer and length, batch sizes that divide) run before anything big is
built, so a wrong config fails in a second with a message that says what to do.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from typing import Any, Optional

import torch

from t5composer.config.schema import SNIDataConfig, TrainConfig
from t5composer.config.validation import ConfigError

log = logging.getLogger(__name__)

__all__ = ['DataPlan', 'plan_data', 'preflight', 'build_trainer', 'trainer_parallelism_config', 'convert_command', 'config_summary']


@dataclass
class DataPlan:
    """Where the tokenizer and the splits of a run come from, once resolved."""

    tokenizer_name: str
    local: Optional[str]
    remote: Optional[str]


def convert_command(cfg: TrainConfig, splits: list[str]) -> str:
    """The exact ``recipes/convert_c4.py`` command that produces the splits ``cfg`` expects."""
    from t5composer.data.metadata import convert_command as command_for

    d = cfg.data
    settings = {
        'split': splits, 'tokenizer': cfg.tokenizer.name, 'input_length': d.input_length,
        'noise_density': d.noise_density, 'mean_noise_span_length': d.mean_noise_span_length,
    }
    return command_for(settings, out_root=d.local or 'data/c4', overwrite=False)


def _hf_split_name(split: str) -> str:
    return {'val': 'val', 'validation': 'val'}.get(split, split)


def _missing_splits(cfg: TrainConfig, train: bool = True, world_size: Optional[int] = None) -> list[str]:
    """Problems for splits that were never converted, are empty, too small for one batch of
    ``world_size`` processes (None: not checked), or whose remote cannot be reached."""
    import json

    from t5composer.data.locations import is_remote, remote_split_problems, split_location

    d = cfg.data
    if isinstance(d, SNIDataConfig):
        return _missing_sni(d)
    if d.builtin_corpus is not None:
        return []
    splits = [s for s in (d.train_split if train else None, d.eval_split) if s]
    if is_remote(d.remote):
        # A split already in the local cache trains without the store; don't demand the network.
        cached = [s for s in splits if d.local is not None and os.path.isfile(os.path.join(split_location(d.local, s), 'index.json'))]
        return remote_split_problems(d.remote, splits, timeout=min(d.download_timeout, 30.0), cached=cached)
    root = d.remote or d.local
    missing = [s for s in splits if not os.path.isfile(os.path.join(split_location(root, s), 'index.json'))]
    problems = []
    if missing:
        problems.append(
            f"No converted data for split(s) {', '.join(missing)} under '{root}'. Convert C4 first with:\n"
            f'    {convert_command(cfg, [_hf_split_name(s) for s in missing])}\n'
            f"  or point 'data.local' at a directory that holds the converted splits.",
        )
    for s in splits:
        if s in missing:
            continue
        index = os.path.join(split_location(root, s), 'index.json')
        remake = f"{convert_command(cfg, [_hf_split_name(s)])} --overwrite"
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
            problem = _split_size_problem(cfg, what=f"Split '{s}' under '{root}'", rows=samples, world_size=world_size,
                                          train=s == d.train_split and train, more='Convert more documents (a larger --max_docs)')
            problems += [problem] if problem else []
    return problems


def _split_size_problem(cfg: TrainConfig, *, what: str, rows: int, world_size: int, train: bool, more: Optional[str],
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
    batch = _batch_sizes(cfg, world_size, announce=False)[2]
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


def _missing_sni(d: SNIDataConfig) -> list[str]:
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


def preflight(cfg: TrainConfig, *, train: bool = True, dry_run_gpus: Optional[int] = None) -> list[str]:
    """Checks that need no model and no data loading; raise :class:`ConfigError` listing all problems.

    Runs before anything heavy is imported or built, so a first-contact mistake (no converted
    data, bf16 on a CPU machine, batch sizes that don't divide, a misspelt optimizer or callback,
    a path that does not exist, an unreachable data.remote) is reported within seconds.

    Args:
        cfg: the validated config.
        train: also check the train split (False: evaluation only).
        dry_run_gpus: check for a run on this many GPUs from a machine that may have none
            (``--dry-run``): checks of this machine's device are skipped, and missing data is
            returned as a note instead of raised.

    Returns:
        Notes for the dry run (empty otherwise).
    """
    from t5composer.components import component_problems
    from t5composer.optim.registry import optimizer_problems
    from t5composer.tokenization import _looks_like_path

    dry = dry_run_gpus is not None
    on_gpu = torch.cuda.is_available() or dry  # a dry run checks for the GPU machine it targets
    problems = []
    if not on_gpu and cfg.precision != 'fp32':
        problems.append(f"precision '{cfg.precision}' is not supported on CPU; set precision=fp32 (mixed precision needs a GPU).")
    if not on_gpu and cfg.parallelism_config is not None and cfg.parallelism_config.fsdp is not None:
        problems.append("'parallelism_config.fsdp' is set, but FSDP needs CUDA GPUs and this machine has none. To validate the recipe "
                        'here, add --dry-run (composer recipes/train.py <recipe.yaml> --dry-run); to train on CPU without FSDP, '
                        'remove parallelism_config (override ~parallelism_config).')
    world = str(dry_run_gpus) if dry else os.environ.get('WORLD_SIZE', '1')
    world_size = int(world) if world.isdigit() and int(world) > 0 else None
    if world_size is not None:
        problems += _batch_size_problems(cfg, world_size, on_gpu)
    else:
        problems.append(f"The WORLD_SIZE environment variable is {world!r}, not a positive integer; unset it, or launch with composer -n N.")
    notes: list[str] = []
    (notes if dry else problems).extend(_missing_splits(cfg, train, world_size))  # a dry run needs no data
    tok = cfg.tokenizer.name
    if tok is not None and _looks_like_path(tok) and not os.path.exists(os.path.expanduser(tok)):
        problems.append(f"tokenizer.name '{tok}' does not exist. Set tokenizer.name to a hub name (e.g. google/t5-v1_1-base), "
                        'a directory with tokenizer files, or the path of a spiece.model.')
    model_path = os.path.expanduser(cfg.model.name)
    if cfg.model.init != 'checkpoint' and (cfg.model.name.startswith(('/', '.', '~')) or cfg.model.name.count('/') > 1):
        if not os.path.exists(model_path) or (os.path.isdir(model_path) and not os.path.isfile(os.path.join(model_path, 'config.json'))):
            what = 'does not exist' if not os.path.exists(model_path) else 'has no config.json'
            problems.append(f"model.name '{cfg.model.name}' {what}. Set model.name to a built-in config (google/t5-v1_1-small, -base, "
                            '-large, -xl, -xxl), a Hugging Face model directory with config.json, or a hub name.')
    problems += _attn_impl_problems(cfg)
    if train:
        problems += _save_folder_problems(cfg, create=not dry)
    load_path = cfg.load_path
    if load_path and '://' not in load_path and '{' not in load_path:  # '{rank}'-style names are formatted by Composer
        if cfg.model.init == 'checkpoint' and not os.path.isfile(load_path):
            problems.append(
                f"load_path '{load_path}' does not exist. Train the checkpoint first (for the demo: composer recipes/train.py "
                "yamls/demo.yaml) or point load_path at a Composer checkpoint (e.g. runs/pt_base/latest-rank0.pt).",
            )
        elif not cfg.autoresume and not os.path.exists(load_path):
            # With autoresume, a checkpoint in save_folder takes precedence; build_trainer checks load_path then.
            problems.append(f"load_path '{load_path}' does not exist. Point load_path at a Composer checkpoint "
                            "(e.g. runs/pt_base/latest-rank0.pt), or remove it (~load_path) to start from scratch.")
    o = cfg.optimizer
    problems += optimizer_problems(o.name, lr=o.lr, weight_decay=o.weight_decay, kwargs=o.kwargs)
    sections = {kind: getattr(cfg, kind) for kind in ('algorithms', 'callbacks', 'loggers')}
    for kind, section in sections.items():
        problems += component_problems(kind, section, load=False)
    if not problems:
        # The schedules and component classes need Composer (~3 s to import); a config that
        # already fails says so without waiting for it.
        from t5composer.optim.schedulers import scheduler_problems

        problems += scheduler_problems(cfg.scheduler.name, base_lr=o.lr, kwargs=cfg.scheduler.kwargs)
        for kind, section in sections.items():
            problems += component_problems(kind, section, load=True)
    if problems:
        raise ConfigError(problems)
    return notes


def _save_folder_problems(cfg: TrainConfig, *, create: bool) -> list[str]:
    """A local save_folder that checkpoints cannot be written to (a file, read-only, under /proc), found before training.

    ``create``: probe by creating the folder and a file in it; a dry run only asks the nearest
    existing folder above it whether it is writable.
    """
    from t5composer.checkpoints import save_folder_problem
    from t5composer.data.locations import is_remote

    folder = cfg.save_folder
    if folder is None or is_remote(folder):
        return []
    folder = folder.replace('{run_name}', cfg.run_name or '')
    if '{' in folder:
        return []  # other Composer placeholders ({rank}, ...): checked once the Trainer formats them
    if create:
        problem = save_folder_problem(folder)
        return [problem] if problem else []
    existing = os.path.abspath(folder)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if os.path.isdir(existing) and os.access(existing, os.W_OK):
        return []
    what = 'is a file, not a folder' if not os.path.isdir(existing) else 'is not writable'
    return [f"save_folder '{folder}' cannot be created or written: '{existing}' {what}. Point save_folder (or run_name) elsewhere."]


def _attn_impl_problems(cfg: TrainConfig) -> list[str]:
    """FlexAttention (model.attn_impl flex / flex_dense) has no attention dropout and refuses activation checkpointing."""
    impl = cfg.model.attn_impl
    if impl == 'sdpa':
        return []
    problems = []
    if cfg.model.dropout_rate is None or cfg.model.dropout_rate > 0:
        # Explicitly 0: the built-in v1.1 configs default to 0.1.
        problems.append(f"model.attn_impl={impl!r} has no attention dropout, but model.dropout_rate is {cfg.model.dropout_rate} "
                        "(null keeps the config's, 0.1 for the built-in v1.1 configs); set model.dropout_rate=0 (as pre-training "
                        'does) or model.attn_impl=sdpa.')
    fsdp = cfg.parallelism_config.fsdp if cfg.parallelism_config is not None else None
    if cfg.model.gradient_checkpointing or (fsdp or {}).get('activation_checkpointing'):
        problems.append(f"model.attn_impl={impl!r} cannot be combined with activation checkpointing (torch 2.7's FlexAttention "
                        'gives the position table wrong gradients under it); set model.attn_impl=sdpa, or turn off '
                        'model.gradient_checkpointing / parallelism_config.fsdp.activation_checkpointing.')
    return problems


def plan_data(cfg: TrainConfig) -> DataPlan:
    """Resolve tokenizer and data locations, building the builtin corpus on first use."""
    d = cfg.data
    if d.builtin_corpus is not None:
        from t5composer.config.loading import cache_dir
        from t5composer.data.demo_corpus import prepare_demo_data

        tok_dir, mds_root = prepare_demo_data(
            cache_dir=os.path.join(cache_dir(), 'demo'),
            vocab_size=d.builtin_vocab_size,
            input_length=d.input_length,
            noise_density=d.noise_density,
            mean_noise_span_length=d.mean_noise_span_length,
        )
        return DataPlan(tokenizer_name=str(tok_dir), local=str(mds_root), remote=None)
    assert cfg.tokenizer.name is not None
    return DataPlan(tokenizer_name=cfg.tokenizer.name, local=d.local, remote=d.remote)


def _check_split_metadata(cfg: TrainConfig, plan: DataPlan, tokenizer: Any, expanded_length: int, *,
                          world_size: Optional[int] = None, train: bool = True) -> dict[str, bool]:
    """Check the splits before anything reads them; raise :class:`ConfigError` listing every problem.

    - Data converted with another tokenizer or length is refused (local splits, and remote ones
      through their ``t5composer_meta.json``, fetched like the shards).
    - The shards: each one ``index.json`` lists is present with its recorded size, and the rows
      add up to the metadata's (for a remote split: the shards already in the local cache, and an
      index there that is not the store's); with ``data.verify_hashes`` their checksums too.
    - With ``world_size``: a split too small for one batch (:func:`_split_size_problem`), for the
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
    import tempfile
    from pathlib import Path

    from t5composer.data.locations import fetch_remote_file, is_remote, split_location
    from t5composer.data.metadata import META_FILENAME, check_split_metadata, read_split_metadata
    from t5composer.data.verify import SHARD_HASH, check_files, check_hashes, index_rows, read_index, repair_advice, verify_command
    from t5composer.tokenization import tokenizer_fingerprint

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
                        fetch_remote_file(f'{split_dir}/{META_FILENAME}', os.path.join(tmp, META_FILENAME), timeout=d.download_timeout)
                    except FileNotFoundError as e:
                        raise FileNotFoundError(
                            f'{split_dir} has no {META_FILENAME}: it was not converted by t5composer, or its conversion did not '
                            f'finish. Convert it with: python recipes/convert_c4.py --out_root {remote} --splits {_hf_split_name(split)} '
                            f'--tokenizer {plan.tokenizer_name} --input_length {d.input_length} --overwrite',
                        ) from e
                    meta = read_split_metadata(tmp)
                    fetch_remote_file(f'{split_dir}/index.json', os.path.join(tmp, 'index.json'), timeout=d.download_timeout)
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
            problem = _split_size_problem(cfg, what=what, rows=index_rows(index), world_size=world_size,
                                          train=train and split == d.train_split, more=more)
            problems += [problem] if problem else []
    if problems:
        raise ConfigError(problems)
    return hashed


def _batch_size_problems(cfg: TrainConfig, world_size: int, on_gpu: bool) -> list[str]:
    g = cfg.global_train_batch_size
    if g % world_size:
        return [
            f"global_train_batch_size {g} is not divisible by the number of processes ({world_size}); "
            f'use a multiple of {world_size} or launch with a number of processes that divides {g}.',
        ]
    device_batch = g // world_size
    mb = cfg.device_train_microbatch_size
    if mb == 'auto' and not on_gpu:
        return ["device_train_microbatch_size 'auto' needs a GPU; on CPU set an integer that divides the per-device batch."]
    # Larger than the per-device batch is fine: the device batch is then one microbatch (as in
    # llm-foundry), so pt_base's 128 also runs as written on 8 GPUs (16 rows each).
    if isinstance(mb, int) and mb < device_batch and device_batch % mb:
        return [
            f'device_train_microbatch_size {mb} must divide the per-device batch {device_batch} '
            f'(global_train_batch_size {g} / {world_size} process(es)); pick a divisor of {device_batch}.',
        ]
    return []


def _batch_sizes(cfg: TrainConfig, world_size: int, *, announce: bool = True) -> tuple[int, Any, int]:
    """``(per-device batch, microbatch, eval batch)``; a microbatch above the device batch becomes the device batch
    (said in the log when ``announce``)."""
    device_batch = cfg.global_train_batch_size // world_size
    micro = cfg.device_train_microbatch_size or device_batch
    if isinstance(micro, int) and micro > device_batch:
        if announce:
            log.info('device_train_microbatch_size %d is more than the per-device batch %d (%d / %d processes): '
                     'each device runs its batch as one microbatch of %d.', micro, device_batch,
                     cfg.global_train_batch_size, world_size, device_batch)
        micro = device_batch
    eval_batch = cfg.device_eval_batch_size or (micro if isinstance(micro, int) else device_batch)
    return device_batch, micro, eval_batch


def _model_vocab_size(cfg: TrainConfig, tokenizer_len: int) -> Optional[int]:
    vs = cfg.model.vocab_size
    if vs is None:
        return None
    if vs == 'tokenizer':
        return -(-tokenizer_len // 128) * 128  # round up: multiples of 128 use tensor cores well
    if vs < tokenizer_len:
        raise ConfigError([f'model.vocab_size {vs} is smaller than the tokenizer ({tokenizer_len} tokens); set model.vocab_size >= {tokenizer_len}.'])
    return vs


@dataclass
class RunParts:
    """What a task (pre-training or SNI fine-tuning) contributes to the Trainer."""

    train_loader: Any
    evaluators: list


def _load_tokenizer(name: str) -> Any:
    from t5composer.tokenization import load_tokenizer

    try:
        return load_tokenizer(name)
    except (OSError, ValueError, TypeError, RuntimeError) as e:  # RuntimeError: sentencepiece on a damaged .model
        raise ConfigError([
            f"tokenizer.name '{name}': {e} Set tokenizer.name to a hub name (e.g. google/t5-v1_1-base), a directory "
            'with tokenizer files, or the path of a spiece.model.',
        ]) from e


def _checkpoint_metadata(cfg: TrainConfig) -> tuple[Any, Optional[str]]:
    """Model config and tokenizer directory stored in the ``load_path`` checkpoint (model.init=checkpoint)."""
    from t5composer.callbacks.model_metadata import metadata_from_checkpoint

    path = cfg.load_path
    assert path is not None
    if not os.path.isfile(path):
        raise ConfigError([f"load_path '{path}' does not exist; point it at a Composer checkpoint (e.g. runs/pt_base/latest-rank0.pt)."])
    # mmap: only the small metadata is read here; Composer loads the weights later.
    state = _load_start_checkpoint(path)
    try:
        config, tokenizer_files = metadata_from_checkpoint(state)
    except (KeyError, ValueError) as e:
        raise ConfigError([f"load_path '{path}': {e}"]) from e
    return config, (_materialise_tokenizer(tokenizer_files) if tokenizer_files else None)


def _materialise_tokenizer(files: dict[str, bytes]) -> str:
    """Write tokenizer files carried by a checkpoint to a content-addressed cache directory."""
    import hashlib

    from t5composer.config.loading import cache_dir

    digest = hashlib.sha256(b''.join(name.encode() + data for name, data in sorted(files.items()))).hexdigest()[:16]
    out = os.path.join(cache_dir(), 'tokenizers', digest)
    if not os.path.isdir(out):
        import shutil

        from t5composer.atomic_files import PARTIAL_PREFIX, install_directory

        tmp = os.path.join(os.path.dirname(out), f'{PARTIAL_PREFIX}{os.getpid()}-{os.path.basename(out)}')
        os.makedirs(tmp, exist_ok=True)
        for name, data in files.items():
            with open(os.path.join(tmp, name), 'wb') as f:
                f.write(data)
        if not install_directory(tmp, out, replace=False):  # another process won the race: the same files
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def _load_model_config(cfg: TrainConfig, overrides: dict) -> Any:
    from t5composer.models import load_model_config

    try:
        return load_model_config(cfg.model.name, **overrides)
    except (OSError, ValueError) as e:
        raise ConfigError([
            f"model.name '{cfg.model.name}' is not a built-in config (google/t5-v1_1-small, -base, -large, -xl, -xxl), a local "
            f'directory with config.json, or a model the hub could provide ({type(e).__name__}: {e}). Check the spelling, '
            'or download the model and point model.name at its directory.',
        ]) from e


def _model_config(cfg: TrainConfig, tokenizer: Any) -> Any:
    overrides = cfg.model.config_overrides()
    vocab = _model_vocab_size(cfg, len(tokenizer))
    if vocab is not None:
        overrides['vocab_size'] = vocab
    model_config = _load_model_config(cfg, overrides)
    if model_config.vocab_size < len(tokenizer):
        raise ConfigError([
            f"The model config '{cfg.model.name}' has vocab_size {model_config.vocab_size} but the tokenizer has "
            f'{len(tokenizer)} tokens; set model.vocab_size to at least {len(tokenizer)} (a multiple of 128 is fastest).',
        ])
    return model_config


def _pretraining_parts(cfg: TrainConfig, plan: DataPlan, tokenizer: Any, model_config: Any, batches: tuple, train: bool) -> RunParts:
    from composer.core import Evaluator
    from composer.utils import dist

    from t5composer.data.span_corruption import SpanCorruptionCollator, random_spans_helper
    from t5composer.data.streaming import build_span_dataloader
    from t5composer.data.verify import SHARD_HASH
    from t5composer.tokenization import sentinel_ids

    d = cfg.data
    device_batch, _, eval_batch = batches
    raw_length, _ = random_spans_helper(d.input_length, d.noise_density, d.mean_noise_span_length)
    _hold_split_locks(cfg, plan, train)  # before the checks: the splits checked are the splits read
    hashed = _check_split_metadata(cfg, plan, tokenizer, raw_length, world_size=dist.get_world_size(), train=train)
    collator = SpanCorruptionCollator(
        sentinel_ids=sentinel_ids(tokenizer, 100),
        eos_id=tokenizer.eos_token_id,
        decoder_start_id=model_config.decoder_start_token_id,
        noise_density=d.noise_density,
        mean_noise_span_length=d.mean_noise_span_length,
        seed=cfg.seed,
    )
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

    train_loader = None
    if train:
        train_loader = build_span_dataloader(split=d.train_split, device_batch_size=device_batch, shuffle=d.shuffle, train=True,
                                             validate_hash=validate_hash(d.train_split), **loader_kwargs)
    evaluators = []
    if d.eval_split:
        # Under torch.compile a short last batch costs a recompile (a minute for T5-base on an H100).
        eval_loader = build_span_dataloader(split=d.eval_split, device_batch_size=eval_batch, shuffle=False, train=False,
                                            drop_last=cfg.compile, validate_hash=validate_hash(d.eval_split), **loader_kwargs)
        evaluators.append(Evaluator(label='eval', dataloader=eval_loader, metric_names=['LanguageNLL', 'TokenAccuracy']))
    return RunParts(train_loader=train_loader, evaluators=evaluators)


def _shared_memory_releases(parts: RunParts) -> list:
    """One function per Streaming dataset of ``parts`` that unmaps its shared memory (Streaming's own waits for exit)."""
    from functools import partial

    from streaming import StreamingDataset

    from t5composer.data.shared_memory import release_shared_memory

    loaders = [parts.train_loader] + [e.dataloader.dataloader for e in parts.evaluators]  # an Evaluator holds a DataSpec
    datasets = [getattr(loader, 'dataset', None) for loader in loaders if loader is not None]
    return [partial(release_shared_memory, d) for d in datasets if isinstance(d, StreamingDataset)]


def _hold_split_locks(cfg: TrainConfig, plan: DataPlan, train: bool) -> None:
    """Hold a reader lock on each local split this process reads, so ``convert_c4.py --overwrite``
    refuses to replace it while the run lives (see :mod:`t5composer.data.split_lock`)."""
    from t5composer.data.locations import is_remote, split_location
    from t5composer.data.split_lock import SplitInUseError, hold_reader_lock

    if is_remote(plan.remote) or plan.local is None:
        return  # a remote split's local cache is Streaming's; the store is replaced only by deleting it first
    for split in (cfg.data.train_split if train else None, cfg.data.eval_split):
        split_dir = split_location(plan.local, split) if split else None
        if split_dir and os.path.isdir(split_dir):
            try:
                hold_reader_lock(split_dir)
            except SplitInUseError as e:
                raise ConfigError([str(e)]) from e


def _sni_root(cfg: TrainConfig) -> str:
    d = cfg.data
    if d.builtin_tasks is None:
        assert d.root is not None
        return d.root
    from t5composer.config.loading import cache_dir
    from t5composer.data.sni_synthetic import prepare_synthetic_sni

    return str(prepare_synthetic_sni(cache_dir=os.path.join(cache_dir(), 'sni_synthetic'), seed=cfg.seed))


def _sni_parts(cfg: TrainConfig, tokenizer: Any, model_config: Any, batches: tuple, train: bool) -> tuple[RunParts, Any]:
    from composer.core import Evaluator
    from composer.utils import dist
    from torch.utils.data import DataLoader

    from t5composer.data.sni import SNICollator, SNIDataset, load_sni_split
    from t5composer.models.composer_t5 import GenerationEval

    d = cfg.data
    device_batch, _, eval_batch = batches
    root = _sni_root(cfg)
    common = dict(root=root, split_name=d.split_name, tokenizer=tokenizer, seed=cfg.seed, max_instances_per_task=d.max_instances_per_task,
                  max_source_length=d.max_source_length, max_target_length=d.max_target_length, num_pos_examples=d.num_pos_examples)
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
            problem = _split_size_problem(
                cfg, what=f'The SNI {subset} split ({source}, splits/{d.split_name}/{subset}_tasks.txt: {len(split.tasks)} task(s), '
                          f'at most {d.max_instances_per_task} instances each)',
                rows=len(split.examples), world_size=dist.get_world_size(), train=True, unit='examples',
                more=None if d.builtin_tasks else f'Add tasks to splits/{d.split_name}/{subset}_tasks.txt, raise data.max_instances_per_task')
            if problem:
                raise ConfigError([problem])
        dataset = SNIDataset(split.examples, tokenizer=tokenizer, max_source_length=d.max_source_length, max_target_length=d.max_target_length)
        # A map-style dataset with Composer's distributed sampler: shards across ranks, shuffles
        # with the seed, and Composer resumes it mid-epoch by skipping the batches already seen.
        sampler = dist.get_sampler(dataset, shuffle=train and d.shuffle, drop_last=train, seed=cfg.seed)
        return split, DataLoader(dataset, batch_size=batch_size, sampler=sampler, collate_fn=collator, num_workers=d.num_workers,
                                 pin_memory=d.pin_memory and torch.cuda.is_available(), drop_last=train)

    train_loader = loader('train', device_batch, True)[1] if train else None
    evaluators = []
    generation = None
    if d.eval:
        test_split, test_loader = loader('test', eval_batch, False)
        tasks = sorted({e.task for e in test_split.examples})
        categories = {e.task: list(e.categories) for e in test_split.examples}
        generation = GenerationEval(tokenizer=tokenizer, max_new_tokens=d.max_new_tokens, task_names=tasks, task_categories=categories)
        evaluators.append(Evaluator(label='sni', dataloader=test_loader, metric_names=['LanguageNLL', 'TokenAccuracy', 'RougeL', 'ExactMatch']))
    return RunParts(train_loader=train_loader, evaluators=evaluators), generation


def build_trainer(
    cfg: TrainConfig,
    *,
    extra_callbacks: tuple = (),
    extra_loggers: tuple = (),
    train: bool = True,
    predictions_folder: Optional[str] = None,
    preflight_done: bool = False,
) -> Any:
    """Build the Composer Trainer that runs ``cfg``.

    A training run holds a lock on its local save folder from here until ``trainer.close()``
    (a second run into the same folder is refused), and its Streaming datasets hold shared memory
    until then; a build that fails gives both back.

    Args:
        cfg: a validated config (see :func:`t5composer.config.load_config`).
        extra_callbacks: callbacks to add to those the config declares (tests use this).
        extra_loggers: logger destinations to add to those the config declares.
        train: False builds an evaluation-only trainer (no train data; ``recipes/evaluate.py``).
        predictions_folder: where generation evals write predictions (default: save_folder).
        preflight_done: the caller has run :func:`preflight` on ``cfg`` already (the command
            line does, before its heavy imports), so its checks (a ``data.remote`` probe, a
            dummy optimizer) are not repeated.
    """
    from t5composer.callbacks.release_on_close import release_all

    releases: list = []
    try:
        return _build_trainer(cfg, extra_callbacks=extra_callbacks, extra_loggers=extra_loggers, train=train,
                              predictions_folder=predictions_folder, preflight_done=preflight_done, releases=releases)
    except BaseException:
        release_all(releases)
        raise


def _build_trainer(
    cfg: TrainConfig,
    *,
    extra_callbacks: tuple,
    extra_loggers: tuple,
    train: bool,
    predictions_folder: Optional[str],
    preflight_done: bool,
    releases: list,
) -> Any:
    """:func:`build_trainer`; appends to ``releases`` a function for each resource it takes (run lock, shared memory)."""
    from composer.algorithms import GradientClipping
    from composer.devices import DeviceCPU, DeviceGPU
    from composer.utils import dist, reproducibility
    from safetensors import SafetensorError

    from t5composer.callbacks.model_metadata import ModelMetadata
    from t5composer.components import build_components
    from t5composer.data.shared_memory import clean_stale_streaming_state, remove_lock_files_at_exit
    from t5composer.models import build_composer_t5
    from t5composer.optim import build_optimizer, build_scheduler

    if not preflight_done:
        preflight(cfg, train=train)
    on_gpu = torch.cuda.is_available()
    if cfg.compile and not on_gpu:
        log.warning('compile: true on CPU compiles with gcc; the first step takes minutes.')

    device = DeviceGPU() if on_gpu else DeviceCPU()
    dist.initialize_dist(device, timeout=cfg.dist_timeout)
    batches = _batch_sizes(cfg, dist.get_world_size())
    fine_tuning = isinstance(cfg.data, SNIDataConfig)

    resume_path, run_lock = _prepare_checkpoints(cfg, train=train)
    if run_lock is not None:
        releases.append(run_lock.release)
    # Where the architecture and tokenizer come from: the config, or the checkpoint we start from.
    checkpoint_config, checkpoint_tokenizer = _checkpoint_metadata(cfg) if cfg.model.init == 'checkpoint' else (None, None)
    plan = None if fine_tuning else plan_data(cfg)  # the builtin corpus is built by one process; others wait
    tokenizer_name = cfg.tokenizer.name or checkpoint_tokenizer or (plan.tokenizer_name if plan else None)
    if tokenizer_name is None:
        raise ConfigError([f"The checkpoint '{cfg.load_path}' carries no tokenizer; set tokenizer.name."])
    tokenizer = _load_tokenizer(tokenizer_name)

    if on_gpu and cfg.tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    # Streaming datasets of a killed run leave shared memory and lock files behind; clear what no
    # running process uses before ours are made, and our lock files when this process exits.
    if dist.get_local_rank() == 0:
        clean_stale_streaming_state()
    dist.barrier()
    remove_lock_files_at_exit()
    reproducibility.seed_all(cfg.seed)

    if checkpoint_config is not None:
        model_config = checkpoint_config
        if cfg.model.dropout_rate is not None:
            model_config.dropout_rate = cfg.model.dropout_rate
    elif cfg.model.init == 'hf':
        model_config = _load_model_config(cfg, cfg.model.config_overrides())
    else:
        model_config = _model_config(cfg, tokenizer)
    if model_config.vocab_size < len(tokenizer):
        raise ConfigError([f'The model has vocab_size {model_config.vocab_size} but the tokenizer {tokenizer_name} has {len(tokenizer)} tokens; they do not belong together.'])

    if fine_tuning:
        parts, generation = _sni_parts(cfg, tokenizer, model_config, batches, train)
    else:
        assert plan is not None
        parts, generation = _pretraining_parts(cfg, plan, tokenizer, model_config, batches, train), None
    releases += _shared_memory_releases(parts)

    try:
        model = build_composer_t5(
            config=model_config,
            init='pretrained' if cfg.model.init == 'hf' else 'random',
            pretrained=cfg.model.name if cfg.model.init == 'hf' else None,
            lm_head_init_std=cfg.model.lm_head_init_std,
            gradient_checkpointing=cfg.model.gradient_checkpointing,
            attn_impl=cfg.model.attn_impl,
            generation=generation,
            revision=cfg.model.revision,
        )
    except (ValueError, OSError, SafetensorError) as e:  # weights that are not safetensors, none at all, or a damaged file
        raise ConfigError([f"model.name '{cfg.model.name}': the weights cannot be loaded ({type(e).__name__}: {e}). Point "
                           'model.name at a Hugging Face model directory (or .safetensors file) that loads, or download it again.'
                           if isinstance(e, SafetensorError) else f'model.name: {e}']) from e

    _check_start_checkpoint(resume_path or cfg.load_path, model, cfg, resumed=resume_path is not None)

    sharded = trainer_parallelism_config(cfg) is not None  # FSDP: optimizers see shards of tensors
    optimizer = build_optimizer(model, name=cfg.optimizer.name, lr=cfg.optimizer.lr, weight_decay=cfg.optimizer.weight_decay,
                                sharded=sharded, compile_step=cfg.compile, **cfg.optimizer.kwargs)
    # An evaluation has no schedule (and no max_duration for one to be relative to).
    scheduler = build_scheduler(cfg.scheduler.name, base_lr=cfg.optimizer.lr, **cfg.scheduler.kwargs) if train else None

    algorithms = build_components('algorithms', cfg.algorithms)
    callbacks = build_components('callbacks', cfg.callbacks) + list(extra_callbacks)
    # Checkpoints carry the model config and tokenizer, so exports and fine-tuning need nothing else.
    metadata = ModelMetadata(config=model_config, tokenizer_dir=tokenizer)
    callbacks.append(metadata)
    if run_lock is not None:  # global rank 0 of a run with a local save folder: it writes the checkpoints
        _check_free_space(cfg, run_lock.folder, model, extra_bytes=sum(len(b) for b in metadata.tokenizer_files.values()))
    if train:
        from t5composer.callbacks.nonfinite_guard import NonFiniteGuard
        from t5composer.callbacks.progress_guard import ProgressGuard

        callbacks.append(ProgressGuard())  # an epoch without a batch ends the run instead of spinning
        callbacks.append(NonFiniteGuard(action=cfg.nonfinite.action, max_skips=cfg.nonfinite.max_skips,
                                        check_gradients=cfg.precision != 'amp_fp16'))
    if fine_tuning and cfg.data.eval:
        from t5composer.callbacks.predictions import PredictionWriter

        callbacks.append(PredictionWriter(folder=predictions_folder or cfg.save_folder))
    folder = _save_folder(cfg)
    if train and folder is not None and cfg.save_num_checkpoints_to_keep > 0:
        from t5composer.callbacks.checkpoint_rotation import CheckpointRotation

        callbacks.append(CheckpointRotation(save_folder=folder))  # keep N across resumes, not per process
    loggers = build_components('loggers', _with_default_log_dirs(cfg.loggers, folder)) + list(extra_loggers)
    if train and folder is not None:
        from t5composer.loggers import MetricsJSONL

        loggers.append(MetricsJSONL(path=os.path.join(folder, 'metrics.jsonl')))  # always: plots and post-mortems
    if train:
        from composer.callbacks import LRMonitor

        if not any(isinstance(c, LRMonitor) for c in callbacks):
            # Composer logs the learning rate only through LRMonitor; without it metrics.jsonl and
            # every logger would lack the lr that plots (recipes/plot_runs.py) draw.
            callbacks.append(LRMonitor())
    if not any(isinstance(a, GradientClipping) for a in algorithms):
        log.info('No gradient clipping configured (algorithms.gradient_clipping).')

    from t5composer.callbacks.release_on_close import ReleaseOnClose
    from t5composer.trainer import NonBlockingTrainer

    callbacks.append(ReleaseOnClose(releases=releases))  # the run lock, the datasets' shared memory

    return NonBlockingTrainer(  # Composer's Trainer without its waits for the device in each step
        model=model,
        train_dataloader=parts.train_loader,
        eval_dataloader=parts.evaluators or None,
        # Without evaluators (data.eval_split=null) Composer warns that these have no effect.
        **({'eval_interval': cfg.eval_interval, 'eval_subset_num_batches': cfg.eval_subset_num_batches} if parts.evaluators else {}),
        max_duration=cfg.max_duration if train else None,
        optimizers=optimizer,
        schedulers=scheduler,
        step_schedulers_every_batch=True,
        algorithms=algorithms,
        callbacks=callbacks,
        loggers=loggers,
        run_name=cfg.run_name,
        seed=cfg.seed,
        device=device,
        precision=cfg.precision,
        device_train_microbatch_size=batches[1],
        save_folder=cfg.save_folder,
        save_interval=cfg.save_interval,
        save_num_checkpoints_to_keep=cfg.save_num_checkpoints_to_keep,
        save_overwrite=cfg.save_overwrite,
        autoresume=cfg.autoresume,
        load_path=cfg.load_path,
        load_weights_only=cfg.load_weights_only or cfg.model.init == 'checkpoint',
        load_strict_model_weights=cfg.load_strict_model_weights,
        progress_bar=cfg.progress_bar,
        log_to_console=cfg.log_to_console,
        console_log_interval=cfg.console_log_interval,
        python_log_level=cfg.python_log_level,
        dist_timeout=cfg.dist_timeout,
        compile_config={} if cfg.compile else None,
        parallelism_config=trainer_parallelism_config(cfg),
    )


def trainer_parallelism_config(cfg: TrainConfig) -> Optional[dict[str, Any]]:
    """The Trainer's ``parallelism_config`` argument: ``{'fsdp': {...}}``, or None without FSDP."""
    par = cfg.parallelism_config
    if par is None or par.fsdp is None:
        return None
    return {'fsdp': dict(par.fsdp)}


def _save_folder(cfg: TrainConfig) -> Optional[str]:
    from composer.utils import format_name_with_dist
    from t5composer.data.locations import is_remote

    if cfg.save_folder is None or is_remote(cfg.save_folder):
        return None
    return format_name_with_dist(cfg.save_folder, cfg.run_name or '')


def _with_default_log_dirs(section: dict[str, Optional[dict[str, Any]]], folder: Optional[str]) -> dict[str, Optional[dict[str, Any]]]:
    """The ``loggers`` section with TensorBoard's ``log_dir`` defaulting to ``<save_folder>/tensorboard``.

    Composer's own default (``./tensorboard_logs``) depends on the working directory; a run's
    events belong beside its checkpoints and metrics.jsonl (``tensorboard --logdir runs`` then
    shows every run). Without a local save folder Composer's default stays.

    Args:
        section: the config's ``loggers`` mapping (not modified).
        folder: the run's local save folder, or None.
    """
    if folder is None or 'tensorboard' not in section:
        return section
    options = dict(section['tensorboard'] or {})
    if options.get('log_dir') is not None:
        return section
    options['log_dir'] = os.path.join(folder, 'tensorboard')
    return {**section, 'tensorboard': options}


def _prepare_checkpoints(cfg: TrainConfig, *, train: bool) -> tuple[Optional[str], Any]:
    """Lock the save folder, make saves atomic, repair the folder after a kill (training), and check ``load_path`` (always).

    Returns the checkpoint autoresume will load (None when the run starts fresh) and the run
    lock (global rank 0 of a run with a local save folder; None otherwise). Global rank 0
    repairs the folder while the other ranks wait, so all of them then see the same latest link.
    """
    from composer.utils import dist

    from t5composer.checkpoints import install_atomic_writes, recover_checkpoints
    from t5composer.run_lock import RunLockedError, acquire_run_lock

    folder = _save_folder(cfg) if train else None
    resume_path, lock = None, None
    if train:
        install_atomic_writes()
    if folder is not None:
        error: list[Optional[str]] = [None]
        if dist.get_global_rank() == 0:
            try:
                # One run per folder: a second writer would interleave checkpoints and metrics.jsonl.
                lock = acquire_run_lock(folder)
                if cfg.autoresume:
                    resume_path = recover_checkpoints(folder).resume_from
                elif not cfg.save_overwrite:
                    _refuse_earlier_checkpoints(folder)
            except (ConfigError, RunLockedError) as e:
                error[0] = '\n'.join(e.problems) if isinstance(e, ConfigError) else str(e)
                if lock is not None:
                    lock.release()
        dist.broadcast_object_list(error, src=0)  # every rank stops together, none waits forever
        if error[0] is not None:
            raise ConfigError([error[0]])
        if cfg.autoresume and dist.get_global_rank() != 0:
            link = os.path.join(folder, 'latest-rank0.pt')
            resume_path = link if os.path.exists(link) else None
    if resume_path is None and cfg.load_path and '://' not in cfg.load_path:
        if not os.path.exists(cfg.load_path):
            raise ConfigError([
                f"load_path '{cfg.load_path}' does not exist" + (f" (and '{folder}' holds no checkpoint to resume from)" if folder else '')
                + '. Point load_path '
                'at a Composer checkpoint (e.g. runs/pt_base/latest-rank0.pt; the demo makes one with composer recipes/train.py '
                'yamls/demo.yaml), or remove it to start from scratch.',
            ])
        _load_start_checkpoint(cfg.load_path, read=False)
    return resume_path, lock


def _refuse_earlier_checkpoints(folder: str) -> None:
    """Without autoresume, checkpoints of an earlier run in the folder would stop this run at its first
    save (Composer refuses to write over them), a whole save interval in; say so before training."""
    from t5composer.checkpoints import checkpoints_by_batch

    found = checkpoints_by_batch(folder)
    if found:
        names = ', '.join(os.path.basename(p) for p in found[:3]) + (f' and {len(found) - 3} more' if len(found) > 3 else '')
        raise ConfigError([
            f"save_folder '{folder}' already holds checkpoints of an earlier run ({names}) and autoresume is off, so this run "
            'would stop at its first save rather than write over them. Set autoresume=true to continue that run, give this run '
            'another run_name / save_folder, or set save_overwrite=true to replace them.',
        ])


def _load_start_checkpoint(path: str, *, read: bool = True) -> Any:
    """Check (once per file) that the checkpoint a run or an evaluation starts from is intact; read it (mmap) if asked."""
    from t5composer.checkpoints import load_checkpoint, unusable_checkpoint_message

    role, use = f"load_path '{path}'", 'load_path={path}'
    if not read:
        message = unusable_checkpoint_message(path, role=role, use=use)
        if message is not None:
            raise ConfigError([message])
        return None
    return load_checkpoint(path, role=role, use=use)


def _check_free_space(cfg: TrainConfig, folder: str, model: Any, *, extra_bytes: int) -> None:
    """Refuse to start a run whose first checkpoint would not fit on the save folder's disk."""
    from t5composer.checkpoints import estimated_checkpoint_bytes, free_space_problem

    needed = estimated_checkpoint_bytes(model, optimizer=cfg.optimizer.name, optimizer_kwargs=cfg.optimizer.kwargs, extra_bytes=extra_bytes)
    problem = free_space_problem(folder, needed)
    if problem is not None:
        raise ConfigError([problem])


def _report_world_size_change(path: str, rng: Any, cfg: TrainConfig) -> None:
    """Say so when a run resumes on another number of processes (it continues with the same global batch)."""
    from composer.utils import dist

    now = dist.get_world_size()
    if isinstance(rng, list) and rng and len(rng) != now:
        log.warning(
            'Resuming %s, whose checkpoints were saved by %d process(es), on %d: the global batch stays %d (%d per process), '
            'the data continues at the same global sample in the same order, and the results match an uninterrupted run '
            'up to the summation order of the gradient all-reduce. Random states of ranks that did not exist are re-seeded.',
            path, len(rng), now, cfg.global_train_batch_size, cfg.global_train_batch_size // now,
        )


def _check_start_checkpoint(path: Optional[str], model: Any, cfg: TrainConfig, *, resumed: bool) -> None:
    """Read the checkpoint the run starts from once (mmap: no weights are read) to say when a
    resume changes the number of processes, and to list the keys of a checkpoint from another
    model shape instead of a load traceback."""
    from composer.utils import dist

    if path is None or '://' in path or not os.path.isfile(path):
        return
    report = resumed and dist.get_global_rank() == 0
    if not (report or cfg.load_strict_model_weights):
        return
    from t5composer.checkpoints import model_shape_problems

    checkpoint = _load_start_checkpoint(path)
    if report:
        _report_world_size_change(path, checkpoint.get('rng'), cfg)
    if not cfg.load_strict_model_weights:
        return
    problems = model_shape_problems(checkpoint.get('state', {}).get('model', {}), model.state_dict())
    if problems:
        raise ConfigError([
            f"The checkpoint {path} holds a model of a different shape than this config builds "
            f"({len(problems)} mismatched key(s)):\n    " + '\n    '.join(problems[:12])
            + (f'\n    ... and {len(problems) - 12} more' if len(problems) > 12 else '')
            + '\n  Use the model settings the checkpoint was trained with, or start a new run (another run_name / save_folder).',
        ])


def config_summary(cfg: TrainConfig) -> dict[str, Any]:
    """The config as a plain mapping with secrets redacted (for printing and hparam logging)."""
    from t5composer.config.loading import redact

    return redact(dataclasses.asdict(cfg))
