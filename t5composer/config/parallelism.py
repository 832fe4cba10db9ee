"""Checks of the ``parallelism_config:`` section (Composer's FSDP options) before anything runs.

Composer 0.32's ``FSDPConfig`` sets whatever keyword it is given, so a misspelt key would be
silently ignored, and a wrong value fails only after the model is built on every GPU. The
keys, their types and the enumerations below are those of Composer 0.32.1
(``composer.utils.parallelism.FSDPConfig``, ``composer.distributed.mosaic_parallelism``);
they are copied rather than imported because importing Composer takes seconds and config
checks must not (tests/test_fsdp_recipes.py compares them with the installed Composer).
"""

from __future__ import annotations

from typing import Any, Optional

from t5composer.config.validation import check_keys, closest

__all__ = ['FSDP_KEYS', 'SHARDING_STRATEGIES', 'MIXED_PRECISIONS', 'STATE_DICT_TYPES', 'BACKWARD_PREFETCHES', 'parallelism_problems',
           'trainer_parallelism_config']

# FSDPConfig's fields and their types ('any': Python objects, or None).
FSDP_KEYS: dict[str, str] = {
    'activation_checkpointing': 'bool', 'activation_checkpointing_reentrant': 'bool', 'activation_cpu_offload': 'bool',
    'auto_wrap': 'bool', 'te_checkpoint_wrapper': 'bool', 'te_shard_fp8_weight': 'bool', 'backward_prefetch': 'str',
    'backward_prefetch_limit': 'int', 'cpu_offload': 'bool', 'data_parallel_shard_degree': 'int',
    'data_parallel_replicate_degree': 'optional_int', 'forward_prefetch': 'bool', 'forward_prefetch_limit': 'int',
    'ignored_modules': 'any', 'keep_low_precision_grads': 'bool', 'limit_all_gathers': 'bool',
    'load_monolith_rank0_only': 'bool', 'load_planner': 'any', 'mixed_precision': 'str', 'process_group': 'any',
    'save_planner': 'any', 'sharded_ckpt_prefix_dir': 'str', 'sharding_strategy': 'str', 'state_dict_type': 'str',
    'sync_module_states': 'bool', 'use_orig_params': 'bool', 'verbose': 'bool',
}
# Composer upper-cases these before looking them up.
SHARDING_STRATEGIES = ('FULL_SHARD', 'SHARD_GRAD_OP', 'NO_SHARD', 'HYBRID_SHARD', '_HYBRID_SHARD_ZERO2')
MIXED_PRECISIONS = ('DEFAULT', 'PURE', 'FULL')
BACKWARD_PREFETCHES = ('BACKWARD_POST', 'BACKWARD_PRE', 'NONE')
STATE_DICT_TYPES = ('full', 'sharded')  # compared as given
_DTYPE_KEYS = ('param_dtype', 'reduce_dtype', 'buffer_dtype')


def _type_problem(key: str, value: Any, kind: str) -> list[str]:
    where = f"'parallelism_config.fsdp.{key}'"
    if kind == 'bool' and not isinstance(value, bool):
        return [f'{where} must be true or false, got {value!r}.']
    if kind in ('int', 'optional_int') and (isinstance(value, bool) or not isinstance(value, int)) and not (kind == 'optional_int' and value is None):
        return [f'{where} must be an integer, got {type(value).__name__} {value!r}.']
    if kind == 'str' and key != 'mixed_precision' and not isinstance(value, str):
        return [f'{where} must be a string, got {type(value).__name__} {value!r}.']
    return []


def _choice_problem(key: str, value: Any, choices: tuple[str, ...], *, upper: bool) -> list[str]:
    if not isinstance(value, str):
        return []  # reported by the type check
    if (value.upper() if upper else value) in choices:
        return []
    shown = [c for c in choices if not c.startswith('_')]
    return [f"'parallelism_config.fsdp.{key}' must be one of {', '.join(shown)}, got {value!r}."
            f"{closest(value.upper() if upper else value, choices)}"]


def _fsdp_value_problems(fsdp: dict[str, Any]) -> list[str]:
    p: list[str] = []
    for key, value in fsdp.items():
        if key in FSDP_KEYS:
            p += _type_problem(key, value, FSDP_KEYS[key])
    p += _choice_problem('sharding_strategy', fsdp.get('sharding_strategy', 'FULL_SHARD'), SHARDING_STRATEGIES, upper=True)
    p += _choice_problem('backward_prefetch', fsdp.get('backward_prefetch', 'BACKWARD_POST'), BACKWARD_PREFETCHES, upper=True)
    mixed = fsdp.get('mixed_precision', 'DEFAULT')
    if isinstance(mixed, dict):
        p += check_keys(mixed, _DTYPE_KEYS, 'parallelism_config.fsdp.mixed_precision.')
    elif isinstance(mixed, str):
        p += _choice_problem('mixed_precision', mixed, MIXED_PRECISIONS, upper=True)
    else:
        p.append(f"'parallelism_config.fsdp.mixed_precision' must be DEFAULT, PURE, FULL or a mapping of {', '.join(_DTYPE_KEYS)}, got {mixed!r}.")
    state_dict_type = fsdp.get('state_dict_type', 'full')
    p += _choice_problem('state_dict_type', state_dict_type, STATE_DICT_TYPES, upper=False)
    if state_dict_type == 'sharded':
        # Composer then writes ep*-ba*/ directories of .distcp shards; latest-rank0.pt points at a
        # directory, which the checkpoint recovery before autoresume would report as unusable.
        p.append("'parallelism_config.fsdp.state_dict_type: sharded' writes checkpoint directories of per-rank shards, which "
                 "t5composer's autoresume recovery, load_path checks, recipes/evaluate.py and recipes/export_hf.py cannot read; "
                 'set state_dict_type: full (rank 0 gathers and writes one file per checkpoint).')
    if fsdp.get('use_orig_params', True) is False:
        p.append("'parallelism_config.fsdp.use_orig_params: false' cannot work here: the optimizer has two parameter groups (no weight "
                 "decay on norm weights), which Composer's FSDP supports only with use_orig_params: true; remove the key.")
    for key in ('ignored_modules', 'load_planner', 'save_planner'):
        if fsdp.get(key) is not None:
            p.append(f"'parallelism_config.fsdp.{key}' takes Python objects and cannot be set from YAML; remove it.")
    return p


def parallelism_problems(cfg: Any) -> list[str]:
    """Problems with ``cfg.parallelism_config`` (a :class:`~t5composer.config.schema.TrainConfig`).

    Args:
        cfg: the validated-by-type config.

    Returns:
        One message per problem: unknown FSDP keys (with the closest valid key), wrong types,
        values outside Composer's enumerations, and combinations that cannot work.
    """
    par = cfg.parallelism_config
    fsdp = par.fsdp if par is not None else None
    if fsdp is None:
        return []
    p = check_keys(fsdp, FSDP_KEYS, 'parallelism_config.fsdp.')
    p += _fsdp_value_problems(fsdp)
    if cfg.model.gradient_checkpointing and fsdp.get('activation_checkpointing'):
        # Both would checkpoint every T5Block: the stack's torch checkpoint around FSDP's checkpoint
        # wrapper recomputes each block twice in backward.
        p.append("When setting 'parallelism_config.fsdp.activation_checkpointing: true' you must set 'model.gradient_checkpointing: false': "
                 'both checkpoint every T5 block, and together they recompute each block twice. Under FSDP use the FSDP option '
                 '(its checkpoint wrapper sits inside each FSDP unit).')
    if cfg.optimizer.name == 'adafactor':
        # FSDP hands the optimizer flat 1-D shards: Adafactor would keep full second moments
        # instead of factored ones and scale each shard by its own RMS, a different optimizer.
        p.append("optimizer 'adafactor' cannot be combined with 'parallelism_config.fsdp': FSDP gives the optimizer flat 1-D shards "
                 "of each weight, so Adafactor could neither factor its second moments nor scale by a whole weight's RMS. Use "
                 "optimizer.name=adamwscale (pt_large's and pt_xl's; its RMS is taken over whole tensors under FSDP), or train "
                 'without FSDP (override ~parallelism_config).')
    data = cfg.data
    if getattr(data, 'name', None) == 'sni' and getattr(data, 'eval', False):
        p.append("'parallelism_config.fsdp' cannot be used with 'data.eval: true' (SNI generation eval): generation calls the model "
                 "outside FSDP's forward, where the weights are still sharded. Set data.eval: false, or fine-tune without FSDP "
                 '(override ~parallelism_config).')
    return p


def trainer_parallelism_config(cfg: Any) -> Optional[dict[str, Any]]:
    """The Trainer's ``parallelism_config`` argument for a TrainConfig: ``{'fsdp': {...}}``, or None without FSDP."""
    par = cfg.parallelism_config
    if par is None or par.fsdp is None:
        return None
    return {'fsdp': dict(par.fsdp)}
