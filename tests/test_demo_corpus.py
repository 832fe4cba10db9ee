"""The embedded Python-docs corpus and the one-time demo data build."""

from __future__ import annotations

import gzip
import json
import multiprocessing
import time
from pathlib import Path

from t5composer.data.c4_source import list_split_files
from t5composer.data.demo_corpus import demo_documents, prepare_demo_data, write_demo_corpus
from t5composer.data.metadata import check_split_metadata, read_split_metadata
from t5composer.tokenization import load_tokenizer, sentinel_ids, tokenizer_fingerprint

SETTINGS = dict(vocab_size=400, input_length=64, noise_density=0.15, mean_noise_span_length=3.0)


def _read(path: Path) -> list[dict]:
    with gzip.open(path, 'rt', encoding='utf-8') as f:
        return [json.loads(line) for line in f]


def test_documents_are_real_deterministic_english():
    docs = demo_documents()
    assert docs == demo_documents()
    urls = [d['url'] for d in docs]
    assert urls == sorted(urls) and len(set(urls)) == len(urls)
    assert len(docs) >= 200 and sum(len(d['text']) for d in docs) > 1_000_000
    by_url = {d['url']: d['text'] for d in docs}
    assert 'python-docs://topics/for' in by_url and 'for' in by_url['python-docs://topics/for']
    assert any(u.startswith('python-docs://module/json') for u in urls)
    assert all(d['text'].strip() for d in docs)


def test_write_demo_corpus_c4_layout(tmp_path):
    m = write_demo_corpus(tmp_path / 'a')
    write_demo_corpus(tmp_path / 'b')
    for name in ('c4-train.00000-of-00001.json.gz', 'c4-validation.00000-of-00001.json.gz'):
        assert (tmp_path / 'a' / name).read_bytes() == (tmp_path / 'b' / name).read_bytes()  # byte-identical
    train = _read(tmp_path / 'a' / 'c4-train.00000-of-00001.json.gz')
    val = _read(tmp_path / 'a' / 'c4-validation.00000-of-00001.json.gz')
    assert all(list(r) == ['text', 'timestamp', 'url'] for r in train + val)
    assert not {r['url'] for r in train} & {r['url'] for r in val}
    all_urls = [d['url'] for d in demo_documents()]
    assert [r['url'] for r in val] == all_urls[9::10]
    assert (m['docs']['train'], m['docs']['val']) == (len(train), len(val))
    assert m['chars']['train'] == sum(len(r['text']) for r in train)
    # The standard converter finds both splits.
    assert len(list_split_files(source=str(tmp_path / 'a'), split='val')) == 1


def _build(cache: str, q) -> None:
    tok, mds = prepare_demo_data(cache_dir=cache, **SETTINGS)
    q.put((str(tok), str(mds)))


def test_prepare_demo_data_once_under_concurrency(tmp_path, capfd):
    cache = str(tmp_path / 'cache')
    ctx = multiprocessing.get_context('fork')
    q = ctx.Queue()
    procs = [ctx.Process(target=_build, args=(cache, q)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0, 0]
    results = {q.get(timeout=5) for _ in procs}
    assert len(results) == 1
    out = capfd.readouterr().out
    assert out.count('demo corpus (Python') == 1 and out.count('demo tokenizer:') == 1  # built once

    tok_dir, mds_root = (Path(p) for p in results.pop())
    t = time.perf_counter()
    assert prepare_demo_data(cache_dir=cache, **SETTINGS) == (tok_dir, mds_root)
    assert time.perf_counter() - t < 1.0  # markers only
    assert 'demo' not in capfd.readouterr().out

    tok = load_tokenizer(tok_dir)
    assert len(tok) == 500 and sentinel_ids(tok, 1) == [499]
    for split in ('train', 'val'):
        meta = read_split_metadata(mds_root / split)
        assert meta['rows'] > 0
        check_split_metadata(meta, tokenizer_fingerprint=tokenizer_fingerprint(tok), vocab_size=len(tok),
                             expanded_length=70, split_dir=mds_root / split)

    # Other settings get other paths; the corpus and tokenizer are reused.
    tok2, mds2 = prepare_demo_data(cache_dir=cache, **{**SETTINGS, 'input_length': 32})
    assert tok2 == tok_dir and mds2 != mds_root
    assert read_split_metadata(mds2 / 'train')['expanded_length'] == 34
    out = capfd.readouterr().out
    assert 'demo data:' in out and 'demo tokenizer:' not in out
