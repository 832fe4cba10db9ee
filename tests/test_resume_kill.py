"""Killed runs resume exactly: SIGKILL between and during checkpoint saves, rerun, compare bit for bit.

Each run is the real command (``python recipes/train.py`` or ``composer -n 2``) through a driver
that injects the kill (tests/drivers/faulty_train.py). The whole process group dies at once,
dataloader workers and launcher included, as on a pre-empted machine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
DRIVER = str(REPO / 'tests' / 'drivers' / 'faulty_train.py')
KILLED = -9

# The demo recipe's model (d_model 128, 2+2 layers, batch 16 of 128 tokens), shortened: checkpoints
# every 4 batches, one eval at the end. t_max pins the cosine to the full run.
PRETRAIN = ['yamls/demo.yaml', 'max_duration=16ba', 'save_interval=4ba', 'eval_interval=16ba', 'eval_first=false',
            'eval_subset_num_batches=1', 'save_num_checkpoints_to_keep=-1', 'scheduler.t_warmup=4ba',
            'scheduler.t_max=16ba', 'console_log_interval=4ba', '~callbacks']
# demo_ft from the reference run's final checkpoint (its weights and tokenizer), shortened.
FINETUNE = ['yamls/demo_ft.yaml', 'max_duration=12ba', 'save_interval=4ba', 'eval_first=false', 'data.eval=false',
            'data.max_instances_per_task=16', 'data.max_source_length=96', 'data.max_target_length=16',
            'save_num_checkpoints_to_keep=-1', 'console_log_interval=4ba', '~callbacks']
# One kill between saves, one halfway through writing a checkpoint, one after a checkpoint is
# written but before the latest link points at it.
KILLS = {'pretrain': ['kill_after_batch:6', 'kill_during_save:12', 'kill_after_save:12'],
         'finetune': ['kill_after_batch:2', 'kill_during_save:8', 'kill_after_save:8']}


def run(args: list[str], folder: Path, *, nproc: int = 1, fault: str | None = None, record: Path | None = None,
        timeout: float = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS='1', T5C_FAULT=fault or '')
    if record is not None:
        env['T5C_RECORD'] = str(record)
    launcher = [sys.executable, DRIVER] if nproc == 1 else [sys.executable, '-m', 'composer.cli.launcher', '-n', str(nproc), DRIVER]
    cmd = launcher + args + [f'run_name={folder.name}', f'save_folder={folder}', 'progress_bar=false']
    # A session of its own: the injected kill takes the whole group, never pytest.
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout, start_new_session=True)


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


def final_state(folder: Path) -> dict:
    return torch.load(folder / 'latest-rank0.pt', map_location='cpu', weights_only=False)['state']


def assert_bitwise_equal(a, b, path: str = 'state') -> None:
    if torch.is_tensor(a):
        assert torch.is_tensor(b) and a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b), path
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), (path, sorted(set(a) ^ set(b)))
        for key in a:
            assert_bitwise_equal(a[key], b[key], f'{path}.{key}')
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_bitwise_equal(x, y, f'{path}[{i}]')
    else:
        assert a == b, (path, a, b)


def assert_same_training_state(full: Path, resumed: Path) -> None:
    a, b = final_state(full), final_state(resumed)
    counts = ('epoch', 'batch', 'sample', 'token', 'batch_in_epoch', 'sample_in_epoch')
    assert {k: a['timestamp']['Timestamp'][k] for k in counts} == {k: b['timestamp']['Timestamp'][k] for k in counts}
    assert a['dataset_state'] == b['dataset_state']
    assert_bitwise_equal(a['model'], b['model'], 'model')
    assert_bitwise_equal(a['optimizers'], b['optimizers'], 'optimizers')
    assert_bitwise_equal(a['schedulers'], b['schedulers'], 'schedulers')


def batches(record: Path) -> dict[int, list[str]]:
    """The rows of each global batch (all ranks, sorted); a batch redone after a kill keeps its last rows."""
    per_rank: dict[tuple[int, int], list[str]] = {}
    for line in record.read_text().splitlines():
        row = json.loads(line)
        per_rank[(row['batch'], row['rank'])] = row['rows']
    out: dict[int, list[str]] = {}
    for (batch, _), rows in per_rank.items():
        out.setdefault(batch, []).extend(rows)
    return {b: sorted(rows) for b, rows in out.items()}


def killed_and_resumed(args: list[str], folder: Path, kills: list[str], record: Path, nproc: int = 1) -> None:
    for fault in kills:
        proc = run(args, folder, nproc=nproc, fault=fault, record=record)
        assert proc.returncode != 0, f'{fault} did not kill the run:\n{proc.stdout[-2000:]}'
        assert not (folder / 'latest-rank0.pt').exists() or (folder / 'latest-rank0.pt').resolve().exists()
    out = ok(run(args, folder, nproc=nproc, record=record))
    assert 'already complete' not in out.stdout


@pytest.fixture(scope='module')
def reference(tmp_path_factory):
    """An uninterrupted pre-training run of the shortened demo recipe (one process)."""
    root = tmp_path_factory.mktemp('reference')
    ok(run(PRETRAIN, root / 'full', record=root / 'full.jsonl'))
    return root


@pytest.mark.slow
def test_pretraining_killed_three_times_resumes_bit_for_bit(reference, tmp_path):
    record = tmp_path / 'rows.jsonl'
    killed_and_resumed(PRETRAIN, tmp_path / 'killed', KILLS['pretrain'], record)
    assert batches(record) == batches(reference / 'full.jsonl')
    assert_same_training_state(reference / 'full', tmp_path / 'killed')
    # The kill during the save left no checkpoint behind that looks valid.
    assert not [p for p in os.listdir(tmp_path / 'killed') if p.startswith('.partial-') or p.endswith('.corrupt')]


@pytest.mark.slow
def test_finetuning_killed_three_times_resumes_bit_for_bit(reference, tmp_path):
    args = FINETUNE + [f"load_path={reference / 'full' / 'ep0-ba16-rank0.pt'}"]
    ok(run(args, tmp_path / 'full', record=tmp_path / 'full.jsonl'))
    killed_and_resumed(args, tmp_path / 'killed', KILLS['finetune'], tmp_path / 'rows.jsonl')
    assert batches(tmp_path / 'rows.jsonl') == batches(tmp_path / 'full.jsonl')
    assert_same_training_state(tmp_path / 'full', tmp_path / 'killed')


@pytest.mark.slow
def test_two_processes_killed_three_times_resume_bit_for_bit(reference, tmp_path):
    ok(run(PRETRAIN, tmp_path / 'full', nproc=2, record=tmp_path / 'full.jsonl'))
    # Two processes split each global batch of 16 and see exactly the one-process run's samples.
    assert batches(tmp_path / 'full.jsonl') == batches(reference / 'full.jsonl')
    rows = [json.loads(line) for line in (tmp_path / 'full.jsonl').read_text().splitlines()]
    logged = {r['step']: r['loss/train/total'] for r in map(json.loads, (tmp_path / 'full' / 'metrics.jsonl').read_text().splitlines())
              if 'loss/train/total' in r}
    for batch in range(16):
        ranks = {r['rank']: r for r in rows if r['batch'] == batch}
        assert set(ranks) == {0, 1} and len(ranks[0]['rows']) == len(ranks[1]['rows']) == 8
        assert not set(ranks[0]['rows']) & set(ranks[1]['rows'])  # disjoint halves
        # The logged loss is the mean over the processes.
        assert logged[batch] == pytest.approx((ranks[0]['loss'] + ranks[1]['loss']) / 2, rel=1e-6)
    killed_and_resumed(PRETRAIN, tmp_path / 'killed', KILLS['pretrain'], tmp_path / 'rows.jsonl', nproc=2)
    assert_same_training_state(tmp_path / 'full', tmp_path / 'killed')


@pytest.mark.slow
def test_resuming_with_another_process_count_continues_with_the_same_global_batches(reference, tmp_path):
    """A one-process run killed after batch 6 resumes on two processes from its batch-4 checkpoint.

    The global batch stays 16 (8 per process), streaming resumes at the same global sample, and
    every later global batch holds the same rows as the uninterrupted run; the weights agree up
    to the summation order of the two-process gradient all-reduce.
    """
    folder, record = tmp_path / 'elastic', tmp_path / 'rows.jsonl'
    proc = run(PRETRAIN, folder, fault='kill_after_batch:6', record=record)
    assert proc.returncode != 0
    out = ok(run(PRETRAIN, folder, nproc=2, record=record))
    assert 'were saved by 1 process(es)' in out.stdout + out.stderr  # the resume says what changed
    assert batches(record) == batches(reference / 'full.jsonl')
    full, elastic = final_state(reference / 'full')['model'], final_state(folder)['model']
    for key in full:
        torch.testing.assert_close(elastic[key], full[key], rtol=1e-3, atol=1e-4, msg=key)
