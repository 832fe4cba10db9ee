"""Checkpoint safety: atomic writes, recovery after kills and corruption, clear load errors."""

from __future__ import annotations

import errno
import logging
import os
import zipfile

import pytest
import torch

from t5composer.checkpoints import (
    PARTIAL_PREFIX,
    checkpoint_problem,
    install_atomic_writes,
    recover_checkpoints,
    write_atomically,
)
from t5composer.config import ConfigError, config_from_dict
from t5composer.run.build import build_trainer
from test_training import tiny

pytestmark = pytest.mark.usefixtures('one_thread')


def save(path, value=1.0) -> str:
    torch.save({'state': {'model': {'w': torch.full((64, 64), value)}}, 'rng': [{}]}, path)
    return str(path)


def truncate(path) -> None:
    os.truncate(path, os.path.getsize(path) // 2)


def flip_byte(path) -> None:
    with zipfile.ZipFile(path) as z:
        info = next(i for i in z.infolist() if i.filename.endswith('/data/0'))
    with open(path, 'r+b') as f:
        # The member's data starts after its local header (30 bytes + name + extra).
        f.seek(info.header_offset + 30 + len(info.filename.encode()) + len(info.extra) + 100)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))


def link(folder, target: str) -> None:
    os.symlink(os.path.basename(target), folder / 'latest-rank0.pt')


def test_checkpoint_problem_catches_truncation_and_flipped_bytes(tmp_path):
    good = save(tmp_path / 'a.pt')
    assert checkpoint_problem(good) is None
    bad = save(tmp_path / 'b.pt')
    flip_byte(bad)
    torch.load(bad, weights_only=False)  # torch itself loads the damaged file without a word
    assert 'checksum mismatch' in checkpoint_problem(bad)
    short = save(tmp_path / 'c.pt')
    truncate(short)
    assert 'truncated' in checkpoint_problem(short)
    assert checkpoint_problem(str(tmp_path / 'missing.pt')) == 'the file does not exist'
    (tmp_path / 'd.pt').write_bytes(b'not a checkpoint')
    assert 'truncated or not a torch checkpoint' in checkpoint_problem(str(tmp_path / 'd.pt'))


def test_write_atomically_leaves_nothing_on_a_full_disk(tmp_path):
    target = tmp_path / 'ep0-ba4-rank0.pt'
    save(target, 1.0)

    def full_disk(tmp: str) -> None:
        with open(tmp, 'wb') as f:
            f.write(b'x' * 1000)  # half a checkpoint, then the disk fills up
        raise OSError(errno.ENOSPC, 'No space left on device')

    with pytest.raises(OSError, match='No space left'):
        write_atomically(str(target), full_disk)
    assert os.listdir(tmp_path) == ['ep0-ba4-rank0.pt']  # no partial file
    assert checkpoint_problem(str(target)) is None  # the previous file is untouched
    assert torch.load(target, weights_only=False)['state']['model']['w'][0, 0] == 1.0


def test_recovery_falls_back_past_a_truncated_latest_and_names_both(tmp_path, caplog):
    old = save(tmp_path / 'ep0-ba4-rank0.pt')
    new = save(tmp_path / 'ep0-ba8-rank0.pt')
    truncate(new)
    link(tmp_path, new)
    (tmp_path / f'{PARTIAL_PREFIX}123-ep0-ba12-rank0.pt').write_bytes(b'half')
    with caplog.at_level(logging.WARNING, logger='t5composer'):
        report = recover_checkpoints(str(tmp_path))
    assert report.resume_from == old
    assert report.corrupt == [new]
    assert os.path.realpath(tmp_path / 'latest-rank0.pt') == os.path.realpath(old)
    assert sorted(os.listdir(tmp_path)) == ['ep0-ba4-rank0.pt', 'ep0-ba8-rank0.pt.corrupt', 'latest-rank0.pt']
    text = caplog.text
    assert 'resuming from ' + old in text and new in text and 'truncated' in text
    assert 'interrupted' in text  # the .partial- file


def test_recovery_takes_a_newer_intact_checkpoint_the_link_missed(tmp_path):
    old = save(tmp_path / 'ep0-ba4-rank0.pt')
    new = save(tmp_path / 'ep0-ba8-rank0.pt')
    link(tmp_path, old)  # killed after writing ba8, before the link moved
    assert recover_checkpoints(str(tmp_path)).resume_from == new
    assert os.path.realpath(tmp_path / 'latest-rank0.pt') == os.path.realpath(new)


def test_recovery_recreates_a_missing_link(tmp_path):
    new = save(tmp_path / 'ep0-ba8-rank0.pt')
    report = recover_checkpoints(str(tmp_path))
    assert report.repointed and report.resume_from == new
    assert os.path.islink(tmp_path / 'latest-rank0.pt')


def test_recovery_never_starts_over_when_nothing_is_intact(tmp_path):
    only = save(tmp_path / 'ep0-ba4-rank0.pt')
    flip_byte(only)
    link(tmp_path, only)
    with pytest.raises(ConfigError) as info:
        recover_checkpoints(str(tmp_path))
    message = str(info.value)
    assert only in message and 'checksum mismatch' in message
    assert 'will not start over on its own' in message and 'load_path=' in message
    assert os.path.exists(only)  # nothing was moved or deleted


def test_recovery_of_a_dangling_link_is_an_error(tmp_path):
    os.symlink('ep0-ba4-rank0.pt', tmp_path / 'latest-rank0.pt')
    with pytest.raises(ConfigError, match='No intact checkpoint'):
        recover_checkpoints(str(tmp_path))


def test_empty_or_missing_folder_starts_fresh(tmp_path):
    assert recover_checkpoints(str(tmp_path / 'nope')).resume_from is None
    assert recover_checkpoints(str(tmp_path)).resume_from is None


@pytest.mark.slow
def test_disk_full_during_a_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    """A real Trainer whose third save hits ENOSPC: the run stops, ba2/ba4 stay intact and latest,
    no file named like a checkpoint is left for ba6, and the next start resumes from ba4."""
    install_atomic_writes()
    folder = tmp_path / 'run'
    cfg = config_from_dict(tiny(run_name='run', save_folder=str(folder), save_interval='2ba', autoresume=True))
    real_save = torch.save
    calls = {'n': 0}

    def flaky_save(obj, f, *args, **kwargs):
        if isinstance(obj, dict) and 'rng' in obj:
            calls['n'] += 1
            if calls['n'] == 3:
                f.write(b'PK' + b'\0' * 4096)
                raise OSError(errno.ENOSPC, 'No space left on device')
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, 'save', flaky_save)
    trainer = build_trainer(cfg)
    with pytest.raises(OSError, match='No space left') as info:
        trainer.fit()
    trainer.close()
    # The message names the file, the space it needs and what to do.
    message = str(info.value)
    assert f'Could not save the checkpoint {folder / "ep0-ba6-rank0.pt"}' in message
    assert 'It needs about' in message and 'free there' in message and 'run the same command again to resume' in message
    monkeypatch.setattr(torch, 'save', real_save)
    assert sorted(os.listdir(folder)) == ['ep0-ba2-rank0.pt', 'ep0-ba4-rank0.pt', 'latest-rank0.pt', 'metrics.jsonl']
    assert os.path.realpath(folder / 'latest-rank0.pt').endswith('ep0-ba4-rank0.pt')

    again = build_trainer(cfg)
    assert int(again.state.timestamp.batch) == 4
    again.close()


@pytest.mark.slow
def test_autoresume_past_a_corrupt_latest_checkpoint(tmp_path, caplog):
    folder = tmp_path / 'run'
    cfg = config_from_dict(tiny(run_name='run', save_folder=str(folder), save_interval='2ba', autoresume=True, max_duration='6ba'))
    first = build_trainer(cfg)
    first.fit()
    first.close()
    truncate(folder / 'ep0-ba6-rank0.pt')
    with caplog.at_level(logging.WARNING, logger='t5composer'):
        second = build_trainer(cfg)
    assert int(second.state.timestamp.batch) == 4
    assert str(folder / 'ep0-ba4-rank0.pt') in caplog.text and str(folder / 'ep0-ba6-rank0.pt') in caplog.text
    second.fit()  # trains batches 5-6 again and saves ba6 afresh
    assert checkpoint_problem(str(folder / 'ep0-ba6-rank0.pt')) is None
    second.close()


@pytest.mark.slow
def test_corrupt_load_path_names_the_file_and_the_previous_checkpoint(tmp_path):
    folder = tmp_path / 'src'
    source = build_trainer(config_from_dict(tiny(max_duration='4ba', save_folder=str(folder), save_interval='2ba')))
    source.fit()
    source.close()
    flip_byte(folder / 'ep0-ba4-rank0.pt')
    with pytest.raises(ConfigError) as info:
        build_trainer(config_from_dict(tiny(load_path=str(folder / 'ep0-ba4-rank0.pt'))))
    message = str(info.value)
    assert f"load_path '{folder / 'ep0-ba4-rank0.pt'}' cannot be loaded" in message and 'checksum mismatch' in message
    assert f"load_path={folder / 'ep0-ba2-rank0.pt'}" in message


@pytest.mark.slow
def test_resuming_with_another_model_shape_lists_the_keys(tmp_path):
    folder = tmp_path / 'run'
    base = tiny(run_name='run', save_folder=str(folder), save_interval='4ba', autoresume=True, max_duration='4ba')
    base['scheduler'] = {'name': 'constant'}
    first = build_trainer(config_from_dict(base))
    first.fit()
    first.close()
    wider = dict(base, max_duration='6ba', model={**base['model'], 'd_ff': 96})
    with pytest.raises(ConfigError) as info:
        build_trainer(config_from_dict(wider))
    message = str(info.value)
    assert 'different shape' in message and str(folder) in message
    assert 'model.encoder.block.0.layer.1.DenseReluDense.wi_0.weight: checkpoint [64, 32] vs model [96, 32]' in message
    assert 'new run' in message


@pytest.mark.slow
def test_checkpoints_to_keep_holds_across_resumes_and_spares_other_folders(tmp_path):
    # Composer rotates only what its own process saved; after a resume the earlier run's
    # checkpoints used to stay for ever (4 files here instead of 2).
    def checkpoints(folder):
        return sorted(n for n in os.listdir(folder) if n.startswith('ep'))

    folder = tmp_path / 'run'
    run = dict(run_name='run', save_folder=str(folder), save_interval='2ba', save_num_checkpoints_to_keep=2, autoresume=True)
    first = build_trainer(config_from_dict(tiny(max_duration='6ba', **run)))
    first.fit()
    first.close()
    assert checkpoints(folder) == ['ep0-ba4-rank0.pt', 'ep0-ba6-rank0.pt']
    resumed = build_trainer(config_from_dict(tiny(max_duration='10ba', **run)))
    assert int(resumed.state.timestamp.batch) == 6
    resumed.fit()
    resumed.close()
    assert checkpoints(folder) == ['ep0-ba10-rank0.pt', 'ep0-ba8-rank0.pt']
    assert os.path.realpath(folder / 'latest-rank0.pt').endswith('ep0-ba10-rank0.pt')

    # A new run loading the full state from that folder inherits its list of checkpoints, but
    # rotates only its own folder's.
    other = tmp_path / 'other'
    branch = build_trainer(config_from_dict(tiny(run_name='other', save_folder=str(other), save_interval='2ba',
                                                 save_num_checkpoints_to_keep=1, max_duration='14ba',
                                                 load_path=str(folder / 'ep0-ba10-rank0.pt'))))
    branch.fit()
    branch.close()
    assert checkpoints(other) == ['ep0-ba14-rank0.pt']
    assert checkpoints(folder) == ['ep0-ba10-rank0.pt', 'ep0-ba8-rank0.pt']
