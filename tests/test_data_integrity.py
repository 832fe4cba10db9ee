"""Data integrity and data size: damaged shards, splits too small for a batch, splits replaced or
read by two jobs at once (issue 11). What each input prints is in tests/test_bad_inputs.py's
catalogue; these tests check the mechanisms behind the messages."""

from __future__ import annotations

import gzip
import json
import logging
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from t5composer.config import ConfigError, load_config
from t5composer.data.c4_convert import convert_c4
from t5composer.data.span_spec import SpanCorruptionSpec
from t5composer.data.split_lock import READER_LOCK_FILENAME, SplitInUseError, hold_reader_lock
from t5composer.data.streaming import CorruptDataError, build_span_dataloader, open_error_advice
from t5composer.data.verify import SHARD_HASH, check_files, read_index, verify_main
from split_damage import (
    drop_unpacked,
    flip_byte,
    index,
    locked_by_another_process,
    read_rows,
    rewrite_rows,
    shard_names,
)

REPO = Path(__file__).resolve().parents[1]
L64 = 70  # random_spans_helper(64, 0.15, 3.0)[0]


@pytest.fixture(scope='module')
def world(tmp_path_factory):
    """A 500-piece tokenizer and C4-style splits converted with it, train in several shards."""
    from pydoc_data.topics import topics

    from t5composer.tokenizer_training import train_tokenizer

    root = tmp_path_factory.mktemp('integrity')
    texts = [topics[k] for k in sorted(topics)]
    tok = train_tokenizer(out_dir=root / 'tok', vocab_size=500, texts=texts[:40])
    source = root / 'en'
    source.mkdir()
    for name, part in (('c4-train.00000-of-00001.json.gz', texts[40:70]), ('c4-validation.00000-of-00001.json.gz', texts[70:80])):
        with gzip.open(source / name, 'wb') as f:
            f.writelines(json.dumps({'text': t}).encode() + b'\n' for t in part)
    convert_c4(source=str(source), out_root=root / 'mds', tokenizer=str(tok), spec=SpanCorruptionSpec(input_length=64), size_limit=40_000, progress=False)
    return {'tok': Path(tok), 'source': source, 'mds': root / 'mds'}


@pytest.fixture
def data(world, tmp_path) -> Path:
    """A private copy of the converted splits (compressed shards only, as the converter leaves them)."""
    out = tmp_path / 'mds'
    shutil.copytree(world['mds'], out)
    for split in ('train', 'val'):
        drop_unpacked(out / split)
    return out


def _loader(root: Path, split: str = 'train', **kwargs):
    from t5composer.data.span_corruption import SpanCorruptionCollator

    # One canonical node: samples come in index order (sample 7 is in the second batch of 4).
    options = dict(local=str(root), remote=None, split=split, device_batch_size=4, shuffle=False, shuffle_seed=0, train=False,
                   num_workers=0, row_length=L64, vocab_size=600, num_canonical_nodes=1,
                   collator=SpanCorruptionCollator(sentinel_ids=list(range(599, 499, -1)), eos_id=1, seed=0))
    return build_span_dataloader(**{**options, **kwargs})


def _config(*overrides: str, global_batch: int = 4, data: str = 'data/c4'):
    """A valid config (nothing is read from ``data``)."""
    return load_config(None, [f'data.local={data}', *overrides],
                       base={'max_duration': '2ba', 'global_train_batch_size': global_batch, 'optimizer': {'name': 'adamw', 'lr': 1e-3}})


def _verify(path: Path, capsys, *args: str) -> tuple[int, str]:
    status = verify_main([str(path), *args])
    out = capsys.readouterr()
    return status, out.out + out.err


# ---------------------------------------------------------------------------------- the converter's checksums


def test_converter_records_checksums_of_every_shard_file(data, capsys):
    import xxhash

    from streaming.base.compression import decompress

    shards = index(data / 'train')['shards']
    assert len(shards) > 2 and all(s['hashes'] == [SHARD_HASH] for s in shards)
    for s in shards:
        packed = (data / 'train' / s['zip_data']['basename']).read_bytes()
        assert s['zip_data']['hashes'] == {SHARD_HASH: xxhash.xxh3_64(packed).hexdigest()}
        assert s['raw_data']['hashes'] == {SHARD_HASH: xxhash.xxh3_64(decompress('zstd', packed)).hexdigest()}
    assert (data / 'train' / READER_LOCK_FILENAME).is_file()  # readers of a split made read-only later can lock it
    status, out = _verify(data, capsys)
    assert status == 0 and out.count('intact') == 2 and f'{SHARD_HASH} checksums' in out and 'ids below 600' in out


# ---------------------------------------------------------------------------------- damaged shards


def test_any_flipped_byte_is_found_by_verify(data, capsys):
    """Most flipped bytes of a zstd shard decompress without error; the checksum finds every one."""
    name = shard_names(data / 'train')[1]
    size = (data / 'train' / name).stat().st_size
    for offset in (0, 7, size // 3, size // 2, size - 1):
        flip_byte(data / 'train' / name, offset)
        status, out = _verify(data / 'train', capsys, '--no_rows')
        assert status == 1 and f'{name}: its {SHARD_HASH} checksum is' in out and 'python recipes/convert_c4.py' in out
        flip_byte(data / 'train' / name, offset)  # undone
    assert _verify(data / 'train', capsys)[0] == 0


def test_checksums_checked_at_the_start_only_when_asked(data, world, caplog):
    from t5composer.tokenization import load_tokenizer
    from t5composer.data.plan import DataPlan, check_splits

    name = shard_names(data / 'train')[0]
    flip_byte(data / 'train' / name)
    tokenizer = load_tokenizer(str(world['tok']))
    plan = DataPlan(tokenizer_name=str(world['tok']), local=str(data), remote=None)

    def check(*overrides: str) -> dict:
        cfg = _config(f'tokenizer.name={world["tok"]}', 'data.input_length=64', *overrides, data=str(data))
        return check_splits(cfg, plan, tokenizer, L64, world_size=1)

    assert check() == {'train': True, 'val': True}  # sizes and row counts agree: a stat per shard finds nothing
    with pytest.raises(ConfigError) as info:
        check('data.verify_hashes=true')
    assert f'{name}: its {SHARD_HASH} checksum is' in str(info.value) and 'python recipes/verify_data.py' in str(info.value)


def test_missing_shard_and_an_index_that_lost_shards(data, world, capsys):
    split = data / 'train'
    names = shard_names(split)
    meta_rows = json.loads((split / 't5composer_meta.json').read_text())['rows']
    (split / names[1]).unlink()
    problems = check_files(str(split), read_index(str(split)), meta_rows=meta_rows)
    assert len(problems) == 1 and problems[0].startswith(f'{names[1]} or ') and 'is missing' in problems[0]
    status, out = _verify(split, capsys)
    assert status == 1 and names[1] in out

    # An index.json that lists fewer shards than were written: the metadata's row count gives it away.
    shutil.copyfile(world['mds'] / 'train' / names[1], split / names[1])
    idx = index(split)
    dropped = idx['shards'].pop()
    (split / 'index.json').write_text(json.dumps(idx))
    assert check_files(str(split), read_index(str(split)), meta_rows=meta_rows) == [
        f'index.json lists {meta_rows - dropped["samples"]:,} rows in {len(names) - 1} shard(s), but t5composer_meta.json records '
        f'{meta_rows:,}: index.json is not the one the conversion wrote. Shard files on disk that index.json does not list: '
        f'{dropped["zip_data"]["basename"]}.']
    status, out = _verify(split, capsys)
    assert status == 1 and dropped['zip_data']['basename'] in out


def test_rows_of_another_vocabulary_or_length_stop_in_the_data_path(data, capsys):
    """Ids outside the vocabulary and short rows, written by hand with consistent checksums: the
    dataset names the split, the sample and the shard (never an IndexError in the embedding)."""
    def damage(rows):
        rows[7] = np.where(np.arange(L64) == 3, 60000, rows[7])
        rows[9] = rows[9][:-1]
        return rows

    rewrite_rows(data / 'train', damage)
    status, out = _verify(data / 'train', capsys)
    assert status == 1 and 'sample 7 (id 60000)' in out and 'sample 9 (row 9 of the shard:' in out

    loader = _loader(data)
    seen = []
    with pytest.raises(CorruptDataError) as info:
        for batch in loader:
            seen.append(batch)
    message = str(info.value)
    assert len(seen) == 1  # batch 0 (samples 0-3) is intact; batch 1 holds sample 7
    assert f'Sample 7 (row 7 of shard {shard_names(data / "train")[0]}) of {data / "train"} holds token id 60000' in message
    assert 'outside the vocabulary of 600 ids' in message and f'python recipes/verify_data.py {data / "train"}' in message
    with pytest.raises(CorruptDataError, match='Sample 9 .* holds 69 tokens, not the 70 of every row'):
        loader.dataset[9]


def test_damage_found_in_a_dataloader_worker_reaches_the_main_process_by_type(data):
    rewrite_rows(data / 'train', lambda rows: [np.full_like(r, 600) for r in rows])
    batches = iter(_loader(data, num_workers=1))
    try:
        with pytest.raises(CorruptDataError) as info:
            next(batches)
    finally:
        batches._shutdown_workers()  # now, not at some later garbage collection (which waits 5 s for the worker)
    assert str(info.value).startswith(f'Sample 0 (row 0 of shard {shard_names(data / "train")[0]}) of {data / "train"} holds token '
                                      'id 600, outside the vocabulary of 600 ids')  # the message alone, as in the worker
    assert 'DataLoader worker process 0' in info.value.worker_traceback


@pytest.mark.slow
def test_train_py_stops_on_damaged_rows_with_exit_status_5(data, world, tmp_path, capsys):
    """A row damaged after the start checks (consistent checksums): recipes/train.py prints the
    data path's message as one error line, no traceback, and exits with status 5."""
    from omegaconf import OmegaConf

    from t5composer.cli import train_main

    rewrite_rows(data / 'train', lambda rows: [np.full_like(r, 600) if i >= 8 else r for i, r in enumerate(rows)])
    recipe = tmp_path / 'tiny.yaml'
    OmegaConf.save(OmegaConf.create({
        'run_name': 'damaged', 'max_duration': '4ba', 'global_train_batch_size': 4, 'device_eval_batch_size': 4,
        'eval_interval': '4ba', 'progress_bar': False, 'log_to_console': False, 'save_folder': None,
        'tokenizer': {'name': str(world['tok'])},
        'model': {'name': 'google/t5-v1_1-small', 'vocab_size': 'tokenizer', 'd_model': 32, 'd_kv': 8, 'd_ff': 64,
                  'num_heads': 4, 'num_layers': 2},
        'data': {'local': str(data), 'input_length': 64, 'num_workers': 0, 'shuffle': False},
        'optimizer': {'name': 'adamw', 'lr': 1e-3},
    }), recipe)
    assert train_main([str(recipe)]) == 5
    err = capsys.readouterr().err
    assert err.startswith('error: Sample 8 (row 8 of shard') and 'outside the vocabulary of 600 ids' in err
    assert 'Traceback' not in err


def test_a_shard_that_does_not_decompress_is_named_not_skipped(data):
    """Streaming ends an epoch quietly when its prefetch thread fails; the dataset says why."""
    name = shard_names(data / 'train')[0]
    flip_byte(data / 'train' / name, 0)  # the zstd frame's magic number
    for _ in range(3):  # the prefetch thread or the reading thread meets it first, whichever is faster
        with pytest.raises(CorruptDataError, match=f'Shard {data / "train" / name} cannot be decompressed'):
            list(_loader(data, split='train'))


def test_old_splits_without_checksums_still_train_and_verify_says_so(data, world, capsys, caplog):
    from t5composer.tokenization import load_tokenizer
    from t5composer.data.plan import DataPlan, check_splits

    for split in ('train', 'val'):
        idx = index(data / split)
        for s in idx['shards']:
            s['hashes'] = []
            s['zip_data']['hashes'] = s['raw_data']['hashes'] = {}
        (data / split / 'index.json').write_text(json.dumps(idx))
    status, out = _verify(data, capsys)
    assert status == 0 and 'index.json records no shard checksums' in out and 'every row 70 tokens' in out
    cfg = _config(f'tokenizer.name={world["tok"]}', 'data.input_length=64', 'data.verify_hashes=true', data=str(data))
    with caplog.at_level(logging.WARNING, logger='t5composer.data.plan'):
        hashed = check_splits(cfg, DataPlan(tokenizer_name=str(world['tok']), local=str(data), remote=None),
                                       load_tokenizer(str(world['tok'])), L64, world_size=1)
    assert hashed == {'train': False, 'val': False} and 'no shard checksums' in caplog.text
    assert next(iter(_loader(data)))['input_ids'].shape == (4, 64)


def test_remote_cache_checks(data, world, tmp_path, monkeypatch):
    """A remote split: rows from the store's index, and a local cache that is not the store's."""
    import t5composer.data.locations as locations
    from t5composer.tokenization import load_tokenizer
    from t5composer.data.plan import DataPlan, check_splits

    monkeypatch.setattr(locations, 'fetch_remote_file',
                        lambda url, dest, timeout=60.0: shutil.copyfile(data / url.removeprefix('s3://bucket/c4/'), dest))
    cache = tmp_path / 'cache'
    cfg = _config(f'tokenizer.name={world["tok"]}', 'data.remote=s3://bucket/c4', 'data.input_length=64', data=str(cache))
    plan = DataPlan(tokenizer_name=str(world['tok']), local=str(cache), remote='s3://bucket/c4')
    tokenizer = load_tokenizer(str(world['tok']))

    def problems() -> str:
        with pytest.raises(ConfigError) as info:
            check_splits(cfg, plan, tokenizer, L64, world_size=1)
        return str(info.value)

    assert check_splits(cfg, plan, tokenizer, L64, world_size=1)['train']  # nothing cached yet: fine
    shutil.copytree(data / 'train', cache / 'train')
    (cache / 'train' / shard_names(data / 'train')[0]).write_bytes(b'short')
    assert f'The local cache {cache / "train"} of data.remote holds damaged files' in problems()
    (cache / 'train' / 'index.json').write_text(json.dumps({**index(data / 'train'), 'shards': index(data / 'train')['shards'][:1]}))
    assert f"{cache / 'train' / 'index.json'} differs from s3://bucket/c4/train/index.json" in problems()


# ---------------------------------------------------------------------------------- a split too small for a batch


def _batches_per_rank_streaming(rows: int, batch: int, world: int, workers: int, canonical: int) -> list[int]:
    """Full batches each rank's loader yields from Streaming's partition: each worker batches its own
    samples (the -1 padding dropped), and a partial batch is dropped."""
    from streaming.base.partition import get_partitions

    ids = get_partitions('orig', rows, canonical, 1, world, workers, batch)[0]
    return [sum(int((w >= 0).sum()) // batch for w in rank) for rank in ids]


@pytest.mark.filterwarnings('ignore:Trying to partition')  # Streaming on splits smaller than its canonical nodes
@pytest.mark.parametrize('world_size,workers', [(1, 1), (2, 1), (2, 2), (4, 2)])
def test_the_size_rule_is_what_streaming_and_the_sampler_do(world_size, workers):
    """A split gives every process a full training batch exactly when rows >= global_train_batch_size
    under Composer's distributed sampler (SNI); Streaming's partition (pre-training) then gives one
    too, and none when rows < global_train_batch_size - world_size + 1 (short of its padding)."""
    from torch.utils.data.distributed import DistributedSampler

    from t5composer.data.preflight import split_size_problem

    for global_batch in (world_size, 4 * world_size, 8 * world_size):
        cfg = _config(global_batch=global_batch)
        device = global_batch // world_size
        for rows in range(max(1, global_batch - 3 * world_size), global_batch + 3 * world_size):
            refused = split_size_problem(cfg, what='x', rows=rows, world_size=world_size, train=True, more=None) is not None
            sampler = [len(DistributedSampler(range(rows), num_replicas=world_size, rank=r, drop_last=True)) // device
                       for r in range(world_size)]
            assert refused == (min(sampler) == 0), (rows, global_batch)
            for canonical in (world_size, 64):
                streaming = min(_batches_per_rank_streaming(rows, device, world_size, workers, canonical))
                if not refused:
                    assert streaming >= 1, (rows, global_batch, canonical)
                elif canonical <= rows < global_batch - world_size + 1:
                    assert streaming == 0, (rows, global_batch, canonical)


def test_the_message_offers_a_batch_that_divides_and_eval_is_checked_under_compile():
    from t5composer.data.preflight import split_size_problem

    cfg = _config(global_batch=64)
    message = split_size_problem(cfg, what="Split 'train'", rows=41, world_size=4, train=True, more=None)
    assert 'holds 41 rows, fewer than one global batch (global_train_batch_size 64)' in message
    assert 'at most 40 (a multiple of the 4 processes)' in message
    assert 'Run on fewer than 4 processes' in split_size_problem(cfg, what='x', rows=3, world_size=4, train=True, more=None)
    assert split_size_problem(cfg, what='x', rows=3, world_size=4, train=False, more=None) is None  # eval keeps its partial batch
    compiled = _config('compile=true', 'device_eval_batch_size=8', global_batch=64)
    assert split_size_problem(compiled, what='x', rows=32, world_size=4, train=False, more=None) is None
    assert 'Lower device_eval_batch_size to at most 7 or set compile=false' in split_size_problem(
        compiled, what='x', rows=31, world_size=4, train=False, more=None)


def test_sni_batch_larger_than_the_split_is_refused_before_any_dataset(world, monkeypatch, tmp_path):
    """The builtin synthetic tasks with a huge batch: refused, and no dataset or sampler is built."""
    import t5composer.data.sni as sni
    from t5composer.run.build import build_trainer

    monkeypatch.delenv('WORLD_SIZE', raising=False)
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    monkeypatch.setattr(sni.SNIDataset, '__init__', lambda *a, **k: pytest.fail('a dataset was built'))
    cfg = load_config(None, [], base={
        'max_duration': '2ba', 'global_train_batch_size': 100_000, 'device_train_microbatch_size': 4, 'python_log_level': None,
        'tokenizer': {'name': str(world['tok'])}, 'optimizer': {'name': 'adamw', 'lr': 1e-3},
        'model': {'name': 'google/t5-v1_1-small', 'vocab_size': 'tokenizer', 'd_model': 32, 'd_kv': 8, 'd_ff': 64, 'num_heads': 4,
                  'num_layers': 2},
        'data': {'name': 'sni', 'builtin_tasks': 'synthetic', 'max_source_length': 64, 'max_target_length': 16}})
    with pytest.raises(ConfigError, match=r'The SNI train split \(the builtin synthetic tasks, splits/default/train_tasks.txt: 11 task'
                                          r'\(s\), at most 100 instances each\) holds 1,100 examples, fewer than one global batch '
                                          r'.* Lower global_train_batch_size to at most 1100\.'):
        build_trainer(cfg)


# ---------------------------------------------------------------------------------- replacing a split that is read


def test_convert_overwrite_refused_while_a_run_reads_the_split(data, world):
    """The reader is this process's real loader; the converter is recipes/convert_c4.py in another process."""
    before = {p.name: p.read_bytes() for p in (data / 'train').iterdir() if p.is_file()}
    _loader(data)  # holds the reader lock for the rest of this process
    command = [sys.executable, str(REPO / 'recipes' / 'convert_c4.py'), '--source', str(world['source']), '--out_root', str(data),
               '--splits', 'train', '--tokenizer', str(world['tok']), '--input_length', '64', '--overwrite', '--no_progress']
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and 'Traceback' not in done.stderr, done.stderr
    assert f'error: {data / "train"} is being read by running process(es) {os.getpid()} (' in done.stderr
    assert {p.name: p.read_bytes() for p in (data / 'train').iterdir() if p.is_file() and not p.name.endswith('.mds')} == \
        {k: v for k, v in before.items() if not k.endswith('.mds')}
    assert not [p for p in data.iterdir() if p.name.startswith('.')]  # no temporary split left


def test_locks_between_readers_and_the_converter(data, world, monkeypatch):
    import t5composer.data.split_lock as split_lock

    kwargs = dict(source=str(world['source']), out_root=data, splits=['train'], tokenizer=str(world['tok']), spec=SpanCorruptionSpec(input_length=64),
                  overwrite=True, progress=False)
    with locked_by_another_process(data / 'train', 'reader') as reader:
        with pytest.raises(SplitInUseError, match=f'is being read by running process\\(es\\) {reader.pid} '):
            convert_c4(**kwargs)
        with monkeypatch.context() as m:  # no /proc/locks (another pid namespace): the kernel names one holder
            m.setattr(split_lock, 'lock_holders', lambda path: [])
            with pytest.raises(SplitInUseError, match=f'is being read by running process\\(es\\) {reader.pid} '):
                convert_c4(**kwargs)
        reader.kill()
        reader.wait()
        convert_c4(**kwargs)  # the kernel dropped the killed reader's lock: nothing stale
    with locked_by_another_process(data / 'val', 'exclusive') as converter:
        with pytest.raises(SplitInUseError, match=f'is being replaced by a conversion .*process {converter.pid} '):
            hold_reader_lock(str(data / 'val'))
    assert hold_reader_lock(str(data / 'val')) and hold_reader_lock(str(data / 'val'))  # once the conversion is done; idempotent


def test_read_only_splits_are_read_without_a_lock_and_unpacking_needs_a_writable_split(data, monkeypatch):
    """(As root nothing is read-only, so the refusals are simulated where the code meets them.)"""
    import errno

    import t5composer.data.split_lock as split_lock
    import t5composer.data.streaming as streaming

    real_open = os.open

    def read_only(path, flags, *args):
        if path.endswith(READER_LOCK_FILENAME):
            raise OSError(errno.EROFS, 'Read-only file system', path)
        return real_open(path, flags, *args)

    monkeypatch.setattr(split_lock.os, 'open', read_only)
    assert hold_reader_lock(str(data / 'val')) is False  # read unprotected: nobody can replace it there either
    monkeypatch.setattr(split_lock.os, 'open', real_open)

    def refuse(src, dst):
        raise PermissionError(errno.EACCES, 'Permission denied', dst)

    monkeypatch.setattr(streaming.os, 'replace', refuse)
    with pytest.raises(streaming.DataReadError, match=f'Cannot unpack shard {data / "train" / shard_names(data / "train")[0]} beside it '
                                                      r'\(PermissionError.*must be writable then'):
        list(_loader(data))
    assert not [p for p in (data / 'train').iterdir() if p.name.startswith('.partial-') or '.tmp' in p.name]  # no temporary file left


# ---------------------------------------------------------------------------------- two jobs at once

_JOB = textwrap.dedent('''
    import hashlib, json, os, time
    from t5composer.data.span_corruption import SpanCorruptionCollator
    from t5composer.data.streaming import build_span_dataloader
    collator = SpanCorruptionCollator(sentinel_ids=list(range(599, 499, -1)), eos_id=1, seed=0)
    print('ready', flush=True)
    while not os.path.exists({go!r}):
        time.sleep(0.01)
    start = float(open({go!r}).read())
    datasets = []
    for i, split in enumerate({splits!r}):  # the other job does the same at the same instants
        while time.time() < start + i * 0.4:
            pass
        datasets.append(build_span_dataloader(
            local={root!r}, remote=None, split=split, device_batch_size=4, collator=collator, shuffle=False, shuffle_seed=0,
            train=False, num_workers=0, row_length=70, vocab_size=600).dataset)
        while time.time() < start + i * 0.4 + 0.2:
            pass
        datasets[-1][0]  # the first read of a fresh split unpacks its first shard
    digest = hashlib.sha256()
    for i in range(datasets[0].num_samples):
        digest.update(datasets[0][i]['tokens'].astype('uint16').tobytes())
    print(json.dumps({{'prefixes': [d._shm_prefix_int for d in datasets], 'rows': digest.hexdigest()}}), flush=True)
''')


def test_two_jobs_build_their_datasets_and_unpack_one_split_at_the_same_moment(data, tmp_path):
    """Streaming's shared-memory registration races (FileExistsError: '/000000_locals'), and two first
    reads of one split unpacked its shard into the same temporary file (FileNotFoundError, or a
    half-written shard read): two jobs doing both at the same instants, eight times, must succeed."""
    import hashlib

    splits = [f'train{i}' for i in range(8)]
    for split in splits:
        shutil.copytree(data / 'train', data / split)
    go = tmp_path / 'go'
    script = _JOB.format(go=str(go), splits=splits, root=str(data))
    jobs = [subprocess.Popen([sys.executable, '-c', script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    try:
        for job in jobs:
            assert job.stdout.readline().strip() == 'ready'
        (tmp_path / 'go.tmp').write_text(str(time.time() + 0.2))
        (tmp_path / 'go.tmp').rename(go)  # whole: the jobs read it as soon as it exists
        results = [job.communicate(timeout=120) for job in jobs]
    finally:
        for job in jobs:
            job.kill()
    for out, err in results:
        assert out.strip(), err[-3000:]
    found = [json.loads(out) for out, _ in results]
    assert not set(found[0]['prefixes']) & set(found[1]['prefixes'])  # each job its own shared memory
    expected = hashlib.sha256(b''.join(r.astype(np.uint16).tobytes() for r in read_rows(data / 'train'))).hexdigest()
    assert [f['rows'] for f in found] == [expected, expected]  # and both read every row intact


# ---------------------------------------------------------------------------------- what to do about Streaming's errors


def test_streaming_errors_get_advice_by_kind():
    fine = 'the data is fine'
    clash = open_error_advice(FileExistsError(17, 'File exists', '/000000_locals'), local='data/c4', remote=None)
    assert fine in clash and 'Run the same command again' in clash and 'reconvert' not in clash.lower()
    leader = open_error_advice(RuntimeError('Internal error: shared memory prefix=3 was not registered by local leader.'),
                               local='data/c4', remote=None)
    assert 'Run the same command again' in leader
    reused = open_error_advice(ValueError("Reused local directory: ['/c/train'] vs ['/c/train']. Provide a different one."),
                               local='/c', remote='s3://b/c4', split_dir='/c/train')
    assert fine in reused and 'data.local=/c-<run_name>' in reused
    index = open_error_advice(json.JSONDecodeError('Index file at x is empty or corrupted. Expecting value', '', 0),
                              local='data/c4', remote=None, split_dir='data/c4/train')
    assert 'python recipes/verify_data.py data/c4/train' in index and 'reconvert' in index
    network = open_error_advice(TimeoutError('timed out'), local='cache', remote='s3://b/c4')
    assert 'the network' in network and 'reconvert' not in network.lower()
