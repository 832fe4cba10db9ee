"""Leave a Hugging Face model directory behind when training ends (and every N batches if asked).

    callbacks:
      hf_export: {}                                  # -> {save_folder}/hf/final at the end of fit
      hf_export: {interval: 1000ba}                  # also {save_folder}/hf/ba1000, ba2000, ...
      hf_export: {folder: exports/{run_name}}        # anywhere else

Layout: the end-of-fit export always goes to ``{folder}/final``, the periodic ones to
``{folder}/ba{batch}``, so the final model never mixes with or overwrites a periodic one and
its path is the same for every run. The model config and tokenizer files come from the
:class:`~t5composer.callbacks.model_metadata.ModelMetadata` callback of the same Trainer; without
it the model's own config is used and no tokenizer files are written (with a warning).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from composer.core import Callback, State
from composer.loggers import Logger
from composer.utils import dist, format_name_with_dist

from t5composer.durations import DurationError, parse_duration

__all__ = ['HFExport']

log = logging.getLogger(__name__)


def _interval_batches(interval: str | None) -> int | None:
    if interval is None:
        return None
    try:
        return int(parse_duration(interval, key='callbacks.hf_export.interval', units=('ba',)).value)
    except DurationError as e:
        raise ValueError(str(e)) from None


class HFExport(Callback):
    """Export the model as a Hugging Face directory at the end of fit and optionally every ``interval``.

    Only global rank 0 writes; every rank takes part in gathering the weights (needed under
    FSDP with ``parallelism_config.fsdp.state_dict_type: full``).

    Args:
        folder: where exports go. ``{save_folder}`` is the Trainer's save folder (of its
            checkpoint saver) and ``{run_name}`` the run name. Local paths only.
        interval: also export every this many batches (``'<n>ba'``) into
            ``{folder}/ba<batch>``. None: only at the end of fit, into ``{folder}/final``.
    """

    def __init__(self, *, folder: str = '{save_folder}/hf', interval: str | None = None) -> None:
        if '://' in folder:
            raise ValueError(f'hf_export.folder must be a local path, got {folder!r}.')
        self.folder = folder
        self.interval = _interval_batches(interval)
        self._resolved: Path | None = None

    # -- events -------------------------------------------------------------------------------

    def fit_start(self, state: State, logger: Logger) -> None:
        self._resolved = self._resolve_folder(state)  # fail before training, not after it

    def batch_end(self, state: State, logger: Logger) -> None:
        batch = int(state.timestamp.batch.value)
        if self.interval is not None and batch % self.interval == 0:
            self.export(state, self._folder(state) / f'ba{batch}')

    def fit_end(self, state: State, logger: Logger) -> None:
        self.export(state, self._folder(state) / 'final')

    # -- work ---------------------------------------------------------------------------------

    def _folder(self, state: State) -> Path:
        if self._resolved is None:
            self._resolved = self._resolve_folder(state)
        return self._resolved

    def _resolve_folder(self, state: State) -> Path:
        from composer.callbacks import CheckpointSaver

        folder = self.folder
        if '{save_folder}' in folder:
            saver = next((cb for cb in state.callbacks if isinstance(cb, CheckpointSaver)), None)
            if saver is None:
                raise ValueError(
                    f"hf_export.folder {folder!r} uses {{save_folder}} but the Trainer has no save_folder; "
                    'set save_folder or give hf_export a folder.'
                )
            folder = folder.replace('{save_folder}', str(saver.folder))
        return Path(format_name_with_dist(folder, state.run_name))

    def export(self, state: State, out_dir: Path) -> None:
        """Write the current model to ``out_dir`` (rank 0); all ranks must call it.

        Args:
            state: the Trainer state.
            out_dir: target directory.
        """
        from t5composer.callbacks.model_metadata import ModelMetadata
        from t5composer.models.hf_interchange import strip_wrapper_prefixes, write_hf_dir

        weights = state.get_model_state_dict()  # collective under FSDP, local otherwise
        if dist.get_global_rank() == 0:
            if any(type(v).__name__ == 'DTensor' for v in weights.values()):
                raise ValueError('hf_export needs full weights: set parallelism_config.fsdp.state_dict_type: full.')
            meta = next((cb for cb in state.callbacks if isinstance(cb, ModelMetadata)), None)
            config: Any = meta.config if meta is not None else getattr(state.model, 'config', None)
            tokenizer = (meta.tokenizer_files or None) if meta is not None else None
            if meta is None:
                log.warning('hf_export: no ModelMetadata callback in the Trainer; exporting without tokenizer files.')
            write_hf_dir(state_dict=strip_wrapper_prefixes(weights), config=config, out_dir=out_dir, tokenizer=tokenizer,
                         overwrite=True)  # a resumed run exports again; replaced whole, as one directory
            log.info('hf_export: wrote %s', out_dir)
        dist.barrier()  # later readers on other ranks see a complete directory
