"""A catalogue of bad inputs: each is refused (or, for bad data lines, skipped and reported) with
the project's own message, which says what is wrong, where, and how to fix it.

Every case names a short stable id, what is fed in, and three fragments the message must hold:
``what`` (the problem), ``where`` (the key, file or path) and ``fix`` (what to do). The table in
docs/reliability.md lists the same ids with the messages; a test keeps the two in step.
"""

from __future__ import annotations

import gzip
import http.server
import importlib.util
import io
import json
import logging
import re
import shutil
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch

from t5composer.config import ConfigError, load_config
from t5composer.data.sni import SNIDataError, load_sni_split
from t5composer.data.span_spec import SpanCorruptionSpec
from t5composer.data.split_lock import SplitInUseError
from t5composer.run.build import build_trainer
from t5composer.run.preflight import preflight
from split_damage import drop_unpacked, flip_byte, hold_in_another_process, rewrite_rows, shard_names, stream_in_another_process

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / 'docs' / 'reliability.md'


# ------------------------------------------------------------------------------------ fixtures


def _texts() -> list[str]:
    from pydoc_data.topics import topics  # CPython's help topics: real English, offline, in the stdlib

    return [topics[k] for k in sorted(topics)]


@dataclass
class World:
    """What the cases share: a tokenizer, a C4-style source folder, splits converted from it."""

    tok: Path
    source: Path
    mds: Path


@pytest.fixture(scope='module')
def world(tmp_path_factory) -> World:
    from t5composer.data.c4_convert import convert_c4
    from t5composer.tokenizer_training import train_tokenizer

    root = tmp_path_factory.mktemp('bad_inputs')
    texts = _texts()
    tok = train_tokenizer(out_dir=root / 'tok', vocab_size=500, texts=texts[:40])
    source = root / 'en'
    source.mkdir()
    _write_c4(source / 'c4-train.00000-of-00001.json.gz', texts[40:70])
    _write_c4(source / 'c4-validation.00000-of-00001.json.gz', texts[70:80])
    convert_c4(source=str(source), out_root=root / 'mds', tokenizer=str(tok), spec=SpanCorruptionSpec(input_length=64), progress=False)
    return World(tok=Path(tok), source=source, mds=root / 'mds')


def _write_c4(path: Path, texts: list[str]) -> None:
    with gzip.open(path, 'wb') as f:
        for t in texts:
            f.write(json.dumps({'text': t, 'url': 'https://example.org'}).encode() + b'\n')


@dataclass
class Env:
    """One case's surroundings: the shared world plus its own tmp dir and pytest helpers."""

    world: World
    tmp: Path
    monkeypatch: Any
    capsys: Any
    caplog: Any
    closers: list


@pytest.fixture
def env(world, tmp_path, monkeypatch, capsys, caplog):
    monkeypatch.delenv('WORLD_SIZE', raising=False)
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)  # the same answers on a GPU machine
    e = Env(world=world, tmp=tmp_path, monkeypatch=monkeypatch, capsys=capsys, caplog=caplog, closers=[])
    yield e
    for close in e.closers:
        close()


# ------------------------------------------------------------------------------------ entry points


def base(env: Env) -> dict:
    """A valid tiny pre-training config over the world's converted splits (checked by a test below)."""
    return {
        'run_name': 'bad', 'seed': 1, 'max_duration': '10ba', 'global_train_batch_size': 4,
        'device_eval_batch_size': 4, 'eval_interval': '5ba', 'progress_bar': False, 'log_to_console': False,
        'python_log_level': None,
        'tokenizer': {'name': str(env.world.tok)},
        'model': {'name': 'google/t5-v1_1-small', 'vocab_size': 'tokenizer', 'd_model': 32, 'd_kv': 8, 'd_ff': 64,
                  'num_heads': 4, 'num_layers': 2, 'dropout_rate': 0.0},
        'data': {'local': str(env.world.mds), 'input_length': 64, 'num_workers': 0},
        'optimizer': {'name': 'adamwscale', 'lr': 0.01},
        'scheduler': {'name': 'cosine', 't_warmup': '3ba', 'final_lr': 1e-4},
    }


def _refused(fn: Callable[[], Any], error: type[BaseException] = ConfigError) -> str:
    """The message of the error ``fn`` raises, which must be exactly ``error`` (or a subclass)."""
    with pytest.raises(error) as info:
        fn()
    return str(info.value)


def config(*overrides: str) -> Callable[[Env], str]:
    """Load and validate the base config with dotted overrides (load_config without a YAML file)."""
    return lambda env: _refused(lambda: load_config(None, list(overrides), base=base(env)))


def as_dict(change: Callable[[dict], None]) -> Callable[[Env], str]:
    """Validate a config mapping as a YAML file would give it (config_from_dict: the schema)."""
    from t5composer.config import config_from_dict

    def run(env: Env) -> str:
        cfg = base(env)
        change(cfg)
        return _refused(lambda: config_from_dict(cfg))

    return run


def checked(*overrides: str, setup: Callable[[Env], None] | None = None, data: Callable[[Env], dict] | None = None) -> Callable[[Env], str]:
    """Load the config, then run preflight (what recipes/train.py runs before building anything)."""

    def run(env: Env) -> str:
        if setup is not None:
            setup(env)
        cfg = load_config(None, [o.replace('{tmp}', str(env.tmp)) for o in overrides], base=(data or base)(env))
        return _refused(lambda: preflight(cfg))

    return run


def built(*overrides: str, setup: Callable[[Env], None] | None = None) -> Callable[[Env], str]:
    """Build the Trainer (for checks that need the tokenizer); all fail before the model is built."""

    def run(env: Env) -> str:
        if setup is not None:
            setup(env)
        cfg = load_config(None, [o.replace('{tmp}', str(env.tmp)) for o in overrides], base=base(env))
        return _refused(lambda: build_trainer(cfg))

    return run


def cli(main: Callable[[list[str]], int], make_args: Callable[[Env], list[str]], *, status: int = 2,
        extra: tuple[str, ...] = ()) -> Callable[[Env], str]:
    """A command's main: exit status ``status``, one message on stderr (``error: ...``, or argparse's
    usage error), no traceback."""
    def run(env: Env) -> str:
        try:
            rc = main(make_args(env) + list(extra))
        except SystemExit as e:  # argparse's own usage errors
            rc = e.code
        err = env.capsys.readouterr().err
        assert rc == status and (err.startswith('error: ') or 'usage:' in err) and 'Traceback' not in err, (rc, err)
        return err

    return run


def recipe_main(name: str) -> Callable[[list[str]], int]:
    """The main of recipes/<name>.py."""
    spec = importlib.util.spec_from_file_location(f'{name}_recipe', REPO / 'recipes' / f'{name}.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def train_cli(make_args: Callable[[Env], list[str]]) -> Callable[[Env], str]:
    """recipes/train.py: exit status 2."""
    from t5composer.cli import train_main

    return cli(train_main, make_args)


def convert_cli(make_args: Callable[[Env], list[str]]) -> Callable[[Env], str]:
    """recipes/convert_c4.py: exit status 2."""
    return cli(recipe_main('convert_c4'), make_args, extra=('--no_progress',))


def convert(make_kwargs: Callable[[Env], dict], error: type[BaseException]) -> Callable[[Env], str]:
    """convert_c4 itself; a refused split leaves nothing behind in out_root."""
    from t5composer.data.c4_convert import convert_c4

    def run(env: Env) -> str:
        kwargs = {'out_root': env.tmp / 'out', 'tokenizer': str(env.world.tok), 'spec': SpanCorruptionSpec(input_length=64), 'progress': False,
                  **make_kwargs(env)}
        out = Path(kwargs['out_root'])
        before = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
        message = _refused(lambda: convert_c4(**kwargs), error)
        after = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
        assert after == before  # no temp dir, no half split, nothing removed
        return message

    return run


def converted_with_warnings(make_source: Callable[[Env], Path], expect_docs: int) -> Callable[[Env], str]:
    """convert_c4 on a source with bad lines/files: converts the rest, warns naming the file."""
    from t5composer.data.c4_convert import convert_c4

    def run(env: Env) -> str:
        source = make_source(env)
        with env.caplog.at_level(logging.WARNING, logger='t5composer.data.c4_convert'):
            meta = convert_c4(source=str(source), out_root=env.tmp / 'out', splits=['train'], tokenizer=str(env.world.tok),
                              spec=SpanCorruptionSpec(input_length=64), progress=False)['train']
        assert meta['docs'] >= expect_docs and meta['rows'] > 0  # the good files' documents are all there
        return '\n'.join(r.getMessage() for r in env.caplog.records)

    return run


# ------------------------------------------------------------------------------------ case helpers


def copy_split(env: Env) -> Path:
    """A private copy of the converted splits that a case may break."""
    out = env.tmp / 'mds'
    if not out.exists():
        shutil.copytree(env.world.mds, out)
    return out


def _edit_json(path: Path, change: Callable[[dict], None]) -> None:
    obj = json.loads(path.read_text())
    change(obj)
    path.write_text(json.dumps(obj))


def zero_samples(env: Env) -> None:
    _edit_json(copy_split(env) / 'train' / 'index.json', lambda idx: idx.update(shards=[]))


def corrupt_index(env: Env) -> None:
    (copy_split(env) / 'train' / 'index.json').write_text('{"shards": [')


def drop_index(env: Env) -> None:
    (copy_split(env) / 'train' / 'index.json').unlink()


def index_not_mds(env: Env) -> None:
    """Valid JSON that counts samples but is not streaming's shard index."""
    (copy_split(env) / 'train' / 'index.json').write_text(json.dumps({'version': 2, 'shards': [{'samples': 100}]}))


def drop_meta(env: Env) -> None:
    (copy_split(env) / 'train' / 't5composer_meta.json').unlink()


def corrupt_meta(env: Env) -> None:
    (copy_split(env) / 'train' / 't5composer_meta.json').write_text('{"format_version": 1,')


def other_tokenizer(env: Env) -> None:
    def change(meta: dict) -> None:
        meta.update(tokenizer='google/t5-v1_1-base', tokenizer_fingerprint='sha256:0123456789abcdef', vocab_size=32100)

    root = copy_split(env)
    for split in ('train', 'val'):
        _edit_json(root / split / 't5composer_meta.json', change)


def sni_checkout(env: Env, tasks: dict[str, Any], test: list[str]) -> Path:
    root = env.tmp / 'sni'
    (root / 'tasks').mkdir(parents=True)
    (root / 'splits' / 'default').mkdir(parents=True)
    for name, content in tasks.items():
        (root / 'tasks' / f'{name}.json').write_text(content if isinstance(content, str) else json.dumps(content))
    (root / 'splits' / 'default' / 'test_tasks.txt').write_text(''.join(f'{t}\n' for t in test))
    (root / 'splits' / 'default' / 'train_tasks.txt').write_text('good\n')
    return root


def sni_task(n: int = 3, drop: str | None = None) -> dict:
    task = {
        'Definition': ['Repeat the input.'],
        'Positive Examples': [{'input': 'a', 'output': 'a'}],
        'Instances': [{'id': f'i{i}', 'input': f'word {i}', 'output': [f'word {i}']} for i in range(n)],
        'Categories': ['Misc.'],
    }
    if drop:
        del task[drop]
    return task


class CharTokenizer:
    """One id per character plus EOS; enough for loading SNI files."""

    def __call__(self, texts, verbose=True, truncation=False, max_length=None):
        rows = [[ord(c) + 3 for c in t] + [1] for t in ([texts] if isinstance(texts, str) else texts)]
        return {'input_ids': rows[0] if isinstance(texts, str) else rows}

    def decode(self, ids, skip_special_tokens=False):
        return ''.join(chr(i - 3) for i in ids if i > 2)


def sni_loaded_with_problems(tasks: dict[str, Any], test: list[str]) -> Callable[[Env], str]:
    """Bad task files are reported by name; the good task still loads."""

    def run(env: Env) -> str:
        split = load_sni_split(root=sni_checkout(env, {'good': sni_task(), **tasks}, ['good', *test]), subset='test',
                               tokenizer=CharTokenizer())
        assert split.tasks == ['good'] and len(split.examples) == 3
        return '\n'.join(split.problems)

    return run


def sni_refused(tasks: dict[str, Any], test: list[str]) -> Callable[[Env], str]:
    def run(env: Env) -> str:
        root = sni_checkout(env, tasks, test)
        return _refused(lambda: load_sni_split(root=root, subset='test', tokenizer=CharTokenizer()), SNIDataError)

    return run


def sni_config(env: Env) -> dict:
    cfg = base(env)
    cfg['data'] = {'name': 'sni', 'root': str(env.tmp / 'sni')}
    return cfg


def closed_port() -> int:
    s = socket.socket()
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now: connections are refused at once
    return port


def s3_env(env: Env, endpoint: str) -> None:
    for key, value in {'S3_ENDPOINT_URL': endpoint, 'AWS_ACCESS_KEY_ID': 'dummy', 'AWS_SECRET_ACCESS_KEY': 'dummy',
                       'AWS_DEFAULT_REGION': 'us-east-1'}.items():
        env.monkeypatch.setenv(key, value)
    for key in ('AWS_PROFILE', 'AWS_SESSION_TOKEN', 'AWS_ENDPOINT_URL', 'AWS_ENDPOINT_URL_S3',
                'HTTP_PROXY', 'HTTPS_PROXY', 'http_proxy', 'https_proxy'):
        env.monkeypatch.delenv(key, raising=False)  # the endpoint is this machine, reached directly


def remote(make_endpoint: Callable[[Env], str], *, timeout: float | None = None, bound: float = 60.0) -> Callable[[Env], str]:
    """preflight with data.remote on an S3 endpoint that fails; it must answer within ``bound`` s."""

    def run(env: Env) -> str:
        s3_env(env, make_endpoint(env))
        overrides = ['data.remote=s3://bucket/c4', f'data.local={env.tmp / "cache"}']
        cfg = load_config(None, overrides + ([f'data.download_timeout={timeout}'] if timeout else []), base=base(env))
        start = time.monotonic()
        message = _refused(lambda: preflight(cfg))
        assert time.monotonic() - start < bound
        return message

    return run


def silent_endpoint(env: Env) -> str:
    """Accepts connections (the kernel's backlog) but never answers: a hung store."""
    server = socket.socket()
    server.bind(('127.0.0.1', 0))
    server.listen(16)
    env.closers.append(server.close)
    return f'http://127.0.0.1:{server.getsockname()[1]}'


def status_endpoint(status: int) -> Callable[[Env], str]:
    """An S3-like endpoint that answers every request with ``status``."""

    def make(env: Env) -> str:
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_HEAD(self):  # noqa: N802
                self.send_response(status)
                self.send_header('Content-Length', '0')
                self.end_headers()

            do_GET = do_HEAD  # noqa: N815

            def log_message(self, *args):
                pass

        server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        env.closers += [server.shutdown, server.server_close]
        return f'http://127.0.0.1:{server.server_address[1]}'

    return make


def huge_tokenizer(env: Env) -> dict:
    class Huge:  # a 70,000-id vocabulary; ids above 65535 do not fit uint16
        eos_token_id = 1

        def __len__(self):
            return 70000

        def get_vocab(self):
            return {'<pad>': 0, 'x': 69999}

    import t5composer.tokenization as tokenization

    env.monkeypatch.setattr(tokenization, 'load_tokenizer', lambda name: Huge())
    return {'source': str(env.world.source), 'tokenizer': 'huge/tokenizer'}


def source_with(env: Env, files: dict[str, bytes | list[str]]) -> Path:
    source = env.tmp / 'src'
    source.mkdir(exist_ok=True)
    for name, content in files.items():
        if isinstance(content, bytes):
            (source / name).write_bytes(content)
        else:
            _write_c4(source / name, content)
    return source


def truncated_gzip(texts: list[str]) -> bytes:
    data = gzip.compress(b''.join(json.dumps({'text': t}).encode() + b'\n' for t in texts))
    return data[: len(data) * 2 // 3]


# ------------------------------------------------------------------------------------ checkpoints, outputs and run folders (issue 11)


def _recipe_file(env: Env) -> Path:
    """The base config as a YAML file (the scripts take a recipe path)."""
    import yaml

    path = env.tmp / 'recipe.yaml'
    path.write_text(yaml.safe_dump(base(env)))
    return path




def trained_checkpoint(env: Env) -> Path:
    """A real checkpoint of the base config (made once per module), copied into the case's folder."""
    made = env.world.tok.parent / 'ckpt' / 'ep0-ba4-rank0.pt'
    if not made.exists():
        cfg = load_config(None, ['max_duration=4ba', 'save_interval=4ba', f'save_folder={made.parent}', 'eval_interval=4ba'],
                          base=base(env))
        trainer = build_trainer(cfg)
        trainer.fit()
        trainer.close()
    folder = env.tmp / 'run'
    folder.mkdir(exist_ok=True)
    shutil.copy(made, folder / 'ep0-ba2-rank0.pt')  # an intact older one beside the one the case breaks
    shutil.copy(made, folder / 'ep0-ba4-rank0.pt')
    return folder / 'ep0-ba4-rank0.pt'


def corrupt_checkpoint(env: Env) -> Path:
    """A checkpoint with one flipped byte inside a tensor: torch.load reads it without a word."""
    path = trained_checkpoint(env)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    return path


def evaluate_cli(make_args: Callable[[Env], list[str]]) -> Callable[[Env], str]:
    """recipes/evaluate.py: exit status 2."""
    from t5composer.cli import evaluate_main

    return cli(evaluate_main, make_args)


def export_cli(make_args: Callable[[Env], list[str]]) -> Callable[[Env], str]:
    """recipes/export_hf.py: exit status 2, nothing written."""
    return cli(recipe_main('export_hf'), make_args)


def recipe_cli(name: str, make_args: Callable[[Env], list[str]]) -> Callable[[Env], str]:
    """recipes/<name>.py: exit status 2."""
    return cli(recipe_main(name), make_args)


def non_empty_dir(env: Env) -> Path:
    out = env.tmp / 'hf'
    out.mkdir()
    (out / 'notes.txt').write_text('mine')
    return out


def simulate(target: str, error: OSError) -> Callable[[Env], None]:
    """Make ``target`` (a dotted attribute) raise ``error``: filesystems a root test cannot make (read-only, full)."""
    def setup(env: Env) -> None:
        def fail(*args: Any, **kwargs: Any) -> Any:
            raise error

        env.monkeypatch.setattr(target, fail)

    return setup


def tiny_disk(env: Env) -> None:
    import shutil as shutil_module

    import t5composer.checkpoints as checkpoints

    usage = shutil_module.disk_usage(env.tmp)
    env.monkeypatch.setattr(checkpoints.shutil, 'disk_usage', lambda path: usage._replace(free=20_000))


def folder_in_use(env: Env) -> None:
    """Another live process holds the save folder's run lock."""
    import subprocess
    import sys

    script = ('import sys, time\nfrom t5composer.run_lock import acquire_run_lock\n'
              'acquire_run_lock(sys.argv[1])\nprint("held", flush=True)\ntime.sleep(60)\n')
    proc = subprocess.Popen([sys.executable, '-c', script, str(env.tmp / 'run')], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == 'held'
    env.closers.append(lambda: (proc.kill(), proc.wait()))


def earlier_checkpoints(env: Env) -> None:
    trained_checkpoint(env)


def damaged_tokenizer(env: Env) -> None:
    (env.tmp / 'spiece.model').write_bytes(b'not a sentencepiece model')


def damaged_hf_weights(env: Env) -> str:
    """recipes/train.py with model.init=hf on a directory whose model.safetensors is damaged."""
    from t5composer.models.presets import load_model_config

    folder = env.tmp / 'hf'
    load_model_config('google/t5-v1_1-small', d_model=32, d_kv=8, d_ff=64, num_heads=4, num_layers=2,
                      vocab_size=640).save_pretrained(folder)
    (folder / 'model.safetensors').write_bytes(b'\0' * 64)
    cfg = base(env)
    cfg['model'] = {'name': str(folder), 'init': 'hf', 'dropout_rate': 0.0}
    return _refused(lambda: build_trainer(load_config(None, [], base=cfg)))


# ------------------------------------------------------------------------------------ data integrity and data-size helpers (issue 11)


def damaged(change: Callable[[Path], None]) -> Callable[[Env], None]:
    """A private copy of the converted splits whose train split ``change`` damages."""
    def setup(env: Env) -> None:
        split = copy_split(env) / 'train'
        drop_unpacked(split)  # read from the compressed shards, as a fresh split is
        change(split)

    return setup


def fewer_shards_listed(env: Env) -> None:
    """Splits of several shards, then train/index.json loses its last entry."""
    from t5composer.data.c4_convert import convert_c4

    convert_c4(source=str(env.world.source), out_root=env.tmp / 'mds', tokenizer=str(env.world.tok), spec=SpanCorruptionSpec(input_length=64),
               size_limit=40_000, progress=False)
    _edit_json(env.tmp / 'mds' / 'train' / 'index.json', lambda idx: idx['shards'].pop())


def flipped_root(env: Env) -> list[str]:
    flip_byte(copy_split(env) / 'train' / shard_names(env.tmp / 'mds' / 'train')[0])
    return [str(env.tmp / 'mds')]


def overwrite_read_split(env: Env) -> dict:
    """convert_c4 --overwrite of the splits while another process (a training run) reads train/."""
    env.closers.append(hold_in_another_process(copy_split(env) / 'train', 'reader'))
    return {'source': str(env.world.source), 'splits': ['train'], 'out_root': env.tmp / 'mds', 'overwrite': True}


def read_a_batch(*overrides: str, setup: Callable[[Env], None]) -> Callable[[Env], str]:
    """Build the Trainer and read training batches until one fails: the data path's own check."""
    from t5composer.data.streaming import CorruptDataError

    def run(env: Env) -> str:
        setup(env)
        cfg = load_config(None, [o.replace('{tmp}', str(env.tmp)) for o in overrides], base=base(env))
        trainer = build_trainer(cfg)
        env.closers.append(trainer.close)
        with pytest.raises(CorruptDataError) as info:
            for _ in trainer.state.train_dataloader:
                pass
        return str(info.value)

    return run


def verify_cli(make_args: Callable[[Env], list[str]], status: int) -> Callable[[Env], str]:
    """recipes/verify_data.py's main: the exit status, and what it prints."""
    from t5composer.data.verify import verify_main

    def run(env: Env) -> str:
        assert verify_main(make_args(env)) == status
        out = env.capsys.readouterr()
        return out.out + out.err

    return run


def fake_remote(env: Env) -> None:
    """data.remote=s3://bucket/c4 served from the world's converted splits (no network)."""
    import t5composer.data.locations as locations

    def fetch(url: str, dest: str, *, timeout: float = 60.0) -> None:
        shutil.copyfile(env.world.mds / url.removeprefix('s3://bucket/c4/'), dest)

    env.monkeypatch.setattr(locations, 'remote_split_problems', lambda *a, **k: [])  # the store "answers"
    env.monkeypatch.setattr(locations, 'fetch_remote_file', fetch)


def builtin_corpus(env: Env) -> dict:
    """The demo recipe's data section, its corpus served by the world's splits (building it takes a minute)."""
    import t5composer.data.demo_corpus as demo_corpus

    env.monkeypatch.setattr(demo_corpus, 'prepare_demo_data', lambda **kwargs: (env.world.tok, env.world.mds))
    cfg = base(env)
    cfg['tokenizer'] = {'name': None}
    cfg['data'] = {'builtin_corpus': 'python_docs', 'input_length': 64, 'num_workers': 0}
    return cfg


def built_from(data: Callable[[Env], dict], *overrides: str, setup: Callable[[Env], None] | None = None) -> Callable[[Env], str]:
    """Build the Trainer from another base config (builtin corpus, SNI)."""
    def run(env: Env) -> str:
        if setup is not None:
            setup(env)
        cfg = load_config(None, list(overrides), base=data(env))
        return _refused(lambda: build_trainer(cfg))

    return run


def dry_run_of(data: Callable[[Env], dict], *overrides: str, gpus: int) -> Callable[[Env], str]:
    """``--dry-run --dry-run-gpus N`` of another base config: refused as the run on N GPUs would be."""
    from t5composer.dry_run import dry_run

    def run(env: Env) -> str:
        cfg = load_config(None, list(overrides), base=data(env))
        return _refused(lambda: dry_run(cfg, gpus=gpus, out=io.StringIO()))

    return run


def sni_train_config(env: Env) -> dict:
    """SNI data whose train split holds 3 examples (one task of 3 instances)."""
    sni_checkout(env, {'good': sni_task()}, ['good'])
    return sni_config(env)


def reused_cache(env: Env) -> str:
    """A job streams one 'remote' split into the local cache another job streams it into."""
    from t5composer.data.span_corruption import SpanCorruptionCollator
    from t5composer.data.streaming import build_span_dataloader

    env.closers.append(stream_in_another_process(env.tmp / 'cache' / 'val', env.world.mds / 'val'))
    return _refused(lambda: build_span_dataloader(
        local=str(env.tmp / 'cache'), remote=str(env.world.mds), split='val', device_batch_size=4, shuffle=False, shuffle_seed=0,
        train=False, num_workers=0, collator=SpanCorruptionCollator(sentinel_ids=list(range(599, 499, -1)), eos_id=1, seed=0)))


def shared_memory_clash(env: Env) -> str:
    """The outcome of two jobs registering Streaming's shared memory at once: the second finds its prefix taken."""
    import streaming.base.shared.prefix as prefix

    from t5composer.data.span_corruption import SpanCorruptionCollator
    from t5composer.data.streaming import build_span_dataloader

    kwargs = dict(local=str(env.world.mds), remote=None, device_batch_size=4, shuffle=False, shuffle_seed=0, train=False,
                  num_workers=0, collator=SpanCorruptionCollator(sentinel_ids=list(range(599, 499, -1)), eos_id=1, seed=0))
    first = build_span_dataloader(split='val', **kwargs)
    taken = first.dataset._shm_prefix_int
    env.monkeypatch.setattr(prefix, '_check_and_find_retrying', lambda *args, **kw: taken)  # the race's outcome
    return _refused(lambda: build_span_dataloader(split='train', **kwargs))


# ------------------------------------------------------------------------------------ the catalogue


@dataclass(frozen=True)
class Case:
    id: str
    input: str
    run: Callable[[Env], str]
    what: str
    where: str
    fix: str


T = _texts()

CASES = [
    # Config keys and types (load_config: the schema at every level).
    Case('typo-top-level', 'optimzer.lr=0.1', config('optimzer.lr=0.1'), 'Unknown key', "'optimzer'", "Did you mean 'optimizer'?"),
    Case('typo-model', 'model.d_modle=64', config('model.d_modle=64'), 'Unknown key', "'model.d_modle'", "Did you mean 'd_model'?"),
    Case('typo-data', 'data.input_lenght=256', config('data.input_lenght=256'), 'Unknown key', "'data.input_lenght'", "Did you mean 'input_length'?"),
    Case('typo-optimizer-option', 'optimizer.beta=[0.9,0.99] (adamwscale)', checked('optimizer.beta=[0.9,0.99]'),
         'Unknown key', "'optimizer.beta'", "Did you mean 'betas'?"),
    Case('typo-scheduler-option', 'scheduler.t_warmpu=3ba (cosine)', checked('~scheduler.t_warmup', 'scheduler.t_warmpu=3ba'),
         'Unknown key', "'scheduler.t_warmpu'", "Did you mean 't_warmup'?"),
    Case('typo-callback-option', 'callbacks.speed_monitor.windo_size=5', checked('callbacks.speed_monitor.windo_size=5'),
         'Unknown key', "'callbacks.speed_monitor.windo_size'", "Did you mean 'window_size'?"),
    Case('typo-data-name', 'data.name=snii', config('data.name=snii'), 'must be one of', "'data.name'", "Did you mean 'sni'?"),
    Case('objective-preset-typo', 'data.objective.preset=ul3', config('data.objective.preset=ul3'),
         "must be one of ['span_corruption', 'ul2']", "'data.objective.preset'", "Did you mean 'ul2'?"),
    Case('objective-zero-weight', 'a denoiser with weight 0', config('data.objective.denoisers=[{kind: span, mean_span_length: 3, corruption_rate: 0.5, weight: 0}]'),
         'must be a finite number > 0, got 0', "'data.objective.denoisers[0].weight'", 'leave a denoiser out of the mixture'),
    Case('type-string-for-int', 'global_train_batch_size=abc', config('global_train_batch_size=abc'),
         "got str 'abc'", "'global_train_batch_size'", 'must be an integer'),
    Case('type-list-for-mapping', 'model: [1, 2] in the YAML', as_dict(lambda c: c.update(model=[1, 2])),
         'got list [1, 2]', "'model'", 'must be a mapping of keys (name, init'),
    Case('type-list-for-components', 'algorithms: [gradient_clipping] in the YAML', as_dict(lambda c: c.update(algorithms=['gradient_clipping'])),
         'got list', "'algorithms'", "write 'name: value' entries indented under 'algorithms:'"),
    Case('type-string-for-mapping', 'data: c4 in the YAML', as_dict(lambda c: c.update(data='c4')),
         "got str 'c4'", "'data'", "e.g. 'data: {name: c4, ...}'"),
    Case('override-list-for-mapping', 'model=[1,2] on the command line', config('model=[1,2]'),
         'holds a mapping in the config', "Override 'model=[1,2]' cannot replace 'model'", 'Set its keys one by one'),
    Case('type-bool', 'data.shuffle=maybe', config('data.shuffle=maybe'), "got 'maybe'", "'data.shuffle'", 'must be true or false'),
    Case('precision-typo', 'precision=bf16', config('precision=bf16'), 'must be one of', "'precision'", "Did you mean 'amp_bf16'?"),
    # Values of the right type that cannot work.
    Case('lr-negative', 'optimizer.lr=-1', config('optimizer.lr=-1'), 'must be >= 0, got -1.0', "'optimizer.lr'", 'e.g. optimizer.lr=0.01'),
    Case('lr-nan', 'optimizer.lr=.nan', config('optimizer.lr=.nan'), 'must be a finite number, got nan', "'optimizer.lr'", 'set e.g. optimizer.lr=0.01'),
    Case('noise-density-zero', 'data.noise_density=0', config('data.noise_density=0'), 'must be in (0, 1), got 0.0', "'data.noise_density'", 'T5 uses 0.15'),
    Case('noise-density-above-one', 'data.noise_density=1.2', config('data.noise_density=1.2'), 'must be in (0, 1), got 1.2', "'data.noise_density'", 'T5 uses 0.15'),
    Case('mean-span-below-one', 'data.mean_noise_span_length=0.5', config('data.mean_noise_span_length=0.5'),
         'must be >= 1, got 0.5', "'data.mean_noise_span_length'", 'T5 uses 3'),
    Case('input-length-too-small', 'data.input_length=2', config('data.input_length=2'), 'too small to hold one noise span', "'data.input_length' 2", 'use at least 4'),
    Case('input-length-zero', 'data.input_length=0', config('data.input_length=0'), 'too small to hold one noise span', "'data.input_length' 0", 'use at least 4'),
    Case('input-length-too-many-spans', 'data.input_length=4096', config('data.input_length=4096'),
         'sentinel tokens but T5 tokenizers have 100', "'data.input_length' 4096", 'lower input_length or raise mean_noise_span_length'),
    Case('warmup-longer-than-run', 'scheduler.t_warmup=20ba, max_duration=10ba', config('scheduler.t_warmup=20ba'),
         'must be shorter than', "'scheduler.t_warmup' (20ba)", 'lower t_warmup or train longer'),
    Case('max-duration-malformed', "max_duration='10 batches'", config('max_duration=10 batches'),
         "got '10 batches'", "'max_duration'", "must be a duration like '1000ba'"),
    Case('eval-interval-malformed', 'eval_interval=often', config('eval_interval=often'), "got 'often'", "'eval_interval'", "must be a duration like '1000ba'"),
    Case('save-interval-wrong-unit', 'save_interval=100tok', config('save_interval=100tok'), "got '100tok'", "'save_interval'",
         'must be in one of the units ba (batches), ep (epochs)'),
    Case('console-interval-malformed', 'console_log_interval=often', config('console_log_interval=often'),
         "got 'often'", "'console_log_interval'", "must be a duration like '1000ba'"),
    Case('batch-size-zero', 'global_train_batch_size=0', config('global_train_batch_size=0'), 'must be positive, got 0', "'global_train_batch_size'", 'must be positive'),
    Case('eval-subset-negative', 'eval_subset_num_batches=-5', config('eval_subset_num_batches=-5'),
         'got -5', "'eval_subset_num_batches'", 'must be -1 (the whole eval split) or positive'),
    Case('keep-zero-with-autoresume', 'autoresume=true save_num_checkpoints_to_keep=0',
         config('autoresume=true', 'save_folder=runs/x', 'save_num_checkpoints_to_keep=0'),
         'got 0', "'save_num_checkpoints_to_keep'", 'must be -1 (keep all) or positive'),
    Case('autoresume-without-save-folder', 'autoresume=true, no save_folder', config('autoresume=true'),
         'you must also set', "'autoresume: true'", "set 'run_name' and 'save_folder'"),
    Case('run-name-with-slash', 'run_name=a/b', config('run_name=a/b'), "no '/'", "'run_name' 'a/b'", 'use e.g. run_name=pt_base-lr2e-2'),
    # Durations, seeds and run names (issue 11): one parser, one set of unit rules.
    Case('max-duration-bare-number', 'max_duration=20 (no unit)', config('max_duration=20'),
         'a number without a unit, which Composer and the schedules would read differently', "'max_duration' is 20", 'e.g. 20ba (batches) or 20ep (epochs)'),
    Case('warmup-bare-number', 'scheduler.t_warmup=3 (no unit)', config('scheduler.t_warmup=3'),
         'a number without a unit', "'scheduler.t_warmup' is 3", 'e.g. 3ba (batches) or 3ep (epochs)'),
    Case('eval-interval-fraction', 'eval_interval=2.5ba', config('eval_interval=2.5ba'),
         'batches are counted whole', "'eval_interval' is '2.5ba'", 'write a whole number such as 2ba or 3ba'),
    Case('max-duration-zero', 'max_duration=0ba', config('max_duration=0ba'), 'must be positive', "'max_duration'", "got '0ba'"),
    Case('seed-negative', 'seed=-1', config('seed=-1'), 'must be between 0 and 4294967295', "'seed'", 'e.g. seed=2137'),
    Case('run-name-dot-dot', 'run_name=.. (the run folder would be runs/..)', config('run_name=..'),
         "not '.' or '..'", "'run_name' '..'", 'use e.g. run_name=pt_base-lr2e-2'),
    Case('num-workers-negative', 'data.num_workers=-1', config('data.num_workers=-1'), 'must be >= 0, got -1', "'data.num_workers'", 'must be >= 0'),
    Case('shuffle-algo-unknown', 'data.shuffle_algo=py1b', config('data.shuffle_algo=py1b'), "got 'py1b'", "'data.shuffle_algo'", "Did you mean 'py1br'?"),
    Case('log-level-unknown', 'python_log_level=loud', config('python_log_level=loud'), "got 'loud'", "'python_log_level'",
         'must be one of debug, info, warning, error, critical or null'),
    Case('dropout-out-of-range', 'model.dropout_rate=1.5', config('model.dropout_rate=1.5'), 'must be in [0, 1), got 1.5', "'model.dropout_rate'",
         'nanoT5 pre-trains with 0.0'),
    Case('model-dim-negative', 'model.d_model=-8', config('model.d_model=-8'), 'must be positive, got -8', "'model.d_model'", 'set it to a positive integer or null'),
    Case('download-timeout-zero', 'data.download_timeout=0', config('data.download_timeout=0'), 'got 0.0', "'data.download_timeout'", 'the default is 60'),
    Case('init-checkpoint-without-load-path', 'model.init=checkpoint, no load_path', config('model.init=checkpoint'),
         'you must also set', "'load_path'", 'e.g. runs/pt_base/latest-rank0.pt'),
    Case('init-hf-with-architecture', 'model.init=hf model.d_model=32', config('model.init=hf'),
         'takes the architecture from the weights', 'model.d_model', 'remove the model overrides'),
    # YAML files and overrides (recipes/train.py).
    Case('yaml-missing', 'recipes/train.py no/such.yaml', train_cli(lambda env: [str(env.tmp / 'no' / 'such.yaml')]),
         'does not exist', 'such.yaml', 'Pass a YAML from yamls/'),
    Case('yaml-malformed', 'a YAML file with an unclosed [', train_cli(lambda env: [_write(env.tmp / 'bad.yaml', 'seed: 1\nmodel: [1, 2\nrun_name: x\n')]),
         'is not valid YAML', 'bad.yaml', 'close every bracket'),
    Case('yaml-tab-indent', 'a YAML file indented with a tab', train_cli(lambda env: [_write(env.tmp / 'tab.yaml', 'model:\n\tname: x\n')]),
         'found character that cannot start any token', 'tab.yaml', 'indent with spaces (not tabs)'),
    Case('yaml-not-mapping', 'a YAML file holding a list', train_cli(lambda env: [_write(env.tmp / 'list.yaml', '- seed\n- 1\n')]),
         'must hold a mapping of keys at the top level', 'list.yaml', "lines like 'max_duration: 1000ba'"),
    Case('override-without-equals', 'recipes/train.py yamls/demo.yaml optimizer.lr', train_cli(lambda env: [str(REPO / 'yamls' / 'demo.yaml'), 'optimizer.lr']),
         'must look like key=value', "Override 'optimizer.lr'", 'for example optimizer.lr=0.01'),
    Case('override-bad-value', 'optimizer.betas=[0.9,', train_cli(lambda env: [str(REPO / 'yamls' / 'demo.yaml'), 'optimizer.betas=[0.9,']),
         'is not valid YAML', "override 'optimizer.betas=[0.9,'", 'close its brackets'),
    Case('override-remove-missing', '~scheduler.nope', config('~scheduler.nope'), 'it is not in the config', "'scheduler.nope'", 'Cannot remove'),
    Case('interpolation-missing', 'run_name=${variables.nope}', config('run_name=${variables.nope}'),
         "Interpolation key 'variables.nope' not found", 'full_key: run_name', "Define the key it names"),
    # Processes, devices and batch sizes (preflight).
    Case('world-size-indivisible', 'WORLD_SIZE=3, global_train_batch_size=4',
         checked(setup=lambda env: env.monkeypatch.setenv('WORLD_SIZE', '3')),
         'is not divisible by the number of processes (3)', 'global_train_batch_size 4', 'use a multiple of 3'),
    Case('world-size-garbage', 'WORLD_SIZE=two', checked(setup=lambda env: env.monkeypatch.setenv('WORLD_SIZE', 'two')),
         "is 'two', not a positive integer", 'WORLD_SIZE', 'launch with composer -n N'),
    Case('microbatch-indivisible', 'global_train_batch_size=8 device_train_microbatch_size=3',
         checked('global_train_batch_size=8', 'device_train_microbatch_size=3'),
         'must divide the per-device batch 8', 'device_train_microbatch_size 3', 'pick a divisor of 8'),
    Case('microbatch-auto-on-cpu', "device_train_microbatch_size=auto on a CPU", checked('device_train_microbatch_size=auto'),
         "'auto' needs a GPU", 'device_train_microbatch_size', 'on CPU set an integer'),
    Case('amp-bf16-on-cpu', 'precision=amp_bf16 on a CPU', checked('precision=amp_bf16'),
         'is not supported on CPU', "precision 'amp_bf16'", 'set precision=fp32'),
    Case('triton-attention-on-cpu', 'model.attn_impl=triton on a CPU',
         checked('model.attn_impl=triton', 'model.dropout_rate=0', setup=lambda env: env.monkeypatch.delenv('TRITON_INTERPRET', raising=False)),
         'its kernels run on CUDA', 'model.attn_impl=triton cannot run here', 'Set model.attn_impl=sdpa'),
    Case('optimizer-fused-on-cpu', 'optimizer.fused=true on a CPU',
         checked('optimizer.fused=true', setup=lambda env: env.monkeypatch.delenv('TRITON_INTERPRET', raising=False)),
         'its kernels run on CUDA', 'optimizer.fused=true cannot run here', 'Set optimizer.fused=false'),
    # Names of components (preflight, before the model is built).
    Case('optimizer-unknown', 'optimizer.name=adamwscal', checked('optimizer.name=adamwscal'),
         'is not a registered optimizer', "'optimizer.name' 'adamwscal'", "Did you mean 'adamwscale'?"),
    Case('optimizer-bad-value', 'optimizer.name=adamw optimizer.betas=[0.9,1.5]', checked('optimizer.name=adamw', 'optimizer.betas=[0.9,1.5]'),
         'Invalid beta parameter at index 1: 1.5', 'optimizer.betas=[0.9, 1.5]', 'Fix those values'),
    Case('scheduler-unknown', 'scheduler.name=cosin', checked('scheduler.name=cosin'),
         'is not a registered schedule', "'scheduler.name' 'cosin'", "Did you mean 'cosine'?"),
    Case('scheduler-bad-duration', 'scheduler.t_warmup=soon', config('scheduler.t_warmup=soon'),
         "must be a duration like '1000ba'", "'scheduler.t_warmup'", 'units: ba (batches), ep (epochs), dur (a fraction of max_duration)'),
    Case('callback-unknown', 'callbacks.speed_monitr={}', checked('callbacks.speed_monitr={}'),
         'Unknown callback', "'speed_monitr' in 'callbacks'", "Did you mean 'speed_monitor'?"),
    Case('algorithm-unknown', 'algorithms.gradient_clip={}', checked('algorithms.gradient_clip={}'),
         'Unknown algorithm', "'gradient_clip' in 'algorithms'", "Did you mean 'gradient_clipping'?"),
    Case('logger-unknown', 'loggers.tensorbord={}', checked('loggers.tensorbord={}'),
         'Unknown logger', "'tensorbord' in 'loggers'", "Did you mean 'tensorboard'?"),
    Case('logger-package-missing', 'loggers.wandb={project: x} without wandb installed',
         checked('loggers.wandb={project: x}', setup=lambda env: env.monkeypatch.setattr('t5composer.registry.installed', lambda package: package != 'wandb')),
         "needs the 'wandb' package, which is not installed", "'loggers.wandb'", 'pip install wandb'),
    # Paths (preflight / tokenizer loading).
    Case('load-path-missing', 'load_path=<tmp>/nope.pt', checked('load_path={tmp}/nope.pt'), 'does not exist', 'nope.pt', 'Point load_path at a Composer checkpoint'),
    # Checkpoints, outputs and run folders (issue 11): every command checks the checkpoint it reads.
    Case('evaluate-checkpoint-corrupt', 'recipes/evaluate.py load_path=<a checkpoint with a flipped byte>',
         evaluate_cli(lambda env: [str(_recipe_file(env)), f'load_path={corrupt_checkpoint(env)}']),
         'cannot be loaded: it is corrupt (checksum mismatch', "load_path '<tmp>/run/ep0-ba4-rank0.pt'",
         'The newest intact checkpoint beside it is <tmp>/run/ep0-ba2-rank0.pt: use it with load_path=<tmp>/run/ep0-ba2-rank0.pt'),
    Case('export-checkpoint-corrupt', 'recipes/export_hf.py <a checkpoint with a flipped byte> OUT',
         export_cli(lambda env: [str(corrupt_checkpoint(env)), str(env.tmp / 'hf')]),
         'cannot be loaded: it is corrupt (checksum mismatch', 'Checkpoint <tmp>/run/ep0-ba4-rank0.pt',
         'use it with python recipes/export_hf.py <tmp>/run/ep0-ba2-rank0.pt <tmp>/hf'),
    Case('export-out-dir-not-empty', 'recipes/export_hf.py CKPT <a folder with other files>',
         export_cli(lambda env: [str(trained_checkpoint(env)), str(non_empty_dir(env))]),
         'is not empty (notes.txt)', '<tmp>/hf', 'pass --overwrite (overwrite=True) to replace it with this export, or choose another output directory'),
    Case('export-overwrite-foreign-files', 'recipes/export_hf.py CKPT <a folder with other files> --overwrite',
         export_cli(lambda env: [str(trained_checkpoint(env)), str(non_empty_dir(env)), '--overwrite']),
         'holds files that are not part of a Hugging Face model (notes.txt)', '<tmp>/hf', 'choose another output directory'),
    Case('save-folder-is-a-file', 'save_folder=<a file>', checked('save_folder={tmp}/file', setup=lambda env: (env.tmp / 'file').write_text('x')),
         'is a file, not a folder', "save_folder '<tmp>/file'", 'point save_folder (or run_name) elsewhere'),
    Case('save-folder-under-proc', 'save_folder=/proc/t5composer/run', checked('save_folder=/proc/t5composer/run'),
         "files cannot be created in '/proc/t5composer'", "save_folder '/proc/t5composer/run'", 'Point save_folder (or run_name) at a folder you can write to'),
    Case('save-folder-read-only', 'save_folder on a read-only filesystem (simulated: root ignores permission bits)',
         checked('save_folder={tmp}/ro', setup=simulate('t5composer.checkpoints.tempfile.mkstemp', OSError(30, 'Read-only file system', '/mnt/ro/run'))),
         "Read-only file system; it is on a read-only filesystem", "save_folder '<tmp>/ro'", 'Point save_folder (or run_name) at a folder you can write to'),
    Case('save-folder-no-room', 'a disk with less room than one checkpoint (simulated)', built('save_folder={tmp}/run', setup=tiny_disk),
         'has 0 MB free, but one checkpoint of this run takes about', "save_folder '<tmp>/run'", 'Free space there, or point save_folder at a disk with room'),
    Case('save-folder-in-use', 'a second run into a save_folder another live process trains into', built('save_folder={tmp}/run', setup=folder_in_use),
         'Another run is training into', "'<tmp>/run': process", 'Wait for that run to finish (or stop it), or give this run another run_name / save_folder'),
    Case('tokenizer-file-damaged', 'tokenizer.name=<a spiece.model that is not one>', built('tokenizer.name={tmp}/spiece.model', setup=damaged_tokenizer),
         'could not parse ModelProto', "tokenizer.name '<tmp>/spiece.model'", 'Set tokenizer.name to a hub name'),
    Case('hf-weights-damaged', 'model.init=hf on a directory whose model.safetensors is damaged', damaged_hf_weights,
         'the weights cannot be loaded (SafetensorError', "model.name '<tmp>/hf'", 'or download it again'),
    Case('tokenizer-training-input-missing', 'recipes/train_tokenizer.py --input <tmp>/nope.txt',
         recipe_cli('train_tokenizer', lambda env: ['--input', str(env.tmp / 'nope.txt'), '--out', str(env.tmp / 'tok'), '--vocab_size', '100']),
         'does not exist', 'Tokenizer training input <tmp>/nope.txt', 'Pass --input text files'),
    Case('tokenizer-training-corpus-too-small', 'recipes/train_tokenizer.py on one sentence with --vocab_size 32000',
         recipe_cli('train_tokenizer', lambda env: ['--input', _write(env.tmp / 'one.txt', 'A single short sentence.'), '--out',
                                                    str(env.tmp / 'tok'), '--vocab_size', '32000']),
         'The corpus is too small for vocab_size=32000', 'vocab_size=32000', 'Use a smaller vocab_size or more text'),
    Case('plot-out-unwritable', 'recipes/plot_runs.py RUN --out /proc/nope/loss.png',
         recipe_cli('plot_runs', lambda env: [_write(env.tmp / 'metrics.jsonl', '{"step": 1, "loss/train/total": 5.0}\n'),
                                              '--out', '/proc/nope/loss.png']),
         'No such file or directory', "--out '/proc/nope'", 'fix the path'),
    Case('save-folder-earlier-run', 'autoresume=false into a save_folder that holds checkpoints',
         built('save_folder={tmp}/run', 'autoresume=false', setup=earlier_checkpoints),
         'already holds checkpoints of an earlier run (ep0-ba4-rank0.pt, ep0-ba2-rank0.pt)', "save_folder '<tmp>/run'",
         'Set autoresume=true to continue that run, give this run another run_name / save_folder, or set save_overwrite=true'),
    Case('init-checkpoint-load-path-missing', 'model.init=checkpoint load_path=<tmp>/nope.pt', checked('model.init=checkpoint', 'load_path={tmp}/nope.pt'),
         'does not exist', 'nope.pt', 'point load_path at a Composer checkpoint'),
    Case('tokenizer-path-missing', 'tokenizer.name=<tmp>/no_tokenizer', checked('tokenizer.name={tmp}/no_tokenizer'),
         'does not exist', 'no_tokenizer', 'Set tokenizer.name to a hub name'),
    Case('tokenizer-dir-without-files', 'tokenizer.name=<an empty directory>', built('tokenizer.name={tmp}'),
         'has no tokenizer files', "tokenizer.name '", 'Set tokenizer.name to a hub name'),
    Case('model-name-missing', 'model.name=./no_such_model', checked('model.name=./no_such_model'),
         'does not exist', "model.name './no_such_model'", 'Set model.name to a built-in config'),
    Case('vocab-smaller-than-tokenizer', 'model.vocab_size=128 (tokenizer: 600 tokens)', built('model.vocab_size=128'),
         'is smaller than the tokenizer (600 tokens)', 'model.vocab_size 128', 'set model.vocab_size >= 600'),
    # Converted data (preflight / build_trainer).
    Case('data-split-missing', 'data.local=<an empty directory>', checked('data.local={tmp}'),
         'No converted data for split(s) train, val', "under '<tmp>'", 'python recipes/convert_c4.py --source allenai/c4'),
    Case('data-split-without-index', 'a train/ folder without index.json', checked('data.local={tmp}/mds', setup=drop_index),
         'No converted data for split(s) train', 'mds', 'python recipes/convert_c4.py'),
    Case('data-split-zero-samples', 'train/index.json listing no samples', checked('data.local={tmp}/mds', setup=zero_samples),
         'holds no samples', "Split 'train' under", '--splits train'),
    Case('data-split-index-corrupt', 'train/index.json cut short', checked('data.local={tmp}/mds', setup=corrupt_index),
         'is unreadable or not an MDS index', 'train/index.json', '--overwrite'),
    Case('data-index-not-mds', 'train/index.json that is JSON but no MDS shard index', built('data.local={tmp}/mds', setup=index_not_mds),
         'is unreadable or not an MDS index', '<tmp>/mds/train/index.json', 'reconvert the split: python recipes/convert_c4.py'),
    Case('data-fewer-samples-than-batch', 'global_train_batch_size=4096 over a small split', checked('global_train_batch_size=4096'),
         'fewer than one global batch', "Split 'train'", 'lower global_train_batch_size to at most'),
    Case('data-metadata-missing', 'train/ without t5composer_meta.json', built('data.local={tmp}/mds', setup=drop_meta),
         'has no t5composer_meta.json', 'mds/train', 'Convert it with: python recipes/convert_c4.py'),
    Case('data-metadata-corrupt', 't5composer_meta.json cut short', built('data.local={tmp}/mds', setup=corrupt_meta),
         'is not valid JSON', 't5composer_meta.json', 'reconvert the split'),
    Case('data-other-tokenizer', 'data converted with google/t5-v1_1-base, config tokenizer another', built('data.local={tmp}/mds', setup=other_tokenizer),
         'tokenizer_fingerprint: data was tokenized with', 'mds/train', '--tokenizer'),
    Case('data-other-input-length', 'data converted for input_length 64, config 128', built('data.input_length=128'),
         'expanded_length: data rows have 70 tokens', '/train', '--input_length 128'),
    # data.remote (preflight, bounded time).
    Case('remote-unreachable', 'data.remote=s3://bucket/c4, S3_ENDPOINT_URL=<closed port>',
         remote(lambda env: f'http://127.0.0.1:{closed_port()}', bound=30.0),
         'cannot be reached', 's3://bucket/c4/train/index.json', 'Check the network, the endpoint (S3_ENDPOINT_URL'),
    Case('remote-silent', 'data.remote=s3://bucket/c4 on an endpoint that never answers, download_timeout=2',
         remote(silent_endpoint, timeout=2.0, bound=20.0),
         'Read timeout', 's3://bucket/c4/train/index.json', 'Check the network'),
    Case('remote-split-missing', 'data.remote=s3://bucket/c4 where train/index.json is absent (404)', remote(status_endpoint(404)),
         'does not exist', 's3://bucket/c4/train/index.json', 'Convert the split'),
    Case('remote-access-denied', 'data.remote=s3://bucket/c4 with refused credentials (403)', remote(status_endpoint(403)),
         'was refused', 's3://bucket/c4/train/index.json', 'Check the credentials'),
    Case('remote-bad-scheme', 'data.remote=s4://bucket/c4', checked('data.remote=s4://bucket/c4', 'data.local={tmp}/cache'),
         "has the scheme 's4://'", "data.remote 's4://bucket/c4'", 'use one of'),
    # Fine-tuning data (SNI).
    Case('mode-token-unquoted', "data.mode_token=[S2S] (bash strips data.mode_token='[S2S]' to it)",
         as_dict(lambda c: c.update(data={'name': 'sni', 'builtin_tasks': 'synthetic', 'mode_token': ['S2S']})),
         "must be str | null, got list ['S2S']", "'data.mode_token'", "\"data.mode_token='[S2S]'\" on a shell command line"),
    Case('mode-token-whitespace', "data.mode_token=' [S2S]'",
         as_dict(lambda c: c.update(data={'name': 'sni', 'builtin_tasks': 'synthetic', 'mode_token': ' [S2S]'})),
         'must be a non-empty string without surrounding whitespace', "'data.mode_token'", "use one of UL2's [NLU], [NLG], [S2S]"),
    Case('mode-token-no-room', "data.mode_token='[S2S]' with data.max_source_length=1",
         as_dict(lambda c: c.update(data={'name': 'sni', 'builtin_tasks': 'synthetic', 'mode_token': '[S2S]', 'max_source_length': 1})),
         'must be >= 2', "'data.max_source_length'", "with 'data.mode_token' (the token and EOS)"),
    Case('sni-root-not-checkout', 'data: {name: sni, root: <an empty directory>}', checked(data=sni_config),
         'is not a natural-instructions checkout', "data.root '", 'Clone allenai/natural-instructions there'),
    Case('sni-split-name-unknown', 'data.split_name=nope on a checkout with splits/default', checked('data.split_name=nope', data=sni_config,
                                                                                                    setup=lambda env: sni_checkout(env, {'good': sni_task()}, ['good'])),
         'is not a split of', "data.split_name 'nope'", 'Set data.split_name to one of default'),
    Case('sni-task-bad-json', 'tasks/broken.json is not JSON', sni_loaded_with_problems({'broken': '{"Definition": ['}, ['broken']),
         'invalid JSON', 'tasks/broken.json', "fix the file, or remove 'broken' from splits/default/test_tasks.txt"),
    Case('sni-task-missing-definition', "a task file without 'Definition'", sni_loaded_with_problems({'nodef': sni_task(drop='Definition')}, ['nodef']),
         "missing key(s) 'Definition'", 'tasks/nodef.json', "remove 'nodef' from splits/default/test_tasks.txt"),
    Case('sni-task-missing-instances', "a task file without 'Instances'", sni_loaded_with_problems({'noinst': sni_task(drop='Instances')}, ['noinst']),
         "missing key(s) 'Instances'", 'tasks/noinst.json', "remove 'noinst' from"),
    Case('sni-task-file-missing', 'test_tasks.txt lists a task with no file', sni_loaded_with_problems({}, ['absent']),
         'task file not found', 'tasks/absent.json', "add the file, or remove 'absent' from splits/default/test_tasks.txt"),
    Case('sni-no-task-loads', 'every listed task is broken', sni_refused({'broken': 'not json'}, ['broken', 'absent']),
         'No SNI task of', 'splits/default/test_tasks.txt', 'git clone https://github.com/allenai/natural-instructions'),
    # Converting C4 (recipes/convert_c4.py and convert_c4).
    Case('c4-not-gzip', 'a c4-train.*.json.gz that is not gzip, beside a good file',
         converted_with_warnings(lambda env: source_with(env, {'c4-train.00000-of-00002.json.gz': T[40:50],
                                                               'c4-train.00001-of-00002.json.gz': b'not gzip\n' * 5}), expect_docs=10),
         'unreadable_file', 'c4-train.00001-of-00002.json.gz', 're-download or remove it'),
    Case('c4-truncated-gzip', 'a gzip file cut off mid-stream', converted_with_warnings(
        lambda env: source_with(env, {'c4-train.00000-of-00002.json.gz': T[40:50],
                                      'c4-train.00001-of-00002.json.gz': truncated_gzip(T[50:60])}), expect_docs=10),
         'Compressed file ended before the end-of-stream marker', 'c4-train.00001-of-00002.json.gz', 're-download it'),
    Case('c4-malformed-lines', 'bad JSON, a line without "text", a blank line among good ones', converted_with_warnings(
        lambda env: source_with(env, {'c4-train.00000-of-00001.json.gz': gzip.compress(
            b''.join(json.dumps({'text': t}).encode() + b'\n' for t in T[40:50]) + b'{"text": "cut\n{"url": "u"}\n\n')}), expect_docs=10),
         'invalid_json', 'c4-train.00000-of-00001.json.gz:11', 'check --source'),
    Case('c4-all-garbage', 'every line of every train file is garbage', convert_cli(lambda env: [
        '--source', str(source_with(env, {'c4-train.00000-of-00001.json.gz': gzip.compress(b'<html>\n' * 20)})),
        '--out_root', str(env.tmp / 'out'), '--splits', 'train', '--tokenizer', str(env.world.tok), '--input_length', '64']),
         'No usable document', "split 'train'", 'check --source'),
    Case('c4-too-few-tokens', 'one short document: not one row of 70 tokens', convert(
        lambda env: {'source': str(source_with(env, {'c4-train.00000-of-00001.json.gz': ['Hello world.']})), 'splits': ['train']}, ValueError),
         'fewer than one row of 70', "Split 'train'", 'lower --input_length'),
    Case('c4-source-missing', '--source <tmp>/nowhere', convert(lambda env: {'source': str(env.tmp / 'nowhere')}, FileNotFoundError),
         'is not a local directory, a URL or a hub dataset name', 'nowhere', 'pass --source allenai/c4'),
    Case('c4-split-files-missing', '--splits val on a folder with only train files', convert(
        lambda env: {'source': str(source_with(env, {'c4-train.00000-of-00001.json.gz': T[40:42]})), 'splits': ['val']}, FileNotFoundError),
         "No files for split 'val'", 'c4-validation', "Point --source at a folder laid out like the hub's en/"),
    Case('c4-output-exists', 'an existing out_root/train without --overwrite', convert(
        lambda env: {'source': str(env.world.source), 'splits': ['train'], 'out_root': _mkdir(env.tmp / 'out' / 'train').parent}, FileExistsError),
         'already exist(s)', 'out/train', 'pass --overwrite'),
    Case('c4-vocab-too-large', 'a tokenizer with 70,000 ids (uint16 holds 65,536)', convert(huge_tokenizer, ValueError),
         'more than the 65536 that the uint16 token column can hold', "'huge/tokenizer' (--tokenizer)", 'use a tokenizer with at most 65536 ids'),
    Case('c4-tokenizer-missing', '--tokenizer <tmp>/no_tok', convert_cli(lambda env: [
        '--source', str(env.world.source), '--out_root', str(env.tmp / 'out'), '--tokenizer', str(env.tmp / 'no_tok')]),
         'does not exist', '--tokenizer', 'Pass a hub name'),
    Case('c4-input-length-too-small', '--input_length 2', convert_cli(lambda env: [
        '--source', str(env.world.source), '--out_root', str(env.tmp / 'out'), '--input_length', '2']),
         'is too small to hold one noise span', '--input_length 2', 'use at least 4'),
    Case('c4-noise-density-out-of-range', '--noise_density 1.5', convert_cli(lambda env: [
        '--source', str(env.world.source), '--out_root', str(env.tmp / 'out'), '--noise_density', '1.5']),
         'must be in (0, 1), got 1.5', '--noise_density', 'T5 uses 0.15'),
    Case('c4-split-name-unknown', '--splits test', convert_cli(lambda env: ['--out_root', str(env.tmp / 'out'), '--splits', 'test']),
         "invalid choice: 'test'", '--splits', "choose from 'train', 'val'"),
    # Data integrity and data-size checks (issue 11)
    Case('data-builtin-fewer-rows-than-batch', 'data.builtin_corpus=python_docs, global_train_batch_size=100000',
         built_from(builtin_corpus, 'global_train_batch_size=100000'),
         'fewer than one global batch', "The builtin corpus's split 'train'", 'Lower global_train_batch_size to at most 1159'),
    Case('dry-run-builtin-fewer-rows-than-batch', '--dry-run --dry-run-gpus 8 with data.builtin_corpus=python_docs, global_train_batch_size=4096',
         dry_run_of(builtin_corpus, 'global_train_batch_size=4096', gpus=8),
         'fewer than one global batch', "The builtin corpus's split 'train'", 'at most 1152 (a multiple of the 8 processes)'),
    Case('data-remote-fewer-rows-than-batch', 'data.remote=s3://bucket/c4 (t5composer_meta.json: 1159 rows), global_train_batch_size=4096',
         built('data.remote=s3://bucket/c4', 'data.local={tmp}/cache', 'global_train_batch_size=4096', setup=fake_remote),
         'fewer than one global batch', "Split 'train' under data.remote 's3://bucket/c4'", 'lower global_train_batch_size to at most 1159'),
    Case('data-sni-fewer-examples-than-batch', 'SNI train split of 3 examples, global_train_batch_size=4',
         built_from(sni_train_config), 'holds 3 examples, fewer than one global batch',
         'The SNI train split (<tmp>/sni, splits/default/train_tasks.txt', 'lower global_train_batch_size to at most 3'),
    Case('data-eval-fewer-rows-than-eval-batch', 'compile=true device_eval_batch_size=4096 over a small val split',
         checked('compile=true', 'device_eval_batch_size=4096'), 'with compile=true the partial last eval batch is dropped',
         "Split 'val' under", 'lower device_eval_batch_size to at most'),
    Case('data-shard-missing', 'train/shard.00000.mds.zstd deleted',
         built('data.local={tmp}/mds', setup=damaged(lambda split: (split / 'shard.00000.mds.zstd').unlink())),
         'is missing', 'shard.00000.mds.zstd', 'python recipes/verify_data.py'),
    Case('data-shard-truncated', 'train/shard.00000.mds.zstd cut short',
         built('data.local={tmp}/mds', setup=damaged(lambda split: (split / 'shard.00000.mds.zstd').write_bytes(
             (split / 'shard.00000.mds.zstd').read_bytes()[:1000]))),
         'the file is truncated or was replaced', 'shard.00000.mds.zstd has 1,000 bytes', 'reconvert the split: python recipes/convert_c4.py'),
    Case('data-index-lists-fewer-shards', "train/index.json without its last shard's entry (the file is still there)",
         built('data.local={tmp}/mds', setup=fewer_shards_listed),
         'index.json is not the one the conversion wrote', 'Shard files on disk that index.json does not list: shard.', 'reconvert the split'),
    Case('data-shard-checksum-mismatch', 'data.verify_hashes=true, one byte of train/shard.00000.mds.zstd flipped',
         built('data.local={tmp}/mds', 'data.verify_hashes=true', setup=damaged(lambda split: flip_byte(split / 'shard.00000.mds.zstd'))),
         'xxh3_64 checksum is', 'shard.00000.mds.zstd', 'Check every shard with: python recipes/verify_data.py'),
    Case('data-token-out-of-vocab', 'a row of train/ holding token id 60000 (vocabulary: 600 ids)',
         read_a_batch('data.local={tmp}/mds', 'data.shuffle=false', setup=damaged(
             lambda split: rewrite_rows(split, lambda rows: [r if i else np.where(np.arange(len(r)) == 5, 60000, r) for i, r in enumerate(rows)]))),
         'holds token id 60000, outside the vocabulary of 600 ids', 'Sample 0 (row 0 of shard shard.00000.mds.zstd)',
         'Check every shard with: python recipes/verify_data.py'),
    Case('data-row-wrong-length', 'a row of train/ with 69 tokens instead of 70',
         read_a_batch('data.local={tmp}/mds', 'data.shuffle=false', setup=damaged(
             lambda split: rewrite_rows(split, lambda rows: [r if i else r[:-1] for i, r in enumerate(rows)]))),
         'holds 69 tokens, not the 70 of every row', 'Sample 0 (row 0 of shard shard.00000.mds.zstd)', 'python recipes/verify_data.py'),
    Case('data-shard-undecompressable', "train/shard.00000.mds.zstd whose zstd frame header is damaged",
         read_a_batch('data.local={tmp}/mds', setup=damaged(lambda split: flip_byte(split / 'shard.00000.mds.zstd', 0))),
         'cannot be decompressed', 'shard.00000.mds.zstd', 'Check every shard with: python recipes/verify_data.py'),
    Case('verify-damaged-split', 'recipes/verify_data.py on a split with a flipped byte', verify_cli(flipped_root, status=1),
         'DAMAGED', 'shard.00000.mds.zstd: its xxh3_64 checksum is', 'reconvert the split: python recipes/convert_c4.py'),
    Case('verify-no-split', 'recipes/verify_data.py on a folder without splits', verify_cli(lambda env: [str(env.tmp)], status=2),
         'no converted split under', "'<tmp>'", 'Pass a split directory'),
    Case('c4-overwrite-while-read', 'convert_c4.py --overwrite on a split that a running training process reads',
         convert(overwrite_read_split, SplitInUseError),
         'is being read by running process(es)', 'mds/train', 'Wait for them to finish'),
    Case('data-split-being-replaced', 'training on a split that convert_c4.py --overwrite is replacing',
         built('data.local={tmp}/mds', setup=lambda env: env.closers.append(hold_in_another_process(copy_split(env) / 'train', 'exclusive'))),
         'is being replaced by a conversion', 'mds/train', 'Wait for the conversion to finish'),
    Case('data-reused-local-cache', 'two jobs streaming one remote into the same data.local cache', reused_cache,
         'already stream', "into the local cache '<tmp>/cache/val'", 'Give this run its own cache, e.g. data.local=<tmp>/cache-<run_name>'),
    Case('data-shared-memory-clash', "two jobs registering Streaming's shared memory in the same instant", shared_memory_clash,
         'File exists', "Could not open split 'train'", 'Run the same command again'),
]


def _write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True)
    (path.parent / 'keep').mkdir(exist_ok=True)  # an unrelated folder that must survive
    return path


# ------------------------------------------------------------------------------------ tests


def test_catalogue_is_large_and_ids_are_unique():
    ids = [c.id for c in CASES]
    assert len(ids) >= 30 and len(set(ids)) == len(ids)
    assert all(re.fullmatch(r'[a-z0-9]+(-[a-z0-9]+)*', i) for i in ids)


@pytest.mark.parametrize('case', CASES, ids=[c.id for c in CASES])
def test_bad_input_gets_a_clear_message(case, env):
    message = case.run(env)
    assert 'Traceback' not in message
    for part, fragment in (('what', case.what), ('where', case.where), ('fix', case.fix)):
        fragment = fragment.replace('<tmp>', str(env.tmp))
        assert fragment in message, f'{case.id}: the message lacks {part} {fragment!r}:\n{message}'


def test_base_configs_are_valid(env):
    """The cases change one thing each; the configs they start from pass every check."""
    preflight(load_config(None, [], base=base(env)))
    sni_checkout(env, {'good': sni_task()}, ['good'])
    preflight(load_config(None, [], base=sni_config(env)))


def test_every_case_is_in_the_doc():
    text = DOC.read_text(encoding='utf-8')
    section = text.split('## Bad inputs and the message each one gets', 1)[1].split('\n## ', 1)[0]
    listed = re.findall(r'^\| `([a-z0-9-]+)` \|', section, flags=re.MULTILINE)
    assert sorted(set(listed)) == sorted(c.id for c in CASES)


def test_remote_split_in_the_local_cache_needs_no_network(env):
    """A run whose splits are already cached starts even when the store is unreachable."""
    s3_env(env, f'http://127.0.0.1:{closed_port()}')
    preflight(load_config(None, ['data.remote=s3://bucket/c4'], base=base(env)))  # data.local holds both splits


@pytest.mark.slow
def test_silent_remote_with_default_timeout_fails_within_a_minute(env):
    start = time.monotonic()
    message = remote(silent_endpoint)(env)  # data.download_timeout left at its default, 60 s
    assert time.monotonic() - start < 60
    assert 's3://bucket/c4/train/index.json' in message and 'Check the network' in message


def test_shuffle_algos_match_streaming():
    from streaming.base.shuffle import algos

    from t5composer.config.loading import SHUFFLE_ALGOS

    assert set(SHUFFLE_ALGOS) == set(algos)
