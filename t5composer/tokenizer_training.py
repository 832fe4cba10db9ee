"""Train a T5-style SentencePiece unigram tokenizer on any corpus.

Layout, as in the real T5 vocabulary: ``<pad>`` 0, ``</s>`` 1, ``<unk>`` 2, no BOS, no byte
fallback, then the learned pieces up to ``vocab_size``; the HF T5 tokenizer appends 100
sentinels on top (``<extra_id_99>`` = vocab_size ... ``<extra_id_0>`` = vocab_size + 99).
The output directory holds ``spiece.model`` and the ``save_pretrained`` files of
``T5TokenizerFast``, so :func:`t5composer.tokenization.load_tokenizer` loads it.
"""

from __future__ import annotations

import gzip
import io
import os
from pathlib import Path
from typing import Iterable, Iterator, Optional, Sequence

__all__ = ['iter_corpus_texts', 'iter_sentences', 'train_tokenizer']

_TEXT_SUFFIXES = ('.txt', '.txt.gz', '.text')
_JSON_SUFFIXES = ('.json', '.json.gz', '.jsonl', '.jsonl.gz')


def iter_corpus_texts(paths: Sequence[str | os.PathLike]) -> Iterator[str]:
    """Documents of text or C4-style json(.gz) files.

    ``.json[l][.gz]`` files: one JSON object with a ``text`` field per line (bad lines skipped);
    other files (``.txt[.gz]``): the whole file is one document.

    Args:
        paths: files to read, in order.
    """
    import fsspec

    from t5composer.data.c4_source import iter_file_lines, parse_c4_line

    for p in paths:
        path = os.path.expanduser(str(p))
        if not os.path.isfile(path):
            raise FileNotFoundError(f'Tokenizer training input {path} does not exist. Pass --input text files '
                                    '(.txt[.gz], one document per line) or C4-style .json[l][.gz] files that exist.')
        if path.endswith(_JSON_SUFFIXES):
            fs = fsspec.filesystem('file')
            for raw in iter_file_lines(path, fs=fs):
                if raw.data is not None:
                    text, _ = parse_c4_line(raw.data)
                    if text is not None:
                        yield text
        else:
            opener = gzip.open if path.endswith('.gz') else open
            with opener(path, 'rt', encoding='utf-8', errors='replace') as f:
                yield f.read()


def iter_sentences(texts: Iterable[str], *, max_sentence_length: int) -> Iterator[str]:
    """Split documents into the "sentences" SentencePiece trains on: non-blank lines.

    Lines longer than ``max_sentence_length`` bytes are cut at whitespace (SentencePiece would
    otherwise drop them).

    Args:
        texts: documents.
        max_sentence_length: longest line in UTF-8 bytes.
    """
    for text in texts:
        for line in text.splitlines():
            line = line.strip()
            while line:
                if len(line.encode('utf-8')) <= max_sentence_length:
                    yield line
                    break
                # Cut at the last space before the limit (chars <= bytes, so this is safe).
                cut = line.rfind(' ', 0, max_sentence_length // 4) if ' ' in line else -1
                if cut <= 0:
                    cut = max_sentence_length // 4
                yield line[:cut]
                line = line[cut:].strip()


def train_tokenizer(
    *,
    out_dir: str | os.PathLike,
    vocab_size: int,
    texts: Optional[Iterable[str]] = None,
    input_files: Optional[Sequence[str | os.PathLike]] = None,
    seed: int = 0,
    character_coverage: float = 0.9999,
    max_sentences: int = 10_000_000,
    max_sentence_length: int = 4192,
    num_threads: int = 1,
    extra_ids: int = 100,
) -> Path:
    """Train a T5-style SentencePiece unigram model and save it with the HF tokenizer files.

    Deterministic for the same input, seed and ``num_threads``: sentences are fed in order, and
    only when there are more than ``max_sentences`` does SentencePiece sample them (seeded).

    Args:
        out_dir: directory to write ``spiece.model`` and the tokenizer files into (created).
        vocab_size: SentencePiece pieces, special pieces included, sentinels excluded
            (T5: 32000; the tokenizer then has ``vocab_size + extra_ids`` ids).
        texts: documents to train on.
        input_files: or files to read them from (see :func:`iter_corpus_texts`).
        seed: seed of SentencePiece's sentence sampling.
        character_coverage: share of characters the pieces must cover (rare ones become unk).
        max_sentences: most sentences (lines) to train on; more are sampled down.
        max_sentence_length: longest sentence in bytes; longer lines are cut.
        num_threads: SentencePiece training threads.
        extra_ids: sentinels added by the HF tokenizer.

    Returns:
        ``out_dir`` as a Path.
    """
    import sentencepiece as spm

    from t5composer.tokenization import spiece_to_fast

    if (texts is None) == (input_files is None):
        raise ValueError('Pass exactly one of texts= or input_files=.')
    if vocab_size < 4:
        raise ValueError(f'vocab_size must be >= 4 (3 special pieces + 1), got {vocab_size}')
    if texts is None:
        texts = iter_corpus_texts(input_files or [])
    out = Path(os.path.expanduser(str(out_dir)))
    out.mkdir(parents=True, exist_ok=True)

    spm.set_random_generator_seed(seed)
    model = io.BytesIO()
    sentences = iter_sentences(texts, max_sentence_length=max_sentence_length)
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=sentences,
            model_writer=model,
            model_type='unigram',
            vocab_size=vocab_size,
            character_coverage=character_coverage,
            pad_id=0,
            eos_id=1,
            unk_id=2,
            bos_id=-1,
            pad_piece='<pad>',
            eos_piece='</s>',
            unk_piece='<unk>',
            byte_fallback=False,
            input_sentence_size=max_sentences,
            shuffle_input_sentence=True,
            max_sentence_length=max_sentence_length,
            num_threads=num_threads,
            minloglevel=2,
        )
    except RuntimeError as e:
        if 'Vocabulary size' in str(e) and 'too high' in str(e):
            raise ValueError(
                f"The corpus is too small for vocab_size={vocab_size}: {str(e).rstrip('.')}. Use a smaller "
                'vocab_size or more text.'
            ) from e
        raise
    (out / 'spiece.model').write_bytes(model.getvalue())
    tok = spiece_to_fast(out / 'spiece.model', extra_ids=extra_ids)
    tok.save_pretrained(str(out))
    return out
