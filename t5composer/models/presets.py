"""Built-in T5 v1.1 model configs, so model names resolve without the Hugging Face hub.

The numbers are those of the public ``google/t5-v1_1-*`` ``config.json`` files. ``dropout_rate``
is kept at the hub's 0.1 so a preset equals the published config; the pre-training recipes
override it to 0.0 (as nanoT5 does).
"""

from __future__ import annotations

import inspect
import os
from typing import Any

import transformers

from t5composer.errors import closest

__all__ = ['T5_V1_1_PRESETS', 'load_model_config', 'preset_names']

# Shared by every v1.1 size.
_V1_1_COMMON: dict[str, Any] = {
    'vocab_size': 32128,
    'feed_forward_proj': 'gated-gelu',
    'tie_word_embeddings': False,
    'relative_attention_num_buckets': 32,
    'relative_attention_max_distance': 128,
    'layer_norm_epsilon': 1e-6,
    'dropout_rate': 0.1,
    'pad_token_id': 0,
    'eos_token_id': 1,
    'decoder_start_token_id': 0,
    'initializer_factor': 1.0,
    'is_encoder_decoder': True,
    'use_cache': True,
}


def _size(d_model: int, d_ff: int, layers: int, heads: int, d_kv: int = 64) -> dict[str, Any]:
    return {
        **_V1_1_COMMON,
        'd_model': d_model,
        'd_ff': d_ff,
        'num_layers': layers,
        'num_decoder_layers': layers,
        'num_heads': heads,
        'd_kv': d_kv,
    }


T5_V1_1_PRESETS: dict[str, dict[str, Any]] = {
    'google/t5-v1_1-small': _size(512, 1024, 8, 6),
    'google/t5-v1_1-base': _size(768, 2048, 12, 12),
    'google/t5-v1_1-large': _size(1024, 2816, 24, 16),
    'google/t5-v1_1-xl': _size(2048, 5120, 24, 32),
    'google/t5-v1_1-xxl': _size(4096, 10240, 24, 64),
}

# Derived by T5Config.__init__ from feed_forward_proj; passing stale copies back in would win
# over the recomputed values (PretrainedConfig sets leftover kwargs after T5Config's own code).
_DERIVED_KEYS = ('dense_act_fn', 'is_gated_act')


def preset_names() -> list[str]:
    """Names that :func:`load_model_config` resolves offline."""
    return list(T5_V1_1_PRESETS)


def _lookup_preset(name: str) -> dict[str, Any] | None:
    if name in T5_V1_1_PRESETS:
        return dict(T5_V1_1_PRESETS[name])
    # Accept the bare form, e.g. "t5-v1_1-base".
    full = f'google/{name}'
    if full in T5_V1_1_PRESETS:
        return dict(T5_V1_1_PRESETS[full])
    return None


def _valid_override_keys() -> set[str]:
    keys = set(transformers.T5Config().to_dict())
    keys.update(p for p in inspect.signature(transformers.T5Config.__init__).parameters if p not in ('self', 'kwargs'))
    keys.difference_update(_DERIVED_KEYS)
    return keys


def _check_overrides(overrides: dict[str, Any]) -> None:
    valid = _valid_override_keys()
    for key in overrides:
        if key in valid:
            continue
        raise ValueError(f"Unknown T5Config override '{key}'.{closest(key, valid)}")


def _base_config_dict(name_or_path: str) -> dict[str, Any]:
    preset = _lookup_preset(name_or_path)
    if preset is not None:
        return preset
    local = name_or_path
    if os.path.isfile(local) and os.path.basename(local).endswith('.json'):
        return transformers.T5Config.from_json_file(local).to_dict()
    if os.path.isdir(local):
        if not os.path.isfile(os.path.join(local, 'config.json')):
            raise FileNotFoundError(f"Directory '{local}' has no config.json; expected a T5 model directory.")
        return transformers.T5Config.from_pretrained(local).to_dict()
    try:
        return transformers.T5Config.from_pretrained(name_or_path).to_dict()
    except Exception as e:
        raise OSError(
            f"Could not load model config '{name_or_path}': it is not a built-in preset or a local "
            f"path, and the Hugging Face hub lookup failed (the hub may be unreachable from this "
            f"machine; HF_HUB_OFFLINE=1 makes this fail fast instead of retrying). Offline presets: "
            f"{', '.join(preset_names())}.",
        ) from e


def load_model_config(name_or_path: str, **overrides: Any) -> transformers.T5Config:
    """Resolve a T5 config by preset name, local path or hub name, then apply overrides.

    Args:
        name_or_path: a preset name (``google/t5-v1_1-{small,base,large,xl,xxl}``, the
            ``google/`` prefix optional), a local directory holding ``config.json``, a path to a
            config ``.json`` file, or a hub model name (needs network).
        **overrides: T5Config attributes to set, e.g. ``d_model=64, num_layers=2,
            dropout_rate=0.0``. If ``num_layers`` is overridden without
            ``num_decoder_layers`` and the base config is symmetric, the decoder follows, so
            ``num_layers=2`` gives a 2+2 model rather than 2+12.

    Returns:
        A fresh ``transformers.T5Config``.

    Raises:
        ValueError: an override key is not a T5Config attribute (the message names the closest
            valid key).
        OSError: the name is neither a preset nor local and the hub lookup failed.
    """
    _check_overrides(overrides)
    base = _base_config_dict(name_or_path)
    if 'num_layers' in overrides and 'num_decoder_layers' not in overrides:
        if base.get('num_decoder_layers') in (None, base.get('num_layers')):
            overrides = {**overrides, 'num_decoder_layers': overrides['num_layers']}
    merged = {k: v for k, v in {**base, **overrides}.items() if k not in _DERIVED_KEYS}
    return transformers.T5Config.from_dict(merged)
