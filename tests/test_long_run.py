"""Long runs: host memory stays flat for 2,000 batches, and nothing is left in /dev/shm or /tmp
after a run ends or is killed and resumed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from t5composer.data.shared_memory import clean_stale_streaming_state, streaming_leftovers

REPO = Path(__file__).resolve().parents[1]
DRIVER = str(REPO / 'tests' / 'drivers' / 'faulty_train.py')

# The demo recipe (one dataloader worker, streaming, evals, checkpoints) at global batch 4 with a
# narrower model, so 2,000 batches take about a minute and a half on two cores.
SOAK = ['yamls/demo.yaml', 'max_duration=2000ba', 'global_train_batch_size=4', 'model.d_model=64', 'model.d_kv=16',
        'model.d_ff=192', 'eval_interval=500ba', 'eval_first=false', 'eval_subset_num_batches=2', 'save_interval=250ba',
        'save_num_checkpoints_to_keep=2', 'scheduler.t_warmup=40ba', 'console_log_interval=500ba', '~callbacks.nanot5_log',
        'callbacks.resource_monitor.interval=100', 'progress_bar=false']


def train(folder: Path, fault: str = '') -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS='1', T5C_FAULT=fault)
    cmd = [sys.executable, DRIVER, *SOAK, f'run_name={folder.name}', f'save_folder={folder}']
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900, start_new_session=True)


def memory_by_step(metrics: Path) -> tuple[dict[int, float], dict[int, float]]:
    """Resident MiB per logged step of trainer + dataloader worker, and of the trainer alone (last line wins)."""
    total, main = {}, {}
    for line in metrics.read_text().splitlines():
        row = json.loads(line)
        if 'resources/rss_mb' in row:
            main[row['step']] = row['resources/rss_mb']
            total[row['step']] = row['resources/rss_mb'] + row['resources/children_rss_mb']
    return total, main


def test_cleaning_spares_segments_a_live_process_maps(tmp_path):
    from multiprocessing import shared_memory

    live = shared_memory.SharedMemory(name='999998_locals', create=True, size=64)
    orphan = shared_memory.SharedMemory(name='999999_locals', create=True, size=64)
    orphan.close()  # unmapped: as after a kill
    lock = tmp_path / '999999_barrier_filelock'
    lock.touch()
    try:
        removed_shm, removed_locks = clean_stale_streaming_state(str(tmp_path))
        assert '999999_locals' in removed_shm and '999998_locals' not in removed_shm
        assert os.path.exists('/dev/shm/999998_locals') and not os.path.exists('/dev/shm/999999_locals')
        assert str(lock) in removed_locks
    finally:
        live.close()
        live.unlink()


def test_an_old_mapping_of_an_unlinked_segment_is_not_a_live_one(tmp_path):
    """A forked process (a dataloader worker) keeps its parent's mapping of a segment the parent
    has since unlinked; a new segment of the same name, left by a killed run, is still stale."""
    from multiprocessing import shared_memory

    old = shared_memory.SharedMemory(name='999997_locals', create=True, size=64)
    child = os.fork()
    if child == 0:  # maps the old segment until it is killed
        time.sleep(60)
        os._exit(0)
    try:
        old.close()
        old.unlink()
        left = shared_memory.SharedMemory(name='999997_locals', create=True, size=64)  # a killed run's
        left.close()
        removed_shm, _ = clean_stale_streaming_state(str(tmp_path))
        assert '999997_locals' in removed_shm
    finally:
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)
        if os.path.exists('/dev/shm/999997_locals'):
            os.unlink('/dev/shm/999997_locals')


@pytest.mark.slow
def test_2000_batches_memory_flat_and_nothing_left_after_kill_and_resume(tmp_path):
    folder = tmp_path / 'soak'
    before = streaming_leftovers()
    killed = train(folder, fault='kill_after_batch:300')
    assert killed.returncode != 0
    left_by_kill = streaming_leftovers() - before
    assert any(p.startswith('/dev/shm/') for p in left_by_kill)  # what a kill leaves (the test can fail)

    done = train(folder)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert not (streaming_leftovers() - before), streaming_leftovers() - before
    assert not [p for p in os.listdir(folder) if p.startswith('.partial-') or p.endswith('.lock')]

    # The resumed process (from 250) after its first 150 batches and first eval; evals add a few MB.
    total, main = memory_by_step(folder / 'metrics.jsonl')
    assert {400, 2000} <= set(total), sorted(total)
    shown = {step: (round(main[step]), round(total[step])) for step in sorted(total)}
    assert total[2000] / total[400] - 1 < 0.05, shown
    assert main[2000] / main[400] - 1 < 0.05, shown
