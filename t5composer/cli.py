"""Command-line entry points: the thin scripts in recipes/ and the console scripts of pyproject.toml call these.

``train_main`` and ``evaluate_main`` run a YAML recipe; ``convert_c4_main``, ``train_tokenizer_main``,
``export_hf_main`` and ``plot_runs_main`` are the data and model tools (``verify_main`` of
recipes/verify_data.py lives with the checks, in :mod:`t5composer.data.verify`).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import time
from typing import TYPE_CHECKING, Callable, Optional, Sequence

from t5composer.config.validation import ConfigError
from t5composer.redaction import print_error

if TYPE_CHECKING:
    from t5composer.config.schema import TrainConfig

__all__ = ['train_main', 'evaluate_main', 'convert_c4_main', 'train_tokenizer_main', 'export_hf_main', 'plot_runs_main',
           'limit_cpu_threads']

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


def train_main(argv: Optional[Sequence[str]] = None, *, extra_callbacks: tuple = ()) -> int:
    """``recipes/train.py``, ``t5composer-train``: load the YAML, build the trainer, evaluate first if asked, train.

    Args:
        argv: the recipe YAML, then ``key=value`` overrides; ``--dry-run`` (``--dry-run-gpus N``)
            anywhere validates and builds without training (see :mod:`t5composer.dry_run`).
            Default: ``sys.argv[1:]``.
        extra_callbacks: Composer callbacks to add to the recipe's (tests use this to inject faults).
    """
    if argv is None:
        argv = sys.argv[1:]
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
        if cfg.eval_first and int(state.timestamp.batch) == 0 and state.evaluators:  # none with data.eval_split: null
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


def evaluate_main(argv: Optional[Sequence[str]] = None) -> int:
    """``recipes/evaluate.py``, ``t5composer-evaluate``: evaluate a checkpoint (or HF weights) without training.

    Args:
        argv: the recipe YAML, then ``key=value`` overrides (default: ``sys.argv[1:]``).
    """
    if argv is None:
        argv = sys.argv[1:]
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


CONVERT_C4_HELP = """Convert C4 to MDS token rows for T5 span-corruption pre-training.

Examples:
    python recipes/convert_c4.py --out_root ~/data/c4_t5 --max_docs 2000000 --num_workers 4
    python recipes/convert_c4.py --source /data/c4/en --out_root /data/c4_t5 \\
        --tokenizer /data/tok/spiece.model --splits val
    python recipes/convert_c4.py --out_root s3://my-bucket/c4_t5 --num_workers 4   # straight to S3
"""


def convert_c4_main(argv: Optional[Sequence[str]] = None) -> int:
    """``recipes/convert_c4.py``, ``t5composer-convert-c4``: convert C4 splits to MDS rows; exit 2 on bad inputs.

    Args:
        argv: the command line without the program name (default: ``sys.argv[1:]``).
    """
    from t5composer.data.span_spec import SpanCorruptionSpec

    t5 = SpanCorruptionSpec()  # the flags' defaults: T5's span corruption
    p = argparse.ArgumentParser(description=CONVERT_C4_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--source', default='allenai/c4',
                   help="'allenai/c4' (hub, subset en), an fsspec URL, or a local dir like the hub's en/ folder")
    p.add_argument('--out_root', required=True,
                   help='output directory or object-store URL (s3://bucket/c4); splits go to OUT_ROOT/train, OUT_ROOT/val')
    p.add_argument('--local', default=None, help='with a remote --out_root: where shards are staged before upload (default: a temp dir)')
    p.add_argument('--splits', nargs='+', default=['train', 'val'], choices=['train', 'val'])
    p.add_argument('--tokenizer', default='google/t5-v1_1-base', help='hub name, tokenizer dir or spiece.model')
    p.add_argument('--input_length', type=int, default=t5.input_length, help='encoder input length the rows are made for')
    p.add_argument('--noise_density', type=float, default=t5.noise_density)
    p.add_argument('--mean_noise_span_length', type=float, default=t5.mean_noise_span_length)
    p.add_argument('--max_docs', type=int, default=None, help='stop each split after N good documents')
    p.add_argument('--num_workers', type=int, default=1, help='tokenizers: 1 = a thread beside the reader and writer; N >= 2 = N processes (useful up to ~4)')
    p.add_argument('--overwrite', action='store_true', help='replace existing split directories')
    p.add_argument('--compression', default='zstd', help="MDS compression ('none' for none)")
    p.add_argument('--size_limit', default='64mb', help='MDS shard size limit')
    p.add_argument('--subset', default='en', help='hub dataset folder')
    p.add_argument('--encoder', default='auto', choices=['auto', 'sentencepiece', 'tokenizers'],
                   help='tokenization backend (same ids; sentencepiece is faster when available)')
    p.add_argument('--no_progress', action='store_true', help='no progress bar')
    args = p.parse_args(argv)

    logging.basicConfig(level=logging.INFO, format='%(levelname)s %(name)s: %(message)s')
    from t5composer.data.c4_convert import convert_c4
    from t5composer.redaction import scrub_this_process

    scrub_this_process()

    try:
        results = convert_c4(
            source=args.source, out_root=args.out_root, splits=args.splits, tokenizer=args.tokenizer,
            spec=SpanCorruptionSpec(input_length=args.input_length, noise_density=args.noise_density,
                                    mean_noise_span_length=args.mean_noise_span_length),
            max_docs=args.max_docs,
            num_workers=args.num_workers, overwrite=args.overwrite,
            compression=None if args.compression.lower() == 'none' else args.compression,
            size_limit=args.size_limit, progress=not args.no_progress, subset=args.subset,
            encoder=args.encoder, local=args.local,
        )
    except (OSError, ValueError) as e:
        # Bad inputs (a missing source, an existing split, a tokenizer too large for uint16) are
        # explained by their message; a traceback would only bury it.
        print_error(e)
        return 2
    for split, m in results.items():
        secs = max(m['seconds'], 1e-9)
        skipped = f"{sum(m['skipped_lines'].values()):,} skipped"
        if m['skipped_lines']:
            skipped += f" {m['skipped_lines']}"
        print(f"{split}: {m['docs']:,} docs, {m['tokens']:,} tokens, {m['rows']:,} rows of {m['expanded_length']}, "
              f"{skipped}, {m['seconds']:.1f} s, {m['tokens'] / secs:,.0f} tokens/s ({m['encoder']}) "
              f"-> {args.out_root.rstrip('/')}/{split}")
    return 0


TRAIN_TOKENIZER_HELP = """Train a T5-style SentencePiece unigram tokenizer (pad 0, eos 1, unk 2, + 100 sentinels).

Writes spiece.model and the Hugging Face tokenizer files into --out, so that the directory can be
given as tokenizer.name in a YAML or as --tokenizer to recipes/convert_c4.py.

Example:
    python recipes/train_tokenizer.py --input /data/c4/en/c4-train.0000*-of-01024.json.gz \\
        --out ~/tok/c4_32k --vocab_size 32000 --max_sentences 5000000
"""


def train_tokenizer_main(argv: Optional[Sequence[str]] = None) -> int:
    """``recipes/train_tokenizer.py``, ``t5composer-train-tokenizer``: train and save a tokenizer; exit 2 on bad inputs.

    Args:
        argv: the command line without the program name (default: ``sys.argv[1:]``).
    """
    p = argparse.ArgumentParser(description=TRAIN_TOKENIZER_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--input', nargs='+', required=True,
                   help='text files (.txt[.gz], one document each) or C4-style .json[l][.gz] files')
    p.add_argument('--out', required=True, help='output directory')
    p.add_argument('--vocab_size', type=int, required=True, help='pieces, sentinels excluded (T5: 32000)')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--character_coverage', type=float, default=0.9999)
    p.add_argument('--max_sentences', type=int, default=10_000_000, help='lines to train on (sampled if more)')
    p.add_argument('--num_threads', type=int, default=1, help='training threads (output depends on it)')
    args = p.parse_args(argv)

    from t5composer.redaction import scrub_this_process
    from t5composer.tokenization import load_tokenizer, sentinel_ids
    from t5composer.tokenizer_training import train_tokenizer

    scrub_this_process()
    t = time.perf_counter()
    try:
        out = train_tokenizer(
            out_dir=args.out, vocab_size=args.vocab_size, input_files=args.input, seed=args.seed,
            character_coverage=args.character_coverage, max_sentences=args.max_sentences,
            num_threads=args.num_threads,
        )
    except (OSError, ValueError) as e:  # a missing input, a corpus too small for the vocabulary: said, not traced
        print_error(e)
        return 2
    tok = load_tokenizer(out)
    print(f'{out}: {len(tok)} ids ({args.vocab_size} pieces + 100 sentinels, <extra_id_0> = '
          f'{sentinel_ids(tok, 1)[0]}) in {time.perf_counter() - t:.1f} s')
    return 0


EXPORT_HF_HELP = """Export a Composer checkpoint of a t5composer T5 to a Hugging Face model directory.

    python recipes/export_hf.py runs/demo/latest-rank0.pt out/demo-hf
    python recipes/export_hf.py old.pt out/hf --config google/t5-v1_1-base --tokenizer tok_dir
    python recipes/export_hf.py runs/demo out/demo-hf --overwrite      # replace an earlier export

The result loads with ``transformers.T5ForConditionalGeneration.from_pretrained(out_dir)`` (and
``AutoTokenizer.from_pretrained(out_dir)`` when tokenizer files were available). Checkpoints are
Python pickles: only export checkpoints you trust.
"""


def export_hf_main(argv: Optional[Sequence[str]] = None) -> int:
    """``recipes/export_hf.py``, ``t5composer-export-hf``: export a checkpoint; clear one-line errors, not tracebacks.

    Args:
        argv: the command line without the program name (default: ``sys.argv[1:]``).
    """
    parser = argparse.ArgumentParser(description=EXPORT_HF_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('checkpoint', help='Composer checkpoint (.pt), or a save folder with latest-rank0.pt')
    parser.add_argument('out_dir', help='directory to write the Hugging Face model into')
    parser.add_argument('--config', default=None,
                        help="model config (name such as google/t5-v1_1-base, or HF config dir); overrides the checkpoint's")
    parser.add_argument('--tokenizer', default=None,
                        help="tokenizer directory or spiece.model; overrides the checkpoint's")
    parser.add_argument('--overwrite', action='store_true',
                        help='replace an earlier export in out_dir (only a directory holding Hugging Face model files)')
    args = parser.parse_args(argv)

    from t5composer.errors import describe_os_error
    from t5composer.models.hf_interchange import export_composer_checkpoint
    from t5composer.redaction import scrub_this_process

    scrub_this_process()

    try:
        out = export_composer_checkpoint(args.checkpoint, args.out_dir, config=args.config, tokenizer=args.tokenizer,
                                         overwrite=args.overwrite)
    except (FileNotFoundError, FileExistsError, ValueError) as e:  # a missing or corrupt checkpoint, an occupied out_dir
        print_error(e)
        return 2
    except OSError as e:  # writing the export failed (a full disk, permissions)
        print_error(describe_os_error(e, what='out_dir') if e.strerror else e)
        return 1
    print(f'Wrote {out} ({", ".join(sorted(p.name for p in out.iterdir()))}).')
    return 0


PLOT_RUNS_HELP = """Overlay training loss, eval NLL and learning rate of several runs (nanoT5's comparison plots).

    python recipes/plot_runs.py runs/adamwscale runs/adafactor --out loss.png
    python recipes/plot_runs.py runs/*/metrics.jsonl --labels a b --smooth 50 --max_step 20000

Each RUN is a run's save folder (which holds metrics.jsonl) or the metrics.jsonl file itself.
"""


def plot_runs_main(argv: Optional[Sequence[str]] = None) -> int:
    """``recipes/plot_runs.py``, ``t5composer-plot-runs``: plot runs' metrics.jsonl into one figure; exit 2 on bad inputs.

    Args:
        argv: the command line without the program name (default: ``sys.argv[1:]``).
    """
    parser = argparse.ArgumentParser(description=PLOT_RUNS_HELP.split('\n\n')[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('runs', nargs='+', metavar='RUN', help="a run's save folder (e.g. runs/demo) or its metrics.jsonl")
    parser.add_argument('--out', default='loss.png', help='image to write; .png, .pdf or .svg (default: loss.png)')
    parser.add_argument('--labels', nargs='+', help='legend names, one per RUN (default: the folder names)')
    parser.add_argument('--smooth', type=int, default=None, metavar='N',
                        help='training loss: mean of the last N steps (1: raw; default 100, or a 30th of a shorter run)')
    parser.add_argument('--title', help='figure title')
    parser.add_argument('--min_step', type=int, default=None, help='draw from this step on (skips the first steep drop)')
    parser.add_argument('--max_step', type=int, default=None, help='draw steps up to this one only')
    parser.add_argument('--yscale', choices=('auto', 'linear', 'log'), default='auto',
                        help='y axis of the loss and eval panels (auto: log for values spanning more than a factor of 3)')
    args = parser.parse_args(argv)
    if args.labels is not None and len(args.labels) != len(args.runs):
        parser.error(f'--labels has {len(args.labels)} name(s) for {len(args.runs)} run(s); give one per run.')
    if args.smooth is not None and args.smooth < 1:
        parser.error(f'--smooth must be at least 1 (1 draws the raw loss), got {args.smooth}.')
    from t5composer.errors import describe_os_error
    from t5composer.plotting import RunFileError, load_run, plot_runs, run_labels
    from t5composer.redaction import scrub_this_process

    scrub_this_process()
    labels = args.labels or run_labels(args.runs)
    try:
        runs = [load_run(run, label=label, min_step=args.min_step, max_step=args.max_step) for run, label in zip(args.runs, labels)]
    except (RunFileError, OSError) as e:
        print_error(e)
        return 2
    try:
        lines = plot_runs(runs, out=args.out, window=args.smooth, title=args.title, yscale=args.yscale)
    except OSError as e:  # --out in a folder that does not exist or cannot be written
        print_error(describe_os_error(e, what='--out'))
        return 2
    for line in lines:
        print(line)
    print(f'wrote {args.out}')
    return 0
