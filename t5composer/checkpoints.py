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
* :func:`prepare_checkpoints` runs all of it for a run before it is built: it locks the save
  folder, repairs it, and checks the checkpoint the run will load.
* :func:`model_shape_problems` compares a checkpoint's weights with the model the config
  builds, so a changed config gets a list of mismatched keys instead of a bare
  ``RuntimeError`` from deep inside ``load_state_dict``.

Checkpoints are pickles: load only checkpoints you made or trust (see docs/reliability.md).
"""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil
import tempfile
import zipfile
from dataclasses import dataclass, field
from typing import Any, Optional

from t5composer.atomic_files import PARTIAL_PREFIX, write_atomically
from t5composer.errors import ConfigError
from t5composer.errors import describe_os_error, format_bytes, os_error_advice
from t5composer.run_lock import RunLockedError, acquire_run_lock

log = logging.getLogger(__name__)

__all__ = [
    'PARTIAL_PREFIX', 'CheckpointRecovery', 'CheckpointSaveError', 'checkpoint_problem', 'estimated_checkpoint_bytes',
    'checkpoints_by_batch', 'free_space_problem', 'optimizer_state_bytes', 'save_folder_problem', 'install_atomic_writes', 'load_checkpoint', 'model_shape_problems',
    'recover_checkpoints', 'unusable_checkpoint_message', 'write_atomically',
    'check_free_space', 'check_start_checkpoint', 'load_start_checkpoint', 'prepare_checkpoints', 'refuse_earlier_checkpoints',
]

# Composer's default save_filename, 'ep{epoch}-ba{batch}-rank{rank}.pt', for the rank that saves.
_CHECKPOINT_RE = re.compile(r'^ep(?P<epoch>\d+)-ba(?P<batch>\d+)-rank0\.pt$')
_LATEST = 'latest-rank0.pt'


class CheckpointSaveError(OSError):
    """A checkpoint could not be written (full disk, lost permissions); the message says how much room it needs."""

    @classmethod
    def explain(cls, error: OSError, filename: str, needed: float) -> 'CheckpointSaveError':
        folder = os.path.dirname(os.path.abspath(filename))
        try:
            free = f'{format_bytes(shutil.disk_usage(folder).free)} is free there'
        except OSError:
            free = 'the free space there is unknown'
        return cls(
            error.errno,
            f'Could not save the checkpoint {filename}: {error.strerror or error}; {os_error_advice(error)}. It needs about '
            f'{format_bytes(needed)}; {free}. The checkpoints saved before it are intact (no partial file is left): once '
            'there is room, run the same command again to resume from the newest one, or point save_folder at a disk with room.',
        )

    def __str__(self) -> str:
        return self.strerror or super().__str__()  # the whole message, without OSError's '[Errno N]' prefix


def _tensor_bytes(obj: Any) -> int:
    """Bytes of the tensors in a (nested) state dict: about what its checkpoint file holds."""
    import torch

    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


def optimizer_state_bytes(name: str, model: Any, kwargs: dict[str, Any]) -> Optional[float]:
    """fp32 optimizer-state bytes of the whole (unsharded) model; None when the optimizer is not modelled."""
    params = list({id(p): p for p in model.parameters()}.values())
    if name in ('adamwscale', 'adamw'):
        return 8.0 * sum(p.numel() for p in params)  # exp_avg + exp_avg_sq
    if name == 'adafactor':
        # Factored second moment (rows + columns) for matrices, full for vectors, plus momentum if beta1.
        total = sum((p.shape[0] + p.numel() // p.shape[0]) if p.dim() >= 2 else p.numel() for p in params)
        if kwargs.get('beta1') is not None:
            total += sum(p.numel() for p in params)
        return 4.0 * total
    return None


# The pickled structure beside the tensors (key names, RNG states, dataset position): ~0.2 MB for a
# tiny model, a rounding error for a real one.
_CHECKPOINT_STRUCTURE_BYTES = 1e6


def estimated_checkpoint_bytes(model: Any, *, optimizer: str, optimizer_kwargs: dict[str, Any], extra_bytes: float = 0.0) -> float:
    """Size of one full checkpoint: fp32 weights, the optimizer state, ``extra_bytes`` (the tokenizer
    files it carries) and the pickled structure (what the dry run prints and the start checks for)."""
    params = {id(p): p for p in model.parameters()}.values()
    tensors = 4.0 * sum(p.numel() for p in params) + (optimizer_state_bytes(optimizer, model, optimizer_kwargs) or 0.0)
    return tensors + extra_bytes + _CHECKPOINT_STRUCTURE_BYTES


def save_folder_problem(folder: str) -> Optional[str]:
    """Why checkpoints cannot be written to ``folder`` (created if missing), or None.

    Checked before training so that a read-only disk, a path under /proc or a file in the way
    fails at start, not a save interval later.
    """
    if os.path.exists(folder) and not os.path.isdir(folder):
        return f"save_folder '{folder}' is a file, not a folder; remove the file or point save_folder (or run_name) elsewhere."
    try:
        os.makedirs(folder, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=f'{PARTIAL_PREFIX}probe-', dir=folder)
        try:
            os.write(fd, b'0')
            os.fsync(fd)
        finally:
            os.close(fd)
            os.remove(probe)
    except OSError as e:
        if e.errno == errno.ENOENT:  # after makedirs: a filesystem that cannot hold files (/proc, /sys)
            where = os.path.dirname(e.filename) if os.path.basename(str(e.filename)).startswith(PARTIAL_PREFIX) else e.filename
            reason = f"files cannot be created in '{where}' (it is not a writable filesystem, e.g. /proc or /sys)"
        else:
            reason = describe_os_error(e).rstrip('.')
        return f"Checkpoints cannot be written to save_folder '{folder}': {reason}. Point save_folder (or run_name) at a folder you can write to."
    return None


def free_space_problem(folder: str, needed: float) -> Optional[str]:
    """Why ``folder``'s disk cannot hold one more checkpoint of ``needed`` bytes, or None."""
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return None
    if free >= needed:
        return None
    return (f"save_folder '{folder}' has {format_bytes(free)} free, but one checkpoint of this run takes about "
            f'{format_bytes(needed)} (fp32 weights + optimizer state). Free space there, or point save_folder at a disk with room.')


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
        try:
            write_atomically(filename, lambda tmp: original(state_dict, tmp))
        except OSError as e:
            raise CheckpointSaveError.explain(e, filename, _tensor_bytes(state_dict)) from e

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


_VERIFIED: dict[tuple[str, int, int], Optional[str]] = {}


def _verified_problem(path: str) -> Optional[str]:
    """:func:`checkpoint_problem`, read once per file version in this process (the CRC pass reads every byte)."""
    try:
        st = os.stat(path)
    except OSError:
        return checkpoint_problem(path)
    key = (os.path.realpath(path), st.st_size, st.st_mtime_ns)
    if key not in _VERIFIED:
        _VERIFIED[key] = checkpoint_problem(path)
    return _VERIFIED[key]


def unusable_checkpoint_message(path: str, *, role: str, use: str) -> Optional[str]:
    """Why a checkpoint a command was given cannot be used, with the intact one beside it; None if intact.

    Every command that reads a checkpoint (training's ``load_path``, ``model.init: checkpoint``,
    ``recipes/evaluate.py``, ``recipes/export_hf.py``) asks this first, so none of them trains,
    scores or exports the weights of a file with a flipped byte.

    Args:
        path: the checkpoint file.
        role: how the user gave it, for the message (``"load_path 'x.pt'"``).
        use: how to use another checkpoint instead, with ``{path}`` for its path
            (``'load_path={path}'``, ``'python recipes/export_hf.py {path} OUT'``).
    """
    problem = _verified_problem(path)
    if problem is None:
        return None
    return f'{role} cannot be loaded: {problem}.' + _intact_neighbour_hint(path, use)


def _intact_neighbour_hint(path: str, use: str) -> str:
    """Point at the newest intact checkpoint beside a bad one, as a ready command fragment."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        return ''
    for other in checkpoints_by_batch(folder):
        if os.path.abspath(other) != os.path.abspath(path) and _verified_problem(other) is None:
            return f' The newest intact checkpoint beside it is {other}: use it with {use.format(path=other)}.'
    return ' No intact checkpoint is beside it.'


def load_checkpoint(path: str, *, role: str, use: str, mmap: bool = True) -> Any:
    """``torch.load`` of a checkpoint, after the integrity check of :func:`unusable_checkpoint_message`.

    ``mmap`` reads only the pickled structure until a tensor is touched (metadata reads stay cheap).
    Checkpoints are pickles (``weights_only=False``): load only checkpoints you trust.

    Raises:
        ConfigError: the checkpoint is missing, truncated or corrupt (the message names an intact one).
    """
    import torch

    message = unusable_checkpoint_message(path, role=role, use=use)
    if message is not None:
        raise ConfigError([message])
    return torch.load(path, map_location='cpu', weights_only=False, mmap=mmap)


@dataclass
class CheckpointRecovery:
    """What :func:`recover_checkpoints` found and did."""

    resume_from: Optional[str] = None
    corrupt: list[str] = field(default_factory=list)
    removed_partial: list[str] = field(default_factory=list)
    repointed: bool = False


def checkpoints_by_batch(folder: str) -> list[str]:
    """The rank-0 checkpoints in ``folder`` named as Composer names them, newest (highest batch) first."""
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
    candidates = checkpoints_by_batch(folder)
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


# ---------------------------------------------------------------------------------------------
# The checkpoint a run starts from, and the folder it saves to (checked before training)
# ---------------------------------------------------------------------------------------------


def prepare_checkpoints(folder: Optional[str], *, train: bool, autoresume: bool, save_overwrite: bool,
                        load_path: Optional[str]) -> tuple[Optional[str], Any]:
    """Lock the save folder, make saves atomic, repair the folder after a kill (training), and check ``load_path`` (always).

    Global rank 0 repairs the folder while the other ranks wait, so all of them then see the
    same latest link. Every rank stops together on a problem (raised as :class:`ConfigError`).

    Args:
        folder: the run's local save folder (None: no local folder, or an evaluation).
        train: a training run (saves are made atomic).
        autoresume: the run continues from the newest intact checkpoint in ``folder``.
        save_overwrite: checkpoints of an earlier run in ``folder`` may be replaced.
        load_path: the checkpoint the run starts from, if any.

    Returns:
        The checkpoint autoresume will load (None when the run starts fresh) and the run lock
        (global rank 0 of a run with a local save folder; None otherwise).
    """
    from composer.utils import dist  # Composer takes ~3 s to import; preflight uses this module without it

    resume_path, lock = None, None
    if train:
        install_atomic_writes()
    if folder is not None:
        error: list[Optional[str]] = [None]
        if dist.get_global_rank() == 0:
            try:
                # One run per folder: a second writer would interleave checkpoints and metrics.jsonl.
                lock = acquire_run_lock(folder)
                if autoresume:
                    resume_path = recover_checkpoints(folder).resume_from
                elif not save_overwrite:
                    refuse_earlier_checkpoints(folder)
            except (ConfigError, RunLockedError) as e:
                error[0] = '\n'.join(e.problems) if isinstance(e, ConfigError) else str(e)
                if lock is not None:
                    lock.release()
        dist.broadcast_object_list(error, src=0)  # every rank stops together, none waits forever
        if error[0] is not None:
            raise ConfigError([error[0]])
        if autoresume and dist.get_global_rank() != 0:
            link = os.path.join(folder, 'latest-rank0.pt')
            resume_path = link if os.path.exists(link) else None
    if resume_path is None and load_path and '://' not in load_path:
        if not os.path.exists(load_path):
            raise ConfigError([
                f"load_path '{load_path}' does not exist" + (f" (and '{folder}' holds no checkpoint to resume from)" if folder else '')
                + '. Point load_path '
                'at a Composer checkpoint (e.g. runs/pt_base/latest-rank0.pt; the demo makes one with composer recipes/train.py '
                'yamls/demo.yaml), or remove it to start from scratch.',
            ])
        load_start_checkpoint(load_path, read=False)
    return resume_path, lock


def refuse_earlier_checkpoints(folder: str) -> None:
    """Without autoresume, checkpoints of an earlier run in the folder would stop this run at its first
    save (Composer refuses to write over them), a whole save interval in; say so before training."""
    found = checkpoints_by_batch(folder)
    if found:
        names = ', '.join(os.path.basename(p) for p in found[:3]) + (f' and {len(found) - 3} more' if len(found) > 3 else '')
        raise ConfigError([
            f"save_folder '{folder}' already holds checkpoints of an earlier run ({names}) and autoresume is off, so this run "
            'would stop at its first save rather than write over them. Set autoresume=true to continue that run, give this run '
            'another run_name / save_folder, or set save_overwrite=true to replace them.',
        ])


def load_start_checkpoint(path: str, *, read: bool = True) -> Any:
    """Check (once per file) that the checkpoint a run or an evaluation starts from is intact; read it (mmap) if asked.

    Args:
        path: the checkpoint (``load_path``).
        read: return its state (mmap: no weights are read); False only checks it.
    """
    role, use = f"load_path '{path}'", 'load_path={path}'
    if not read:
        message = unusable_checkpoint_message(path, role=role, use=use)
        if message is not None:
            raise ConfigError([message])
        return None
    return load_checkpoint(path, role=role, use=use)


def check_free_space(folder: str, model: Any, *, optimizer: str, optimizer_kwargs: dict[str, Any], extra_bytes: int) -> None:
    """Refuse to start a run whose first checkpoint would not fit on the save folder's disk.

    Args:
        folder: the save folder.
        model: the model (its parameters are counted).
        optimizer / optimizer_kwargs: the optimizer's name and options (its state is counted).
        extra_bytes: what else each checkpoint carries (the tokenizer files).
    """
    needed = estimated_checkpoint_bytes(model, optimizer=optimizer, optimizer_kwargs=optimizer_kwargs, extra_bytes=extra_bytes)
    problem = free_space_problem(folder, needed)
    if problem is not None:
        raise ConfigError([problem])


def _report_world_size_change(path: str, rng: Any, global_batch: int) -> None:
    """Say so when a run resumes on another number of processes (it continues with the same global batch)."""
    from composer.utils import dist  # see prepare_checkpoints

    now = dist.get_world_size()
    if isinstance(rng, list) and rng and len(rng) != now:
        log.warning(
            'Resuming %s, whose checkpoints were saved by %d process(es), on %d: the global batch stays %d (%d per process), '
            'the data continues at the same global sample in the same order, and the results match an uninterrupted run '
            'up to the summation order of the gradient all-reduce. Random states of ranks that did not exist are re-seeded.',
            path, len(rng), now, global_batch, global_batch // now,
        )


def check_start_checkpoint(path: Optional[str], model: Any, *, resumed: bool, strict: bool, global_batch: int) -> None:
    """Read the checkpoint the run starts from once (mmap: no weights are read) to say when a
    resume changes the number of processes, and to list the keys of a checkpoint from another
    model shape instead of a load traceback.

    Args:
        path: the checkpoint (None: the run starts fresh).
        model: the model the config builds.
        resumed: autoresume picked ``path`` (else it is ``load_path``).
        strict: ``load_strict_model_weights``: the shapes must match.
        global_batch: the run's global batch (for the message about a new number of processes).
    """
    from composer.utils import dist  # see prepare_checkpoints

    if path is None or '://' in path or not os.path.isfile(path):
        return
    report = resumed and dist.get_global_rank() == 0
    if not (report or strict):
        return
    checkpoint = load_start_checkpoint(path)
    if report:
        _report_world_size_change(path, checkpoint.get('rng'), global_batch)
    if not strict:
        return
    problems = model_shape_problems(checkpoint.get('state', {}).get('model', {}), model.state_dict())
    if problems:
        raise ConfigError([
            f"The checkpoint {path} holds a model of a different shape than this config builds "
            f"({len(problems)} mismatched key(s)):\n    " + '\n    '.join(problems[:12])
            + (f'\n    ... and {len(problems) - 12} more' if len(problems) > 12 else '')
            + '\n  Use the model settings the checkpoint was trained with, or start a new run (another run_name / save_folder).',
        ])
