"""The model config and tokenizer files that a Composer checkpoint carries, and reading them back.

A Composer checkpoint holds the weights but not the ``T5Config`` that gives them a shape, nor the
tokenizer that gives the ids a meaning; exporting it to a Hugging Face directory needs both.
Composer saves each callback's ``state_dict()`` into the checkpoint (``State.state_dict``:
``state['callbacks'][type(callback).__qualname__]``), so a callback is the place for them:

    checkpoint['state']['callbacks']['ModelMetadata'] == {
        'format_version': 1,
        't5_config': T5Config.to_dict(),
        'tokenizer_files': {'spiece.model': b'...', 'tokenizer.json': b'...', ...},
    }

:class:`~t5composer.callbacks.model_metadata.ModelMetadata` writes the entry (:func:`metadata_state`);
:func:`metadata_from_checkpoint` reads it back, and ``t5composer.models.hf_interchange`` exports
with it. Here, below the callbacks, so that models/ can read checkpoints without importing them.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import transformers

__all__ = [
    'FORMAT_VERSION', 'METADATA_KEY', 'MetadataMissingError', 'TOKENIZER_FILENAMES', 'check_metadata_entry', 'metadata_from_checkpoint',
    'metadata_state', 'read_tokenizer_files',
]

# The key Composer stores the ModelMetadata callback's state under (its class __qualname__).
METADATA_KEY = 'ModelMetadata'
FORMAT_VERSION = 1

# Files a Hugging Face T5 tokenizer directory may hold. Only these are copied, so pointing at a
# full model directory does not pull its weights into every checkpoint.
TOKENIZER_FILENAMES = (
    'spiece.model',
    'tokenizer.json',
    'tokenizer_config.json',
    'special_tokens_map.json',
    'added_tokens.json',
)


class MetadataMissingError(ValueError):
    """A checkpoint has no :class:`ModelMetadata` entry (written without the callback)."""


def read_tokenizer_files(tokenizer: str | os.PathLike | Any) -> dict[str, bytes]:
    """The tokenizer's files as ``{filename: bytes}``.

    Args:
        tokenizer: a directory holding tokenizer files (read as they are), a tokenizer object
            with ``save_pretrained``, or anything ``t5composer.tokenization.load_tokenizer``
            accepts (a ``spiece.model`` file, a hub name), which is loaded and saved once so that
            the files form a complete Hugging Face tokenizer directory.

    Raises:
        FileNotFoundError: a directory without any of :data:`TOKENIZER_FILENAMES`.
    """
    if isinstance(tokenizer, (str, os.PathLike)):
        path = Path(os.path.expanduser(str(tokenizer)))
        if path.is_dir():
            files = {name: (path / name).read_bytes() for name in TOKENIZER_FILENAMES if (path / name).is_file()}
            if not files:
                raise FileNotFoundError(
                    f'{path} holds no tokenizer files (expected one of {", ".join(TOKENIZER_FILENAMES)}).'
                )
            return files
        from t5composer.tokenization import load_tokenizer

        tokenizer = load_tokenizer(str(path) if path.exists() else str(tokenizer))
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        return {p.name: p.read_bytes() for p in sorted(Path(tmp).iterdir()) if p.is_file() and p.name in TOKENIZER_FILENAMES}


def metadata_state(*, config: transformers.T5Config, tokenizer_files: Mapping[str, bytes]) -> dict[str, Any]:
    """The checkpoint entry for ``config`` and ``tokenizer_files`` (see the module docstring).

    Args:
        config: the model's ``transformers.T5Config``.
        tokenizer_files: ``{filename: bytes}`` (:func:`read_tokenizer_files`); may be empty.
    """
    return {'format_version': FORMAT_VERSION, 't5_config': config.to_dict(), 'tokenizer_files': dict(tokenizer_files)}


def check_metadata_entry(entry: Any) -> None:
    """Raise ``ValueError`` unless ``entry`` is a metadata entry this t5composer reads."""
    if not isinstance(entry, Mapping) or 't5_config' not in entry:
        raise ValueError(f'Not a ModelMetadata state: expected a mapping with a t5_config, got {type(entry).__name__}.')
    version = entry.get('format_version', FORMAT_VERSION)
    if version > FORMAT_VERSION:
        raise ValueError(f'ModelMetadata format {version} is newer than this t5composer understands ({FORMAT_VERSION}).')


def metadata_from_checkpoint(state_dict: Mapping[str, Any]) -> tuple[transformers.T5Config, dict[str, bytes]]:
    """The model config and tokenizer files that :class:`ModelMetadata` stored in a checkpoint.

    Args:
        state_dict: a loaded Composer checkpoint (``{'state': {...}, 'rng': ...}``) or its
            ``'state'`` part.

    Returns:
        ``(config, tokenizer_files)``; ``tokenizer_files`` maps file names to bytes and may be empty.

    Raises:
        MetadataMissingError: the checkpoint has no ModelMetadata entry.
    """
    state = state_dict.get('state', state_dict)
    callbacks = state.get('callbacks') if isinstance(state, Mapping) else None
    entry = (callbacks or {}).get(METADATA_KEY)
    if entry is None:
        # A subclass is stored under its own name; recognise it by its content.
        entry = next((v for v in (callbacks or {}).values() if isinstance(v, Mapping) and 't5_config' in v), None)
    if entry is None:
        raise MetadataMissingError(
            f'The checkpoint has no {METADATA_KEY} entry (callbacks stored: {sorted(callbacks or {}) or "none"}).'
        )
    check_metadata_entry(entry)
    config = transformers.T5Config.from_dict(dict(entry['t5_config']))
    files = {name: bytes(data) for name, data in (entry.get('tokenizer_files') or {}).items()}
    return config, files
