"""C4 -> MDS conversion: sources, bad lines, rows, metadata, workers, overwrite, failures."""

from __future__ import annotations

import gzip
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from t5composer.data import c4_convert
from t5composer.data.c4_convert import convert_c4
from t5composer.data.c4_source import iter_c4_lines, list_split_files, parse_c4_line
from t5composer.data.metadata import META_FILENAME, check_split_metadata, read_split_metadata
from t5composer.data.span_spec import SpanCorruptionSpec
from t5composer.tokenization import BatchEncoder, load_tokenizer, tokenizer_fingerprint
from t5composer.tokenizer_training import train_tokenizer
from conftest import shared_data

REPO = Path(__file__).resolve().parents[1]
L = 568  # random_spans_helper(512, 0.15, 3.0)[0]
L64 = 70  # random_spans_helper(64, 0.15, 3.0)[0]


@pytest.fixture(scope='session')
def demo_docs() -> list[str]:
    from t5composer.data.demo_corpus import demo_documents

    return [d['text'] for d in demo_documents()]


@pytest.fixture(scope='session')
def tok_dir(tmp_path_factory, demo_docs) -> Path:
    """A small tokenizer trained on part of the demo corpus (no ../shared needed)."""
    return train_tokenizer(out_dir=tmp_path_factory.mktemp('tok') / 'tiny', vocab_size=500, texts=demo_docs[:60])


def _line(text, **extra) -> bytes:
    return json.dumps({'text': text, 'timestamp': '2019-04-20T00:00:00Z', 'url': 'https://x', **extra}).encode() + b'\n'


BAD_LINES = [
    (b'{"text": "unterminated\n', 'invalid_json'),
    (b'{"timestamp": "2019", "url": "u"}\n', 'missing_text'),
    (b'{"text": "   \\n ", "url": "u"}\n', 'empty_text'),
    (b'{"text": 42}\n', 'non_string_text'),
    (b'{"text": "caf\xe9 latin-1"}\n', 'invalid_utf8'),
    (b'\n', 'empty_line'),
    (b'["text"]\n', 'not_an_object'),
    (b'{"text": "lone \\ud800 surrogate"}\n', 'invalid_unicode'),
]


@pytest.fixture(scope='session')
def c4_dir(tmp_path_factory, demo_docs) -> tuple[Path, list[str], list[str]]:
    """A local C4 folder: 2 gzip train files with bad lines mixed in, a non-gzip '.gz', a val file."""
    root = tmp_path_factory.mktemp('c4') / 'en'
    root.mkdir()
    docs = demo_docs[60:160]
    good_train = []
    with gzip.open(root / 'c4-train.00000-of-00003.json.gz', 'wb') as f:
        for i, d in enumerate(docs[:50]):
            f.write(_line(d))
            good_train.append(d)
            if i < len(BAD_LINES):
                f.write(BAD_LINES[i][0])
    (root / 'c4-train.00001-of-00003.json.gz').write_bytes(b'this is not gzip\n' * 10)
    with gzip.open(root / 'c4-train.00002-of-00003.json.gz', 'wb') as f:
        for d in docs[50:80]:
            f.write(_line(d))
            good_train.append(d)
    with gzip.open(root / 'c4-validation.00000-of-00001.json.gz', 'wb') as f:
        for d in docs[80:100]:
            f.write(_line(d))
    (root / 'README.md').write_text('not data')
    return root, good_train, docs[80:100]


def read_rows(split_dir: Path, scratch: Path) -> np.ndarray:
    """All rows of an MDS split, read with streaming's shard reader (on a copy: it unpacks)."""
    from streaming.base.compression import decompress
    from streaming.base.format import reader_from_json

    copy = scratch / f'read-{split_dir.parent.name}-{split_dir.name}-{len(list(scratch.iterdir()))}'
    shutil.copytree(split_dir, copy)
    rows = []
    for info in json.loads((copy / 'index.json').read_text())['shards']:
        if info.get('zip_data'):
            data = (copy / info['zip_data']['basename']).read_bytes()
            (copy / info['raw_data']['basename']).write_bytes(decompress(info['compression'], data))
        reader = reader_from_json(str(copy), None, info)
        rows += [reader.get_item(i)['tokens'] for i in range(reader.samples)]
    shutil.rmtree(copy)
    return np.stack(rows) if rows else np.zeros((0, 0), np.uint16)


def expected_stream(tok, texts, backend='auto') -> np.ndarray:
    ids = BatchEncoder(tok, backend=backend)(texts)
    return np.concatenate([np.asarray(x + [tok.eos_token_id]) for x in ids])


@pytest.fixture(scope='session')
def converted(tmp_path_factory, c4_dir, tok_dir) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp('out') / 'c4_mds'
    meta = convert_c4(source=str(c4_dir[0]), out_root=out, tokenizer=str(tok_dir), spec=SpanCorruptionSpec(input_length=64), progress=False)
    return out, meta


# ---- source + parsing --------------------------------------------------------------------
def test_parse_c4_line_reasons():
    assert parse_c4_line(_line('Hello')) == ('Hello', None)
    for raw, reason in BAD_LINES:
        assert parse_c4_line(raw) == (None, reason), raw


def test_list_split_files_and_errors(c4_dir, tmp_path):
    root = c4_dir[0]
    files = list_split_files(source=str(root), split='train')
    assert [os.path.basename(f) for f in files] == [f'c4-train.0000{i}-of-00003.json.gz' for i in range(3)]
    assert len(list_split_files(source=str(root), split='val')) == 1
    only_train = tmp_path / 'only_train'
    only_train.mkdir()
    shutil.copy(files[0], only_train)
    with pytest.raises(FileNotFoundError, match=r"split 'val'.*c4-validation.*found: c4-train.00000-of-00003.json.gz"):
        list_split_files(source=str(only_train), split='val')
    with pytest.raises(ValueError, match='Unknown split'):
        list_split_files(source=str(root), split='test')
    lines = list(iter_c4_lines(source=str(root), split='train'))
    errors = [x for x in lines if x.error]
    assert len(errors) == 1 and errors[0].error == 'unreadable_file' and '00001' in errors[0].file


# ---- conversion ------------------------------------------------------------------------
def test_rows_equal_tokenized_docs_plus_eos(converted, c4_dir, tok_dir, tmp_path):
    out, meta = converted
    tok = load_tokenizer(tok_dir)
    for split, texts in (('train', c4_dir[1]), ('val', c4_dir[2])):
        rows = read_rows(out / split, tmp_path)
        assert rows.dtype == np.uint16 and rows.shape[1] == L64
        stream = expected_stream(tok, texts)
        n = len(stream) // L64
        assert rows.shape[0] == n == meta[split]['rows']
        np.testing.assert_array_equal(rows.reshape(-1), stream[: n * L64])
        assert meta[split]['tokens'] == len(stream)
        assert meta[split]['dropped_tokens'] == len(stream) - n * L64 < L64
        assert meta[split]['docs'] == len(texts)
    assert not [p for p in out.iterdir() if p.name.startswith('.')]  # no temp dirs left


def test_bad_lines_counted_and_reported(tmp_path, c4_dir, tok_dir, caplog):
    with caplog.at_level(logging.WARNING, logger='t5composer.data.c4_convert'):
        meta = convert_c4(source=str(c4_dir[0]), out_root=tmp_path / 'o', splits=['train'], tokenizer=str(tok_dir),
                          spec=SpanCorruptionSpec(input_length=64), progress=False)['train']
    expected = {reason: 1 for _, reason in BAD_LINES}
    expected['unreadable_file'] = 1
    assert meta['skipped_lines'] == expected
    examples = [r.getMessage() for r in caplog.records if 'skipped c4-' in r.getMessage() or ': skipped /' in r.getMessage()]
    assert len(examples) == 5  # the first few, with file and line number
    assert 'c4-train.00000-of-00003.json.gz:2: invalid_json' in examples[0]
    assert any('skipped 9 line(s)' in r.getMessage() for r in caplog.records)


def test_metadata_contents(converted, tok_dir):
    out, meta = converted
    on_disk = read_split_metadata(out / 'train')
    assert on_disk == meta['train']
    tok = load_tokenizer(tok_dir)
    for key, value in {
        'format_version': 1, 'split': 'train', 'tokenizer': str(tok_dir), 'vocab_size': 600,
        'tokenizer_fingerprint': tokenizer_fingerprint(tok), 'input_length': 64, 'noise_density': 0.15,
        'mean_noise_span_length': 3.0, 'expanded_length': L64, 'encoder': 'sentencepiece',
    }.items():
        assert on_disk[key] == value, key
    assert on_disk['rows'] * L64 + on_disk['dropped_tokens'] == on_disk['tokens']
    assert {'created', 'seconds', 't5composer_version', 'source', 'docs'} <= set(on_disk)
    check_split_metadata(on_disk, tokenizer_fingerprint=tokenizer_fingerprint(tok), vocab_size=len(tok),
                         expanded_length=L64, split_dir=out / 'train')


def _strip_volatile(meta: dict) -> dict:
    return {k: v for k, v in meta.items() if k not in ('created', 'seconds')}


@pytest.mark.parametrize('length', [L64, L, 300])  # shape header of 1 or 2 bytes
def test_row_bytes_equal_streaming_encoding(length):
    # Rows are written as pre-encoded bytes; they must be what MDS's own encoder makes of them.
    from streaming.base.format.mds.encodings import mds_decode, mds_encode

    rows = np.random.default_rng(0).integers(0, 65536, size=(5, length)).astype(np.uint16)
    writer = c4_convert._SplitWriter(writer=None, length=length, max_docs=None, split='train', pbar=None)
    encoded = list(writer._make_row_encoder(rows[0])(rows))
    assert encoded == [mds_encode(c4_convert.ROW_ENCODING, r) for r in rows]
    np.testing.assert_array_equal(mds_decode(c4_convert.ROW_ENCODING, encoded[3]), rows[3])


def test_two_workers_identical_and_tokenizers_backend(converted, c4_dir, tok_dir, tmp_path):
    out, meta = converted
    meta2 = convert_c4(source=str(c4_dir[0]), out_root=tmp_path / 'w2', tokenizer=str(tok_dir), spec=SpanCorruptionSpec(input_length=64),
                       num_workers=2, chunk_docs=7, progress=False)
    for split in ('train', 'val'):
        assert _strip_volatile(meta2[split]) == _strip_volatile(meta[split])
        for name in ('index.json', 'shard.00000.mds.zstd'):
            assert (tmp_path / 'w2' / split / name).read_bytes() == (out / split / name).read_bytes()
    hf = convert_c4(source=str(c4_dir[0]), out_root=tmp_path / 'hf', splits=['val'], tokenizer=str(tok_dir),
                    spec=SpanCorruptionSpec(input_length=64), encoder='tokenizers', progress=False)['val']
    assert hf['encoder'] == 'tokenizers'
    rows = read_rows(tmp_path / 'hf' / 'val', tmp_path)
    stream = expected_stream(load_tokenizer(tok_dir), c4_dir[2], backend='tokenizers')
    np.testing.assert_array_equal(rows.reshape(-1), stream[: rows.size])


def test_one_worker_tokenizes_on_its_own_thread(tmp_path, c4_dir, tok_dir, monkeypatch):
    # num_workers=1 overlaps reading and writing with tokenizing (the tokenizers release the GIL).
    import threading

    import t5composer.tokenization as tokenization

    real, threads = tokenization.BatchEncoder.__call__, set()

    def recording(self, texts):
        threads.add(threading.current_thread().name)
        return real(self, texts)

    monkeypatch.setattr(tokenization.BatchEncoder, '__call__', recording)
    meta = convert_c4(source=str(c4_dir[0]), out_root=tmp_path / 'one', splits=['val'], tokenizer=str(tok_dir),
                      spec=SpanCorruptionSpec(input_length=64), chunk_docs=3, progress=False)['val']
    assert meta['docs'] > 3 and threads and all(t.startswith('t5composer-tokenizer') for t in threads)


def test_max_docs(tmp_path, c4_dir, tok_dir):
    for workers in (1, 2):
        meta = convert_c4(source=str(c4_dir[0]), out_root=tmp_path / f'm{workers}', splits=['train'],
                          tokenizer=str(tok_dir), spec=SpanCorruptionSpec(input_length=64), max_docs=12, num_workers=workers,
                          chunk_docs=5, progress=False)['train']
        assert meta['docs'] == 12
        # Bad lines are counted only up to the 12th good document (bad lines 2, 4, .., 16).
        assert sum(meta['skipped_lines'].values()) == 8
        stream = expected_stream(load_tokenizer(tok_dir), c4_dir[1][:12])
        assert meta['tokens'] == len(stream)
        np.testing.assert_array_equal(read_rows(tmp_path / f'm{workers}' / 'train', tmp_path).reshape(-1),
                                      stream[: meta['rows'] * L64])


def test_overwrite_semantics(tmp_path, c4_dir, tok_dir):
    kw = dict(source=str(c4_dir[0]), out_root=tmp_path / 'ow', splits=['val'], tokenizer=str(tok_dir), progress=False)
    first = convert_c4(spec=SpanCorruptionSpec(input_length=64), **kw)['val']
    with pytest.raises(FileExistsError, match='--overwrite'):
        convert_c4(spec=SpanCorruptionSpec(input_length=32), **kw)
    assert read_split_metadata(tmp_path / 'ow' / 'val') == first  # untouched
    second = convert_c4(spec=SpanCorruptionSpec(input_length=32), overwrite=True, **kw)['val']
    assert read_split_metadata(tmp_path / 'ow' / 'val') == second
    assert second['expanded_length'] != first['expanded_length']
    assert sorted(p.name for p in (tmp_path / 'ow').iterdir()) == ['val']


def test_failure_leaves_no_temp_dir(tmp_path, c4_dir, tok_dir, monkeypatch):
    out = tmp_path / 'fail'
    convert_c4(source=str(c4_dir[0]), out_root=out, splits=['val'], tokenizer=str(tok_dir), spec=SpanCorruptionSpec(input_length=64), progress=False)
    before = (out / 'val' / 'index.json').read_bytes()
    import t5composer.tokenization as tokenization

    real, calls = tokenization.BatchEncoder.__call__, []

    def flaky(self, texts):  # num_workers=1: raises on the tokenizer thread, mid-way through train
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError('boom mid-way')
        return real(self, texts)

    monkeypatch.setattr(tokenization.BatchEncoder, '__call__', flaky)
    with pytest.raises(RuntimeError, match='boom'):
        convert_c4(source=str(c4_dir[0]), out_root=out, splits=['train', 'val'], tokenizer=str(tok_dir),
                   spec=SpanCorruptionSpec(input_length=64), overwrite=True, chunk_docs=4, progress=False)
    assert sorted(p.name for p in out.iterdir()) == ['val']  # no .train.tmp-*, no train
    assert (out / 'val' / 'index.json').read_bytes() == before


def test_full_disk_mid_split_leaves_no_split_and_killed_leftovers_are_removed(tmp_path, c4_dir, tok_dir, monkeypatch):
    import errno

    from streaming import MDSWriter

    out = tmp_path / 'full'
    real, calls = MDSWriter.write, []

    def disk_full(self, sample):
        calls.append(1)
        if len(calls) == 5:
            raise OSError(errno.ENOSPC, 'No space left on device')
        return real(self, sample)

    monkeypatch.setattr(MDSWriter, 'write', disk_full)
    with pytest.raises(OSError, match='No space left'):
        convert_c4(source=str(c4_dir[0]), out_root=out, splits=['val'], tokenizer=str(tok_dir), spec=SpanCorruptionSpec(input_length=64), progress=False)
    assert list(out.iterdir()) == []  # no split, no temporary folder
    monkeypatch.setattr(MDSWriter, 'write', real)

    # A conversion killed mid-way leaves its temporary folder; the next one removes it.
    dead = out / '.val.tmp-999999999'
    (dead / 'shard').mkdir(parents=True)
    convert_c4(source=str(c4_dir[0]), out_root=out, splits=['val'], tokenizer=str(tok_dir), spec=SpanCorruptionSpec(input_length=64), progress=False)
    assert sorted(p.name for p in out.iterdir()) == ['val']


def test_vocab_larger_than_uint16_refused(tmp_path, c4_dir, monkeypatch):
    class Huge:
        def __len__(self):
            return 70000

        def get_vocab(self):
            return {'<pad>': 0, 'x': 69999}

    import t5composer.tokenization as tokenization

    monkeypatch.setattr(tokenization, 'load_tokenizer', lambda name: Huge())
    with pytest.raises(ValueError, match='70000 ids.*uint16'):
        convert_c4(source=str(c4_dir[0]), out_root=tmp_path / 'huge', tokenizer='huge', progress=False)
    assert not (tmp_path / 'huge').exists()


def test_check_split_metadata_messages(converted, tok_dir):
    out, meta = converted
    m = meta['train']
    ok = dict(tokenizer_fingerprint=m['tokenizer_fingerprint'], vocab_size=600, expanded_length=L64, split_dir=out / 'train')
    with pytest.raises(ValueError) as e:
        check_split_metadata(m, **{**ok, 'tokenizer_fingerprint': 'sha256:other'}, tokenizer_name='google/t5-v1_1-base')
    msg = str(e.value)
    assert 'tokenizer_fingerprint' in msg and 'sha256:other' in msg and m['tokenizer_fingerprint'] in msg
    assert 'recipes/convert_c4.py' in msg and "--tokenizer google/t5-v1_1-base" in msg and 'tokenizer.name' in msg
    with pytest.raises(ValueError, match=r'vocab_size: data has 600, the config.s tokenizer has 32100'):
        check_split_metadata(m, **{**ok, 'vocab_size': 32100})
    with pytest.raises(ValueError) as e:
        check_split_metadata(m, **{**ok, 'expanded_length': 568}, input_length=512)
    msg = str(e.value)
    assert f'expanded_length: data rows have {L64}' in msg and 'needs 568' in msg
    assert '--input_length 512' in msg and 'data.input_length' in msg


def test_read_split_metadata_missing(tmp_path):
    (tmp_path / 'train').mkdir()
    with pytest.raises(FileNotFoundError, match=r'not converted by t5composer.*python recipes/convert_c4.py'):
        read_split_metadata(tmp_path / 'train')
    (tmp_path / 'train' / META_FILENAME).write_text('{"format_version": 1}')
    with pytest.raises(ValueError, match='misses fields'):
        read_split_metadata(tmp_path / 'train')


def test_convert_recipe_script(tmp_path, c4_dir, tok_dir):
    script = str(REPO / 'recipes' / 'convert_c4.py')
    help_out = subprocess.run([sys.executable, script, '--help'], capture_output=True, text=True, check=True).stdout
    assert '--max_docs' in help_out and '--overwrite' in help_out
    cmd = [sys.executable, script, '--source', str(c4_dir[0]), '--out_root', str(tmp_path / 'r'), '--splits', 'val',
           '--tokenizer', str(tok_dir), '--input_length', '64', '--max_docs', '15', '--no_progress']
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert 'val: 15 docs' in res.stdout and 'tokens/s' in res.stdout
    assert read_split_metadata(tmp_path / 'r' / 'val')['docs'] == 15
    again = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path)
    assert again.returncode != 0 and '--overwrite' in again.stderr


# ---- real C4 sample + T5 tokenizer (../shared/data; skipped when absent) --------------------
def test_real_c4_sample_conversion(tmp_path):
    c4 = shared_data('c4_sample')
    spiece = shared_data('tokenizer', 't5', 'spiece.model')
    meta = convert_c4(source=str(c4), out_root=tmp_path / 'real', tokenizer=str(spiece), max_docs=100, progress=False)
    tok = load_tokenizer(spiece)
    with gzip.open(c4 / 'c4-train.00000-of-00001.json.gz', 'rt', encoding='utf-8') as f:
        texts = [json.loads(line)['text'] for _, line in zip(range(100), f)]
    stream = np.concatenate([np.asarray(tok(t).input_ids) for t in texts])  # HF ids + EOS
    m = meta['train']
    assert (m['docs'], m['tokens'], m['vocab_size'], m['expanded_length']) == (100, len(stream), 32100, L)
    np.testing.assert_array_equal(read_rows(tmp_path / 'real' / 'train', tmp_path).reshape(-1), stream[: m['rows'] * L])
    assert meta['val']['docs'] == 100 and meta['val']['skipped_lines'] == {}
