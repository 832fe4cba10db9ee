"""Shared test fixtures. Tests need no network; ../shared/data is optional (tests skip without it)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / 'shared' / 'data'

# Without a GPU our Triton kernels (t5composer/models/bias_attention_kernels.py) run in Triton's
# interpreter. triton.jit reads this when each function is decorated, its own library's included,
# so it must be set before anything imports triton (transformers and Composer do, at collection).
if 'TRITON_INTERPRET' not in os.environ:
    import torch

    if not torch.cuda.is_available():
        os.environ['TRITON_INTERPRET'] = '1'


@pytest.fixture(autouse=True, scope='session')
def _checkout_on_pythonpath():
    """Every process a test starts (recipes, Composer's launcher, helper scripts) imports this
    checkout's t5composer and bench/: the venv's installed t5composer may be another checkout's."""
    old = os.environ.get('PYTHONPATH')
    os.environ['PYTHONPATH'] = os.pathsep.join([str(REPO_ROOT), *([old] if old else [])])
    yield
    if old is None:
        del os.environ['PYTHONPATH']
    else:
        os.environ['PYTHONPATH'] = old


@pytest.fixture(autouse=True, scope='session')
def _isolated_cache(tmp_path_factory):
    """Keep every test's cache (demo corpus, tokenizers) out of the user's ~/.cache."""
    if 'T5COMPOSER_TEST_CACHE' in os.environ:
        os.environ['T5COMPOSER_CACHE'] = os.environ['T5COMPOSER_TEST_CACHE']
    else:
        os.environ['T5COMPOSER_CACHE'] = str(tmp_path_factory.mktemp('t5composer_cache'))
    yield


def shared_data(*parts: str) -> Path:
    """A path under ../shared/data, skipping the test when it is not there."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f'{path} not present (optional real-data test)')
    return path


@pytest.fixture
def large_interpreter_tiles(monkeypatch):
    """Model-level runs of our Triton kernels in the interpreter: tiles of 64, so fewer programs run
    (the kernel tests keep 16, to cross blocks and ragged edges). No effect when they run compiled."""
    from t5composer.models import bias_attention_kernels

    monkeypatch.setattr(bias_attention_kernels, 'INTERPRET_TILE', 64)


@pytest.fixture(scope='module')
def one_thread():
    """One torch thread for a module of tiny-model tests: they are all small ops, where one
    thread is faster, and on a busy machine two OpenMP threads stall each other at every op."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
