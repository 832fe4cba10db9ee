"""Load T5 tokenizers (hub name, local directory or SentencePiece file) and describe them.

Every entry point returns a ``transformers`` fast tokenizer with T5's layout: SentencePiece pieces
first (pad 0, eos 1, unk 2), then 100 sentinels ``<extra_id_99> .. <extra_id_0>`` on top, so
``<extra_id_0>`` is the largest id (32099 for the real T5 vocabulary).

UL2's mode tokens (``[NLU]``, ``[NLG]``, ``[S2S]``) are added on request by :func:`add_mode_tokens`,
after the sentinels, always in the same order, so their ids do not depend on which of them a run
uses (:func:`mode_token_problems` says when they do not fit the model).

Also a batch encoder for data conversion (:class:`BatchEncoder`): when the tokenizer carries its
``spiece.model``, it encodes with ``sentencepiece`` itself, as T5's own pipeline did, ~5-7x faster
per core than the ``tokenizers`` Unigram re-implementation.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

__all__ = [
    'BatchEncoder',
    'MODE_TOKENS',
    'NUM_SENTINELS',
    'add_mode_tokens',
    'load_tokenizer',
    'looks_like_path',
    'mode_token_name_problem',
    'mode_token_problems',
    'sentinel_ids',
    'spiece_to_fast',
    'tokenizer_fingerprint',
    'vocab_size',
]

NUM_SENTINELS = 100

# UL2's mode tokens, in the order they get ids (after the sentinels: 32100, 32101, 32102 for T5's
# vocabulary): [NLU] regular span corruption, [NLG] extreme corruption, [S2S] prefix LM.
MODE_TOKENS = ('[NLU]', '[NLG]', '[S2S]')
_SENTINEL = re.compile(r'<extra_id_\d+>')

# Probe text: sentencepiece and the converted fast tokenizer must encode it identically. Catches
# conversion bugs (a lost leading '▁', whitespace handling) for any SentencePiece model.
_PROBE = 'translate English to German: That is good.\nThe quick  brown fox  '
_TOKENIZER_FILES = ('tokenizer.json', 'tokenizer_config.json')


def _quiet_transformers() -> None:
    # The "default legacy behaviour" notice is printed for every T5 tokenizer and is noise here:
    # legacy=True is what the hub's google/t5-v1_1 tokenizer.json does, and we check the ids.
    from transformers.utils import logging as hf_logging

    hf_logging.get_logger('transformers.models.t5.tokenization_t5').setLevel(hf_logging.ERROR)
    hf_logging.get_logger('transformers.models.t5.tokenization_t5_fast').setLevel(hf_logging.ERROR)


def spiece_to_fast(spiece_path: str | os.PathLike, *, extra_ids: int = NUM_SENTINELS) -> Any:
    """Build a ``T5TokenizerFast`` from a SentencePiece model file (slow -> fast conversion).

    The conversion takes ~0.3 s for the 32k T5 model, so nothing is cached.

    Args:
        spiece_path: path to a SentencePiece ``.model`` file (unigram, T5 special ids).
        extra_ids: number of ``<extra_id_k>`` sentinels to append (T5 uses 100).

    Returns:
        The fast tokenizer; its ids are checked against ``sentencepiece`` on a probe sentence.
    """
    from transformers import T5TokenizerFast

    _quiet_transformers()
    # add_prefix_space=True is required: transformers 4.57 passes add_prefix_space=None to the
    # slow tokenizer when it is left out, and the converter then builds a Metaspace
    # pre-tokenizer with prepend_scheme='never' (the first word loses its '▁': "translate" ->
    # "trans" "late"). Passing it explicitly gives prepend_scheme='always', as on the hub.
    tok = T5TokenizerFast(vocab_file=str(spiece_path), extra_ids=extra_ids, add_prefix_space=True)
    # Not saved by save_pretrained: with add_prefix_space in tokenizer_config.json, loading a
    # directory forces a slow->fast conversion, which fails when only tokenizer.json is shipped.
    # tokenizer.json already holds the right pre-tokenizer.
    tok.init_kwargs.pop('add_prefix_space', None)
    _check_against_spiece(tok, str(spiece_path))
    return tok


def _check_against_spiece(tokenizer: Any, spiece_path: str) -> None:
    """Raise if the fast tokenizer and sentencepiece disagree on the probe sentence."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=spiece_path)
    want = sp.encode(_PROBE)
    got = tokenizer(_PROBE, add_special_tokens=False)['input_ids']
    if got != want:
        raise RuntimeError(
            f'The fast tokenizer built from {spiece_path} encodes {_PROBE!r} as {got}, but '
            f'sentencepiece gives {want}. The slow->fast conversion of this transformers version '
            'is broken for this model; please report it.'
        )


def looks_like_path(name: str) -> bool:
    """Whether a tokenizer name is meant as a local path: hub names are 'name' or 'org/name'."""
    return (
        name.startswith(('/', '.', '~'))
        or name.endswith('.model')
        or name.count('/') > 1
        or (os.sep != '/' and os.sep in name)
    )


def load_tokenizer(name_or_path: str | os.PathLike) -> Any:
    """Load a T5 tokenizer as a ``T5TokenizerFast`` (fast, for batch encoding).

    Args:
        name_or_path: one of
            - a path to a SentencePiece ``.model`` file (sentinels added with ``extra_ids=100``);
            - a local directory with ``tokenizer.json`` / ``tokenizer_config.json`` (e.g. written
              by ``save_pretrained``) or with only a ``spiece.model``;
            - a Hugging Face hub name such as ``google/t5-v1_1-base``.
            ``~`` is expanded.

    Returns:
        The tokenizer.

    Raises:
        FileNotFoundError: a path that does not exist, or a directory without tokenizer files.
        OSError: a hub name that could not be loaded (hub unreachable or unknown name).
    """
    name = os.path.expanduser(str(name_or_path))
    path = Path(name)
    if path.is_file():
        if path.suffix != '.model':
            raise FileNotFoundError(
                f'{name} is a file but not a SentencePiece .model file; pass a .model file or a '
                'directory with tokenizer files.'
            )
        return spiece_to_fast(path)
    if path.is_dir():
        if any((path / f).is_file() for f in _TOKENIZER_FILES):
            return _from_pretrained(name, local=True)
        if (path / 'spiece.model').is_file():
            return spiece_to_fast(path / 'spiece.model')
        raise FileNotFoundError(
            f'{name} has no tokenizer files: expected tokenizer.json, tokenizer_config.json or '
            f'spiece.model; found {sorted(p.name for p in path.iterdir())[:20]}.'
        )
    if looks_like_path(name):
        raise FileNotFoundError(f'Tokenizer path {name} does not exist.')
    return _from_pretrained(name, local=False)


def _from_pretrained(name: str, *, local: bool) -> Any:
    """The one loading path shared by local tokenizer directories and hub names."""
    from transformers import AutoTokenizer

    _quiet_transformers()
    try:
        tok = AutoTokenizer.from_pretrained(name, use_fast=True)
    except (OSError, ValueError) as e:
        if local:
            raise
        raise OSError(
            f"Could not load the tokenizer '{name}' from the Hugging Face hub (the hub was "
            f'unreachable or the name is unknown: {str(e).splitlines()[0]}). Pass a local '
            'directory with tokenizer files, or the path of a spiece.model, instead.'
        ) from e
    if not getattr(tok, 'is_fast', False):
        raise TypeError(f'{name} loaded as the slow {type(tok).__name__}; a fast tokenizer is required.')
    spiece = getattr(tok, 'vocab_file', None)
    if spiece and os.path.isfile(spiece) and str(spiece).endswith('.model'):
        _check_against_spiece(tok, spiece)
    return tok


def vocab_size(tokenizer: Any) -> int:
    """Number of ids the tokenizer can produce, sentinels included (``len(tokenizer)``).

    Args:
        tokenizer: a transformers tokenizer.
    """
    return len(tokenizer)


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A stable sha256 of the vocabulary: every (token, id) pair, added tokens included.

    Equal for the same spiece.model loaded twice (or through a saved directory), different for
    a different vocabulary. Normalizer settings are deliberately not hashed: their serialization
    changes between transformers versions, while the vocabulary does not.

    Args:
        tokenizer: a transformers tokenizer.
    """
    vocab = tokenizer.get_vocab()  # includes added tokens
    items = sorted(vocab.items(), key=lambda kv: (kv[1], kv[0]))
    blob = json.dumps(items, ensure_ascii=False, separators=(',', ':')).encode('utf-8')
    return 'sha256:' + hashlib.sha256(blob).hexdigest()


def sentinel_ids(tokenizer: Any, n: int) -> list[int]:
    """Ids of ``<extra_id_0> .. <extra_id_{n-1}>``, read from the tokenizer's vocabulary.

    Args:
        tokenizer: a transformers tokenizer.
        n: how many sentinels are needed (at least the number of noise spans per row).

    Raises:
        ValueError: the tokenizer has fewer than ``n`` sentinels.
    """
    vocab = tokenizer.get_vocab()
    have = 0
    while f'<extra_id_{have}>' in vocab:
        have += 1
    if have < n:
        raise ValueError(
            f'The tokenizer has {have} sentinel tokens (<extra_id_0> .. <extra_id_{max(have - 1, 0)}>) '
            f'but {n} are needed. Use a T5 tokenizer with extra_ids >= {n}.'
        )
    return [vocab[f'<extra_id_{k}>'] for k in range(n)]


def mode_token_name_problem(token: Any) -> Optional[str]:
    """Why ``token`` cannot be a mode token, or None when it can.

    Args:
        token: the requested token (e.g. ``data.mode_token`` of a config).
    """
    if not isinstance(token, str) or not token or token != token.strip():
        return (f'must be a non-empty string without surrounding whitespace, got {token!r}; '
                f'use one of UL2\'s {", ".join(MODE_TOKENS)} (or a token of your own, such as [R])')
    return None


def add_mode_tokens(tokenizer: Any, tokens: Sequence[str]) -> dict[str, int]:
    """Make each of ``tokens`` a single special token of ``tokenizer``; return their ids.

    Ids do not depend on which tokens a run asks for, so pre-training and fine-tuning agree:
    whenever any token is requested, all of :data:`MODE_TOKENS` are added first, in that order
    (those the tokenizer lacks), then the other requested tokens in the order given. Idempotent;
    the existing additional special tokens (T5's ``<extra_id_k>``) stay. A requested token already
    added to the tokenizer keeps its id (and becomes special). Rows of converted data never
    contain mode tokens: compare the data's tokenizer fingerprint before calling this.

    Args:
        tokenizer: a transformers tokenizer, changed in place.
        tokens: the mode tokens wanted (e.g. ``['[S2S]']``); empty adds nothing.

    Returns:
        ``{token: id}`` for each of ``tokens``.

    Raises:
        ValueError: a token that is not a non-empty string without surrounding whitespace, or one
            that already means something else (a piece of the vocabulary, a sentinel, pad, EOS, unk).
    """
    for token in tokens:
        problem = mode_token_name_problem(token)
        if problem:
            raise ValueError(f'Mode token {problem}.')
    if not tokens:
        return {}
    wanted = list(dict.fromkeys([*MODE_TOKENS, *tokens]))
    added = tokenizer.get_added_vocab()
    own = {tokenizer.pad_token, tokenizer.eos_token, tokenizer.unk_token}
    taken = [t for t in wanted if t in own or _SENTINEL.fullmatch(t) or (t not in added and t in tokenizer.get_vocab())]
    if taken:
        raise ValueError(
            f'{", ".join(taken)}: already a piece, sentinel or special token of the tokenizer, with a meaning of its own '
            '(as a mode token it would also be dropped from decoded text). Choose other mode tokens, e.g. in brackets like [R].'
        )
    special = set(tokenizer.all_special_tokens)
    missing = [t for t in wanted if t not in special]
    if missing:
        # Tokens already in the vocabulary keep their ids; new ones are numbered in list order.
        tokenizer.add_special_tokens({'additional_special_tokens': missing}, replace_additional_special_tokens=False)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in tokens}
    for token, i in ids.items():
        if tokenizer(token, add_special_tokens=False)['input_ids'] != [i]:
            raise RuntimeError(f'The tokenizer does not encode the mode token {token!r} as its single id {i}; please report it.')
    return ids


def mode_token_problems(ids: Mapping[str, int], vocab_size: int) -> list[str]:
    """One line per mode token whose id the model's embedding has no row for.

    Args:
        ids: ``{token: id}`` (:func:`add_mode_tokens`).
        vocab_size: the model's ``vocab_size``.
    """
    return [
        f'The mode token {token} has id {i}, but the model has vocab_size {vocab_size} (ids 0..{vocab_size - 1}); '
        f'with model.init random, set model.vocab_size to at least {i + 1} (or to tokenizer: its size rounded up to a multiple '
        'of 128); otherwise use fewer custom mode tokens.'
        for token, i in ids.items() if i >= vocab_size
    ]


class BatchEncoder:
    """Encode documents to ids without special tokens, for data conversion.

    Backends:
        - ``sentencepiece``: the tokenizer's own ``spiece.model`` run by ``sentencepiece``, the
          reference T5 tokenizer (T5's seqio pipeline encodes C4 this way); ~5-7x faster per
          core than ``tokenizers``. Needs a tokenizer loaded from a spiece.model (or a directory
          holding one) whose pieces equal its first ids. Text is always plain text: a literal
          ``</s>`` or ``<extra_id_0>`` in a document is spelled out, never turned into EOS or a
          sentinel id.
        - ``tokenizers``: the fast tokenizer's Rust backend, i.e. ``tokenizer(texts,
          add_special_tokens=False)`` as nanoT5 does. Literal special-token strings in a document
          become their special ids.
        - ``auto``: ``sentencepiece`` when possible, else ``tokenizers``.

    The two agree on ordinary text; they differ on (1) literal special-token strings and
    (2) ties in the Unigram Viterbi search, seen in runs of a repeated character
    (``----------``: ``--- --- --- -`` vs ``- --- --- ---``, same pieces in another order):
    none of 1,000 C4 sample documents differ with the T5 vocabulary, 21 of the 345 demo-corpus
    documents (reST tables) do. The converter records the backend in the split metadata.

    Args:
        tokenizer: a fast transformers tokenizer.
        backend: ``auto``, ``sentencepiece`` or ``tokenizers``.
    """

    def __init__(self, tokenizer: Any, *, backend: str = 'auto') -> None:
        if backend not in ('auto', 'sentencepiece', 'tokenizers'):
            raise ValueError(f"backend must be 'auto', 'sentencepiece' or 'tokenizers', got {backend!r}")
        self._backend_tokenizer = tokenizer.backend_tokenizer
        self._sp = None
        if backend != 'tokenizers':
            self._sp = _matching_spiece(tokenizer)
            if self._sp is None and backend == 'sentencepiece':
                raise ValueError(
                    'The sentencepiece backend needs a tokenizer loaded from a spiece.model whose '
                    'pieces equal the tokenizer vocabulary; use backend="tokenizers".'
                )
        self.backend = 'sentencepiece' if self._sp is not None else 'tokenizers'

    def __getstate__(self) -> dict[str, Any]:
        # Pickled to conversion workers: only the backend in use travels, so a worker needs neither
        # transformers (seconds to import) nor, for sentencepiece, the tokenizers library.
        state = dict(self.__dict__)
        if self._sp is not None:
            state['_backend_tokenizer'] = None
        return state

    def __call__(self, texts: Sequence[str]) -> list[list[int]]:
        """Ids of each text (no EOS).

        Args:
            texts: documents.
        """
        if self._sp is not None:
            # num_threads=1: parallelism comes from worker processes, not threads.
            return self._sp.encode(list(texts), num_threads=1)
        return [e.ids for e in self._backend_tokenizer.encode_batch_fast(list(texts), add_special_tokens=False)]


def _matching_spiece(tokenizer: Any) -> Any:
    """A SentencePieceProcessor for the tokenizer's spiece.model if its pieces match, else None."""
    path = getattr(tokenizer, 'vocab_file', None)
    if not path or not str(path).endswith('.model') or not os.path.isfile(path):
        return None
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(path))
    vocab = tokenizer.get_vocab()
    for i in range(sp.get_piece_size()):
        if vocab.get(sp.id_to_piece(i)) != i:
            return None
    if sp.encode(_PROBE) != tokenizer(_PROBE, add_special_tokens=False)['input_ids']:
        return None
    return sp

