"""Checkpoints that survive being killed: atomic writes, start-up recovery, load-time checks.

Composer writes a checkpoint straight to its final name (``ep0-ba600-rank0.pt``) and then
replaces the ``latest-rank0.pt`` symlink by removing and re-creating it. A kill or a full disk
in the middle leaves a truncated file with a valid-looking name, or no symlink at all, and
autoresume then either crashes on the truncated file, refuses to save over it, or silently
starts from scratch. This module closes those holes:

* :func:`install_atomic_writes` makes every checkpoint write go to a hidden ``.partial-*`` file
  that is fsynced and renamed into place, so a file with a checkpoint's name is always complete.
* :func:`recover_checkpoints` runs before autoresume: it removes unfinished writes, checks the
  newest checkpoints' zip CRCs (``torch.load`` happily loads a flipped byte), moves unreadable
  ones aside as ``*.corrupt`` with a warning naming both files, and points ``latest-rank0.pt``
  at the newest intact checkpoint. If checkpoints exist but none is intact it stops: a run
  never restarts from scratch on its own.
* :func:`model_shape_problems` compares a checkpoint's weights with the model the config
  builds, so a changed config gets a list of mismatched keys instead of a bare
  ``RuntimeError`` from deep inside ``load_state_dict``.

Checkpoints are pickles: load only checkpoints you made or trust (see docs/reliability.md).
"""

from __future__ import annotations

import logging
import os
import re
import zipfile
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from t5composer.config.validation import ConfigError

log = logging.getLogger(__name__)

__all__ = [
    'PARTIAL_PREFIX', 'CheckpointRecovery', 'checkpoint_problem', 'install_atomic_writes', 'model_shape_problems',
    'recover_checkpoints', 'write_atomically',
]

PARTIAL_PREFIX = '.partial-'
# Composer's default save_filename, 'ep{epoch}-ba{batch}-rank{rank}.pt', for the rank that saves.
_CHECKPOINT_RE = re.compile(r'^ep(?P<epoch>\d+)-ba(?P<batch>\d+)-rank0\.pt$')
_LATEST = 'latest-rank0.pt'


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems cannot fsync a directory; the rename is still atomic
    finally:
        os.close(fd)


def write_atomically(filename: str, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)`` and move the result to ``filename`` only once it is complete.

    The temporary file sits beside the target (same filesystem, so the rename is atomic) under a
    hidden name that no checkpoint pattern matches. On any error it is removed and the error
    re-raised, so a full disk leaves neither a half file nor a valid-looking name behind.
    """
    folder, base = os.path.split(os.path.abspath(filename))
    tmp = os.path.join(folder, f'{PARTIAL_PREFIX}{os.getpid()}-{base}')
    try:
        write(tmp)
        with open(tmp, 'rb+') as f:
            os.fsync(f.fileno())
        os.replace(tmp, filename)
    except BaseException:
        try:
            os.remove(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(folder)


def install_atomic_writes() -> None:
    """Route Composer's monolithic checkpoint writes through :func:`write_atomically` (idempotent).

    Composer 0.32's ``save_checkpoint`` calls the module-level ``_write_checkpoint_file(state_dict,
    filename)``; wrapping it keeps Composer's own formats (.pt, .tar, compressed) untouched.
    Sharded (FSDP) checkpoints are written by torch.distributed.checkpoint, whose ``.metadata``
    file is written last and marks a complete checkpoint.
    """
    from composer.utils import checkpoint as composer_checkpoint

    original = composer_checkpoint._write_checkpoint_file
    if getattr(original, '_t5composer_atomic', False):
        return

    def atomic_write_checkpoint_file(state_dict: dict[str, Any], filename: str) -> None:
        write_atomically(filename, lambda tmp: original(state_dict, tmp))

    atomic_write_checkpoint_file._t5composer_atomic = True  # type: ignore[attr-defined]
    composer_checkpoint._write_checkpoint_file = atomic_write_checkpoint_file


def checkpoint_problem(path: str) -> Optional[str]:
    """Why the checkpoint at ``path`` cannot be loaded, or None if it looks intact.

    A ``.pt`` checkpoint is a zip archive whose members carry CRC-32 checksums; reading them all
    catches truncation and flipped bytes (about a second per GB, once per start). Sharded
    checkpoints (directories) must hold torch.distributed.checkpoint's ``.metadata``.
    """
    if not os.path.exists(path):
        return 'the file does not exist'
    if os.path.isdir(path):
        return None if os.path.isfile(os.path.join(path, '.metadata')) else 'the sharded checkpoint has no .metadata file (unfinished save)'
    if not path.endswith('.pt'):
        return None  # compressed and tar formats carry no checksums we can check cheaply
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            if not any(n.endswith('/data.pkl') or n == 'data.pkl' for n in names):
                return 'it is not a torch checkpoint (no data.pkl inside)'
            bad = archive.testzip()
    except zipfile.BadZipFile as e:
        return f'it is truncated or not a torch checkpoint ({e})'
    except (OSError, EOFError, ValueError) as e:
        return f'it cannot be read ({e})'
    if bad is not None:
        return f"it is corrupt (checksum mismatch in '{bad}')"
    return None


@dataclass
class CheckpointRecovery:
    """What :func:`recover_checkpoints` found and did."""

    resume_from: Optional[str] = None
    corrupt: list[str] = field(default_factory=list)
    removed_partial: list[str] = field(default_factory=list)
    repointed: bool = False


def _checkpoints_by_batch(folder: str) -> list[str]:
    found = []
    for name in os.listdir(folder):
        m = _CHECKPOINT_RE.match(name)
        if m:
            found.append((int(m['batch']), int(m['epoch']), os.path.join(folder, name)))
    return [path for _, _, path in sorted(found, reverse=True)]


def _point_latest(link: str, target: str) -> None:
    tmp = os.path.join(os.path.dirname(link), f'{PARTIAL_PREFIX}{os.getpid()}-{os.path.basename(link)}')
    if os.path.lexists(tmp):
        os.remove(tmp)
    os.symlink(os.path.basename(target), tmp)
    os.replace(tmp, link)  # atomic: there is always a latest link, old or new


def recover_checkpoints(folder: str, *, latest_name: str = _LATEST) -> CheckpointRecovery:
    """Make ``folder`` safe for Composer's autoresume after a kill, a full disk or corruption.

    Removes unfinished ``.partial-*`` writes, finds the newest intact checkpoint, moves newer
    unreadable ones aside to ``<name>.corrupt`` (warning with both names) and points
    ``latest_name`` at the intact one. Run it on one process (global rank 0) before the Trainer
    is built.

    Raises:
        ConfigError: checkpoints (or a latest link) exist but none is intact; the message names
            the files and how to start over or resume from a checkpoint elsewhere.
    """
    report = CheckpointRecovery()
    if not os.path.isdir(folder):
        return report
    for name in os.listdir(folder):
        if name.startswith(PARTIAL_PREFIX):
            path = os.path.join(folder, name)
            if os.path.isdir(path) and not os.path.islink(path):
                continue
            os.remove(path)
            report.removed_partial.append(path)
            log.warning('Removed %s: a checkpoint write that was interrupted (the run was killed while saving).', path)

    link = os.path.join(folder, latest_name)
    linked = os.path.realpath(link) if os.path.lexists(link) else None
    candidates = _checkpoints_by_batch(folder)
    if linked is not None and os.path.abspath(linked) not in {os.path.abspath(c) for c in candidates}:
        candidates.append(linked)  # a custom-named checkpoint: still check it, last

    intact = None
    for path in candidates:
        problem = checkpoint_problem(path)
        if problem is None:
            intact = path
            break
        if linked is not None and os.path.abspath(path) == os.path.abspath(linked) and not os.path.exists(path):
            continue  # a dangling link: nothing to move aside
        report.corrupt.append(path)
        log.warning('Checkpoint %s cannot be used: %s.', path, problem)

    if intact is None:
        if candidates or linked is not None:
            shown = candidates or [link]
            raise ConfigError([
                f"No intact checkpoint to resume from in '{folder}': "
                + '; '.join(f'{p}: {checkpoint_problem(p)}' for p in shown)
                + f". Autoresume will not start over on its own. To start this run from scratch, move '{folder}' "
                'away (or set save_folder / run_name to a new one); to resume from a checkpoint kept elsewhere, '
                'add load_path=<that checkpoint> autoresume=false.',
            ])
        return report

    for path in report.corrupt:
        if os.path.exists(path) and not os.path.isdir(path):
            os.replace(path, path + '.corrupt')
    if report.corrupt:
        moved = ', '.join(f'{p} (moved to {p}.corrupt)' for p in report.corrupt if os.path.exists(p + '.corrupt'))
        log.warning('The latest checkpoint is unusable; resuming from %s instead. Unusable: %s.', intact, moved or ', '.join(report.corrupt))
    if linked is None or os.path.abspath(linked) != os.path.abspath(intact):
        if linked is not None and not report.corrupt:
            log.warning('%s pointed at %s but %s is newer and intact (the run was killed right after saving it); resuming from it.',
                        link, linked, intact)
        elif linked is None:
            log.warning('%s was missing (the run was killed while updating it); resuming from %s.', link, intact)
        _point_latest(link, intact)
        report.repointed = True
    report.resume_from = intact
    return report


def model_shape_problems(saved: dict[str, Any], model_state: dict[str, Any]) -> list[str]:
    """Keys of ``model_state`` (a model's state_dict) that ``saved`` (a checkpoint's
    ``state['model']``) lacks, has extra or shapes differently."""
    problems = []
    for key, tensor in model_state.items():
        if key not in saved:
            problems.append(f'{key}: missing from the checkpoint')
        elif tuple(saved[key].shape) != tuple(tensor.shape):
            problems.append(f'{key}: checkpoint {list(saved[key].shape)} vs model {list(tensor.shape)}')
    return problems + [f'{key}: in the checkpoint, not in the model' for key in saved if key not in model_state]
