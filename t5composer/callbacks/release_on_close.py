"""Give back what a Trainer holds outside itself (the save folder's run lock, Streaming's shared
memory) when it is closed, rather than when the process exits."""

from __future__ import annotations

import logging
from typing import Callable

from composer.core import Callback, State
from composer.loggers import Logger

log = logging.getLogger(__name__)

__all__ = ['ReleaseOnClose', 'release_all']


class ReleaseOnClose(Callback):
    """Calls each release function once, in reverse order, at ``Trainer.close()``.

    ``build_trainer`` collects them as it takes each resource; a build that fails calls the ones
    taken so far itself, so nothing outlives a Trainer that was never made.

    Args:
        releases: functions that give one resource back each.
    """

    def __init__(self, *, releases: list[Callable[[], object]]) -> None:
        self.releases = releases  # shared with the builder: whoever gives them back empties it

    def close(self, state: State, logger: Logger) -> None:
        del state, logger
        release_all(self.releases)


def release_all(releases: list[Callable[[], object]]) -> None:
    """Call and forget each function, last taken first (each at most once; one that fails does not stop the others)."""
    while releases:
        release = releases.pop()
        try:
            release()
        except Exception:  # noqa: BLE001 - the rest must still be given back
            log.warning('Releasing %r failed.', release, exc_info=True)
