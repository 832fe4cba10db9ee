"""Preflight: every check of a run that needs neither the model nor the data loaded, in one pass.

The config's values (:func:`~t5composer.config.loading.value_problems`: ranges, cross-field
checks), the names and options of its optimizer, schedule and components (by their registries,
:mod:`t5composer.registry`), this machine (a GPU for bf16 and FSDP, the
number of processes), the paths (tokenizer, model, checkpoint, save folder), the data (converted,
big enough; :mod:`t5composer.data.preflight`) and a trial build of the optimizer, the schedule
and the components are reported together, within seconds of the command.
"""

from __future__ import annotations

import os
from typing import Optional

import torch

from t5composer.checkpoints import save_folder_problem
from t5composer.components import component_problems
from t5composer.config.batches import batch_size_problems
from t5composer.config.loading import value_problems
from t5composer.config.schema import SNIDataConfig, TrainConfig
from t5composer.config.validation import ConfigError
from t5composer.data.locations import is_remote
from t5composer.data.preflight import unconverted_split_problems
from t5composer.optim.registry import optimizer_problems
from t5composer.tokenization import looks_like_path
from t5composer.triton_runtime import triton_problem

__all__ = ['preflight']


def preflight(cfg: TrainConfig, *, train: bool = True, dry_run_gpus: Optional[int] = None, config_checked: bool = True) -> list[str]:
    """Every check that needs no model and no data loading; raise one :class:`ConfigError` listing all problems.

    Runs before anything heavy is built, so a first-contact mistake (no converted data, bf16 on
    a CPU machine, batch sizes that don't divide, a misspelt optimizer or callback or one of
    their options, a path that does not exist, an unreachable data.remote) is reported within
    seconds, together with the config's own problems when they were not checked yet.

    Args:
        cfg: the config.
        train: also check the train split and the save folder (False: evaluation only).
        dry_run_gpus: check for a run on this many GPUs from a machine that may have none
            (``--dry-run``): checks of this machine's device are skipped, and missing data is
            returned as a note instead of raised.
        config_checked: ``cfg``'s values passed :func:`~t5composer.config.loading.value_problems`
            already (:func:`~t5composer.config.load_config` checks them); False adds them here, so
            one message lists everything (the command line loads with ``check=False``). While
            they have problems, nothing is created and no data store is probed.

    Returns:
        Notes for the dry run (empty otherwise).
    """
    problems = [] if config_checked else value_problems(cfg)
    value_named = list(problems)
    careful = bool(problems)
    dry = dry_run_gpus is not None
    on_gpu = torch.cuda.is_available() or dry  # a dry run checks for the GPU machine it targets
    if not on_gpu and cfg.precision != 'fp32':
        problems.append(f"precision '{cfg.precision}' is not supported on CPU; set precision=fp32 (mixed precision needs a GPU).")
    if not on_gpu and cfg.parallelism_config is not None and cfg.parallelism_config.fsdp is not None:
        problems.append("'parallelism_config.fsdp' is set, but FSDP needs CUDA GPUs and this machine has none. To validate the recipe "
                        'here, add --dry-run (composer recipes/train.py <recipe.yaml> --dry-run); to train on CPU without FSDP, '
                        'remove parallelism_config (override ~parallelism_config).')
    world = str(dry_run_gpus) if dry else os.environ.get('WORLD_SIZE', '1')
    world_size = int(world) if world.isdigit() and int(world) > 0 else None
    if world_size is not None:
        problems += batch_size_problems(cfg, world_size, on_gpu=on_gpu)
    else:
        problems.append(f"The WORLD_SIZE environment variable is {world!r}, not a positive integer; unset it, or launch with composer -n N.")
    notes: list[str] = []
    if not (careful and not isinstance(cfg.data, SNIDataConfig) and is_remote(cfg.data.remote)):
        (notes if dry else problems).extend(unconverted_split_problems(cfg, train=train, world_size=world_size))  # a dry run needs no data
    tok = cfg.tokenizer.name
    if tok is not None and looks_like_path(tok) and not os.path.exists(os.path.expanduser(tok)):
        problems.append(f"tokenizer.name '{tok}' does not exist. Set tokenizer.name to a hub name (e.g. google/t5-v1_1-base), "
                        'a directory with tokenizer files, or the path of a spiece.model.')
    model_path = os.path.expanduser(cfg.model.name)
    if cfg.model.init != 'checkpoint' and (cfg.model.name.startswith(('/', '.', '~')) or cfg.model.name.count('/') > 1):
        if not os.path.exists(model_path) or (os.path.isdir(model_path) and not os.path.isfile(os.path.join(model_path, 'config.json'))):
            what = 'does not exist' if not os.path.exists(model_path) else 'has no config.json'
            problems.append(f"model.name '{cfg.model.name}' {what}. Set model.name to a built-in config (google/t5-v1_1-small, -base, "
                            '-large, -xl, -xxl), a Hugging Face model directory with config.json, or a hub name.')
    problems += _attn_impl_problems(cfg, on_gpu=on_gpu)
    if train:
        problems += _save_folder_problems(cfg, create=not (dry or careful))
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
    # build_optimizer refuses lr and weight_decay before anything else: where the value checks
    # above named one of them, its trial build could only say it again.
    restated = any(m.startswith(("'optimizer.lr'", "'optimizer.weight_decay'")) for m in value_named)
    problems += optimizer_problems(o.name, lr=o.lr, weight_decay=o.weight_decay, kwargs=o.kwargs, build=not restated)
    if o.name == 'adamwscale' and o.kwargs.get('fused') is True:  # (torch's AdamW has a fused option of its own)
        problem = triton_problem('cuda' if on_gpu else 'cpu')
        if problem:
            problems.append(f'optimizer.fused=true cannot run here: {problem}. Set optimizer.fused=false.')
    # The schedules subclass Composer's scheduler (seconds to import); every command line imports this module.
    from t5composer.optim.schedulers import scheduler_problems

    # Likewise the schedule's trial build, where optimizer.lr or a scheduler value was named already.
    restated = any(m.startswith(("'optimizer.lr'", "'scheduler.")) for m in value_named)
    problems += scheduler_problems(cfg.scheduler.name, base_lr=o.lr, kwargs=cfg.scheduler.kwargs, build=not restated)
    for kind in ('algorithms', 'callbacks', 'loggers'):
        problems += component_problems(kind, getattr(cfg, kind))
    if problems:
        raise ConfigError(list(dict.fromkeys(problems)))  # a section's name problems are also the config's: once
    return notes


def _save_folder_problems(cfg: TrainConfig, *, create: bool) -> list[str]:
    """A local save_folder that checkpoints cannot be written to (a file, read-only, under /proc), found before training.

    ``create``: probe by creating the folder and a file in it; a dry run only asks the nearest
    existing folder above it whether it is writable.
    """
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


def _attn_impl_problems(cfg: TrainConfig, *, on_gpu: bool) -> list[str]:
    """FlexAttention (flex / flex_dense) and our kernel (triton) have no attention dropout; flex refuses
    activation checkpointing; triton needs a GPU (and the triton package)."""
    impl = cfg.model.attn_impl
    if impl == 'sdpa':
        return []
    # The model's module imports transformers (seconds): only runs that leave sdpa pay for it here.
    from t5composer.models.t5 import FLEX_IMPLS

    problems = []
    if impl == 'triton':
        problem = triton_problem('cuda' if on_gpu else 'cpu')
        if problem:
            problems.append(f"model.attn_impl=triton cannot run here: {problem}. Set model.attn_impl=sdpa.")
    if cfg.model.dropout_rate is None or cfg.model.dropout_rate > 0:
        # Explicitly 0: the built-in v1.1 configs default to 0.1.
        problems.append(f"model.attn_impl={impl!r} has no attention dropout, but model.dropout_rate is {cfg.model.dropout_rate} "
                        "(null keeps the config's, 0.1 for the built-in v1.1 configs); set model.dropout_rate=0 (as pre-training "
                        'does) or model.attn_impl=sdpa.')
    fsdp = cfg.parallelism_config.fsdp if cfg.parallelism_config is not None else None
    if impl in FLEX_IMPLS and (cfg.model.gradient_checkpointing or (fsdp or {}).get('activation_checkpointing')):
        problems.append(f"model.attn_impl={impl!r} cannot be combined with activation checkpointing (torch 2.7's FlexAttention "
                        'gives the position table wrong gradients under it); set model.attn_impl=sdpa, or turn off '
                        'model.gradient_checkpointing / parallelism_config.fsdp.activation_checkpointing.')
    return problems
