"""Load a run's YAML: dotted CLI overrides, ``variables:`` interpolation, schema validation.

``${variables.name}`` refers to the top-level ``variables:`` mapping (llm-foundry's convention),
``${cache_dir:}`` to the t5composer cache (``$T5COMPOSER_CACHE`` or ``~/.cache/t5composer``),
and omegaconf's own resolvers (``${oc.env:VAR,default}``) work as usual.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Sequence

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from t5composer.config.schema import DataConfig, TrainConfig
from t5composer.config.validation import ConfigError, from_dict

__all__ = ['cache_dir', 'load_config', 'config_from_dict', 'value_problems', 'redact']


def cache_dir() -> str:
    """Where t5composer keeps built artifacts (demo corpus, tokenizers, converted data)."""
    return os.path.expanduser(os.environ.get('T5COMPOSER_CACHE', '~/.cache/t5composer'))


if not OmegaConf.has_resolver('cache_dir'):
    # omegaconf 2.4 renamed register_new_resolver (deprecated) to register_resolver.
    getattr(OmegaConf, 'register_resolver', OmegaConf.register_new_resolver)('cache_dir', cache_dir)


def _resolve(yaml_path: str | None, overrides: Sequence[str] = (), base: dict | None = None) -> dict:
    try:
        cfg = OmegaConf.create(base or {})
        if yaml_path is not None:
            if not Path(yaml_path).is_file():
                raise ConfigError([f"Config file '{yaml_path}' does not exist. Pass a YAML from yamls/, e.g. yamls/demo.yaml."])
            cfg = OmegaConf.merge(cfg, OmegaConf.load(yaml_path))
        removals = [item[1:] for item in overrides if item.startswith('~')]
        assignments = [item for item in overrides if not item.startswith('~')]
        for item in assignments:
            if '=' not in item:
                raise ConfigError([f"Override '{item}' must look like key=value (for example optimizer.lr=0.01), or ~key to remove a key."])
        for key in removals:
            # Hydra-style '~key' drops a key, e.g. a schedule's t_warmup when switching schedules.
            parent_key, _, leaf = key.rpartition('.')
            parent = OmegaConf.select(cfg, parent_key) if parent_key else cfg
            if parent is None or leaf not in parent:
                raise ConfigError([f"Cannot remove '{key}': it is not in the config."])
            del parent[leaf]
        if assignments:
            cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(assignments))
        return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    except OmegaConfBaseException as e:
        raise ConfigError([f'Could not read the config: {e}'.replace('\n', ' ')]) from e


_DURATION = re.compile(r'^\s*(\d+(?:\.\d*)?|\.\d+)\s*(ba|ep|sp|tok|dur)\s*$')


def _time_problems(value: Any, key: str, units: tuple[str, ...]) -> list[str]:
    # Parsed here rather than with composer.core.Time so that config errors come back in a
    # second, before Composer (3 s of imports) is loaded.
    if isinstance(value, int):
        return [] if value > 0 else [f"'{key}' must be positive, got {value}."]
    match = _DURATION.match(str(value))
    if match is None:
        return [f"'{key}' must be a duration like '1000ba' or '1ep' (units {', '.join(units)}), got {value!r}."]
    problems = []
    if match.group(2) not in units:
        problems.append(f"'{key}' must be in one of the units {', '.join(units)}, got {value!r}.")
    if float(match.group(1)) <= 0:
        problems.append(f"'{key}' must be positive, got {value!r}.")
    return problems


def _batches(value: Any) -> float | None:
    if isinstance(value, int):
        return float(value)
    match = _DURATION.match(str(value))
    return float(match.group(1)) if match and match.group(2) == 'ba' else None


def _warmup_problems(cfg: TrainConfig) -> list[str]:
    # Caught here rather than by the schedule at its first step, mid-way into a started run.
    kwargs = cfg.scheduler.kwargs
    if 't_warmup' not in kwargs:
        return []
    warmup = _batches(kwargs['t_warmup'])
    total_key = 'scheduler.t_max' if kwargs.get('t_max') is not None else 'max_duration'
    total = _batches(kwargs['t_max'] if total_key == 'scheduler.t_max' else cfg.max_duration)
    if warmup is not None and total is not None and warmup >= total:
        return [f"'scheduler.t_warmup' ({kwargs['t_warmup']}) must be shorter than '{total_key}' ({total:g}ba); lower t_warmup or train longer."]
    return []


def _c4_problems(cfg: TrainConfig) -> list[str]:
    from t5composer.data.span_corruption import noise_span_counts, random_spans_helper

    p: list[str] = []
    d = cfg.data
    span_ok = True
    if not 0.0 < d.noise_density < 1.0:
        p.append(f"'data.noise_density' must be in (0, 1), got {d.noise_density}.")
        span_ok = False
    if d.mean_noise_span_length < 1.0:
        p.append(f"'data.mean_noise_span_length' must be >= 1, got {d.mean_noise_span_length}.")
        span_ok = False
    if span_ok:
        raw_length, _ = random_spans_helper(d.input_length, d.noise_density, d.mean_noise_span_length)
        num_noise, num_spans = noise_span_counts(raw_length, d.noise_density, d.mean_noise_span_length)
        if d.input_length < 4 or raw_length - num_noise < 1:
            p.append(f"'data.input_length' {d.input_length} is too small to hold one noise span and EOS; use at least 4 (512 is standard).")
        elif num_spans > 100:
            p.append(f"'data.input_length' {d.input_length} needs {num_spans} sentinel tokens but T5 tokenizers have 100; lower input_length or raise mean_noise_span_length.")
    if d.num_workers < 0:
        p.append(f"'data.num_workers' must be >= 0, got {d.num_workers}.")
    if d.builtin_corpus is not None:
        for key, value in (('tokenizer.name', cfg.tokenizer.name), ('data.local', d.local), ('data.remote', d.remote)):
            if value is not None:
                p.append(f"'{key}' must be null when 'data.builtin_corpus' is set (the builtin corpus brings its own tokenizer and data); remove one of them.")
    else:
        if d.local is None and d.remote is None:
            p.append("Set 'data.local' (a directory of converted MDS splits) or 'data.remote'; convert C4 with: python recipes/convert_c4.py --out_root data/c4 --splits train val")
        if cfg.tokenizer.name is None:
            p.append("Set 'tokenizer.name' (e.g. google/t5-v1_1-base or a local directory with spiece.model).")
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


def value_problems(cfg: TrainConfig) -> list[str]:
    """Problems with values that have the right type but cannot work together."""
    p: list[str] = []
    p += _time_problems(cfg.max_duration, 'max_duration', ('ba', 'ep', 'sp', 'tok'))
    p += _time_problems(cfg.eval_interval, 'eval_interval', ('ba', 'ep'))
    p += _time_problems(cfg.save_interval, 'save_interval', ('ba', 'ep'))
    if cfg.global_train_batch_size <= 0:
        p.append(f"'global_train_batch_size' must be positive, got {cfg.global_train_batch_size}.")
    mb = cfg.device_train_microbatch_size
    if isinstance(mb, int) and mb <= 0:
        p.append(f"'device_train_microbatch_size' must be positive or 'auto', got {mb}.")
    if cfg.device_eval_batch_size is not None and cfg.device_eval_batch_size <= 0:
        p.append(f"'device_eval_batch_size' must be positive, got {cfg.device_eval_batch_size}.")
    p += _warmup_problems(cfg)
    if cfg.optimizer.lr < 0:
        p.append(f"'optimizer.lr' must be >= 0, got {cfg.optimizer.lr}.")
    if cfg.optimizer.weight_decay < 0:
        p.append(f"'optimizer.weight_decay' must be >= 0, got {cfg.optimizer.weight_decay}.")
    p += _c4_problems(cfg) if isinstance(cfg.data, DataConfig) else _sni_problems(cfg)
    p += _init_problems(cfg)
    if cfg.autoresume and (cfg.run_name is None or cfg.save_folder is None):
        p.append("When setting 'autoresume: true' you must also set 'run_name' and 'save_folder'.")
    if cfg.save_num_checkpoints_to_keep == 0 or cfg.save_num_checkpoints_to_keep < -1:
        p.append(f"'save_num_checkpoints_to_keep' must be -1 (keep all) or positive, got {cfg.save_num_checkpoints_to_keep}.")
    return p


def config_from_dict(data: dict) -> TrainConfig:
    """Validate a resolved config mapping; raise :class:`ConfigError` listing every problem."""
    cfg = from_dict(TrainConfig, data)
    problems = value_problems(cfg)
    if problems:
        raise ConfigError(problems)
    return cfg


def load_config(yaml_path: str | None, overrides: Sequence[str] = (), *, base: dict | None = None) -> TrainConfig:
    """Read ``yaml_path``, apply ``key=value`` / ``~key`` overrides, resolve interpolations, validate.

    Args:
        yaml_path: a recipe YAML (may be None when ``base`` holds everything).
        overrides: dotted ``key=value`` strings, applied after the file.
        base: a mapping merged underneath the file (used by tests).
    """
    return config_from_dict(_resolve(yaml_path, overrides, base))


_SECRET_WORDS = {'key', 'token', 'secret', 'password', 'passwd', 'credential', 'credentials', 'apikey'}


def _is_secret(key: Any) -> bool:
    # Whole words only: 'api_key' and 'hf_token' are secrets, 'tokenizer' is not.
    return isinstance(key, str) and any(w in _SECRET_WORDS for w in re.split(r'[_\-.]', key.lower()))


def redact(obj: Any) -> Any:
    """A copy of a config mapping with values of secret-looking keys replaced by '****'."""
    if isinstance(obj, dict):
        return {
            k: ('****' if _is_secret(k) and v is not None else redact(v))
            for k, v in obj.items()
        }
    if isinstance(obj, list):
        return [redact(v) for v in obj]
    return obj
