"""An offline English corpus every Python install carries: CPython's own documentation.

Documents:
    - each help topic of ``pydoc_data.topics.topics`` (the language reference text that
      ``help('FOR')`` shows), url ``python-docs://topics/<name>``;
    - the docstrings of each standard-library module, read with ``ast`` from the source files
      (never imported: no side effects), module docstring first, then each class / function
      docstring in source order under its qualified name; url ``python-docs://module/<name>``.

Only the standard library is used, so the corpus is the same on machines with the same Python
version (a Linux distribution that leaves out a stdlib package, e.g. tkinter, changes it; the
manifest records the sha256 of the documents). Documents are sorted by url; every 10th goes to
validation.

:func:`prepare_demo_data` builds, once per cache directory and settings, the corpus, a
SentencePiece tokenizer trained on its train split and both splits converted to MDS rows by the
standard converter; a file lock makes concurrent callers (``composer -n 2``) wait for one build.
"""

from __future__ import annotations

import ast
import gzip
import hashlib
import json
import os
import sys
import sysconfig
import time
from pathlib import Path
from typing import Any, Callable, Optional

__all__ = ['DEMO_VERSION', 'build_once', 'demo_documents', 'prepare_demo_data', 'write_demo_corpus']

DEMO_VERSION = 1  # bump when the corpus or the build changes, so caches are rebuilt
_VAL_EVERY = 10
# Stdlib packages whose modules are used (besides top-level modules); tests and GUI/tool
# packages that distributions split off are left out.
_PACKAGES = (
    'asyncio', 'collections', 'concurrent', 'ctypes', 'dbm', 'email', 'html', 'http', 'importlib',
    'json', 'logging', 'multiprocessing', 're', 'sqlite3', 'tomllib', 'unittest', 'urllib',
    'wsgiref', 'xml', 'xmlrpc', 'zoneinfo',
)
# Top-level modules left out: not prose (this: rot13 text), side effects in spirit, or often
# split off or patched by distributions.
_SKIP_MODULES = {'this', 'antigravity', 'turtle', 'sitecustomize', 'usercustomize'}
_TIMESTAMP = '2019-04-01T00:00:00Z'  # a fixed C4-style timestamp: output is byte-identical


def _module_docs(path: Path) -> str:
    """Module, class and function docstrings of one source file, as paragraphs."""
    try:
        tree = ast.parse(path.read_text(encoding='utf-8'))
    except (SyntaxError, UnicodeDecodeError, OSError):
        return ''
    parts = []
    doc = ast.get_docstring(tree)
    if doc:
        parts.append(doc)

    def walk(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = prefix + child.name
                d = ast.get_docstring(child)
                if d:
                    parts.append(f'{name}\n\n{d}')
                if isinstance(child, ast.ClassDef):
                    walk(child, name + '.')

    walk(tree, '')
    return '\n\n'.join(parts)


def _stdlib_modules() -> list[tuple[str, Path]]:
    """(dotted name, source file) of the stdlib modules used, sorted by name."""
    root = Path(sysconfig.get_paths()['stdlib'])
    mods = []
    for p in root.glob('*.py'):
        if not p.stem.startswith('_') and p.stem not in _SKIP_MODULES:
            mods.append((p.stem, p))
    for pkg in _PACKAGES:
        base = root / pkg
        if not (base / '__init__.py').is_file():
            continue
        for p in base.rglob('*.py'):
            rel = p.relative_to(root).with_suffix('')
            if any(part in ('test', 'tests') or part.startswith('_') and part != '__init__' for part in rel.parts):
                continue
            name = '.'.join(rel.parts[:-1] if rel.name == '__init__' else rel.parts)
            mods.append((name, p))
    return sorted(mods)


def demo_documents() -> list[dict[str, str]]:
    """All documents, sorted by url: ``[{'url': ..., 'text': ...}, ...]``."""
    from pydoc_data.topics import topics

    docs = [{'url': f'python-docs://topics/{name}', 'text': text.strip()} for name, text in topics.items()]
    for name, path in _stdlib_modules():
        text = _module_docs(path)
        if len(text) >= 200:  # a stub docstring is not a document
            docs.append({'url': f'python-docs://module/{name}', 'text': f'{name}\n\n{text}'})
    docs = [d for d in docs if d['text']]
    return sorted(docs, key=lambda d: d['url'])


def _write_jsonl_gz(path: Path, docs: list[dict[str, str]]) -> None:
    # mtime=0 and a fixed timestamp: the files are byte-identical across builds.
    with open(path, 'wb') as raw, gzip.GzipFile(fileobj=raw, mode='wb', mtime=0) as f:
        for d in docs:
            line = {'text': d['text'], 'timestamp': _TIMESTAMP, 'url': d['url']}
            f.write(json.dumps(line, ensure_ascii=False, separators=(',', ':')).encode('utf-8') + b'\n')


def write_demo_corpus(out_dir: str | os.PathLike) -> dict[str, Any]:
    """Write the corpus as C4-style files the standard converter reads.

    Writes ``c4-train.00000-of-00001.json.gz`` and ``c4-validation.00000-of-00001.json.gz``
    (lines ``{"text", "timestamp", "url"}``) and ``manifest.json``.

    Args:
        out_dir: directory to write into (created).

    Returns:
        The manifest: docs and chars per split, python version, sha256 of the documents.
    """
    out = Path(os.path.expanduser(str(out_dir)))
    out.mkdir(parents=True, exist_ok=True)
    docs = demo_documents()
    splits = {
        'train': [d for i, d in enumerate(docs) if i % _VAL_EVERY != _VAL_EVERY - 1],
        'val': [d for i, d in enumerate(docs) if i % _VAL_EVERY == _VAL_EVERY - 1],
    }
    _write_jsonl_gz(out / 'c4-train.00000-of-00001.json.gz', splits['train'])
    _write_jsonl_gz(out / 'c4-validation.00000-of-00001.json.gz', splits['val'])
    digest = hashlib.sha256()
    for d in docs:
        digest.update(d['url'].encode() + b'\0' + d['text'].encode('utf-8') + b'\0')
    manifest = {
        'corpus': 'python_docs',
        'demo_version': DEMO_VERSION,
        'python': sys.version.split()[0],
        'sha256': digest.hexdigest(),
        'docs': {k: len(v) for k, v in splits.items()},
        'chars': {k: sum(len(d['text']) for d in v) for k, v in splits.items()},
    }
    (out / 'manifest.json').write_text(json.dumps(manifest, indent=2) + '\n')
    return manifest


def _fmt(x: float) -> str:
    return f'{x:g}'.replace('.', 'p')


def build_once(marker: Path, build: Callable[[], Optional[str]], *, lock_path: Path) -> bool:
    """Run ``build`` unless ``marker`` exists; concurrent callers wait and build only once.

    Args:
        marker: completion marker, written (with ``build``'s return value, or empty) when done.
        build: the step; it must leave no marker-less partial state that breaks a re-run.
        lock_path: file lock shared by the processes that may build the same thing.

    Returns:
        True if this call ran ``build``.
    """
    if marker.is_file():
        return False
    from filelock import FileLock

    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(lock_path)):
        # Another process may have finished the build while we waited for the lock.
        if marker.is_file():
            return False
        content = build()
        marker.write_text(content or '')
    return True


def prepare_demo_data(
    *,
    cache_dir: str | os.PathLike,
    vocab_size: int,
    input_length: int,
    noise_density: float,
    mean_noise_span_length: float,
    verbose: bool = True,
) -> tuple[Path, Path]:
    """Build (once) the demo corpus, its tokenizer and its MDS splits; return their paths.

    Layout under ``cache_dir/python_docs-py3.X-v<DEMO_VERSION>/``: ``corpus/`` (C4-style
    files), ``tokenizer-v<vocab>/`` and ``mds-v<vocab>-L<input>-d<density>-m<span>/{train,val}``.
    Each step writes a ``.complete`` marker when done; later calls only check the markers.

    Args:
        cache_dir: cache root (e.g. ``$T5COMPOSER_CACHE/demo``).
        vocab_size: SentencePiece pieces of the demo tokenizer (sentinels excluded).
        input_length: encoder input length of the rows.
        noise_density: span-corruption noise density.
        mean_noise_span_length: mean noise span length.
        verbose: print what is built and how long it took.

    Returns:
        ``(tokenizer_dir, mds_root)``; the splits are ``mds_root/train`` and ``mds_root/val``.
    """
    py = f'{sys.version_info[0]}.{sys.version_info[1]}'
    base = Path(os.path.expanduser(str(cache_dir))) / f'python_docs-py{py}-v{DEMO_VERSION}'
    corpus_dir = base / 'corpus'
    tok_dir = base / f'tokenizer-v{vocab_size}'
    mds_root = base / f'mds-v{vocab_size}-L{input_length}-d{_fmt(noise_density)}-m{_fmt(mean_noise_span_length)}'
    lock = base / '.build.lock'

    def corpus() -> str:
        t = time.perf_counter()
        m = write_demo_corpus(corpus_dir)
        if verbose:
            print(f'demo corpus (Python {m["python"]} docs): train {m["docs"]["train"]} docs / '
                  f'{m["chars"]["train"]:,} chars, val {m["docs"]["val"]} docs / {m["chars"]["val"]:,} '
                  f'chars ({time.perf_counter() - t:.1f} s) -> {corpus_dir}', flush=True)
        return json.dumps(m) + '\n'

    def tokenizer() -> None:
        from t5composer.tokenizer_training import train_tokenizer

        t = time.perf_counter()
        train_file = corpus_dir / 'c4-train.00000-of-00001.json.gz'
        train_tokenizer(out_dir=tok_dir, vocab_size=vocab_size, input_files=[train_file])
        if verbose:
            print(f'demo tokenizer: {vocab_size} pieces + 100 sentinels '
                  f'({time.perf_counter() - t:.1f} s) -> {tok_dir}', flush=True)

    def mds() -> None:
        from t5composer.data.c4_convert import convert_c4
        from t5composer.data.span_spec import SpanCorruptionSpec

        t = time.perf_counter()
        res = convert_c4(
            source=str(corpus_dir), out_root=mds_root, splits=('train', 'val'), tokenizer=str(tok_dir),
            spec=SpanCorruptionSpec(input_length=input_length, noise_density=noise_density,
                                    mean_noise_span_length=mean_noise_span_length),
            overwrite=True, progress=False,
        )
        if verbose:
            rows = ', '.join(f'{s} {r["rows"]} rows' for s, r in res.items())
            print(f'demo data: {rows} of {res["train"]["expanded_length"]} tokens '
                  f'({time.perf_counter() - t:.1f} s) -> {mds_root}', flush=True)

    build_once(corpus_dir / '.complete', corpus, lock_path=lock)
    build_once(tok_dir / '.complete', tokenizer, lock_path=lock)
    build_once(mds_root / '.complete', mds, lock_path=lock)
    return tok_dir, mds_root
