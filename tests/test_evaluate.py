"""recipes/evaluate.py end to end, for each kind of shipped recipe: pre-training (held-out NLL) and
fine-tuning (RougeL / exact match). Its scores equal the training run's own last evaluation of the
same checkpoint, and a checkpoint with a flipped byte is refused."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from t5composer.cli import train_main

REPO = Path(__file__).resolve().parents[1]
SMALL = ['model.d_model=32', 'model.d_kv=8', 'model.d_ff=64', 'data.num_workers=0', 'progress_bar=false', 'log_to_console=false']
PRETRAIN = ['yamls/demo.yaml', 'max_duration=4ba', 'eval_first=false', 'eval_interval=4ba', 'eval_subset_num_batches=2',
            'scheduler.t_warmup=1ba', '~callbacks', *SMALL]
FINETUNE = ['yamls/demo_ft.yaml', 'max_duration=4ba', 'eval_first=false', 'eval_interval=4ba', 'eval_subset_num_batches=2',
            'data.max_instances_per_task=6', 'data.max_new_tokens=4', '~callbacks', 'data.num_workers=0', 'progress_bar=false',
            'log_to_console=false']


def _last_eval(folder: Path, prefix: str) -> dict[str, float]:
    """The last logged value of each ``metrics/<prefix>/*`` metric in the run's metrics.jsonl."""
    last: dict[str, float] = {}
    for line in (folder / 'metrics.jsonl').read_text().splitlines():
        row = json.loads(line)
        last.update({k[len(f'metrics/{prefix}/'):]: v for k, v in row.items() if k.startswith(f'metrics/{prefix}/')})
    return last


def _evaluate(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, str(REPO / 'recipes' / 'evaluate.py'), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def _printed(out: str) -> dict[str, float]:
    return {m[1]: float(m[2]) for m in re.finditer(r'^(\w+/\w+): (-?\d+\.\d+)$', out, flags=re.MULTILINE)}


@pytest.fixture(scope='module')
def runs(tmp_path_factory) -> Path:
    """A tiny demo pre-training run and a fine-tuning run from it, in a clone-like working directory."""
    root = tmp_path_factory.mktemp('evaluate')
    for name in ('yamls', 'recipes'):
        (root / name).symlink_to(REPO / name)
    cwd = os.getcwd()
    os.chdir(root)
    try:
        assert train_main(PRETRAIN) == 0
        assert train_main(FINETUNE) == 0
    finally:
        os.chdir(cwd)
    return root


@pytest.mark.slow
def test_evaluate_a_pretraining_checkpoint(runs):
    """The cosine schedule of demo.yaml used to stop evaluate.py ('t_max is not set'); the eval
    needs no schedule, and scores the checkpoint exactly as the run's own last eval did."""
    out = _evaluate('yamls/demo.yaml', 'load_path=runs/demo/latest-rank0.pt', 'eval_subset_num_batches=2', *SMALL, cwd=runs)
    assert out.returncode == 0, out.stderr[-3000:]
    printed, logged = _printed(out.stdout), _last_eval(runs / 'runs' / 'demo', 'eval')
    assert set(printed) == {'eval/LanguageNLL', 'eval/TokenAccuracy'}
    for name in ('LanguageNLL', 'TokenAccuracy'):
        assert printed[f'eval/{name}'] == pytest.approx(logged[name], abs=1e-4)


@pytest.mark.slow
def test_evaluate_a_finetuning_checkpoint(runs):
    out = _evaluate('yamls/demo_ft.yaml', 'load_path=runs/demo_ft/latest-rank0.pt', 'eval_subset_num_batches=2',
                    'data.max_instances_per_task=6', 'data.max_new_tokens=4', 'data.num_workers=0', cwd=runs)
    assert out.returncode == 0, out.stderr[-3000:]
    printed, logged = _printed(out.stdout), _last_eval(runs / 'runs' / 'demo_ft', 'sni')
    for name in ('LanguageNLL', 'TokenAccuracy', 'RougeL', 'ExactMatch'):
        assert printed[f'sni/{name}'] == pytest.approx(logged[name], abs=1e-4), name
    assert f'predictions: {runs / "runs" / "demo_ft" / "predictions"}' in out.stdout


@pytest.mark.slow
def test_evaluate_refuses_a_corrupt_checkpoint(runs, tmp_path):
    folder = tmp_path / 'copy'
    folder.mkdir()
    good = folder / 'ep0-ba2-rank0.pt'
    shutil.copy(os.path.realpath(runs / 'runs' / 'demo' / 'latest-rank0.pt'), good)
    bad = folder / 'ep0-ba4-rank0.pt'
    data = bytearray(good.read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad.write_bytes(bytes(data))
    out = _evaluate('yamls/demo.yaml', f'load_path={bad}', *SMALL, cwd=runs)
    assert out.returncode == 2 and 'Traceback' not in out.stderr
    assert f"load_path '{bad}' cannot be loaded: it is corrupt (checksum mismatch" in out.stderr
    assert f'The newest intact checkpoint beside it is {good}: use it with load_path={good}.' in out.stderr


def test_eval_first_without_an_eval_split_trains(tmp_path, monkeypatch):
    """eval_first with data.eval_split: null has nothing to evaluate first: the run trains (it used to stop in Composer)."""
    monkeypatch.chdir(REPO)
    folder = tmp_path / 'run'
    args = [a for a in PRETRAIN if not a.startswith(('eval_first', 'eval_interval', 'eval_subset'))]
    assert train_main([*args, 'eval_first=true', 'data.eval_split=null', f'save_folder={folder}', 'save_interval=4ba']) == 0
    assert (folder / 'latest-rank0.pt').exists()
