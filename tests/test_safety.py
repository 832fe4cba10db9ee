"""Safety: secrets never printed or logged, HF weights only from safetensors, no remote code."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from t5composer.redaction import redact, scrub, secret_values

REPO = Path(__file__).resolve().parents[1]


def test_scrub_hides_url_passwords_and_secret_env_values():
    env = {'AWS_SECRET_ACCESS_KEY': 'wJalrXUtnFEMI/K7MDENG', 'HF_TOKEN': 'hf_abcdefghijk', 'TOKENIZERS_PARALLELISM': 'false',
           'WANDB_API_KEY': 'x' * 40, 'HOME': '/root'}
    secrets = secret_values(env)
    assert set(secrets) == {'wJalrXUtnFEMI/K7MDENG', 'hf_abcdefghijk', 'x' * 40}
    text = 'remote s3://bucket/c4 tracking https://alice:pa55word@mlflow.example.com/ key wJalrXUtnFEMI/K7MDENG'
    assert scrub(text, secrets) == 'remote s3://bucket/c4 tracking https://alice:****@mlflow.example.com/ key ****'
    cfg = {'loggers': {'mlflow': {'tracking_uri': 'https://alice:pa55word@host/'}}, 'variables': {'api_key': 'abc'},
           'data': {'remote': 's3://bucket/c4'}, 'tokenizer': {'name': 'google/t5-v1_1-base'}}
    assert redact(cfg, secrets) == {'loggers': {'mlflow': {'tracking_uri': 'https://alice:****@host/'}}, 'variables': {'api_key': '****'},
                                    'data': {'remote': 's3://bucket/c4'}, 'tokenizer': {'name': 'google/t5-v1_1-base'}}


@pytest.mark.slow
def test_secrets_appear_in_no_output_and_no_file(tmp_path):
    """A short demo run with secrets in the environment, the config and a URL: none of them is in
    stdout, stderr, the metrics file or the checkpoints, even through a warning that quotes one."""
    env_secret, config_secret, url_secret = 'AKIAIOSFODNN7EXAMPLEKEY', 'hunter2-config-password', 'url-pa55w0rd'
    env = dict(os.environ, AWS_SECRET_ACCESS_KEY=env_secret, WANDB_API_KEY='w' * 40, OMP_NUM_THREADS='1',
               PYTHONPATH=str(REPO))
    folder = tmp_path / 'run'
    # A logging call that quotes the secrets (as a library might in an error) runs inside the run.
    script = (
        'import logging, sys\n'
        'from t5composer.cli import train_main\n'
        'from composer.core import Callback\n'
        'class Leaky(Callback):\n'
        '    def fit_start(self, state, logger):\n'
        f'        logging.getLogger("some.library").warning("connecting with %s and {config_secret} to https://u:{url_secret}@h/", "{env_secret}")\n'
        'sys.exit(train_main(sys.argv[1:], extra_callbacks=(Leaky(),)))\n'
    )
    cmd = [sys.executable, '-c', script, 'yamls/demo.yaml', 'max_duration=2ba', 'save_interval=2ba', 'eval_first=false',
           'eval_interval=2ba', 'eval_subset_num_batches=1', 'scheduler.t_warmup=1ba', 'run_name=secret', f'save_folder={folder}', '~callbacks',
           f'variables.db_password={config_secret}', f'loggers.file.filename={folder}/log.txt',
           'progress_bar=false']
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    assert 'connecting with **** and **** to https://u:****@h/' in out.stderr
    assert 'db_password: \'****\'' in out.stdout or 'db_password: ****' in out.stdout
    everything = out.stdout + out.stderr
    files = [p for p in folder.rglob('*') if p.is_file()]
    assert any(p.name == 'metrics.jsonl' for p in files) and any(p.suffix == '.pt' for p in files)
    blobs = [p.read_bytes() for p in files]
    for secret in (env_secret, config_secret, url_secret, 'w' * 40):
        assert secret not in everything, secret
        assert not any(secret.encode() in blob for blob in blobs), secret


RAISING_RUN = (
    'import sys\n'
    'from t5composer.cli import train_main\n'
    'from composer.core import Callback\n'
    'class Raise(Callback):\n'
    '    def fit_start(self, state, logger):\n'
    '        raise {error}\n'
    'sys.exit(train_main(sys.argv[1:], extra_callbacks=(Raise(),)))\n'
)
TINY_RUN = ['yamls/demo.yaml', 'max_duration=2ba', 'scheduler.t_warmup=1ba', 'eval_first=false', 'model.d_model=32', 'model.d_kv=8', 'model.d_ff=64',
            'data.num_workers=0', '~callbacks', 'progress_bar=false', 'log_to_console=false']


@pytest.mark.slow
def test_a_traceback_that_reaches_the_console_is_scrubbed(tmp_path):
    """A bug's traceback still prints (it is not a user error), but a secret interpolated into a path
    with ${oc.env:...} (here the save folder, quoted by the failing code) is scrubbed from it."""
    secret = 'sk-live-0123456789abcdef'
    env = dict(os.environ, MY_API_KEY=secret, OMP_NUM_THREADS='1', PYTHONPATH=str(REPO))
    # The failing code quotes the folder it was given, whose name holds the secret.
    script = RAISING_RUN.format(error='RuntimeError("cannot sync to " + __import__("os").environ["T5C_FOLDER"])')
    folder = f'{tmp_path}/runs/' + '${oc.env:MY_API_KEY}'
    env['T5C_FOLDER'] = str(tmp_path / 'runs' / secret)
    out = subprocess.run([sys.executable, '-c', script, *TINY_RUN, f'save_folder={folder}'], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 1 and 'Traceback' in out.stderr and 'RuntimeError: cannot sync' in out.stderr, out.stderr[-3000:]
    assert f'{tmp_path}/runs/****' in out.stderr
    assert secret not in out.stdout + out.stderr


@pytest.mark.slow
def test_an_os_error_on_a_users_path_is_explained_not_traced(tmp_path):
    """A path fault during the run (a lost mount, permissions) ends with the path and what to do, exit status 1."""
    script = RAISING_RUN.format(error=f'PermissionError(13, "Permission denied", "{tmp_path}/shared/metrics")')
    out = subprocess.run([sys.executable, '-c', script, *TINY_RUN, f'save_folder={tmp_path}/run'], cwd=REPO,
                         env=dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=str(REPO)), capture_output=True, text=True, timeout=300)
    assert out.returncode == 1, out.stderr[-3000:]
    assert f"error: '{tmp_path}/shared/metrics': Permission denied; check its permissions, or choose a location you can write to." in out.stderr
    assert 'Traceback' not in out.stderr


def test_hf_weights_only_from_safetensors(tmp_path):
    import transformers

    from t5composer.models.composer_t5 import build_composer_t5
    from test_generation import tiny_config

    config = tiny_config()
    hf = transformers.T5ForConditionalGeneration(config)
    hf.save_pretrained(tmp_path / 'pickle_only', safe_serialization=False)
    assert (tmp_path / 'pickle_only' / 'pytorch_model.bin').exists()
    with pytest.raises(ValueError, match='has no safetensors weights') as info:
        build_composer_t5(config=config, init='pretrained', pretrained=str(tmp_path / 'pickle_only'))
    assert 'model.revision' in str(info.value) and "torch.load('pytorch_model.bin', weights_only=True)" in str(info.value)
    with pytest.raises(ValueError, match='is not a .safetensors file'):
        build_composer_t5(config=config, init='pretrained', pretrained=str(tmp_path / 'pickle_only' / 'pytorch_model.bin'))

    hf.save_pretrained(tmp_path / 'safe')  # safetensors: accepted
    ours = build_composer_t5(config=config, init='pretrained', pretrained=str(tmp_path / 'safe')).model
    assert torch.equal(ours.shared.weight, hf.shared.weight)


def test_no_remote_code_and_pickles_only_for_our_own_checkpoints():
    sources = list((REPO / 't5composer').rglob('*.py')) + list((REPO / 'recipes').glob('*.py'))
    for path in sources:
        text = path.read_text()
        assert not re.search(r'trust_remote_code\s*=\s*True', text), path
        for line in text.splitlines():
            if 'weights_only=False' in line:
                # Full unpickling is for Composer checkpoints (documented as trusted-only).
                assert path.name in {'checkpoints.py', 'hf_interchange.py'}, (path, line)
