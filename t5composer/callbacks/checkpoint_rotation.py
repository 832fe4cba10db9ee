"""Keep ``save_num_checkpoints_to_keep`` across resumes, not only within one process.

Composer's ``CheckpointSaver`` deletes the oldest of the checkpoints *this process* saved. After a
resume its list starts empty, so the checkpoints of the runs before stay on disk for ever: a run
killed and resumed ten times keeps up to ten times as many checkpoints as asked (a few GB each for
T5-base with its optimizer state). The saver does restore, from the checkpoint it resumed from,
the names and timestamps of every checkpoint saved before; at the start of ``fit`` this callback
hands the ones still on disk (oldest first, none newer than the resumed point) to the saver's list,
so its next save rotates them like its own.
"""

from __future__ import annotations

import logging
import os
from typing import Optional

from composer.core import Callback, State
from composer.loggers import Logger

__all__ = ['CheckpointRotation']

log = logging.getLogger(__name__)


class CheckpointRotation(Callback):
    """Seed Composer's checkpoint rotation with the checkpoints of earlier runs (see the module docstring).

    Args:
        save_folder: the run's local checkpoint folder (with ``{run_name}`` resolved). Only files
            in it are rotated; names stored relative to another working directory are looked up
            there by file name.
    """

    def __init__(self, *, save_folder: str) -> None:
        self.save_folder = save_folder

    def fit_start(self, state: State, logger: Logger) -> None:
        del logger  # unused
        from composer.callbacks import CheckpointSaver

        saver = next((c for c in state.callbacks if isinstance(c, CheckpointSaver)), None)
        if saver is None or saver.num_checkpoints_to_keep < 0 or saver.saved_checkpoints:
            return
        now = int(state.timestamp.batch)
        earlier = sorted((int(ts.batch), name) for name, ts in saver.all_saved_checkpoints_to_timestamp.items())
        paths = [p for batch, name in earlier if batch <= now and (p := self._local_path(name)) is not None]
        if paths:
            saver.saved_checkpoints = list(dict.fromkeys(paths))
            log.info('Checkpoint rotation (save_num_checkpoints_to_keep=%d) includes %d checkpoint(s) of earlier runs: %s',
                     saver.num_checkpoints_to_keep, len(saver.saved_checkpoints), ', '.join(saver.saved_checkpoints))

    def _local_path(self, name: str) -> Optional[str]:
        """``name`` if it is a checkpoint file in this run's folder, else None.

        Only this folder: a run started with ``load_path`` (and not weights only) from another
        run's checkpoint inherits that run's list, whose files are not this run's to delete.
        """
        folder = os.path.realpath(self.save_folder)
        for path in (name, os.path.join(self.save_folder, os.path.basename(name))):
            if os.path.isfile(path) and not os.path.islink(path) and os.path.dirname(os.path.realpath(path)) == folder:
                return path
        return None
