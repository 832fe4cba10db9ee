"""From a validated config to a plan: the tokenizer, the model config, the data, the batch sizes
and the parallelism of a run, each resolved once, so the Trainer build (:mod:`t5composer.run.build`)
and the dry run (:mod:`t5composer.dry_run`) read the same answers.
"""

from __future__ import annotations

import copy
import hashlib
import os
import shutil
import socket
from dataclasses import dataclass, field
from typing import Any, Optional
from urllib.parse import urlparse

from t5composer.atomic_files import PARTIAL_PREFIX, install_directory
from t5composer.callbacks.model_metadata import metadata_from_checkpoint
from t5composer.checkpoints import load_start_checkpoint
from t5composer.config.batches import BatchSizes, batch_sizes
from t5composer.config.loading import cache_dir
from t5composer.config.parallelism import trainer_parallelism_config
from t5composer.config.schema import SNIDataConfig, TrainConfig
from t5composer.config.validation import ConfigError
from t5composer.data.locations import is_remote
from t5composer.data.plan import DataPlan, plan_data
from t5composer.models import load_model_config
from t5composer.tokenization import add_mode_tokens, load_tokenizer, looks_like_path, mode_token_problems

__all__ = ['RunPlan', 'checkpoint_metadata', 'load_run_tokenizer', 'local_save_folder', 'model_config_for', 'plan_run',
           'run_mode_tokens']


@dataclass
class RunPlan:
    """What a config resolves to on a given number of processes.

    Args:
        world_size: processes of the run.
        batches: the per-device batch sizes.
        data: where a pre-training run's tokenizer and splits are (None for fine-tuning).
        tokenizer_name: where the tokenizer comes from (the config, the checkpoint, the builtin corpus).
        tokenizer: the loaded tokenizer (None only in a dry run that could not reach the hub).
        model_config: the T5Config the model is built from.
        parallelism: the Trainer's ``parallelism_config`` (None without FSDP).
        notes: what a dry run could not check here, said in its report.
        rows_tokenizer: the tokenizer the converted rows were made with (the split checks
            compare its fingerprint): ``tokenizer`` itself, unless the run adds mode tokens, which
            a copy of it then holds.
    """

    world_size: int
    batches: BatchSizes
    data: Optional[DataPlan]
    tokenizer_name: str
    tokenizer: Any
    model_config: Any
    parallelism: Optional[dict[str, Any]]
    notes: list[str] = field(default_factory=list)
    rows_tokenizer: Any = None


def local_save_folder(cfg: TrainConfig) -> Optional[str]:
    """The run's save folder with its placeholders filled in, or None when it is unset or remote."""
    from composer.utils import format_name_with_dist  # Composer takes ~3 s to import; planning a dry run needs it only here

    if cfg.save_folder is None or is_remote(cfg.save_folder):
        return None
    return format_name_with_dist(cfg.save_folder, cfg.run_name or '')


def load_run_tokenizer(name: str) -> Any:
    """The tokenizer ``name`` (hub name, directory or spiece.model); a :class:`ConfigError` saying what to set otherwise."""
    try:
        return load_tokenizer(name)
    except (OSError, ValueError, TypeError, RuntimeError) as e:  # RuntimeError: sentencepiece on a damaged .model
        raise ConfigError([
            f"tokenizer.name '{name}': {e} Set tokenizer.name to a hub name (e.g. google/t5-v1_1-base), a directory "
            'with tokenizer files, or the path of a spiece.model.',
        ]) from e


def checkpoint_metadata(cfg: TrainConfig) -> tuple[Any, Optional[str]]:
    """Model config and tokenizer directory stored in the ``load_path`` checkpoint (model.init=checkpoint)."""
    path = cfg.load_path
    assert path is not None
    if not os.path.isfile(path):
        raise ConfigError([f"load_path '{path}' does not exist; point it at a Composer checkpoint (e.g. runs/pt_base/latest-rank0.pt)."])
    # mmap: only the small metadata is read here; Composer loads the weights later.
    state = load_start_checkpoint(path)
    try:
        config, tokenizer_files = metadata_from_checkpoint(state)
    except (KeyError, ValueError) as e:
        raise ConfigError([f"load_path '{path}': {e}"]) from e
    return config, (_materialise_tokenizer(tokenizer_files) if tokenizer_files else None)


def _materialise_tokenizer(files: dict[str, bytes]) -> str:
    """Write tokenizer files carried by a checkpoint to a content-addressed cache directory."""
    digest = hashlib.sha256(b''.join(name.encode() + data for name, data in sorted(files.items()))).hexdigest()[:16]
    out = os.path.join(cache_dir(), 'tokenizers', digest)
    if not os.path.isdir(out):
        tmp = os.path.join(os.path.dirname(out), f'{PARTIAL_PREFIX}{os.getpid()}-{os.path.basename(out)}')
        os.makedirs(tmp, exist_ok=True)
        for name, data in files.items():
            with open(os.path.join(tmp, name), 'wb') as f:
                f.write(data)
        if not install_directory(tmp, out, replace=False):  # another process won the race: the same files
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def _named_model_config(cfg: TrainConfig, overrides: dict) -> Any:
    try:
        return load_model_config(cfg.model.name, **overrides)
    except (OSError, ValueError) as e:
        raise ConfigError([
            f"model.name '{cfg.model.name}' is not a built-in config (google/t5-v1_1-small, -base, -large, -xl, -xxl), a local "
            f'directory with config.json, or a model the hub could provide ({type(e).__name__}: {e}). Check the spelling, '
            'or download the model and point model.name at its directory.',
        ]) from e


def _model_vocab_size(cfg: TrainConfig, tokenizer_len: int) -> Optional[int]:
    vs = cfg.model.vocab_size
    if vs is None:
        return None
    if vs == 'tokenizer':
        return -(-tokenizer_len // 128) * 128  # round up: multiples of 128 use tensor cores well
    if vs < tokenizer_len:
        raise ConfigError([f'model.vocab_size {vs} is smaller than the tokenizer ({tokenizer_len} tokens); set model.vocab_size >= {tokenizer_len}.'])
    return vs


def model_config_for(cfg: TrainConfig, tokenizer: Any, *, checkpoint_config: Any = None, notes: Optional[list[str]] = None) -> Any:
    """The T5Config a run builds its model from.

    ``model.init: checkpoint`` takes the checkpoint's (only ``model.dropout_rate`` may change),
    ``hf`` the named model's, and ``random`` the named config with the section's overrides and a
    vocabulary that fits the tokenizer.

    Args:
        cfg: the config.
        tokenizer: the loaded tokenizer; None (a dry run without the hub) keeps the named config's
            vocab_size unless model.vocab_size is a number.
        checkpoint_config: the config stored in the ``load_path`` checkpoint (model.init=checkpoint).
        notes: where what could not be checked here is said (a dry run's report).
    """
    if checkpoint_config is not None:
        if cfg.model.dropout_rate is not None:
            checkpoint_config.dropout_rate = cfg.model.dropout_rate
        return checkpoint_config
    if cfg.model.init == 'hf':
        if notes is not None:
            notes.append(f"model.init hf: the weights of '{cfg.model.name}' are read at launch, not here")
        return _named_model_config(cfg, cfg.model.config_overrides())
    overrides = cfg.model.config_overrides()
    if tokenizer is None:
        if isinstance(cfg.model.vocab_size, int):
            overrides['vocab_size'] = cfg.model.vocab_size
        elif cfg.model.vocab_size == 'tokenizer' and notes is not None:
            notes.append("model.vocab_size 'tokenizer' needs the tokenizer; the model config's vocab_size is used here")
        return _named_model_config(cfg, overrides)
    vocab = _model_vocab_size(cfg, len(tokenizer))
    if vocab is not None:
        overrides['vocab_size'] = vocab
    model_config = _named_model_config(cfg, overrides)
    if model_config.vocab_size < len(tokenizer):
        raise ConfigError([
            f"The model config '{cfg.model.name}' has vocab_size {model_config.vocab_size} but the tokenizer has "
            f'{len(tokenizer)} tokens; set model.vocab_size to at least {len(tokenizer)} (a multiple of 128 is fastest).',
        ])
    return model_config


def _hub_reachable(timeout: float = 3.0) -> bool:
    endpoint = urlparse(os.environ.get('HF_ENDPOINT', 'https://huggingface.co'))
    try:
        socket.create_connection((endpoint.hostname or 'huggingface.co', endpoint.port or (443 if endpoint.scheme == 'https' else 80)),
                                 timeout=timeout).close()
        return True
    except OSError:
        return False


def _tokenizer_if_reachable(name: str, notes: list[str]) -> Any:
    """The tokenizer; None with a note when it is a hub name the hub cannot serve from here (a dry run)."""
    hub_name = not looks_like_path(name) and not os.path.exists(name)
    offline = os.environ.get('HF_HUB_OFFLINE', '').lower() in ('1', 'true', 'yes')
    if hub_name and not offline and not _hub_reachable():
        # transformers would retry for about a minute; the run loads it at launch anyway.
        notes.append(f"tokenizer '{name}' not loaded: the Hugging Face hub is unreachable from this machine (it is loaded at launch). "
                     'Point tokenizer.name at a local copy to check it here.')
        return None
    try:
        return load_run_tokenizer(name)
    except ConfigError:
        if not hub_name:
            raise
        notes.append(f"tokenizer '{name}' not loaded: not in the local Hugging Face cache and HF_HUB_OFFLINE is set (it is loaded at launch).")
        return None


def plan_run(cfg: TrainConfig, *, world_size: int, dry_run: bool = False) -> RunPlan:
    """Resolve where the architecture, the tokenizer and the data of ``cfg`` come from.

    The builtin corpus is built on first use (by one process; the others wait). A run that
    starts from a checkpoint (``model.init: checkpoint``) takes its model config, and its
    tokenizer unless ``tokenizer.name`` is set, from it.

    Args:
        cfg: a validated config.
        world_size: processes of the run (the GPUs a dry run plans for).
        dry_run: a tokenizer the hub cannot serve from here becomes a note instead of an error.

    Returns:
        The plan; a config that cannot run raises :class:`ConfigError`.
    """
    notes: list[str] = []
    checkpoint_config, checkpoint_tokenizer = checkpoint_metadata(cfg) if cfg.model.init == 'checkpoint' else (None, None)
    data = None if isinstance(cfg.data, SNIDataConfig) else plan_data(cfg)
    tokenizer_name = cfg.tokenizer.name or checkpoint_tokenizer or (data.tokenizer_name if data else None)
    if tokenizer_name is None:
        raise ConfigError([f"The checkpoint '{cfg.load_path}' carries no tokenizer; set tokenizer.name."])
    tokenizer = _tokenizer_if_reachable(tokenizer_name, notes) if dry_run else load_run_tokenizer(tokenizer_name)
    rows_tokenizer, ids = tokenizer, {}
    modes = run_mode_tokens(cfg)
    if tokenizer is not None and modes:
        # Rows never hold mode tokens: the data was made (and is checked) with the tokenizer as
        # loaded; the run itself, the model's vocabulary and what the checkpoints carry use a
        # copy with them.
        tokenizer = copy.deepcopy(tokenizer)
        ids = add_mode_tokens(tokenizer, modes)
    model_config = model_config_for(cfg, tokenizer, checkpoint_config=checkpoint_config, notes=notes)
    if tokenizer is not None and modes:
        problems = mode_token_problems(ids, model_config.vocab_size)
        if problems:
            raise ConfigError(problems)
    if tokenizer is not None and model_config.vocab_size < len(tokenizer):
        raise ConfigError([f'The model has vocab_size {model_config.vocab_size} but the tokenizer {tokenizer_name} has {len(tokenizer)} '
                           'tokens; they do not belong together.'])
    return RunPlan(world_size=world_size, batches=batch_sizes(cfg, world_size), data=data,
                   tokenizer_name=tokenizer_name, tokenizer=tokenizer, model_config=model_config,
                   parallelism=trainer_parallelism_config(cfg), notes=notes, rows_tokenizer=rows_tokenizer)


def run_mode_tokens(cfg: TrainConfig) -> tuple[str, ...]:
    """The mode tokens a run puts in front of its inputs: its objective's (pre-training) or ``data.mode_token`` (SNI)."""
    if isinstance(cfg.data, SNIDataConfig):
        return (cfg.data.mode_token,) if cfg.data.mode_token else ()
    return tuple(cfg.data.pretraining_objective.mode_tokens)
