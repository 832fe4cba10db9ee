"""``recipes/train.py`` with a fault injected, for the reliability tests (runs under `composer -n N` too).

Environment:
    T5C_FAULT: ``kill_after_batch:N`` (SIGKILL right after batch N, before any checkpoint of it),
        ``kill_during_save:N`` (SIGKILL halfway through writing batch N's checkpoint) or
        ``kill_after_save:N`` (SIGKILL once batch N's checkpoint is in place, before the
        ``latest`` link is updated). The whole process group dies at once, launcher and
        dataloader workers included, as when a machine is pre-empted.
    T5C_RECORD: a JSONL file; every rank appends, per batch, the hashes of its rows and its loss.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sys

from composer.core import Callback, Event, State
from composer.loggers import Logger
from composer.utils import dist

import t5composer.checkpoints as checkpoints
from t5composer.cli import train_main


def die() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.killpg(os.getpgrp(), signal.SIGKILL)


class KillAfterBatch(Callback):
    def __init__(self, batch: int) -> None:
        self.batch = batch

    def batch_end(self, state: State, logger: Logger) -> None:
        if int(state.timestamp.batch) == self.batch and dist.get_global_rank() == 0:
            die()


def kill_while_saving(batch: int, during: bool) -> None:
    original = checkpoints.write_atomically

    def faulty(filename: str, write) -> None:
        if f'-ba{batch}-' not in os.path.basename(filename):
            return original(filename, write)
        if during:
            def half_write(tmp: str) -> None:
                write(tmp)
                os.truncate(tmp, os.path.getsize(tmp) // 2)  # where a kill mid-write leaves it
                die()
            return original(filename, half_write)
        original(filename, write)
        die()

    checkpoints.write_atomically = faulty


class RecordBatches(Callback):
    def __init__(self, path: str) -> None:
        self.path = path

    def run_event(self, event: Event, state: State, logger: Logger) -> None:
        if event != Event.AFTER_TRAIN_BATCH:
            return
        rows = state.batch['input_ids']
        hashes = [hashlib.sha1(r.cpu().numpy().tobytes() + l.cpu().numpy().tobytes()).hexdigest()[:16]
                  for r, l in zip(rows, state.batch['labels'])]
        with open(self.path, 'a') as f:
            f.write(json.dumps({'rank': dist.get_global_rank(), 'batch': int(state.timestamp.batch), 'rows': hashes,
                                'loss': float(state.loss)}) + '\n')


def main() -> int:
    callbacks = []
    fault = os.environ.get('T5C_FAULT')
    if fault:
        kind, batch = fault.split(':')
        if kind == 'kill_after_batch':
            callbacks.append(KillAfterBatch(int(batch)))
        elif kind in ('kill_during_save', 'kill_after_save'):
            kill_while_saving(int(batch), during=kind == 'kill_during_save')
        else:
            raise SystemExit(f'unknown T5C_FAULT {fault!r}')
    if os.environ.get('T5C_RECORD'):
        callbacks.append(RecordBatches(os.environ['T5C_RECORD']))
    return train_main(sys.argv[1:], extra_callbacks=tuple(callbacks))


if __name__ == '__main__':
    sys.exit(main())
