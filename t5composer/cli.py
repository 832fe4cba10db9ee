"""Command-line entry points behind the thin scripts in recipes/."""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import TYPE_CHECKING, Callable, Sequence

from t5composer.config.validation import ConfigError
from t5composer.redaction import print_error

if TYPE_CHECKING:
    from t5composer.config.schema import TrainConfig

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


def setup_logging(cfg: object) -> list[str]:
    """Log warnings to stderr with secrets scrubbed (logs, tracebacks, warnings); return the secret values."""
    from t5composer.redaction import config_secrets, install_scrubbing, secret_values

    logging.basicConfig(format='%(asctime)s %(levelname)s %(name)s: %(message)s', level=logging.WARNING)
    secrets = sorted(set(secret_values()) | set(config_secrets(dataclasses.asdict(cfg))), key=len, reverse=True)  # type: ignore[arg-type]
    install_scrubbing(secrets)
    python_log_level = getattr(cfg, 'python_log_level', None)
    if python_log_level and python_log_level.upper() in logging.getLevelNamesMapping():  # else preflight names it
        logging.getLogger('t5composer').setLevel(python_log_level.upper())
    return secrets


def _env_secrets() -> list[str]:
    """Secrets known before the config is read (the environment's); tracebacks are scrubbed from here on."""
    from t5composer.redaction import scrub_this_process

    return scrub_this_process()


def _stop_codes() -> dict[type[BaseException], int]:
    """Exit status of each way a run stops on purpose (each error's message says why and what to do)."""
    from t5composer.callbacks.nonfinite_guard import NonFiniteError
    from t5composer.callbacks.progress_guard import NoProgressError
    from t5composer.data.streaming import DataReadError

    return {NonFiniteError: 3, NoProgressError: 4, DataReadError: 5}


def _run_guarded(secrets: Sequence[str], run: Callable[[], int]) -> int:
    """``run()``, with the errors a user can fix printed as one ``error:`` line instead of a traceback.

    ConfigError: exit 2. A run stopped on purpose (non-finite values: 3; no progress possible: 4;
    data that cannot be read, a damaged shard or row included: 5).
    An OSError on a path (a full disk, a lost mount, permissions; checkpoint saves included): 1,
    with the path and what to do; its traceback goes to the log at debug level.
    """
    from t5composer.errors import describe_os_error

    try:
        return run()
    except ConfigError as e:
        print_error(e, secrets)
        return 2
    except OSError as e:
        print_error(str(e) if e.errno is None or not e.strerror else describe_os_error(e), secrets)
        logging.getLogger(__name__).debug('the error above came from here', exc_info=True)
        return 1
    except Exception as e:
        for kind, code in _stop_codes().items():
            if isinstance(e, kind):
                print_error(e, secrets)
                return code
        raise


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
        print_error(e)
        return 2
    if not argv or argv[0] in ('-h', '--help'):
        print(USAGE)
        return 0 if argv else 2
    yaml_path, overrides = argv[0], list(argv[1:])
    from t5composer.config.loading import load_config

    env_secrets = _env_secrets()
    try:
        # The schema only: preflight checks the values with everything else, so one message lists all problems.
        cfg = load_config(yaml_path, overrides, check=False)
    except ConfigError as e:
        print_error(e, env_secrets)
        return 2
    limit_cpu_threads()
    secrets = setup_logging(cfg)
    if dry is not None:
        from t5composer.dry_run import dry_run

        if int(os.environ.get('RANK', '0')) != 0:
            return 0  # under `composer -n N`, rank 0 checks for all
        return _run_guarded(secrets, lambda: dry_run(cfg, recipe=yaml_path, gpus=dry.gpus, config_checked=False))
    return _run_guarded(secrets, lambda: _train(cfg, secrets, extra_callbacks))


def _train(cfg: TrainConfig, secrets: Sequence[str], extra_callbacks: tuple) -> int:
    from omegaconf import OmegaConf

    from t5composer.redaction import redact
    from t5composer.run.preflight import preflight

    # Seconds, before the heavy imports: the config's values, no data, bf16 on CPU, batch sizes, save folder.
    preflight(cfg, config_checked=False)
    from t5composer.run.build import build_trainer  # the model, Composer and the data pipeline: seconds to import

    if int(os.environ.get('RANK', '0')) == 0:
        print(OmegaConf.to_yaml(redact(dataclasses.asdict(cfg), secrets)), flush=True)  # type: ignore[call-overload]
    trainer = build_trainer(cfg, extra_callbacks=extra_callbacks, preflight_done=True)
    try:
        state = trainer.state
        assert state.max_duration is not None
        if state.timestamp.get(state.max_duration.unit) >= state.max_duration:
            # autoresume found a finished run: say so instead of Composer's "no training would occur".
            print(
                f'Run {cfg.run_name!r} is already complete ({state.max_duration}); nothing to do. Raise max_duration '
                f'to train longer, or pick another run_name / save_folder to start over.',
                flush=True,
            )
            return 0
        if cfg.eval_first and int(state.timestamp.batch) == 0:
            trainer.eval()
        trainer.fit()
    finally:
        trainer.close()  # also when the run stops on an error: dataloader workers, the run lock
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
    env_secrets = _env_secrets()
    try:
        cfg = load_config(argv[0], overrides)
        if cfg.load_path is not None and cfg.model.init == 'random':
            # Evaluating a checkpoint means its weights, whatever the recipe trains from.
            cfg = load_config(argv[0], overrides + ['model.init=checkpoint'])
        if cfg.load_path is None and cfg.model.init != 'hf':
            raise ConfigError(['Nothing to evaluate: set load_path=<Composer checkpoint>, or model.init=hf model.name=<HF model>.'])
    except ConfigError as e:
        print_error(e, env_secrets)
        return 2
    limit_cpu_threads()
    secrets = setup_logging(cfg)
    return _run_guarded(secrets, lambda: _evaluate(cfg))


def _evaluate(cfg: TrainConfig) -> int:
    from t5composer.run.build import build_trainer

    load_path = cfg.load_path
    folder = os.path.dirname(os.path.abspath(load_path)) if load_path else cfg.save_folder
    trainer = build_trainer(cfg, train=False, predictions_folder=folder)
    try:
        trainer.eval()
        if int(os.environ.get('RANK', '0')) == 0:
            for label, metrics in trainer.state.eval_metrics.items():
                for name, metric in metrics.items():
                    print(f'{label}/{name}: {float(metric.compute()):.4f}', flush=True)
            if folder and os.path.isdir(os.path.join(folder, 'predictions')):
                print(f'predictions: {os.path.join(folder, "predictions")}', flush=True)
    finally:
        trainer.close()
    return 0
