"""Carry the model config and tokenizer files inside every Composer checkpoint.

Composer saves each callback's ``state_dict()`` into the checkpoint (``State.state_dict``:
``state['callbacks'][type(callback).__qualname__]``), so a callback is the place for them. The entry's
layout, and reading it back, are in :mod:`t5composer.models.checkpoint_metadata`.
"""

from __future__ import annotations

import os
from typing import Any

import transformers
from composer.core import Callback

from t5composer.models.checkpoint_metadata import (  # noqa: F401  (the other names re-exported: their old home)
    METADATA_KEY,
    TOKENIZER_FILENAMES,
    MetadataMissingError,
    check_metadata_entry,
    metadata_from_checkpoint,
    metadata_state,
    read_tokenizer_files,
)

__all__ = ['METADATA_KEY', 'MetadataMissingError', 'ModelMetadata', 'TOKENIZER_FILENAMES', 'metadata_from_checkpoint', 'read_tokenizer_files']


class ModelMetadata(Callback):
    """Store the model config and the tokenizer files in every checkpoint (see module docstring).

    It reacts to no event; only its ``state_dict`` matters.

    On resume, :meth:`load_state_dict` keeps this run's config (the run's YAML is authoritative)
    and adopts the checkpoint's tokenizer files only when this instance has none.

    Args:
        config: the model's ``transformers.T5Config``.
        tokenizer_dir: the tokenizer (a directory of tokenizer files, or a ``spiece.model`` /
            hub name, see :func:`read_tokenizer_files`); read once, here. None stores no
            tokenizer.
    """

    def __init__(self, *, config: transformers.T5Config, tokenizer_dir: str | os.PathLike | None) -> None:
        self.config = config
        self.tokenizer_files: dict[str, bytes] = {} if tokenizer_dir is None else read_tokenizer_files(tokenizer_dir)

    def state_dict(self) -> dict[str, Any]:
        return metadata_state(config=self.config, tokenizer_files=self.tokenizer_files)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        check_metadata_entry(state)
        if not self.tokenizer_files:
            self.tokenizer_files = dict(state.get('tokenizer_files') or {})
