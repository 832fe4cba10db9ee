"""Load a run's YAML: dotted CLI overrides, ``variables:`` interpolation, schema validation.

``${variables.name}`` refers to the top-level ``variables:`` mapping (llm-foundry's convention),
``${cache_dir:}`` to the t5composer cache (``$T5COMPOSER_CACHE`` or ``~/.cache/t5composer``),
and omegaconf's own resolvers (``${oc.env:VAR,default}``) work as usual.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Sequence

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import InterpolationKeyError, OmegaConfBaseException

from t5composer.config.schema import DataConfig, TrainConfig
from t5composer.config.validation import ConfigError, closest, from_dict
from t5composer.durations import batches_of, duration_problems, parse_duration
from t5composer.learning_rate import learning_rate_problem
from t5composer.tokenization import NUM_SENTINELS, mode_token_name_problem
from t5composer.redaction import redact, scrub, secret_values  # noqa: F401  (re-exported: the config's public API)

__all__ = ['SCHEDULE_UNITS', 'cache_dir', 'load_config', 'config_from_dict', 'value_problems', 'redact', 'scrub', 'secret_values']


def cache_dir() -> str:
    """Where t5composer keeps built artifacts (demo corpus, tokenizers, converted data)."""
    return os.path.expanduser(os.environ.get('T5COMPOSER_CACHE', '~/.cache/t5composer'))


if not OmegaConf.has_resolver('cache_dir'):
    # omegaconf 2.4 renamed register_new_resolver (deprecated) to register_resolver.
    getattr(OmegaConf, 'register_resolver', OmegaConf.register_new_resolver)('cache_dir', cache_dir)


def _yaml_problem(e: Exception, what: str, *, position: bool = True) -> str:
    # PyYAML's own message is a multi-line traceback-like text; keep the problem and its position.
    mark = getattr(e, 'problem_mark', None)
    at = f' at line {mark.line + 1}, column {mark.column + 1}' if mark is not None and position else ''
    problem = getattr(e, 'problem', None) or str(e).strip().splitlines()[0]
    return f"{what} is not valid YAML{at}: {problem}."


def _load_yaml_file(yaml_path: str) -> Any:
    path = Path(yaml_path)
    if path.is_dir():
        raise ConfigError([f"Config file '{yaml_path}' is a directory; pass a YAML file, e.g. yamls/demo.yaml."])
    if not path.is_file():
        raise ConfigError([f"Config file '{yaml_path}' does not exist. Pass a YAML from yamls/, e.g. yamls/demo.yaml."])
    try:
        loaded = OmegaConf.load(yaml_path)
    except yaml.YAMLError as e:
        raise ConfigError([
            _yaml_problem(e, f"Config file '{yaml_path}'")
            + " Fix the syntax there: indent with spaces (not tabs), close every bracket and quote, and quote values that contain ': ' or ' #'.",
        ]) from e
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError([f"Config file '{yaml_path}' cannot be read ({e}); check its permissions and that it is a UTF-8 text file."]) from e
    if not isinstance(loaded, DictConfig):
        raise ConfigError([
            f"Config file '{yaml_path}' must hold a mapping of keys at the top level (lines like 'max_duration: 1000ba'), "
            f'got a {type(loaded).__name__.replace("Config", "").lower()}; see yamls/demo.yaml for the layout.',
        ])
    return loaded


def _load_recipe(yaml_path: str, chain: tuple[str, ...] = ()) -> Any:
    """A recipe with its ``base:`` recipes merged underneath (``base`` is relative to the file).

    ``base: pt_base.yaml`` lets a variant (pt_4h.yaml) state only what differs; mappings merge
    key by key, lists and values replace. ``replace: [optimizer, scheduler]`` beside ``base:``
    takes those sections (dotted keys too) from this file whole instead of merging them into the
    base's, so that keys of the base's section that this one lacks do not carry over (an
    Adafactor variant of an AdamW recipe).
    """
    here = os.path.abspath(yaml_path)
    if here in chain:
        raise ConfigError([f"'base:' recipes form a cycle: {' -> '.join(chain + (here,))}; remove one of the 'base:' keys."])
    loaded = _load_yaml_file(yaml_path)
    parent = loaded.pop('base', None)
    replace = loaded.pop('replace', None)
    if parent is None:
        if replace is not None:
            raise ConfigError([f"'replace' in '{yaml_path}' needs a 'base:' recipe whose sections it replaces; add base: <recipe.yaml> "
                               "or remove 'replace'."])
        return loaded
    if not isinstance(parent, str):
        raise ConfigError([f"'base' in '{yaml_path}' must be the path of another recipe (relative to it), e.g. base: pt_base.yaml."])
    parent_path = os.path.join(os.path.dirname(here), parent)
    if not os.path.isfile(parent_path):
        raise ConfigError([f"'base: {parent}' in '{yaml_path}' names no file ({parent_path}); give a path relative to '{yaml_path}'."])
    inherited = _load_recipe(parent_path, chain + (here,))
    for key in _replaced_keys(replace, loaded, yaml_path):
        parent_key, _, leaf = key.rpartition('.')
        holder = OmegaConf.select(inherited, parent_key) if parent_key else inherited
        if isinstance(holder, DictConfig) and leaf in holder:
            del holder[leaf]
    return OmegaConf.merge(inherited, loaded)


def _replaced_keys(replace: Any, loaded: Any, yaml_path: str) -> list[str]:
    """The dotted keys of ``replace:``, each of which this recipe must set itself."""
    if replace is None:
        return []
    if not (isinstance(replace, ListConfig) and all(isinstance(k, str) for k in replace)):
        raise ConfigError([f"'replace' in '{yaml_path}' must be a list of keys whose sections this file gives whole, "
                           f'e.g. replace: [optimizer, scheduler]; got {replace!r}.'])
    missing = [k for k in replace if OmegaConf.select(loaded, k, default=_ABSENT, throw_on_resolution_failure=False) is _ABSENT]
    if missing:
        raise ConfigError([f"'replace' in '{yaml_path}' names {', '.join(repr(k) for k in missing)}, which the file does not set; "
                           'give the whole section in the file, or remove it from the list (use ~key overrides to drop a key).'])
    return list(replace)


_ABSENT = object()


def _resolve(yaml_path: str | None, overrides: Sequence[str] = (), base: dict | None = None) -> dict:
    try:
        cfg = OmegaConf.create(base or {})
        if yaml_path is not None:
            cfg = OmegaConf.merge(cfg, _load_recipe(yaml_path))
        removals = [item[1:] for item in overrides if item.startswith('~')]
        assignments = [item for item in overrides if not item.startswith('~')]
        for item in assignments:
            if '=' not in item or not item.split('=', 1)[0].strip():
                raise ConfigError([f"Override '{item}' must look like key=value (for example optimizer.lr=0.01), or ~key to remove a key."])
        for key in removals:
            # Hydra-style '~key' drops a key, e.g. a schedule's t_warmup when switching schedules.
            parent_key, _, leaf = key.rpartition('.')
            parent = OmegaConf.select(cfg, parent_key) if parent_key else cfg
            if parent is None or leaf not in parent:
                raise ConfigError([f"Cannot remove '{key}': it is not in the config."])
            del parent[leaf]
        for item in assignments:
            # One at a time, so that a value YAML cannot parse is reported with its own override.
            try:
                parsed = OmegaConf.from_dotlist([item])
            except yaml.YAMLError as e:
                raise ConfigError([
                    _yaml_problem(e, f"The value of override '{item}'", position=False)
                    + ' Quote it (key="...") or close its brackets, e.g. optimizer.betas=[0.9,0.99].',
                ]) from e
            try:
                cfg = OmegaConf.merge(cfg, parsed)
            except TypeError as e:  # omegaconf: "Cannot merge incompatible container types"
                key = item.split('=', 1)[0].strip()
                raise ConfigError([
                    f"Override '{item}' cannot replace '{key}': it holds a mapping in the config and the override gives "
                    f"a list or value ({e}). Set its keys one by one instead, e.g. {key}.<name>=<value>.",
                ]) from e
        return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    except InterpolationKeyError as e:
        raise ConfigError([
            f"Could not resolve an interpolation: {' '.join(str(e).split())}"
            + ". Define the key it names (${variables.x} refers to the top-level 'variables:' mapping) or correct the ${...} reference.",
        ]) from e
    except OmegaConfBaseException as e:
        raise ConfigError([f"Could not read the config: {' '.join(str(e).split())}. Fix the key named above in the YAML or the overrides."]) from e


# Units a schedule's t_warmup / t_max may use (epochs and fractions of the run are converted to steps).
SCHEDULE_UNITS = ('ba', 'ep', 'dur')


def _warmup_problems(cfg: TrainConfig) -> list[str]:
    # Caught here rather than by the schedule at its first step, mid-way into a started run.
    kwargs = cfg.scheduler.kwargs
    p: list[str] = []
    if 't_max' in kwargs:
        p += duration_problems(kwargs['t_max'], key='scheduler.t_max', units=SCHEDULE_UNITS)
    if 't_warmup' not in kwargs:
        return p
    p += duration_problems(kwargs['t_warmup'], key='scheduler.t_warmup', units=SCHEDULE_UNITS, allow_zero=True)
    if p:
        return p
    warmup = parse_duration(kwargs['t_warmup'], key='scheduler.t_warmup', units=SCHEDULE_UNITS, allow_zero=True)
    if warmup.unit == 'dur' and warmup.value >= 1:
        return [f"'scheduler.t_warmup' ({kwargs['t_warmup']}) must be shorter than the run (below 1dur); lower t_warmup."]
    total_key = 'scheduler.t_max' if kwargs.get('t_max') is not None else 'max_duration'
    total = batches_of(kwargs['t_max'] if total_key == 'scheduler.t_max' else cfg.max_duration)
    if warmup.unit == 'ba' and total is not None and warmup.value >= total:
        return [f"'scheduler.t_warmup' ({kwargs['t_warmup']}) must be shorter than '{total_key}' ({total}ba); lower t_warmup or train longer."]
    return []


def _c4_problems(cfg: TrainConfig) -> list[str]:
    d = cfg.data
    spec = d.span_corruption
    p = spec.problems(key="'data.{}'")
    if not p and spec.noise_spans > NUM_SENTINELS:
        p.append(f"'data.input_length' {d.input_length} needs {spec.noise_spans} sentinel tokens but T5 tokenizers have {NUM_SENTINELS}; "
                 'lower input_length or raise mean_noise_span_length.')
    if d.objective is not None and not p:
        p += _objective_problems(d)
    if d.num_workers < 0:
        p.append(f"'data.num_workers' must be >= 0, got {d.num_workers}.")
    if d.builtin_corpus is not None:
        for key, value in (('tokenizer.name', cfg.tokenizer.name), ('data.local', d.local), ('data.remote', d.remote)):
            if value is not None:
                p.append(f"'{key}' must be null when 'data.builtin_corpus' is set (the builtin corpus brings its own tokenizer and data); remove one of them.")
    else:
        if d.local is None and d.remote is None:
            command = spec.convert_command(out_root='data/c4', splits=['train', 'val'], tokenizer=cfg.tokenizer.name or '<tokenizer.name>')
            p.append(f"Set 'data.local' (a directory of converted MDS splits) or 'data.remote'; convert C4 with: {command}")
        if cfg.tokenizer.name is None:
            p.append("Set 'tokenizer.name' (e.g. google/t5-v1_1-base or a local directory with spiece.model).")
    return p


def _objective_problems(d: DataConfig) -> list[str]:
    """``data.objective`` (a preset or denoisers) against the rows the data section describes."""
    key = "'data.objective.{}'"
    try:
        objective = d.pretraining_objective
    except (TypeError, ValueError) as e:  # not a mapping, or entries that are not denoisers
        return [f"'data.objective': {e}"]
    if not objective.is_span_corruption:
        # Every denoiser must make the data's rows into its fixed shapes with T5's sentinels.
        return objective.problems(key=key, raw_length=d.span_corruption.expanded_length, num_sentinels=NUM_SENTINELS)
    p = objective.problems(key=key)
    (only,) = objective.denoisers
    if not p and (only.corruption_rate, only.mean_span_length) != (d.noise_density, d.mean_noise_span_length):
        p.append(f"'data.objective' is plain span corruption ({only.mean_span_length}, {only.corruption_rate}) but "
                 f"'data.noise_density' / 'data.mean_noise_span_length' are {d.noise_density} / {d.mean_noise_span_length}; "
                 'set those instead (they also say which rows the data has) and remove data.objective.')
    return p


def _sni_problems(cfg: TrainConfig) -> list[str]:
    d = cfg.data
    p: list[str] = []
    if (d.root is None) == (d.builtin_tasks is None):
        p.append("Set exactly one of 'data.root' (a natural-instructions checkout with tasks/ and splits/) and 'data.builtin_tasks' (synthetic).")
    for key in ('max_instances_per_task', 'max_source_length', 'max_target_length', 'max_new_tokens'):
        if getattr(d, key) <= 0:
            p.append(f"'data.{key}' must be positive, got {getattr(d, key)}.")
    if d.num_pos_examples < 0:
        p.append(f"'data.num_pos_examples' must be >= 0, got {d.num_pos_examples}.")
    if d.mode_token is not None:
        bad = mode_token_name_problem(d.mode_token)
        if bad:
            p.append(f"'data.mode_token' {bad}.")
        elif d.max_source_length < 2:
            p.append(f"'data.max_source_length' must be >= 2 with 'data.mode_token' (the token and EOS), got {d.max_source_length}.")
    if d.num_workers < 0:
        p.append(f"'data.num_workers' must be >= 0, got {d.num_workers}.")
    if cfg.tokenizer.name is None and cfg.model.init != 'checkpoint':
        p.append("Set 'tokenizer.name' (e.g. google/t5-v1_1-base, or the tokenizer directory of a pre-training run).")
    return p


def _init_problems(cfg: TrainConfig) -> list[str]:
    init = cfg.model.init
    if init == 'checkpoint' and cfg.load_path is None:
        return ["When setting 'model.init: checkpoint' you must also set 'load_path' (a Composer checkpoint, e.g. runs/pt_base/latest-rank0.pt)."]
    if init == 'hf' and cfg.model.config_overrides().keys() - {'dropout_rate'}:
        extra = sorted(cfg.model.config_overrides().keys() - {'dropout_rate'})
        return [f"'model.init: hf' takes the architecture from the weights; remove the model overrides {', '.join('model.' + k for k in extra)} (only model.dropout_rate may change)."]
    return []


# streaming 0.13's shuffle algorithms (streaming.base.shuffle.algos; importing it costs seconds).
SHUFFLE_ALGOS = ('naive', 'py1br', 'py1e', 'py1s', 'py2s')
_LOG_LEVELS = ('debug', 'info', 'warning', 'error', 'critical')
_POSITIVE_MODEL_KEYS = (
    'd_model', 'd_kv', 'd_ff', 'num_layers', 'num_decoder_layers', 'num_heads',
    'relative_attention_num_buckets', 'relative_attention_max_distance',
)


def _range_problems(cfg: TrainConfig) -> list[str]:
    """Values of the right type that Composer, streaming or torch would reject later, mid-build."""
    p: list[str] = []
    name = cfg.run_name
    if name is not None and (any(c in name for c in '/\\\0\n\r') or name.strip() in ('', '.', '..')):
        # It becomes a folder name (save_folder: runs/${run_name}); '..' would put the run outside its tree.
        p.append(f"'run_name' {name!r} names files and folders, so it must be non-empty, not '.' or '..', and have no '/', "
                 "'\\' or line breaks; use e.g. run_name=pt_base-lr2e-2.")
    if cfg.eval_subset_num_batches == 0 or cfg.eval_subset_num_batches < -1:
        p.append(f"'eval_subset_num_batches' must be -1 (the whole eval split) or positive, got {cfg.eval_subset_num_batches}.")
    p += duration_problems(cfg.console_log_interval, key='console_log_interval', units=('ba', 'ep'))
    if cfg.python_log_level is not None and cfg.python_log_level.lower() not in _LOG_LEVELS:
        p.append(f"'python_log_level' must be one of {', '.join(_LOG_LEVELS)} or null, got {cfg.python_log_level!r}."
                 f"{closest(cfg.python_log_level.lower(), _LOG_LEVELS)}")
    if not cfg.dist_timeout > 0:
        p.append(f"'dist_timeout' must be a positive number of seconds, got {cfg.dist_timeout}; the default is 600.")
    m = cfg.model
    for key in _POSITIVE_MODEL_KEYS:
        value = getattr(m, key)
        if value is not None and value <= 0:
            p.append(f"'model.{key}' must be positive, got {value}; set it to a positive integer or null to keep {m.name}'s value.")
    if isinstance(m.vocab_size, int) and m.vocab_size <= 0:
        p.append(f"'model.vocab_size' must be positive or 'tokenizer', got {m.vocab_size}.")
    if m.dropout_rate is not None and not 0.0 <= m.dropout_rate < 1.0:
        p.append(f"'model.dropout_rate' must be in [0, 1), got {m.dropout_rate}; nanoT5 pre-trains with 0.0 and fine-tunes with 0.1.")
    if m.lm_head_init_std is not None and not m.lm_head_init_std > 0:
        p.append(f"'model.lm_head_init_std' must be positive, got {m.lm_head_init_std}; null keeps the reference's 1.0.")
    d = cfg.data
    if isinstance(d, DataConfig):
        if not d.download_timeout > 0:
            p.append(f"'data.download_timeout' must be a positive number of seconds, got {d.download_timeout}; the default is 60.")
        if d.shuffle_algo not in SHUFFLE_ALGOS:
            p.append(f"'data.shuffle_algo' must be one of {', '.join(SHUFFLE_ALGOS)}, got {d.shuffle_algo!r}.{closest(d.shuffle_algo, SHUFFLE_ALGOS)}")
        for key in ('prefetch_factor', 'num_canonical_nodes'):
            if getattr(d, key) is not None and getattr(d, key) <= 0:
                p.append(f"'data.{key}' must be positive or null, got {getattr(d, key)}.")
        if d.predownload is not None and d.predownload < 0:
            p.append(f"'data.predownload' must be >= 0 or null, got {d.predownload}.")
    return p


def value_problems(cfg: TrainConfig) -> list[str]:
    """Problems with values that have the right type but cannot work together."""
    p: list[str] = []
    p += duration_problems(cfg.max_duration, key='max_duration', units=('ba', 'ep', 'sp', 'tok'))
    p += duration_problems(cfg.eval_interval, key='eval_interval', units=('ba', 'ep'))
    p += duration_problems(cfg.save_interval, key='save_interval', units=('ba', 'ep'))
    for key in ('seed', 'data.shuffle_seed'):
        seed = cfg.seed if key == 'seed' else getattr(cfg.data, 'shuffle_seed', None)
        if seed is not None and not 0 <= seed < 2**32:
            # Composer seeds numpy, which takes 0 <= seed < 2**32; a traceback from inside its seeding otherwise.
            p.append(f"'{key}' must be between 0 and 4294967295 (2**32 - 1), got {seed}; e.g. {key}=2137.")
    if cfg.global_train_batch_size <= 0:
        p.append(f"'global_train_batch_size' must be positive, got {cfg.global_train_batch_size}.")
    mb = cfg.device_train_microbatch_size
    if isinstance(mb, int) and mb <= 0:
        p.append(f"'device_train_microbatch_size' must be positive or 'auto', got {mb}.")
    if cfg.device_eval_batch_size is not None and cfg.device_eval_batch_size <= 0:
        p.append(f"'device_eval_batch_size' must be positive, got {cfg.device_eval_batch_size}.")
    p += _warmup_problems(cfg)
    lr_problem = learning_rate_problem(cfg.optimizer.lr)
    if lr_problem is not None:
        p.append(f"'optimizer.lr' {lr_problem}; set e.g. optimizer.lr=0.01.")
    if not math.isfinite(cfg.optimizer.weight_decay):
        p.append(f"'optimizer.weight_decay' must be a finite number, got {cfg.optimizer.weight_decay}; 0.0 turns weight decay off.")
    elif cfg.optimizer.weight_decay < 0:
        p.append(f"'optimizer.weight_decay' must be >= 0, got {cfg.optimizer.weight_decay}; 0.0 turns weight decay off.")
    p += _c4_problems(cfg) if isinstance(cfg.data, DataConfig) else _sni_problems(cfg)
    p += _init_problems(cfg)
    p += _range_problems(cfg)
    from t5composer.config.parallelism import parallelism_problems

    p += parallelism_problems(cfg)
    if cfg.autoresume and (cfg.run_name is None or cfg.save_folder is None):
        p.append("When setting 'autoresume: true' you must also set 'run_name' and 'save_folder'.")
    if cfg.nonfinite.max_skips < 0:
        p.append(f"'nonfinite.max_skips' must be >= 0, got {cfg.nonfinite.max_skips}.")
    if cfg.save_num_checkpoints_to_keep == 0 or cfg.save_num_checkpoints_to_keep < -1:
        p.append(f"'save_num_checkpoints_to_keep' must be -1 (keep all) or positive, got {cfg.save_num_checkpoints_to_keep}.")
    return p


def config_from_dict(data: dict, *, check: bool = True) -> TrainConfig:
    """Validate a resolved config mapping; raise :class:`ConfigError` listing every problem.

    Args:
        data: the mapping.
        check: also check the values (:func:`value_problems`); False checks the schema (keys and
            types) only, for a caller that reports the values' problems with the rest of
            preflight's in one message (:func:`t5composer.run.preflight.preflight`).
    """
    cfg = from_dict(TrainConfig, data)
    problems = value_problems(cfg) if check else []
    if problems:
        raise ConfigError(problems)
    return cfg


def load_config(yaml_path: str | None, overrides: Sequence[str] = (), *, base: dict | None = None, check: bool = True) -> TrainConfig:
    """Read ``yaml_path``, apply ``key=value`` / ``~key`` overrides, resolve interpolations, validate.

    Args:
        yaml_path: a recipe YAML (may be None when ``base`` holds everything).
        overrides: dotted ``key=value`` strings, applied after the file.
        base: a mapping merged underneath the file (used by tests).
        check: see :func:`config_from_dict`.
    """
    return config_from_dict(_resolve(yaml_path, overrides, base), check=check)
