"""Remote data on a real S3-compatible server (moto's server mode on loopback): convert straight
to the bucket, train from it with a local cache, resume from it after a kill."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from t5composer.config import config_from_dict
from t5composer.data.c4_convert import convert_c4
from t5composer.data.span_spec import SpanCorruptionSpec
from t5composer.data.plan import plan_data
from test_resume_kill import assert_same_training_state
from test_training import tiny

REPO = Path(__file__).resolve().parents[1]
DRIVER = str(REPO / 'tests' / 'drivers' / 'faulty_train.py')
BUCKET = 't5c-test'


@pytest.fixture(scope='module')
def s3():
    """A moto S3 server on a free loopback port; credentials and endpoint in the environment,
    where streaming, boto3 and the training subprocesses read them."""
    moto_server = pytest.importorskip('moto.server')
    import boto3

    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    server = moto_server.ThreadedMotoServer(ip_address='127.0.0.1', port=port, verbose=False)
    server.start()
    env = {'AWS_ACCESS_KEY_ID': 'testing', 'AWS_SECRET_ACCESS_KEY': 'testing-secret', 'AWS_DEFAULT_REGION': 'us-east-1',
           'S3_ENDPOINT_URL': f'http://127.0.0.1:{port}'}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    client = boto3.client('s3', endpoint_url=env['S3_ENDPOINT_URL'])
    client.create_bucket(Bucket=BUCKET)
    yield client
    server.stop()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope='module')
def demo_source():
    """The demo corpus (C4 layout) and its tokenizer, from the tiny config's builtin data."""
    tok = Path(plan_data(config_from_dict(tiny())).tokenizer_name)
    return tok.parent / 'corpus', tok


def keys(client, prefix: str) -> list[str]:
    return sorted(o['Key'] for o in client.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get('Contents', []))


def test_convert_straight_to_s3(s3, demo_source, tmp_path):
    corpus, tok = demo_source
    url = f's3://{BUCKET}/convert'
    meta = convert_c4(source=str(corpus), out_root=url, splits=['val'], tokenizer=str(tok), spec=SpanCorruptionSpec(input_length=64),
                      progress=False, size_limit='64kb', local=tmp_path / 'staging')
    objects = keys(s3, 'convert/val/')
    assert 'convert/val/index.json' in objects and 'convert/val/t5composer_meta.json' in objects
    assert sum(k.endswith('.mds.zstd') for k in objects) >= 2  # several shards, uploaded as they filled
    assert meta['val']['rows'] > 0
    assert not any(p.is_file() for p in (tmp_path / 'staging').rglob('*'))  # shards deleted once uploaded

    with pytest.raises(FileExistsError, match=f'{url}/val already exist'):
        convert_c4(source=str(corpus), out_root=url, splits=['val'], tokenizer=str(tok), spec=SpanCorruptionSpec(input_length=64), progress=False)
    again = convert_c4(source=str(corpus), out_root=url, splits=['val'], tokenizer=str(tok), spec=SpanCorruptionSpec(input_length=64),
                       progress=False, overwrite=True, size_limit='1mb')
    assert again['val']['rows'] == meta['val']['rows']
    assert sum(k.endswith('.mds.zstd') for k in keys(s3, 'convert/val/')) == 1  # the old shards are gone


def remote_config(tmp_path: Path, tok: Path, url: str, cache: Path) -> dict:
    return tiny(run_name='remote', max_duration='12ba', eval_interval='12ba', save_interval='4ba', autoresume=True,
                tokenizer={'name': str(tok)},
                data={'remote': url, 'local': str(cache), 'input_length': 64, 'num_workers': 0, 'download_timeout': 20},
                scheduler={'name': 'cosine', 't_warmup': '3ba', 'final_lr': 1e-4, 't_max': '12ba'})


def train(tmp_path: Path, cfg: dict, folder: Path, fault: str = '') -> subprocess.CompletedProcess:
    from omegaconf import OmegaConf

    recipe = tmp_path / f'{folder.name}.yaml'
    OmegaConf.save(OmegaConf.create(dict(cfg, save_folder=str(folder))), recipe)
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS='1', T5C_FAULT=fault)
    return subprocess.run([sys.executable, DRIVER, str(recipe)], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300, start_new_session=True)


@pytest.mark.slow
def test_train_and_resume_from_s3(s3, demo_source, tmp_path):
    corpus, tok = demo_source
    url = f's3://{BUCKET}/c4'
    convert_c4(source=str(corpus), out_root=url, splits=['train', 'val'], tokenizer=str(tok), spec=SpanCorruptionSpec(input_length=64), progress=False)

    full = train(tmp_path, remote_config(tmp_path, tok, url, tmp_path / 'cache_full'), tmp_path / 'full')
    assert full.returncode == 0, full.stdout[-2000:] + full.stderr[-3000:]
    assert list((tmp_path / 'cache_full' / 'train').glob('shard.*.mds*'))  # streamed through the local cache

    cache = tmp_path / 'cache_killed'
    cfg = remote_config(tmp_path, tok, url, cache)
    killed = train(tmp_path, cfg, tmp_path / 'killed', fault='kill_after_batch:6')
    assert killed.returncode != 0
    shutil.rmtree(cache)  # a new machine: the resumed run downloads from the bucket again
    resumed = train(tmp_path, cfg, tmp_path / 'killed')
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-3000:]
    assert_same_training_state(tmp_path / 'full', tmp_path / 'killed')


@pytest.mark.slow
def test_remote_data_of_another_input_length_is_refused(s3, demo_source, tmp_path):
    from t5composer.config import ConfigError
    from t5composer.run.build import build_trainer

    corpus, tok = demo_source
    url = f's3://{BUCKET}/short'
    convert_c4(source=str(corpus), out_root=url, splits=['train', 'val'], tokenizer=str(tok), spec=SpanCorruptionSpec(input_length=32), progress=False)
    cfg = config_from_dict(dict(remote_config(tmp_path, tok, url, tmp_path / 'cache'), save_folder=str(tmp_path / 'run')))
    with pytest.raises(ConfigError, match=f'{url}/train') as info:
        build_trainer(cfg)
    assert 'expanded_length' in str(info.value)
