"""Hugging Face interchange: write our T5 (or a Composer checkpoint of it) as a HF model directory.

Import needs no code of its own: our ``state_dict`` keys are transformers' keys, so
``build_composer_t5(init='pretrained', pretrained=<hub name, HF directory or weights file>)``
loads HF weights directly. Export writes what ``transformers.T5ForConditionalGeneration
.from_pretrained`` expects:

    config.json              the T5Config, architectures ['T5ForConditionalGeneration']
    generation_config.json   decoder start / EOS / pad ids
    model.safetensors        weights without the tied copies (encoder/decoder.embed_tokens and a
                             tied lm_head are views of ``shared``), as save_pretrained writes them
    spiece.model, tokenizer.json, tokenizer_config.json, special_tokens_map.json  (if a tokenizer is given)

A Composer checkpoint has the weights under ``state['state']['model']`` with ComposerT5's
``model.`` prefix; the config and tokenizer come from the
:class:`~t5composer.callbacks.model_metadata.ModelMetadata` callback's entry
(:mod:`t5composer.models.checkpoint_metadata`), or from the
``config=`` / ``tokenizer=`` overrides for checkpoints written without it.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import transformers
from torch import nn

__all__ = ['export_composer_checkpoint', 'export_hf', 'hf_state_dict', 'strip_wrapper_prefixes', 'write_hf_dir']

WEIGHTS_NAME = 'model.safetensors'

# Views of `shared` that save_pretrained leaves out; from_pretrained re-ties them.
_TIED_EMBEDDING_KEYS = ('encoder.embed_tokens.weight', 'decoder.embed_tokens.weight')

# Prefixes the model's keys may carry inside a Composer checkpoint: ComposerT5's attribute, and
# the wrappers torch.compile / DDP add when a state_dict is taken from the wrapped module.
_CHECKPOINT_PREFIXES = ('model.', '_orig_mod.', 'module.')


def hf_state_dict(state_dict: Mapping[str, torch.Tensor], *, config: transformers.T5Config) -> dict[str, torch.Tensor]:
    """The tensors of ``model.safetensors``: CPU, contiguous, tied copies removed, keys checked.

    Args:
        state_dict: our (= transformers') T5 state_dict, all keys or without the tied copies.
        config: the model config the weights belong to.

    Raises:
        ValueError: keys or shapes that do not match a T5 of ``config`` (listing them).
    """
    from t5composer.models.t5 import T5ForConditionalGeneration, ties_word_embeddings

    dropped = set(_TIED_EMBEDDING_KEYS) | ({'lm_head.weight'} if ties_word_embeddings(config) else set())
    with torch.device('meta'):  # shapes only: nothing is allocated or initialised for real
        expected = {k: v.shape for k, v in T5ForConditionalGeneration(config).state_dict().items() if k not in dropped}
    tensors = {k: v for k, v in state_dict.items() if k not in dropped}
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    wrong = sorted(k for k in set(expected) & set(tensors) if tuple(tensors[k].shape) != tuple(expected[k]))
    if missing or unexpected or wrong:
        problems = []
        if missing:
            problems.append(f'missing {len(missing)} keys, e.g. {missing[:3]}')
        if unexpected:
            problems.append(f'{len(unexpected)} unexpected keys, e.g. {unexpected[:3]}')
        if wrong:
            k = wrong[0]
            problems.append(f'{len(wrong)} shapes differ, e.g. {k}: {tuple(tensors[k].shape)} vs config {tuple(expected[k])}')
        raise ValueError('The weights do not fit the model config: ' + '; '.join(problems) + '.')
    # safetensors refuses shared or non-contiguous storage; each tensor gets its own CPU copy.
    return {k: tensors[k].detach().to('cpu').contiguous() for k in expected}


def _export_config(config: transformers.T5Config, dtype: torch.dtype) -> transformers.T5Config:
    cfg = transformers.T5Config.from_dict(config.to_dict())
    cfg.architectures = ['T5ForConditionalGeneration']
    cfg.dtype = dtype  # what save_pretrained records (from_pretrained(dtype='auto') reads it)
    if cfg.decoder_start_token_id is None:
        # transformers' T5 cannot generate without it; T5 starts decoding with the pad id.
        cfg.decoder_start_token_id = cfg.pad_token_id
    return cfg


# What a Hugging Face model directory holds; only such a directory is replaced by an export with
# overwrite (never a folder with other files in it, e.g. a mistyped out_dir of '.').
_HF_DIR_FILES = frozenset({
    'config.json', 'generation_config.json', WEIGHTS_NAME, 'model.safetensors.index.json', 'pytorch_model.bin',
    'pytorch_model.bin.index.json', 'spiece.model', 'tokenizer.json', 'tokenizer_config.json', 'special_tokens_map.json',
    'added_tokens.json', 'README.md',
})


def _replace_problem(out: Path, overwrite: bool) -> str | None:
    """Why ``out`` may not be written (None: absent or empty, or an earlier export that overwrite may replace)."""
    if not out.exists():
        return None
    if not out.is_dir():
        return f'{out} exists and is not a directory; choose another output directory.'
    entries = sorted(p.name for p in out.iterdir())
    if not entries:
        return None
    if not overwrite:
        shown = ', '.join(entries[:6]) + (f', ... ({len(entries)} entries)' if len(entries) > 6 else '')
        return (f'{out} is not empty ({shown}); pass --overwrite (overwrite=True) to replace it with this export, '
                'or choose another output directory.')
    foreign = [n for n in entries if n not in _HF_DIR_FILES and not (n.startswith('model-') and n.endswith('.safetensors'))]
    if foreign:
        return (f'{out} holds files that are not part of a Hugging Face model ({", ".join(foreign[:6])}), so --overwrite '
                'will not replace it; choose another output directory.')
    return None


def write_hf_dir(
    *,
    state_dict: Mapping[str, torch.Tensor],
    config: transformers.T5Config,
    out_dir: str | os.PathLike,
    tokenizer: Any = None,
    overwrite: bool = False,
) -> Path:
    """Write a Hugging Face T5 directory from a state_dict and its config.

    The directory appears complete or not at all (it is written beside ``out_dir`` and renamed
    into place), and never among other files.

    Args:
        state_dict: T5 weights with transformers' keys (tied copies may be present or not).
        config: the model config.
        out_dir: directory to write (created; it must be absent or empty unless ``overwrite``).
        tokenizer: None, ``{filename: bytes}`` (e.g. from a checkpoint's ModelMetadata), a
            tokenizer object, a tokenizer directory, or a ``spiece.model`` path.
        overwrite: replace an existing Hugging Face model directory at ``out_dir`` (one holding
            only model, config and tokenizer files).

    Returns:
        ``out_dir`` as a Path.

    Raises:
        FileExistsError: ``out_dir`` is not empty and ``overwrite`` is False, or it holds other files.
    """
    from safetensors.torch import save_file

    from t5composer.atomic_files import replace_directory
    from t5composer.models.checkpoint_metadata import read_tokenizer_files

    out = Path(os.path.expanduser(str(out_dir)))
    problem = _replace_problem(out, overwrite)
    if problem is not None:
        raise FileExistsError(problem)
    tensors = hf_state_dict(state_dict, config=config)
    files = None
    if tokenizer is not None:
        files = tokenizer if isinstance(tokenizer, Mapping) else read_tokenizer_files(tokenizer)
        bad = [name for name in files if Path(name).name != name]
        if bad:  # only plain file names: never write outside out_dir
            raise ValueError(f'Refusing tokenizer file name {bad[0]!r}.')

    def fill(tmp: Path) -> None:
        cfg = _export_config(config, tensors['shared.weight'].dtype)
        cfg.save_pretrained(tmp)
        transformers.GenerationConfig.from_model_config(cfg).save_pretrained(tmp)
        save_file(tensors, str(tmp / WEIGHTS_NAME), metadata={'format': 'pt'})  # from_pretrained requires format=pt
        for name, data in (files or {}).items():
            (tmp / name).write_bytes(bytes(data))

    return replace_directory(out, fill)


def export_hf(*, model: nn.Module, out_dir: str | os.PathLike, tokenizer: Any = None, overwrite: bool = False) -> Path:
    """Export our T5 as a Hugging Face directory that ``from_pretrained`` loads with identical logits.

    Args:
        model: a :class:`~t5composer.models.t5.T5ForConditionalGeneration`, or a
            :class:`~t5composer.models.composer_t5.ComposerT5` wrapping one.
        out_dir: directory to write (created; absent or empty unless ``overwrite``).
        tokenizer: None, a tokenizer object, a tokenizer directory / ``spiece.model``, or
            ``{filename: bytes}``.
        overwrite: replace an earlier export at ``out_dir`` (see :func:`write_hf_dir`).

    Returns:
        ``out_dir`` as a Path.
    """
    inner = getattr(model, 'model', model)  # ComposerT5 -> T5ForConditionalGeneration
    config = getattr(inner, 'config', None)
    if not isinstance(config, transformers.T5Config):
        raise TypeError(f'export_hf needs a T5ForConditionalGeneration or ComposerT5, got {type(model).__name__}.')
    return write_hf_dir(state_dict=inner.state_dict(), config=config, out_dir=out_dir, tokenizer=tokenizer, overwrite=overwrite)


def _model_weights(checkpoint: Any, path: Path) -> dict[str, torch.Tensor]:
    """``checkpoint['state']['model']`` with the wrapper prefixes removed."""
    state = checkpoint.get('state') if isinstance(checkpoint, Mapping) else None
    weights = state.get('model') if isinstance(state, Mapping) else None
    if not isinstance(weights, Mapping) or not weights:
        found = sorted(checkpoint)[:10] if isinstance(checkpoint, Mapping) else type(checkpoint).__name__
        raise ValueError(
            f"{path} is not a Composer checkpoint: expected a dict with state['model'] (model weights), "
            f'found {found}. A plain HF weights file can be loaded with '
            "build_composer_t5(init='pretrained', pretrained=...) instead."
        )
    return strip_wrapper_prefixes(weights)


def strip_wrapper_prefixes(weights: Mapping[str, Any]) -> dict[str, Any]:
    """A Composer model state_dict with transformers' T5 keys: ``model.shared.weight`` -> ``shared.weight``.

    Args:
        weights: ``state['model']`` of a checkpoint, or ``State.get_model_state_dict()``.
    """
    out = {}
    for key, value in weights.items():
        stripped = True
        while stripped:
            stripped = False
            for prefix in _CHECKPOINT_PREFIXES:
                if key.startswith(prefix):
                    key, stripped = key[len(prefix):], True
        out[key] = value
    return out


def export_composer_checkpoint(
    checkpoint_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    config: transformers.T5Config | str | None = None,
    tokenizer: Any = None,
    overwrite: bool = False,
) -> Path:
    """Export a Composer checkpoint of ComposerT5 to a Hugging Face directory.

    The checkpoint is a Python pickle, loaded with ``torch.load(weights_only=False)``, which can
    run arbitrary code: only export checkpoints you trust.

    Args:
        checkpoint_path: a Composer ``.pt`` checkpoint (``ep0-ba100-rank0.pt``,
            ``latest-rank0.pt``), or a save folder holding ``latest-rank0.pt``.
        out_dir: directory to write (created; absent or empty unless ``overwrite``).
        config: overrides the checkpoint's model config: a ``T5Config``, or a model name / HF
            config directory for ``load_model_config``. Needed for checkpoints written without
            the ModelMetadata callback.
        tokenizer: overrides the checkpoint's tokenizer files: a tokenizer directory,
            ``spiece.model`` or tokenizer object. Without it and without metadata, no
            tokenizer files are written.
        overwrite: replace an earlier Hugging Face export at ``out_dir`` (see :func:`write_hf_dir`).

    Returns:
        ``out_dir`` as a Path.

    Raises:
        FileNotFoundError: the checkpoint does not exist.
        FileExistsError: ``out_dir`` is not empty (without ``overwrite``) or holds other files.
        ValueError: not a Composer checkpoint, a corrupt one, or no model config (no metadata and no ``config``).
    """
    from t5composer import __version__
    from t5composer.models.checkpoint_metadata import MetadataMissingError, metadata_from_checkpoint
    from t5composer.checkpoints import unusable_checkpoint_message

    path = Path(os.path.expanduser(str(checkpoint_path)))
    if path.is_dir() and (path / 'latest-rank0.pt').exists():
        path = path / 'latest-rank0.pt'
    if not path.is_file():
        raise FileNotFoundError(f'Composer checkpoint {path} does not exist.')
    out_problem = _replace_problem(Path(os.path.expanduser(str(out_dir))), overwrite)  # before reading gigabytes
    if out_problem is not None:
        raise FileExistsError(out_problem)
    # A flipped byte loads without a word; never export corrupted weights (the zip CRCs say).
    problem = unusable_checkpoint_message(str(path), role=f'Checkpoint {path}', use=f'python recipes/export_hf.py {{path}} {out_dir}')
    if problem is not None:
        raise ValueError(problem)
    try:
        checkpoint = torch.load(path, map_location='cpu', weights_only=False)
    except Exception as e:  # noqa: BLE001 - pickle/zip errors come in many types
        raise ValueError(f'{path} is not a Composer checkpoint (torch.load failed: {type(e).__name__}: {e}).') from e
    weights = _model_weights(checkpoint, path)

    try:
        meta_config, tokenizer_files = metadata_from_checkpoint(checkpoint)
    except MetadataMissingError as e:
        if config is None:
            raise ValueError(
                f'{path} carries no model metadata: {e} It was written without the ModelMetadata callback '
                '(t5composer.callbacks.model_metadata.ModelMetadata, which t5composer training runs add from '
                f'version {__version__} on). Supply the model config and tokenizer yourself: '
                'recipes/export_hf.py --config NAME_OR_DIR --tokenizer DIR, or '
                'export_composer_checkpoint(..., config=..., tokenizer=...).'
            ) from None
        meta_config, tokenizer_files = None, {}

    if config is None:
        config = meta_config
    elif not isinstance(config, transformers.T5Config):
        from t5composer.models.presets import load_model_config

        config = load_model_config(str(config))
    if tokenizer is None and not tokenizer_files:
        warnings.warn(f'No tokenizer in {path} and none given (tokenizer=/--tokenizer): {out_dir} gets no tokenizer files.')
    return write_hf_dir(
        state_dict=weights,
        config=config,
        out_dir=out_dir,
        tokenizer=tokenizer if tokenizer is not None else (tokenizer_files or None),
        overwrite=overwrite,
    )
