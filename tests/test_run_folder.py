"""One run per save folder, save folders that fail at start, and runs that cannot make progress."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from t5composer import run_lock
from t5composer.checkpoints import estimated_checkpoint_bytes, free_space_problem, save_folder_problem
from t5composer.config import ConfigError, config_from_dict
from t5composer.run_lock import LOCK_FILENAME, RunLockedError, acquire_run_lock
from t5composer.run.build import build_trainer
from t5composer.run.preflight import preflight
from test_training import tiny

REPO = Path(__file__).resolve().parents[1]

HOLD_LOCK = textwrap.dedent('''
    import sys, time
    from t5composer.run_lock import acquire_run_lock
    acquire_run_lock(sys.argv[1])
    print('held', flush=True)
    time.sleep(120)
''')


def _holder(folder: Path) -> subprocess.Popen:
    """Another process that takes the folder's lock and keeps it."""
    proc = subprocess.Popen([sys.executable, '-c', HOLD_LOCK, str(folder)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == 'held'
    return proc


def _try_lock(folder: Path | str) -> subprocess.CompletedProcess:
    """Another process tries the lock and exits at once (status 0: it got it)."""
    return subprocess.run([sys.executable, '-c', HOLD_LOCK.replace('time.sleep(120)', ''), str(folder)],
                          capture_output=True, text=True)


# ------------------------------------------------------------------------------------ the run lock


def test_a_second_process_is_refused_and_a_dead_holder_frees_the_folder(tmp_path):
    folder = tmp_path / 'run'
    holder = _holder(folder)
    try:
        with pytest.raises(RunLockedError) as info:
            acquire_run_lock(str(folder))
        message = str(info.value)
        assert f'process {holder.pid} on host' in message and str(folder) in message
        assert 'another run_name / save_folder' in message
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert (folder / LOCK_FILENAME).exists()  # the killed holder could not remove its file...
    lock = acquire_run_lock(str(folder))  # ...but the kernel dropped its lock: nothing stale
    refused = _try_lock(folder)  # (read through another process: closing the file here would drop our lock)
    assert f'process {os.getpid()} on host' in refused.stderr
    lock.release()
    assert not (folder / LOCK_FILENAME).exists()  # a clean release leaves nothing behind


def test_the_same_process_may_lock_again_and_the_last_release_frees(tmp_path):
    folder = str(tmp_path / 'run')
    first, second = acquire_run_lock(folder), acquire_run_lock(folder)
    first.release()
    first.release()  # idempotent
    probe = _try_lock(folder)
    assert probe.returncode != 0 and 'Another run is training into' in probe.stderr  # still held by `second`
    second.release()
    assert _try_lock(folder).returncode == 0


def test_without_kernel_locks_a_live_pid_of_this_host_holds_the_folder(tmp_path, monkeypatch):
    """Filesystems without lockf (ENOLCK): the lock file's pid decides, and a dead one is taken over."""
    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, 'No locks available')

    monkeypatch.setattr(run_lock.fcntl, 'lockf', no_locks)
    folder = tmp_path / 'run'
    folder.mkdir()
    sleeper = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])
    try:
        (folder / LOCK_FILENAME).write_text(f'{{"pid": {sleeper.pid}, "host": "{os.uname().nodename}", "started": "t"}}')
        with pytest.raises(RunLockedError, match=f'process {sleeper.pid}'):
            acquire_run_lock(str(folder))
    finally:
        sleeper.kill()
        sleeper.wait()
    acquire_run_lock(str(folder)).release()  # that pid is gone: the lock is stale and taken over


def test_build_trainer_takes_the_lock_until_close(tmp_path):
    folder = tmp_path / 'run'
    cfg = config_from_dict(tiny(save_folder=str(folder), save_interval='2ba', max_duration='4ba'))
    holder = _holder(folder)
    try:
        with pytest.raises(ConfigError, match=f'Another run is training into .*process {holder.pid}'):
            build_trainer(cfg)
    finally:
        holder.kill()
        holder.wait()
    trainer = build_trainer(cfg)
    assert _try_lock(folder).returncode != 0  # held by this trainer: another process is refused
    trainer.close()
    assert _try_lock(folder).returncode == 0  # released by close()


def _shm_fds() -> int:
    """This process's open descriptors of Streaming's shared-memory segments."""
    fds = []
    for fd in os.listdir('/proc/self/fd'):
        try:
            fds.append(os.readlink(f'/proc/self/fd/{fd}'))
        except OSError:
            pass
    return sum(target.startswith('/dev/shm/') for target in fds)


def test_close_and_a_failed_build_give_back_shared_memory_and_the_lock(tmp_path, monkeypatch):
    """Streaming keeps each dataset's segments open until exit; a process building many Trainers
    (a sweep, a notebook, this suite) ran out of file descriptors. Close gives them back, and so
    does a build that fails after its datasets exist."""
    import t5composer.trainer

    folder = tmp_path / 'run'
    cfg = config_from_dict(tiny(save_folder=str(folder), save_interval='4ba', max_duration='4ba', eval_interval='4ba'))
    before = _shm_fds()
    trainer = build_trainer(cfg)
    assert _shm_fds() > before  # train and eval datasets: 6 segments each
    trainer.fit()
    trainer.close()
    assert _shm_fds() == before
    trainer.close()  # a second close gives nothing back twice

    # Streaming opens a segment of every other dataset's prefix to pick its own, and kept them open.
    first = build_trainer(config_from_dict(tiny(run_name='first')))
    second = build_trainer(config_from_dict(tiny(run_name='second')))
    first.close()
    second.close()
    assert _shm_fds() == before

    def boom(self, *args, **kwargs):
        raise RuntimeError('the Trainer could not be made')

    monkeypatch.setattr(t5composer.trainer.NonBlockingTrainer, '__init__', boom)
    with pytest.raises(RuntimeError, match='could not be made'):
        build_trainer(config_from_dict(tiny(save_folder=str(folder), save_interval='4ba', max_duration='8ba', autoresume=True)))
    assert _shm_fds() == before
    assert _try_lock(folder).returncode == 0


@pytest.mark.slow
def test_two_training_commands_into_one_folder(tmp_path):
    """The real commands: the second run into the same save_folder is refused with exit status 2
    and leaves the first one's checkpoints and metrics alone."""
    folder = tmp_path / 'run'
    args = ['yamls/demo.yaml', 'max_duration=100000ba', f'save_folder={folder}', 'save_interval=2ba', 'eval_first=false',
            'eval_interval=1000ba', 'model.d_model=32', 'model.d_kv=8', 'model.d_ff=64', 'data.num_workers=0',
            'log_to_console=false', '~callbacks']
    env = {**os.environ, 'OMP_NUM_THREADS': '1'}
    first = subprocess.Popen([sys.executable, 'recipes/train.py', *args], cwd=REPO, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while not (folder / 'latest-rank0.pt').exists():
            assert first.poll() is None and time.monotonic() < deadline, first.stderr.read().decode() if first.poll() else 'timeout'
            time.sleep(0.5)
        second = subprocess.run([sys.executable, 'recipes/train.py', *args], cwd=REPO, env=env, capture_output=True, text=True)
        assert second.returncode == 2, second.stderr
        assert f"error: Invalid config (1 problem(s)):\n  - Another run is training into '{folder}': process {first.pid}" in second.stderr
        assert 'Traceback' not in second.stderr
        assert first.poll() is None  # the first run goes on
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()


# ------------------------------------------------------------------------------------ save folder faults


@pytest.mark.parametrize(
    ('make', 'expected'),
    [
        (lambda tmp: tmp / 'a_file', 'is a file, not a folder'),
        (lambda tmp: Path('/proc/t5composer-test/run'), "files cannot be created in '/proc/t5composer-test'"),
    ],
    ids=['file', 'proc'],
)
def test_preflight_refuses_a_save_folder_that_cannot_hold_checkpoints(tmp_path, make, expected):
    (tmp_path / 'a_file').write_text('x')
    folder = make(tmp_path)
    with pytest.raises(ConfigError, match=expected) as info:
        preflight(config_from_dict(tiny(save_folder=str(folder))))
    assert f"save_folder '{folder}'" in str(info.value)


def test_preflight_refuses_a_read_only_save_folder(tmp_path, monkeypatch):
    """(Root ignores permission bits, so the read-only filesystem is simulated at the probe.)"""
    import t5composer.checkpoints as checkpoints

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, 'Read-only file system', str(tmp_path / 'ro'))

    monkeypatch.setattr(checkpoints.tempfile, 'mkstemp', read_only)
    problem = save_folder_problem(str(tmp_path / 'ro'))
    assert 'Read-only file system; it is on a read-only filesystem' in problem and "save_folder '" in problem


def test_a_save_folder_without_room_for_one_checkpoint_is_refused_before_training(tmp_path, monkeypatch):
    import shutil

    import t5composer.checkpoints as checkpoints

    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(checkpoints.shutil, 'disk_usage', lambda path: usage._replace(free=10_000))
    cfg = config_from_dict(tiny(save_folder=str(tmp_path / 'run')))
    with pytest.raises(ConfigError, match=r"has 0 MB free, but one checkpoint of this run takes about \d+ MB"):
        build_trainer(cfg)
    # The lock of the failed build is released: the next attempt is not refused as "another run".
    monkeypatch.undo()
    build_trainer(cfg).close()


def test_checkpoint_size_estimate_is_what_a_checkpoint_takes(tmp_path):
    cfg = config_from_dict(tiny(save_folder=str(tmp_path / 'run'), save_interval='4ba', max_duration='4ba'))
    trainer = build_trainer(cfg)
    trainer.fit()
    trainer.close()
    size = os.path.getsize(tmp_path / 'run' / 'ep0-ba4-rank0.pt')
    from t5composer.callbacks.model_metadata import ModelMetadata

    (meta,) = [c for c in trainer.state.callbacks if isinstance(c, ModelMetadata)]
    estimate = estimated_checkpoint_bytes(trainer.state.model, optimizer='adamwscale', optimizer_kwargs={},
                                          extra_bytes=sum(len(b) for b in meta.tokenizer_files.values()))  # what build_trainer checks
    assert size <= estimate <= size + 1e6, (estimate, size)  # never short; over by at most the structure allowance
    assert free_space_problem(str(tmp_path), estimate) is None


# ------------------------------------------------------------------------------------ no progress


class _NoBatches(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 3

    def __getitem__(self, i: int) -> dict:
        raise AssertionError('never read: the sampler drops the short last batch')


@pytest.mark.filterwarnings('ignore:No batches were trained')  # Composer's own warning, before the guard stops the run
def test_an_epoch_without_a_batch_stops_the_run(tmp_path):
    """Composer would start empty epochs forever; the guard stops at the first one."""
    from composer import Trainer

    from t5composer.callbacks.progress_guard import NoProgressError, ProgressGuard
    from t5composer.models import build_composer_t5
    from test_generation import tiny_config

    model = build_composer_t5(config=tiny_config())
    loader = torch.utils.data.DataLoader(_NoBatches(), batch_size=4, drop_last=True)
    trainer = Trainer(model=model, train_dataloader=loader, max_duration='5ba', device='cpu', callbacks=[ProgressGuard()],
                      optimizers=torch.optim.SGD(model.parameters(), lr=0.1), progress_bar=False, log_to_console=False)
    start = time.monotonic()
    with pytest.raises(NoProgressError, match=r'Epoch 0 of the training data ended without a single batch \(3 rows on this process, '
                                              r'batches of 4 with drop_last\).*lower global_train_batch_size'):
        trainer.fit()
    assert time.monotonic() - start < 30
    trainer.close()


def test_cli_exit_status_of_a_run_without_progress(monkeypatch, capsys):
    """train.py prints the guard's message (no traceback) and exits with status 4."""
    import t5composer.cli as cli
    from t5composer.callbacks.progress_guard import NoProgressError

    def stuck() -> int:
        raise NoProgressError('Epoch 0 of the training data ended without a single batch.')

    assert cli._run_guarded([], stuck) == 4
    err = capsys.readouterr().err
    assert err.startswith('error: Epoch 0') and 'Traceback' not in err
