"""``t5composer_meta.json``: what a converted split was made from, checked before training.

The converter writes it last into each split directory; training reads it and refuses data
made with another tokenizer or another row length, naming the field and the fix.
"""

from __future__ import annotations

import datetime
import json
import os
from pathlib import Path
from typing import Any, Mapping, Optional

from t5composer.data import span_spec
from t5composer.data.span_spec import SpanCorruptionSpec

__all__ = [
    'FORMAT_VERSION',
    'META_FILENAME',
    'check_split_metadata',
    'convert_command',
    'make_split_metadata',
    'read_split_metadata',
    'write_split_metadata',
]

META_FILENAME = 't5composer_meta.json'
FORMAT_VERSION = 1

# Fields every metadata file has (make_split_metadata fills them).
_FIELDS = (
    'format_version', 'source', 'split', 'tokenizer', 'tokenizer_fingerprint', 'vocab_size',
    'input_length', 'noise_density', 'mean_noise_span_length', 'expanded_length', 'docs',
    'tokens', 'rows', 'dropped_tokens', 'skipped_lines', 'encoder', 'seconds', 'created',
    't5composer_version',
)


def _package_version() -> str:
    try:
        from importlib.metadata import PackageNotFoundError, version

        return version('t5composer')
    except PackageNotFoundError:
        import t5composer

        return getattr(t5composer, '__version__', 'unknown')


def make_split_metadata(
    *,
    source: str,
    split: str,
    tokenizer: str,
    tokenizer_fingerprint: str,
    vocab_size: int,
    spec: SpanCorruptionSpec,
    docs: int,
    tokens: int,
    rows: int,
    dropped_tokens: int,
    skipped_lines: Mapping[str, int],
    encoder: str,
    seconds: float,
) -> dict[str, Any]:
    """The metadata dict of one converted split.

    Args:
        source: the C4 source given to the converter (hub name or directory).
        split: ``train`` or ``val``.
        tokenizer: the tokenizer name or path given to the converter.
        tokenizer_fingerprint: :func:`t5composer.tokenization.tokenizer_fingerprint`.
        vocab_size: ``len(tokenizer)``.
        spec: the span corruption the rows are made for; its expanded length is the row length
            (568 for T5's settings).
        docs: documents converted.
        tokens: their tokens, one EOS per document included.
        rows: rows written (``tokens // expanded_length``).
        dropped_tokens: tokens of the final incomplete row, not written.
        skipped_lines: count of skipped lines by reason.
        encoder: tokenization backend used (``sentencepiece`` or ``tokenizers``).
        seconds: conversion wall time.
    """
    return {
        'format_version': FORMAT_VERSION,
        'source': source,
        'split': split,
        'tokenizer': tokenizer,
        'tokenizer_fingerprint': tokenizer_fingerprint,
        'vocab_size': int(vocab_size),
        'input_length': int(spec.input_length),
        'noise_density': float(spec.noise_density),
        'mean_noise_span_length': float(spec.mean_noise_span_length),
        'expanded_length': int(spec.expanded_length),
        'docs': int(docs),
        'tokens': int(tokens),
        'rows': int(rows),
        'dropped_tokens': int(dropped_tokens),
        'skipped_lines': {k: int(v) for k, v in sorted(skipped_lines.items())},
        'encoder': encoder,
        'seconds': round(float(seconds), 3),
        'created': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
        't5composer_version': _package_version(),
    }


def write_split_metadata(split_dir: str | os.PathLike, meta: Mapping[str, Any]) -> str:
    """Write ``t5composer_meta.json`` into ``split_dir`` (atomically: temp file, then rename).

    Args:
        split_dir: the split directory (exists).
        meta: the metadata (see :func:`make_split_metadata`).

    Returns:
        The file's path.
    """
    from t5composer.atomic_files import write_atomically

    path = os.path.join(os.fspath(split_dir), META_FILENAME)
    text = json.dumps(dict(meta), indent=2, ensure_ascii=False) + '\n'
    write_atomically(path, lambda tmp: Path(tmp).write_text(text, encoding='utf-8'))
    return path


def convert_command(meta: Mapping[str, Any], *, out_root: Optional[str] = None, overwrite: bool = True, **changes: Any) -> str:
    """The ``recipes/convert_c4.py`` command that (re)makes a split, with ``changes`` applied.

    Args:
        meta: metadata of the split (source, split, tokenizer, lengths); ``split`` may be a list.
        out_root: ``--out_root`` of the command (default: the placeholder ``OUT``).
        overwrite: add ``--overwrite`` (to replace a split that exists).
        changes: options to change, e.g. ``tokenizer='google/t5-v1_1-base'``; None values are
            ignored.
    """
    changes = {k: v for k, v in changes.items() if v is not None}
    spec = SpanCorruptionSpec.from_mapping({**meta, **changes})
    return span_spec.convert_command(out_root=out_root or 'OUT', splits=changes.get('split', meta.get('split', 'train')),
                                     tokenizer=changes.get('tokenizer', meta.get('tokenizer', 'TOKENIZER')), spec=spec,
                                     source=changes.get('source', meta.get('source', 'allenai/c4')), overwrite=overwrite)


def read_split_metadata(split_dir: str | os.PathLike) -> dict[str, Any]:
    """Read a split's ``t5composer_meta.json`` (local directories only).

    Args:
        split_dir: the split directory.

    Raises:
        FileNotFoundError: no metadata file (the data was not converted by t5composer, or the
            conversion did not finish).
        ValueError: the file is not valid JSON or misses fields.
    """
    split_dir = os.fspath(split_dir)
    path = os.path.join(split_dir, META_FILENAME)
    if not os.path.isfile(path):
        name = os.path.basename(split_dir.rstrip('/'))
        out_root = os.path.dirname(split_dir.rstrip('/')) or '.'
        cmd = span_spec.convert_command(out_root=out_root, splits=name if name in ('train', 'val') else ['train', 'val'],
                                        tokenizer='<tokenizer.name>')
        if not os.path.isdir(split_dir):
            raise FileNotFoundError(f'{split_dir} does not exist. Convert C4 with: {cmd}')
        raise FileNotFoundError(
            f'{split_dir} has no {META_FILENAME}: it was not converted by t5composer (or the '
            f'conversion did not finish). Convert it with: {cmd} --overwrite'
        )
    try:
        with open(path, encoding='utf-8') as f:
            meta = json.load(f)
    except ValueError as e:
        raise ValueError(f'{path} is not valid JSON ({e}); reconvert the split.') from e
    missing = [k for k in _FIELDS if k not in meta] if isinstance(meta, dict) else list(_FIELDS)
    if missing:
        raise ValueError(f'{path} misses fields {missing}; reconvert the split with recipes/convert_c4.py.')
    return meta


def check_split_metadata(
    meta: Mapping[str, Any],
    *,
    tokenizer_fingerprint: str,
    vocab_size: int,
    expanded_length: int,
    split_dir: str | os.PathLike,
    tokenizer_name: Optional[str] = None,
    input_length: Optional[int] = None,
) -> None:
    """Refuse a split made for another tokenizer or row length.

    Args:
        meta: the split's metadata (:func:`read_split_metadata`).
        tokenizer_fingerprint: fingerprint of the tokenizer training will use.
        vocab_size: its ``len(tokenizer)``.
        expanded_length: the row length the config needs (``SpanCorruptionSpec.expanded_length``).
        split_dir: the split directory (for the message).
        tokenizer_name: the config's tokenizer name, used in the suggested command.
        input_length: the config's ``data.input_length``, used in the suggested command.

    Raises:
        ValueError: naming each mismatched field with both values and the two possible fixes.
    """
    split_dir = os.fspath(split_dir)
    problems = []
    if meta.get('format_version') != FORMAT_VERSION:
        problems.append(f'format_version: data has {meta.get("format_version")!r}, this t5composer reads {FORMAT_VERSION}')
    if meta.get('tokenizer_fingerprint') != tokenizer_fingerprint:
        problems.append(
            f'tokenizer_fingerprint: data was tokenized with {meta.get("tokenizer")!r} '
            f'({meta.get("tokenizer_fingerprint")}), the config\'s tokenizer'
            f'{" " + repr(tokenizer_name) if tokenizer_name else ""} has {tokenizer_fingerprint}'
        )
    if meta.get('vocab_size') != vocab_size:
        problems.append(f'vocab_size: data has {meta.get("vocab_size")}, the config\'s tokenizer has {vocab_size}')
    if meta.get('expanded_length') != expanded_length:
        problems.append(
            f'expanded_length: data rows have {meta.get("expanded_length")} tokens (input_length '
            f'{meta.get("input_length")}, noise_density {meta.get("noise_density")}, '
            f'mean_noise_span_length {meta.get("mean_noise_span_length")}), the config needs '
            f'{expanded_length}{f" (input_length {input_length})" if input_length else ""}'
        )
    if not problems:
        return
    out_root = os.path.dirname(split_dir.rstrip('/')) or '.'
    cmd = convert_command(meta, out_root=out_root, tokenizer=tokenizer_name, input_length=input_length)
    raise ValueError(
        f'The data in {split_dir} does not match the config:\n  - ' + '\n  - '.join(problems) + '\n'
        f'Fix: reconvert the split for this config, e.g.\n    {cmd}\n'
        f'  (with your tokenizer.name / data.input_length / noise settings), or change '
        f'tokenizer.name / data.input_length in the YAML to those of the data '
        f'(tokenizer {meta.get("tokenizer")!r}, input_length {meta.get("input_length")}).'
    )
