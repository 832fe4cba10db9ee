"""Mixture-of-denoisers batches (UL2): which denoiser a row gets, the collator, and batch helpers.

A mixture batch is ``{'groups': [group, ...], 'denoisers': [index, ...]}``: one group per
denoiser present in the batch, in the objective's order. A group is what the model's forward
takes (``input_ids``, ``labels``, ``decoder_input_ids``, and ``attention_mask`` when it can have
padding: a prefix denoiser whose split varies), with the denoiser's fixed shape ``[n, E]`` / ``[n, D]`` (:meth:`Denoiser.output_lengths`):
only the row count ``n`` changes between batches, so a compiled model sees one sequence shape
per denoiser, and no row is padded to another denoiser's lengths.

Everything random is a pure function of ``(seed, epoch, sample_idx)``, through the counter-based
hashing of :mod:`t5composer.data.span_corruption`: the denoiser of a row, its span mask (exactly
``SpanCorruptionCollator``'s for the same settings) and its prefix split. A resumed run therefore
builds the same rows, whichever other rows share their batch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from t5composer.data.objectives import Denoiser, Objective
from t5composer.data.span_corruption import FIRST_FREE_STREAM, SpanCorruptionCollator, row_keys, row_uniforms, stack_rows

__all__ = [
    'DENOISER',
    'IGNORE_INDEX',
    'MixtureCollator',
    'ROW_TOKENS',
    'assign_denoisers',
    'batch_groups',
    'loss_tokens',
    'mixture_num_samples',
    'mixture_num_tokens',
    'padding_fractions',
    'split_mixture_batch',
]

# Per-row draws beside the span mask, each from its own counter (independent of the mask and of each other).
_CHOICE_STREAM = FIRST_FREE_STREAM
_SPLIT_STREAM = FIRST_FREE_STREAM + 1
IGNORE_INDEX = -100  # labels at padding (the loss and metrics skip it)


def _choose(keys: np.ndarray, weights: Any) -> np.ndarray:
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    if w.size == 0 or not np.all(np.isfinite(w)) or np.any(w <= 0):
        raise ValueError(f'weights must be a non-empty sequence of finite numbers > 0, got {weights!r}')
    edges = np.cumsum(w)
    edges /= edges[-1]
    choice = np.searchsorted(edges, row_uniforms(keys, _CHOICE_STREAM), side='right')
    return np.minimum(choice, w.size - 1).astype(np.int64)


def assign_denoisers(seed: int, epochs: Any, sample_indices: Any, weights: Any) -> np.ndarray:
    """Which denoiser each row gets: index ``i`` with probability ``weights[i] / sum(weights)``.

    A pure function of ``(seed, epoch, sample_idx)`` per row (its own hash stream, independent of
    the row's span mask and prefix split).

    Args:
        seed: run seed.
        epochs: per-row epochs ``[B]`` (or one for all rows).
        sample_indices: per-row global sample indices ``[B]``.
        weights: relative weights of the denoisers (e.g. :attr:`Objective.weights`).

    Returns:
        int64 ``[B]`` denoiser indices.
    """
    return _choose(row_keys(seed, epochs, sample_indices), weights)


def _prefix_group(tokens: np.ndarray, keys: np.ndarray, denoiser: Denoiser, *, mode_id: int | None,
                  eos_id: int, pad_id: int) -> dict[str, np.ndarray]:
    """UL2's S denoiser: ``[mode] + row[:s] + EOS`` -> ``row[s:] + EOS``, padded to the envelope."""
    n, length = tokens.shape
    t_lo, t_hi = denoiser.target_counts(length)
    enc_len, dec_len = denoiser.output_lengths(length)
    # Suffix length: uniform over the integers t_lo..t_hi, from the row's own split draw.
    spread = t_hi - t_lo + 1
    t = t_lo + np.minimum(np.floor(row_uniforms(keys, _SPLIT_STREAM) * spread).astype(np.int64), spread - 1)
    s = length - t
    rows = np.arange(n)
    m = int(mode_id is not None)

    pos = np.arange(enc_len)
    inputs = tokens[:, np.clip(pos - m, 0, length - 1)]  # raw token p - m at position p, then cut below
    end = (m + s)[:, None]  # EOS position
    inputs = np.where(pos[None, :] < end, inputs, pad_id)
    inputs[rows, m + s] = eos_id
    if m:
        inputs[:, 0] = mode_id
    attention_mask = (pos[None, :] <= end).astype(np.int64)

    j = np.arange(dec_len)[None, :]
    labels = np.take_along_axis(tokens, np.minimum(s[:, None] + j, length - 1), axis=1)
    labels = np.where(j < t[:, None], labels, IGNORE_INDEX)
    labels[rows, t] = eos_id
    out = {'input_ids': inputs, 'labels': labels}
    if t_hi > t_lo:  # a fixed split pads nothing: no mask, so attention needs none either
        out['attention_mask'] = attention_mask
    return out


class MixtureCollator:
    """Collate raw rows into mixture-of-denoisers batches (one group per denoiser present).

    Span denoisers give exactly what ``SpanCorruptionCollator(noise_density=corruption_rate,
    mean_noise_span_length=mean_span_length)`` gives for the row's keys, after the mode token.
    Prefix denoisers give ``[mode] + row[:s] + EOS`` as inputs (padded with ``pad_id``, hence an
    ``attention_mask`` unless the split is fixed) and ``row[s:] + EOS`` as labels (padded with -100). ``decoder_input_ids`` are
    the labels shifted right after ``decoder_start_id``, ``pad_id`` wherever the labels are -100.

    Args:
        objective: the mixture (checked here).
        sentinel_ids: ``sentinel_ids[k]`` is the tokenizer's id of ``<extra_id_k>``.
        eos_id: id appended to inputs and labels.
        pad_id: id of padding in ``input_ids`` and ``decoder_input_ids``.
        mode_token_ids: the tokenizer's id of each of ``objective.mode_tokens``.
        decoder_start_id: first decoder input id (T5: the pad id, 0).
        seed: run seed; a row's denoiser, mask and split are functions of ``(seed, epoch, sample_idx)``.
    """

    def __init__(
        self,
        *,
        objective: Objective,
        sentinel_ids: Sequence[int],
        eos_id: int,
        pad_id: int,
        mode_token_ids: Mapping[str, int],
        decoder_start_id: int = 0,
        seed: int = 0,
    ) -> None:
        objective.check()
        missing = [t for t in objective.mode_tokens if t not in mode_token_ids]
        if missing:
            raise ValueError(f'mode_token_ids lacks the mode token(s) {missing}; add them to the tokenizer as special '
                             'tokens and pass their ids')
        self.objective = objective
        self.weights = objective.weights
        self.eos_id, self.pad_id = int(eos_id), int(pad_id)
        self.decoder_start_id = int(decoder_start_id)
        self.seed = int(seed)
        self.mode_ids = [None if d.mode_token is None else int(mode_token_ids[d.mode_token]) for d in objective.denoisers]
        # One span-corruption collator per span denoiser (it also checks the sentinel ids).
        self._span = {
            i: SpanCorruptionCollator(sentinel_ids=sentinel_ids, eos_id=eos_id, decoder_start_id=decoder_start_id,
                                      noise_density=d.corruption_rate, mean_noise_span_length=d.mean_span_length, seed=seed)
            for i, d in enumerate(objective.denoisers) if d.kind == 'span'
        }

    def __repr__(self) -> str:
        return f'{type(self).__name__}(objective={self.objective.name!r}, seed={self.seed})'

    def group(self, index: int, tokens: np.ndarray, keys: np.ndarray) -> dict[str, np.ndarray]:
        """Denoiser ``index``'s group for ``[n, L]`` rows with their keys (numpy in, numpy out).

        Args:
            index: the denoiser's position in the objective.
            tokens: int64 ``[n, L]`` raw rows.
            keys: uint64 ``[n]`` row keys (:func:`~t5composer.data.span_corruption.row_keys`).

        Returns:
            int64 arrays ``input_ids``, ``labels``, ``decoder_input_ids`` (and ``attention_mask``
            for a prefix denoiser whose split varies, the only groups with padding).
        """
        d, mode_id = self.objective.denoisers[index], self.mode_ids[index]
        if d.kind == 'span':
            out = self._span[index].corrupt(tokens, keys)
            if mode_id is not None:
                out['input_ids'] = np.concatenate([np.full((tokens.shape[0], 1), mode_id, dtype=np.int64), out['input_ids']], axis=1)
            return out
        out = _prefix_group(tokens, keys, d, mode_id=mode_id, eos_id=self.eos_id, pad_id=self.pad_id)
        labels = out['labels']
        decoder_input_ids = np.empty_like(labels)
        decoder_input_ids[:, 0] = self.decoder_start_id
        decoder_input_ids[:, 1:] = labels[:, :-1]
        decoder_input_ids[labels == IGNORE_INDEX] = self.pad_id
        out['decoder_input_ids'] = decoder_input_ids
        return out

    def __call__(self, samples: Sequence[Mapping[str, Any]]) -> dict[str, list]:
        """Collate samples ``{'tokens', 'sample_idx', 'epoch'}`` (equal-length rows) into a mixture batch.

        Args:
            samples: the rows with their global sample index and epoch.

        Returns:
            ``{'groups': [group, ...], 'denoisers': [index, ...]}``: a group (dict of LongTensors)
            per denoiser present, in the objective's order, and that denoiser's index.
        """
        if len(samples) == 0:
            raise ValueError('cannot collate an empty batch')
        tokens, epochs, indices = stack_rows(samples)
        keys = row_keys(self.seed, epochs, indices)
        choice = _choose(keys, self.weights)
        groups, present = [], []
        for i in range(len(self.objective.denoisers)):
            rows = np.flatnonzero(choice == i)
            if rows.size:
                out = self.group(i, tokens[rows], keys[rows])
                group: dict[str, Any] = {k: torch.from_numpy(v) for k, v in out.items()}
                group[ROW_TOKENS] = _row_tokens(out)
                group[DENOISER] = i
                groups.append(group)
                present.append(i)
        return {'groups': groups, 'denoisers': present}


# Key of a group's denoiser (its index in the objective, a Python int), kept by its microbatches:
# per-denoiser losses (t5composer.callbacks.denoiser_losses) read it.
DENOISER = 'denoiser'
# Key of a group's per-row token counts (lists of Python ints, counted in the collator): Composer
# asks for a microbatch's tokens after moving it to the device, where counting would wait for it.
ROW_TOKENS = 'row_tokens'


def _row_tokens(out: Mapping[str, np.ndarray]) -> dict[str, list[int]]:
    """Each row's non-padding encoder tokens and target tokens (the loss's), from the numpy arrays."""
    mask = out.get('attention_mask')
    rows, encoder_length = out['input_ids'].shape
    encoder = mask.sum(axis=1).tolist() if mask is not None else [encoder_length] * rows
    return {'encoder': encoder, 'loss_generating': (out['labels'] != IGNORE_INDEX).sum(axis=1).tolist()}


def batch_groups(batch: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The groups of a mixture batch, or a plain batch (a single group dict) as a one-item list."""
    return list(batch['groups']) if 'groups' in batch else [batch]


def _count_tokens(group: Mapping[str, Any]) -> dict[str, int]:
    rows = group.get(ROW_TOKENS)
    if rows is not None:  # the collator's counts: no tensor is read
        encoder, targets = sum(rows['encoder']), sum(rows['loss_generating'])
    else:
        mask = group.get('attention_mask')
        encoder = int(mask.sum()) if mask is not None else int(group['input_ids'].numel())
        targets = int((group['labels'] != IGNORE_INDEX).sum())
    return {'total': encoder + targets, 'loss_generating': targets}


def split_mixture_batch(batch: Mapping[str, Any], microbatch_size: int) -> list[dict[str, Any]]:
    """Cut each group into chunks of at most ``microbatch_size`` rows (a group dict is one group).

    Each chunk keeps its rows' token counts (``ROW_TOKENS``, Python ints from the collator), so
    that :func:`mixture_num_tokens` never reads a tensor on the device.

    Args:
        batch: a mixture batch ``{'groups': [...]}`` (or one group dict).
        microbatch_size: rows per chunk, >= 1.

    Returns:
        plain group dicts (what the model's forward takes), group by group in order.
    """
    if int(microbatch_size) < 1:
        raise ValueError(f'microbatch_size must be >= 1, got {microbatch_size}')
    chunks = []
    size = int(microbatch_size)
    for group in batch_groups(batch):
        n = group['input_ids'].shape[0]
        for start in range(0, n, size):
            chunk = {k: v[start:start + size] for k, v in group.items() if torch.is_tensor(v)}
            if ROW_TOKENS in group:
                chunk[ROW_TOKENS] = {k: v[start:start + size] for k, v in group[ROW_TOKENS].items()}
            if DENOISER in group:
                chunk[DENOISER] = group[DENOISER]
            chunks.append(chunk)
    return chunks


def mixture_num_samples(batch: Mapping[str, Any]) -> int:
    """Rows in a mixture batch (all groups) or in a single group dict."""
    return sum(int(g['input_ids'].shape[0]) for g in batch_groups(batch))


def loss_tokens(group: Mapping[str, Any]) -> int:
    """Target tokens of one group or microbatch (labels other than -100), from the collator's counts where it has them."""
    return _count_tokens(group)['loss_generating']


def mixture_num_tokens(batch: Mapping[str, Any]) -> dict[str, int]:
    """Token counts of a mixture batch or a single group dict, in Composer's form.

    Groups from :class:`MixtureCollator` (and their chunks) bring their rows' counts; anything
    else is counted from its tensors.

    Returns:
        ``{'total': non-padding encoder + decoder tokens, 'loss_generating': labels != -100}``.
    """
    total = loss = 0
    for g in batch_groups(batch):
        counts = _count_tokens(g)
        total += counts['total']
        loss += counts['loss_generating']
    return {'total': total, 'loss_generating': loss}


def padding_fractions(objective: Objective, raw_length: int) -> dict[str, float]:
    """Expected fraction of padding among the encoder and decoder tokens of mixture batches.

    Under the mixture weights, over the fixed per-denoiser shapes: span rows fill their shape
    exactly; a prefix row with suffix length ``t`` (uniform over ``t_lo..t_hi``) pads ``t - t_lo``
    encoder and ``t_hi - t`` decoder positions, ``(t_hi - t_lo) / 2`` each on average.

    Args:
        objective: the mixture.
        raw_length: tokens per raw row.

    Returns:
        ``{'encoder': fraction, 'decoder': fraction}``.
    """
    weights = objective.weights
    shapes = objective.output_lengths(raw_length)
    enc = dec = enc_pad = dec_pad = 0.0
    for w, d, (e, t) in zip(weights, objective.denoisers, shapes):
        enc += w * e
        dec += w * t
        if d.kind == 'prefix':
            t_lo, t_hi = d.target_counts(raw_length)
            enc_pad += w * (t_hi - t_lo) / 2
            dec_pad += w * (t_hi - t_lo) / 2
    return {'encoder': float(enc_pad / enc), 'decoder': float(dec_pad / dec)}
