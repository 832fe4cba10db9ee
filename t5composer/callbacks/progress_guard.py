"""End a run that cannot make progress instead of letting it spin.

Composer starts a new epoch whenever the train dataloader is exhausted. A loader that yields no
batch at all (fewer rows than one batch with ``drop_last``, a filtered-out split, a sampler that
gives this rank nothing) would then run through empty epochs forever, never reaching a
``max_duration`` in batches and logging as fast as it can. The data sources are checked before
training (:mod:`t5composer.data.preflight`, :mod:`t5composer.data.plan`), and this guard catches whatever those checks cannot see:
an epoch that ends without one batch stops the run with a message.
"""

from __future__ import annotations

from composer.core import Callback, Event, State
from composer.loggers import Logger

__all__ = ['NoProgressError', 'ProgressGuard']


class NoProgressError(RuntimeError):
    """The trainer cannot make progress (the message says why and what to change)."""


class ProgressGuard(Callback):
    """Raise :class:`NoProgressError` when a training epoch ends without a single batch."""

    def __init__(self) -> None:
        self._batches_at_epoch_start = -1
        self._epoch = 0

    def run_event(self, event: Event, state: State, logger: Logger) -> None:
        del logger
        if event == Event.EPOCH_START:
            self._batches_at_epoch_start = int(state.timestamp.batch)
            self._epoch = int(state.timestamp.epoch)  # at EPOCH_END Composer has counted it already
        elif event == Event.EPOCH_END and int(state.timestamp.batch) == self._batches_at_epoch_start:
            loader = state.dataloader
            rows = _rows(loader)
            batch = getattr(loader, 'batch_size', None)
            raise NoProgressError(
                f'Epoch {self._epoch} of the training data ended without a single batch'
                + (f' ({rows} rows on this process, batches of {batch} with drop_last)' if rows is not None and batch else '')
                + ', so the run could never reach max_duration. Give the run more data (convert more documents, or add '
                'SNI tasks), or lower global_train_batch_size (or launch fewer processes) so that each process gets '
                'at least one full batch.',
            )


def _rows(loader: object) -> int | None:
    dataset = getattr(loader, 'dataset', None)
    try:
        return len(dataset)  # type: ignore[arg-type]
    except TypeError:
        return None
