"""From a validated :class:`TrainConfig` to a ready Composer :class:`Trainer`.

The order matters for first contact: cheap checks that need no model (:func:`preflight`) run
before anything big is built, then the save folder is locked and repaired, the plan resolved
(:func:`plan_run`), the data's loaders built (:mod:`t5composer.data.loaders`), and the model,
optimizer, schedule and components put together.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Optional

import torch
from composer.algorithms import GradientClipping
from composer.callbacks import LRMonitor
from composer.devices import DeviceCPU, DeviceGPU
from composer.utils import dist, reproducibility
from safetensors import SafetensorError

from t5composer.callbacks.checkpoint_rotation import CheckpointRotation
from t5composer.callbacks.denoiser_losses import DenoiserLosses
from t5composer.callbacks.model_metadata import ModelMetadata
from t5composer.callbacks.nanot5_log import NanoT5Log
from t5composer.callbacks.nonfinite_guard import NonFiniteGuard
from t5composer.callbacks.predictions import PredictionWriter
from t5composer.callbacks.progress_guard import ProgressGuard
from t5composer.callbacks.release_on_close import ReleaseOnClose, release_all
from t5composer.checkpoints import check_free_space, check_start_checkpoint, prepare_checkpoints
from t5composer.components import build_components
from t5composer.config.schema import SNIDataConfig, TrainConfig
from t5composer.config.validation import ConfigError
from t5composer.data.loaders import DataParts, pretraining_loaders, shared_memory_releases, sni_loaders
from t5composer.data.objectives import Objective
from t5composer.data.shared_memory import clean_stale_streaming_state, remove_lock_files_at_exit
from t5composer.loggers import MetricsJSONL
from t5composer.models import build_composer_t5
from t5composer.models.composer_t5 import GenerationEval
from t5composer.optim import build_optimizer, build_scheduler
from t5composer.run.plan import RunPlan, local_save_folder, plan_run
from t5composer.run.preflight import preflight
from t5composer.trainer import NonBlockingTrainer

__all__ = ['build_trainer', 'with_default_log_dirs']

log = logging.getLogger(__name__)


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
    if not preflight_done:
        preflight(cfg, train=train)
    releases: list = []  # what the run holds until trainer.close(): its save folder's lock, the datasets' shared memory
    try:
        device = _start_processes(cfg)
        folder = local_save_folder(cfg) if train else None
        resume_path, run_lock = prepare_checkpoints(folder, train=train, autoresume=cfg.autoresume,
                                                    save_overwrite=cfg.save_overwrite, load_path=cfg.load_path)
        releases += [run_lock.release] if run_lock is not None else []
        plan = plan_run(cfg, world_size=dist.get_world_size())
        _prepare_process(cfg)
        data = (sni_loaders(cfg, plan.tokenizer, plan.model_config, plan.batches, train=train) if plan.data is None
                else pretraining_loaders(cfg, plan.data, plan.tokenizer, plan.model_config, plan.batches, train=train,
                                         rows_tokenizer=plan.rows_tokenizer))
        releases += shared_memory_releases(data)
        model = _build_model(cfg, plan, data)
        check_start_checkpoint(resume_path or cfg.load_path, model, resumed=resume_path is not None,
                               strict=cfg.load_strict_model_weights, global_batch=cfg.global_train_batch_size)
        optimizer = build_optimizer(model, name=cfg.optimizer.name, lr=cfg.optimizer.lr, weight_decay=cfg.optimizer.weight_decay,
                                    sharded=plan.parallelism is not None, compile_step=cfg.compile, **cfg.optimizer.kwargs)
        # An evaluation has no schedule (and no max_duration for one to be relative to).
        scheduler = build_scheduler(cfg.scheduler.name, base_lr=cfg.optimizer.lr, **cfg.scheduler.kwargs) if train else None
        algorithms = build_components('algorithms', cfg.algorithms)
        callbacks = _callbacks(cfg, plan, extra_callbacks, train=train, predictions_folder=predictions_folder)
        if run_lock is not None:  # global rank 0 of a run with a local save folder: it writes the checkpoints
            metadata = next(c for c in callbacks if isinstance(c, ModelMetadata))
            check_free_space(run_lock.folder, model, optimizer=cfg.optimizer.name, optimizer_kwargs=cfg.optimizer.kwargs,
                             extra_bytes=sum(len(b) for b in metadata.tokenizer_files.values()))
        loggers = _loggers(cfg, extra_loggers, train=train)
        if not any(isinstance(a, GradientClipping) for a in algorithms):
            log.info('No gradient clipping configured (algorithms.gradient_clipping).')
        callbacks.append(ReleaseOnClose(releases=releases))
        return NonBlockingTrainer(  # Composer's Trainer without its waits for the device in each step
            model=model, train_dataloader=data.train_loader, eval_dataloader=data.evaluators or None,
            # Without evaluators (data.eval_split=null) Composer warns that these have no effect.
            **({'eval_interval': cfg.eval_interval, 'eval_subset_num_batches': cfg.eval_subset_num_batches} if data.evaluators else {}),
            max_duration=cfg.max_duration if train else None, optimizers=optimizer, schedulers=scheduler,
            step_schedulers_every_batch=True, algorithms=algorithms, callbacks=callbacks, loggers=loggers, device=device,
            device_train_microbatch_size=plan.batches.micro, parallelism_config=plan.parallelism,
            compile_config={} if cfg.compile else None,
            load_weights_only=cfg.load_weights_only or cfg.model.init == 'checkpoint',
            # A mixture's microbatches hold different numbers of target tokens per row: weigh each by
            # its tokens, so the step's loss is the mean over the batch's target tokens.
            accumulate_train_batch_on_tokens=_mixture(cfg) is not None,
            **_trainer_settings(cfg),
        )
    except BaseException:
        release_all(releases)
        raise


def _trainer_settings(cfg: TrainConfig) -> dict[str, Any]:
    """The Trainer arguments that are the config's keys, passed as they are."""
    keys = ('run_name', 'seed', 'precision', 'save_folder', 'save_interval', 'save_num_checkpoints_to_keep', 'save_overwrite',
            'autoresume', 'load_path', 'load_strict_model_weights', 'progress_bar', 'log_to_console', 'console_log_interval',
            'python_log_level', 'dist_timeout')
    return {key: getattr(cfg, key) for key in keys}


def _start_processes(cfg: TrainConfig) -> Any:
    """The device of this process, with the process group of the run started on it."""
    on_gpu = torch.cuda.is_available()
    if cfg.compile and not on_gpu:
        log.warning('compile: true on CPU compiles with gcc; the first step takes minutes.')
    device = DeviceGPU() if on_gpu else DeviceCPU()
    dist.initialize_dist(device, timeout=cfg.dist_timeout)
    return device


def _prepare_process(cfg: TrainConfig) -> None:
    """TF32 matmuls, no stale Streaming state, and the seed: just before the data and the model are made."""
    if torch.cuda.is_available() and cfg.tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    # Streaming datasets of a killed run leave shared memory and lock files behind; clear what no
    # running process uses before ours are made, and our lock files when this process exits.
    if dist.get_local_rank() == 0:
        clean_stale_streaming_state()
    dist.barrier()
    remove_lock_files_at_exit()
    reproducibility.seed_all(cfg.seed)


def _build_model(cfg: TrainConfig, plan: RunPlan, data: DataParts) -> Any:
    """The ComposerT5 of the plan (with generation evals when the data has eval tasks)."""
    generation = None
    if data.eval_tasks is not None:
        generation = GenerationEval(tokenizer=plan.tokenizer, max_new_tokens=cfg.data.max_new_tokens, task_names=sorted(data.eval_tasks),
                                    task_categories=data.eval_tasks)
    hf = cfg.model.init == 'hf'
    try:
        return build_composer_t5(
            config=plan.model_config,
            init='pretrained' if hf else 'random',
            pretrained=cfg.model.name if hf else None,
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


def _mixture(cfg: TrainConfig) -> Optional[Objective]:
    """The pre-training mixture of denoisers of ``cfg``; None for span corruption and for fine-tuning."""
    if isinstance(cfg.data, SNIDataConfig):
        return None
    objective = cfg.data.pretraining_objective
    return None if objective.is_span_corruption else objective


def _callbacks(cfg: TrainConfig, plan: RunPlan, extra: tuple, *, train: bool, predictions_folder: Optional[str]) -> list:
    """The config's callbacks, then those every run has: model metadata, the guards, predictions, rotation, lr."""
    callbacks = build_components('callbacks', cfg.callbacks) + list(extra)
    # Checkpoints carry the model config and tokenizer, so exports and fine-tuning need nothing else.
    callbacks.append(ModelMetadata(config=plan.model_config, tokenizer_dir=plan.tokenizer))
    if train:
        callbacks.append(ProgressGuard())  # an epoch without a batch ends the run instead of spinning
        callbacks.append(NonFiniteGuard(action=cfg.nonfinite.action, max_skips=cfg.nonfinite.max_skips,
                                        check_gradients=cfg.precision != 'amp_fp16'))
    mixture = _mixture(cfg)
    if train and mixture is not None:
        # A mixture's loss per denoiser, at the nanoT5 line's interval when the run prints one.
        line = next((c for c in callbacks if isinstance(c, NanoT5Log)), None)
        callbacks.append(DenoiserLosses(names=[d.name for d in mixture.denoisers], **({'interval': line.interval} if line else {})))
    if isinstance(cfg.data, SNIDataConfig) and cfg.data.eval:
        callbacks.append(PredictionWriter(folder=predictions_folder or cfg.save_folder))
    folder = local_save_folder(cfg)
    if train and folder is not None and cfg.save_num_checkpoints_to_keep > 0:
        callbacks.append(CheckpointRotation(save_folder=folder))  # keep N across resumes, not per process
    if train and not any(isinstance(c, LRMonitor) for c in callbacks):
        # Composer logs the learning rate only through LRMonitor; without it metrics.jsonl and
        # every logger would lack the lr that plots (recipes/plot_runs.py) draw.
        callbacks.append(LRMonitor())
    return callbacks


def _loggers(cfg: TrainConfig, extra: tuple, *, train: bool) -> list:
    """The config's loggers (TensorBoard's beside the checkpoints), the extra ones, and metrics.jsonl of a training run."""
    folder = local_save_folder(cfg)
    loggers = build_components('loggers', with_default_log_dirs(cfg.loggers, folder)) + list(extra)
    if train and folder is not None:
        loggers.append(MetricsJSONL(path=os.path.join(folder, 'metrics.jsonl')))  # always: plots and post-mortems
    return loggers


def with_default_log_dirs(section: dict[str, Optional[dict[str, Any]]], folder: Optional[str]) -> dict[str, Optional[dict[str, Any]]]:
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
