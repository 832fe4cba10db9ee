"""Command-line entry points behind the thin scripts in recipes/."""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
from typing import Sequence

from t5composer.config.validation import ConfigError

__all__ = ['train_main', 'evaluate_main', 'limit_cpu_threads']

USAGE = ('usage: composer recipes/train.py <recipe.yaml> [key=value ...] [--dry-run [--dry-run-gpus N]]   (e.g. yamls/demo.yaml optimizer.lr=0.01)\n'
         '  --dry-run: validate and build everything but the data and the GPUs, print a summary, exit (N GPUs; default 8 for an FSDP recipe, else 1)')


def limit_cpu_threads() -> None:
    """Split the CPU cores between the processes of a multi-process CPU run.

    Composer's launcher does not set OMP_NUM_THREADS; with several processes each using every
    core, steps were 10-70x slower. Respect an explicit OMP_NUM_THREADS.
    """
    import torch

    local_world = int(os.environ.get('LOCAL_WORLD_SIZE', '1'))
    if local_world > 1 and 'OMP_NUM_THREADS' not in os.environ and not torch.cuda.is_available():
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))


class _ScrubSecrets(logging.Filter):
    """Replace secret values (from the environment and the config's secret keys) in log records."""

    def __init__(self, secrets: Sequence[str]) -> None:
        super().__init__()
        self.secrets = list(secrets)

    def filter(self, record: logging.LogRecord) -> bool:
        from t5composer.config.loading import scrub

        message = record.getMessage()
        clean = scrub(message, self.secrets)
        if clean != message:
            record.msg, record.args = clean, None
        return True


def _config_secrets(obj: object) -> list[str]:
    from t5composer.config.loading import _is_secret

    found: list[str] = []
    if isinstance(obj, dict):
        for key, value in obj.items():
            if _is_secret(key) and isinstance(value, str) and len(value) >= 4:
                found.append(value)
            else:
                found += _config_secrets(value)
    elif isinstance(obj, list):
        for value in obj:
            found += _config_secrets(value)
    return found


def setup_logging(cfg: object) -> list[str]:
    """Log warnings to stderr with secrets scrubbed; return the secret values being scrubbed."""
    from t5composer.config.loading import secret_values

    logging.basicConfig(format='%(asctime)s %(levelname)s %(name)s: %(message)s', level=logging.WARNING)
    secrets = sorted(set(secret_values()) | set(_config_secrets(dataclasses.asdict(cfg))), key=len, reverse=True)  # type: ignore[arg-type]
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, _ScrubSecrets) for f in handler.filters):
            handler.addFilter(_ScrubSecrets(secrets))
    python_log_level = getattr(cfg, 'python_log_level', None)
    if python_log_level:
        logging.getLogger('t5composer').setLevel(python_log_level.upper())
    return secrets


def _env_secrets() -> list[str]:
    from t5composer.config.loading import secret_values

    return secret_values()


def _print_error(message: object, secrets: Sequence[str] = ()) -> None:
    from t5composer.config.loading import scrub

    print(f'error: {scrub(str(message), secrets)}', file=sys.stderr, flush=True)


def train_main(argv: Sequence[str], *, extra_callbacks: tuple = ()) -> int:
    """``recipes/train.py``: load the YAML, build the trainer, evaluate first if asked, train.

    Args:
        argv: the recipe YAML, then ``key=value`` overrides; ``--dry-run`` (``--dry-run-gpus N``)
            anywhere validates and builds without training (see :mod:`t5composer.dry_run`).
        extra_callbacks: Composer callbacks to add to the recipe's (tests use this to inject faults).
    """
    from t5composer.dry_run import parse_dry_run_args

    try:
        argv, dry = parse_dry_run_args(argv)
    except ConfigError as e:
        _print_error(e)
        return 2
    if not argv or argv[0] in ('-h', '--help'):
        print(USAGE)
        return 0 if argv else 2
    yaml_path, overrides = argv[0], list(argv[1:])
    from t5composer.config.loading import load_config, redact

    try:
        cfg = load_config(yaml_path, overrides)
    except ConfigError as e:
        _print_error(e, _env_secrets())
        return 2
    limit_cpu_threads()
    secrets = setup_logging(cfg)
    if dry is not None:
        from t5composer.dry_run import dry_run

        if int(os.environ.get('RANK', '0')) != 0:
            return 0  # under `composer -n N`, rank 0 checks for all
        try:
            return dry_run(cfg, recipe=yaml_path, gpus=dry.gpus)
        except ConfigError as e:
            _print_error(e, secrets)
            return 2

    from omegaconf import OmegaConf

    from t5composer.training import build_trainer, preflight

    try:
        preflight(cfg)  # seconds, before the heavy imports: no data, bf16 on CPU, batch sizes
        if int(os.environ.get('RANK', '0')) == 0:
            print(OmegaConf.to_yaml(redact(dataclasses.asdict(cfg), secrets)), flush=True)
        trainer = build_trainer(cfg, extra_callbacks=extra_callbacks, preflight_done=True)
    except ConfigError as e:
        _print_error(e, secrets)
        return 2
    state = trainer.state
    assert state.max_duration is not None
    if state.timestamp.get(state.max_duration.unit) >= state.max_duration:
        # autoresume found a finished run: say so instead of Composer's "no training would occur".
        print(
            f'Run {cfg.run_name!r} is already complete ({state.max_duration}); nothing to do. Raise max_duration '
            f'to train longer, or pick another run_name / save_folder to start over.',
            flush=True,
        )
        trainer.close()
        return 0
    if cfg.eval_first and int(state.timestamp.batch) == 0:
        trainer.eval()
    from t5composer.callbacks.nonfinite_guard import NonFiniteError

    try:
        trainer.fit()
    except NonFiniteError as e:
        _print_error(e, secrets)
        trainer.close()
        return 3
    trainer.close()
    return 0


EVAL_USAGE = (
    'usage: python recipes/evaluate.py <recipe.yaml> load_path=<checkpoint> [key=value ...]\n'
    '  SNI recipes report RougeL / exact match (predictions beside the checkpoint); pre-training\n'
    '  recipes report held-out NLL and token accuracy. model.init=hf model.name=<hf model> evaluates HF weights.'
)


def evaluate_main(argv: Sequence[str]) -> int:
    """``recipes/evaluate.py``: evaluate a checkpoint (or HF weights) without training."""
    if not argv or argv[0] in ('-h', '--help'):
        print(EVAL_USAGE)
        return 0 if argv else 2
    from t5composer.config.loading import load_config

    # An evaluation never resumes a run: autoresume would replace load_path with the run's latest.
    overrides = list(argv[1:]) + ['autoresume=false']
    try:
        cfg = load_config(argv[0], overrides)
        if cfg.load_path is not None and cfg.model.init == 'random':
            # Evaluating a checkpoint means its weights, whatever the recipe trains from.
            cfg = load_config(argv[0], overrides + ['model.init=checkpoint'])
        if cfg.load_path is None and cfg.model.init != 'hf':
            raise ConfigError(['Nothing to evaluate: set load_path=<Composer checkpoint>, or model.init=hf model.name=<HF model>.'])
    except ConfigError as e:
        _print_error(e, _env_secrets())
        return 2
    limit_cpu_threads()
    secrets = setup_logging(cfg)

    from t5composer.training import build_trainer

    folder = os.path.dirname(os.path.abspath(cfg.load_path)) if cfg.load_path else cfg.save_folder
    try:
        trainer = build_trainer(cfg, train=False, predictions_folder=folder)
    except ConfigError as e:
        _print_error(e, secrets)
        return 2
    trainer.eval()
    if int(os.environ.get('RANK', '0')) == 0:
        for label, metrics in trainer.state.eval_metrics.items():
            for name, metric in metrics.items():
                print(f'{label}/{name}: {float(metric.compute()):.4f}', flush=True)
        if folder and os.path.isdir(os.path.join(folder, 'predictions')):
            print(f'predictions: {os.path.join(folder, "predictions")}', flush=True)
    trainer.close()
    return 0
