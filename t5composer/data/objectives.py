"""Pre-training objectives as values: a denoiser, a weighted mixture of denoisers, and the presets.

A :class:`Denoiser` says how one raw row becomes an (encoder input, decoder target) pair: T5's
span corruption with a given corruption rate and mean span length, or UL2's sequential "S"
denoiser (prefix LM: the row's suffix is the target), optionally announced by a mode token
prepended to the input. An :class:`Objective` is a weighted mixture of denoisers; each row gets
one of them (:mod:`t5composer.data.denoising` draws it from ``(seed, epoch, sample_idx)``).
:data:`PRESETS` holds T5's span corruption and UL2's mixture; docs/objectives.md says where their
numbers come from.

As :class:`~t5composer.data.span_spec.SpanCorruptionSpec`: building one checks nothing, so a config
can list every problem at once (``problems``), ``check`` raises them. Pure Python (numpy only
inside :attr:`Objective.weights`), so config checks can use it without numpy's or torch's import cost.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, Literal, Optional

from t5composer.data.span_spec import SpanCorruptionSpec, noise_problems, noise_span_counts, span_count_problems
from t5composer.errors import closest

if TYPE_CHECKING:
    import numpy as np

__all__ = ['DENOISER_KINDS', 'Denoiser', 'Objective', 'PRESETS', 'DEFAULT_PRESET']

DENOISER_KINDS = ('span', 'prefix')
_SPAN_FIELDS = ('corruption_rate', 'mean_span_length')  # names of span_spec's (noise_density, mean_noise_span_length)


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


@dataclass(frozen=True, kw_only=True)
class Denoiser:
    """One way of turning a raw row into an encoder input and a decoder target.

    Args:
        kind: ``'span'``: T5's span corruption (``random_spans_noise_mask``); each noise span is
            replaced by a sentinel in the input, the target lists (sentinel, span) pairs.
            ``'prefix'``: UL2's S denoiser; the input is the row's prefix, the target its suffix.
        mean_span_length: span only: average noise span length (>= 1).
        corruption_rate: span only: fraction of the row's tokens that are noise, in (0, 1).
        target_fraction: prefix only: ``(lo, hi)`` with ``0 < lo <= hi < 1``; the number of
            suffix tokens to predict is drawn per row uniformly from the integers
            ``round(lo * L) .. round(hi * L)`` (:meth:`target_counts`).
        mode_token: a token (e.g. ``'[NLU]'``) put first in every input of this denoiser, or None.
        weight: relative share of the rows that get this denoiser (> 0; normalised over the mixture).
    """

    kind: Literal['span', 'prefix']
    mean_span_length: Optional[float] = None
    corruption_rate: Optional[float] = None
    target_fraction: Optional[tuple[float, float]] = None
    mode_token: Optional[str] = None
    weight: float = 1.0

    @property
    def name(self) -> str:
        """Short label: ``'span(3,0.15)'``, ``'prefix(0.15-0.35)'``."""
        if self.kind == 'span':
            return f'span({_short(self.mean_span_length)},{_short(self.corruption_rate)})'
        if self.kind == 'prefix':
            lo, hi = self.target_fraction if _is_pair(self.target_fraction) else ('?', '?')
            return f'prefix({_short(lo)}-{_short(hi)})'
        return f'{self.kind}?'

    def problems(self, *, key: str = '{}') -> list[str]:
        """Why this denoiser's settings cannot be used, one message per problem (empty when they can).

        Args:
            key: how the messages name a setting: a format with one ``{}`` for the field name,
                e.g. ``"'data.objective.denoisers[0].{}'"``.
        """
        p: list[str] = []
        if self.kind not in DENOISER_KINDS:
            hint = closest(self.kind, DENOISER_KINDS) if isinstance(self.kind, str) else ''
            p.append(f"{key.format('kind')} must be 'span' or 'prefix', got {self.kind!r}.{hint}")
        elif self.kind == 'span':
            p += noise_problems(self.corruption_rate, self.mean_span_length, key=key, names=_SPAN_FIELDS)
            if self.target_fraction is not None:
                p.append(f"{key.format('target_fraction')} is a prefix denoiser's setting; a span denoiser predicts "
                         'corruption_rate of the row: remove it.')
        else:
            p += self._prefix_problems(key)
        if self.mode_token is not None and not (isinstance(self.mode_token, str) and self.mode_token.strip()):
            p.append(f"{key.format('mode_token')} must be a token such as '[NLU]' (or absent), got {self.mode_token!r}.")
        w = self.weight
        if not (_is_number(w) and math.isfinite(w) and w > 0):
            p.append(f"{key.format('weight')} must be a finite number > 0, got {w!r}; leave a denoiser out of the "
                     'mixture rather than giving it weight 0.')
        return p

    def _prefix_problems(self, key: str) -> list[str]:
        p = [f"{key.format(name)} is a span denoiser's setting; a prefix denoiser predicts the row's suffix "
             '(its length set by target_fraction): remove it.'
             for name in _SPAN_FIELDS if getattr(self, name) is not None]
        tf = self.target_fraction
        if tf is None:
            p.append(f"{key.format('target_fraction')} is required for a prefix denoiser: [lo, hi], the range of the "
                     'fraction of the row to predict (the ul2 preset uses [0.15, 0.35]).')
        elif not _is_pair(tf):
            p.append(f"{key.format('target_fraction')} must be two numbers [lo, hi], got {tf!r}.")
        elif not 0 < tf[0] <= tf[1] < 1:
            p.append(f"{key.format('target_fraction')} must satisfy 0 < lo <= hi < 1, got {list(tf)}.")
        return p

    def check(self, *, key: str = '{}') -> None:
        """Raise ``ValueError`` with every problem of :meth:`problems`."""
        problems = self.problems(key=key)
        if problems:
            raise ValueError(' '.join(problems))

    def length_problems(self, raw_length: int, *, num_sentinels: Optional[int] = None) -> list[str]:
        """Why rows of ``raw_length`` tokens cannot be made into this denoiser's fixed shapes.

        The settings must be valid (:meth:`problems` empty). Messages start with :attr:`name`.

        Args:
            raw_length: tokens per raw row.
            num_sentinels: ``<extra_id_k>`` tokens the tokenizer has (None: not checked).
        """
        n = raw_length
        if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 2:
            return [f'{self.name}: rows must have at least 2 tokens, got {n!r}.']
        if self.kind == 'prefix':
            return []
        p = [f'{self.name}: {m}.' for m in span_count_problems(n, self.corruption_rate, self.mean_span_length)]
        needed = noise_span_counts(n, self.corruption_rate, self.mean_span_length)[1] if not p else 0
        if num_sentinels is not None and needed > num_sentinels:
            p.append(f'{self.name} needs {needed} sentinel tokens for rows of {n} tokens but the tokenizer has '
                     f'{num_sentinels} <extra_id_k> tokens; raise mean_span_length or lower corruption_rate, '
                     'or use a tokenizer with more extra_ids.')
        return p

    def _checked(self, raw_length: int) -> None:
        problems = self.problems() or self.length_problems(raw_length)
        if problems:
            raise ValueError(' '.join(problems))

    def target_counts(self, raw_length: int) -> tuple[int, int]:
        """Prefix only: the fewest and most suffix tokens a row of ``raw_length`` tokens predicts.

        ``round(lo * L)`` and ``round(hi * L)`` (Python's rounding), clipped to ``[1, L - 1]`` so
        that prefix and suffix each keep a token.

        Args:
            raw_length: tokens per raw row.
        """
        if self.kind != 'prefix':
            raise ValueError(f'{self.name} is not a prefix denoiser; target_counts is for prefix denoisers')
        self._checked(raw_length)
        lo, hi = self.target_fraction
        return tuple(min(max(int(round(f * raw_length)), 1), raw_length - 1) for f in (lo, hi))  # type: ignore[return-value]

    def output_lengths(self, raw_length: int) -> tuple[int, int]:
        """The fixed envelope ``(encoder_length, decoder_length)`` of rows of ``raw_length`` tokens.

        Mode token (when set) and EOS included. Span: every row has exactly these lengths (T5's
        counts). Prefix: the longest input (fewest targets) and the longest target; shorter rows
        are padded to them.

        Args:
            raw_length: tokens per raw row.
        """
        self._checked(raw_length)
        mode = int(self.mode_token is not None)
        if self.kind == 'span':
            num_noise, num_spans = noise_span_counts(raw_length, self.corruption_rate, self.mean_span_length)
            return mode + raw_length - num_noise + num_spans + 1, num_noise + num_spans + 1
        t_lo, t_hi = self.target_counts(raw_length)
        return mode + raw_length - t_lo + 1, t_hi + 1

    def sentinels_needed(self, raw_length: int) -> int:
        """``<extra_id_k>`` tokens a row of ``raw_length`` tokens uses (span: its spans; prefix: none).

        Args:
            raw_length: tokens per raw row.
        """
        self._checked(raw_length)
        if self.kind == 'prefix':
            return 0
        return noise_span_counts(raw_length, self.corruption_rate, self.mean_span_length)[1]


def _short(value: Any) -> str:
    return f'{value:g}' if _is_number(value) else str(value)


def _is_pair(value: Any) -> bool:
    return isinstance(value, (tuple, list)) and len(value) == 2 and all(_is_number(v) for v in value)


_DENOISER_KEYS = tuple(f.name for f in fields(Denoiser))
_OBJECTIVE_KEYS = ('preset', 'denoisers')


@dataclass(frozen=True, kw_only=True)
class Objective:
    """A pre-training objective: a weighted mixture of denoisers, one drawn per row.

    Args:
        denoisers: the denoisers, in order (group order of a mixture batch; index of
            :func:`~t5composer.data.denoising.assign_denoisers`).
        preset_name: the :data:`PRESETS` name this objective is (None for a custom mixture);
            names the denoisers in messages. Not compared.
        config_problems: ``(setting, message)`` pairs that :meth:`from_config` found in the YAML
            section (unknown keys and the like), reported by :meth:`problems`.
    """

    denoisers: tuple[Denoiser, ...]
    preset_name: Optional[str] = field(default=None, compare=False)
    config_problems: tuple[tuple[str, str], ...] = ()

    @classmethod
    def preset(cls, name: str) -> Objective:
        """The preset ``name`` of :data:`PRESETS` (``'span_corruption'``, ``'ul2'``).

        Raises:
            ValueError: no preset has that name (the message names the closest).
        """
        if name not in PRESETS:
            raise ValueError(f'unknown objective preset {name!r}; choose among {sorted(PRESETS)}.'
                             + closest(str(name), PRESETS))
        return PRESETS[name]

    @classmethod
    def from_config(cls, mapping: Any) -> Objective:
        """The objective of a YAML section: ``{'preset': name}`` or ``{'denoisers': [{kind: ..., ...}, ...]}``.

        An empty section is the default (:data:`DEFAULT_PRESET`, T5's span corruption). Checks
        nothing: what is wrong with the section is kept and listed by :meth:`problems`.

        Args:
            mapping: the section (a mapping); each denoiser entry takes :class:`Denoiser`'s fields
                (``target_fraction`` as a two-item list).
        """
        found: list[tuple[str, str]] = []
        if not isinstance(mapping, Mapping):
            found.append(('preset', f"(or 'denoisers') must be given in a mapping, got {mapping!r}."))
            return cls(denoisers=(), config_problems=tuple(found))
        for k in mapping:
            if k not in _OBJECTIVE_KEYS:
                found.append((str(k), "is not an objective setting; use 'preset' or 'denoisers'." + closest(str(k), _OBJECTIVE_KEYS)))
        if 'preset' in mapping and 'denoisers' in mapping:
            found.append(('preset', "and 'denoisers' both given; give a preset name or a list of denoisers, not both."))
        if 'denoisers' not in mapping:
            name = mapping.get('preset', DEFAULT_PRESET)
            if isinstance(name, str) and name in PRESETS:
                preset = PRESETS[name]
                return cls(denoisers=preset.denoisers, preset_name=name, config_problems=tuple(found))
            hint = closest(name, PRESETS) if isinstance(name, str) else ''
            found.append(('preset', f'must be one of {sorted(PRESETS)}, got {name!r}.{hint}'))
            return cls(denoisers=(), config_problems=tuple(found))
        entries = mapping['denoisers']
        if not isinstance(entries, (list, tuple)) or not entries:
            found.append(('denoisers', f'must be a non-empty list of denoisers ({{kind: span|prefix, ...}}), got {entries!r}.'))
            return cls(denoisers=(), config_problems=tuple(found))
        denoisers = []
        for i, entry in enumerate(entries):
            where = f'denoisers[{i}]'
            if not isinstance(entry, Mapping):
                found.append((where, f'must be a mapping of denoiser settings ({", ".join(_DENOISER_KEYS)}), got {entry!r}.'))
                continue
            for k in entry:
                if k not in _DENOISER_KEYS:
                    found.append((f'{where}.{k}', f'is not a denoiser setting; use {", ".join(_DENOISER_KEYS)}.'
                                  + closest(str(k), _DENOISER_KEYS)))
            values = {k: v for k, v in entry.items() if k in _DENOISER_KEYS}
            if isinstance(values.get('target_fraction'), list):
                values['target_fraction'] = tuple(values['target_fraction'])
            values.setdefault('kind', None)
            denoisers.append(Denoiser(**values))
        return cls(denoisers=tuple(denoisers), config_problems=tuple(found))

    @property
    def name(self) -> str:
        """The preset's name, or the denoisers' names joined with ``+``."""
        return self.preset_name or '+'.join(d.name for d in self.denoisers)

    def problems(self, *, key: str = '{}', raw_length: Optional[int] = None, num_sentinels: Optional[int] = None) -> list[str]:
        """Why this objective cannot be used, one message per problem (empty when it can).

        Args:
            key: how the messages name a setting: a format with one ``{}`` for the setting
                (``preset``, ``denoisers[i].corruption_rate``, ...), e.g. ``"'data.objective.{}'"``.
            raw_length: tokens per raw row; when given, also checks that every denoiser can make
                rows of that length into its fixed shapes.
            num_sentinels: ``<extra_id_k>`` tokens of the tokenizer; with ``raw_length``, also
                checks that no denoiser needs more.
        """
        p = [f'{key.format(setting)} {message}' for setting, message in self.config_problems]
        if not self.denoisers:
            if not p:
                p.append(f"{key.format('denoisers')} is empty; an objective needs at least one denoiser.")
            return p
        for i, d in enumerate(self.denoisers):
            p += d.problems(key=self._denoiser_key(key, i))
        if p or raw_length is None:
            return p
        for i, d in enumerate(self.denoisers):
            p += [f'{self._where(key, i)}: {m}' for m in d.length_problems(raw_length, num_sentinels=num_sentinels)]
        return p

    def _denoiser_key(self, key: str, i: int) -> str:
        return key.format(f'denoisers[{i}].{{}}')

    def _where(self, key: str, i: int) -> str:
        if self.preset_name is not None:
            return f"{key.format('preset')} {self.preset_name!r} (denoiser {i})"
        return key.format(f'denoisers[{i}]')

    def check(self, *, key: str = '{}', raw_length: Optional[int] = None, num_sentinels: Optional[int] = None) -> None:
        """Raise ``ValueError`` with every problem of :meth:`problems` (arguments as there)."""
        problems = self.problems(key=key, raw_length=raw_length, num_sentinels=num_sentinels)
        if problems:
            raise ValueError(' '.join(problems))

    @property
    def mode_tokens(self) -> tuple[str, ...]:
        """The distinct mode tokens, in order of first appearance (the tokenizer's special tokens to add)."""
        return tuple(dict.fromkeys(d.mode_token for d in self.denoisers if d.mode_token is not None))

    @property
    def weights(self) -> np.ndarray:
        """float64 ``[len(denoisers)]``: each denoiser's share of the rows (the weights normalised to sum 1)."""
        import numpy as np

        self.check()
        w = np.asarray([d.weight for d in self.denoisers], dtype=np.float64)
        return w / w.sum()

    @property
    def is_span_corruption(self) -> bool:
        """True for plain T5 span corruption (one span denoiser, no mode token): batches are then
        SpanCorruptionCollator's, exactly as without an objective section."""
        return len(self.denoisers) == 1 and self.denoisers[0].kind == 'span' and self.denoisers[0].mode_token is None

    def output_lengths(self, raw_length: int) -> tuple[tuple[int, int], ...]:
        """Each denoiser's ``(encoder_length, decoder_length)`` for rows of ``raw_length`` tokens (the batch shapes).

        Args:
            raw_length: tokens per raw row.
        """
        self.check(raw_length=raw_length)
        return tuple(d.output_lengths(raw_length) for d in self.denoisers)

    def sentinels_needed(self, raw_length: int) -> int:
        """The most ``<extra_id_k>`` tokens any denoiser uses on rows of ``raw_length`` tokens.

        Args:
            raw_length: tokens per raw row.
        """
        self.check(raw_length=raw_length)
        return max(d.sentinels_needed(raw_length) for d in self.denoisers)


def _ul2() -> Objective:
    # UL2's seven denoisers (Tay et al. 2022, its mixture table; the same list as llm-foundry's
    # MixtureOfDenoisersCollator). Weights: R 40% / X 40% / S 20%, each group's share split evenly
    # among its denoisers: the proportions of the public seqio reimplementation of UL2 (the paper
    # gives the denoisers, not one set of proportions). S predicts 15%..35% of the row (mean 25%,
    # llm-foundry's prefix-LM ratio); a range rather than the whole row keeps the padding of the
    # fixed-size envelope small (see docs/objectives.md).
    r = [Denoiser(kind='span', mean_span_length=m, corruption_rate=c, mode_token='[NLU]', weight=0.4 / 2)
         for m, c in ((3, 0.15), (8, 0.15))]
    x = [Denoiser(kind='span', mean_span_length=m, corruption_rate=c, mode_token='[NLG]', weight=0.4 / 4)
         for m, c in ((3, 0.5), (8, 0.5), (64, 0.15), (64, 0.5))]
    s = [Denoiser(kind='prefix', target_fraction=(0.15, 0.35), mode_token='[S2S]', weight=0.2)]
    return Objective(denoisers=tuple(r + x + s), preset_name='ul2')


DEFAULT_PRESET = 'span_corruption'
PRESETS: dict[str, Objective] = {
    # T5 v1.1's objective (noise density 0.15, mean span 3; span_spec's defaults), no mode token:
    # batches are exactly those of SpanCorruptionCollator.
    'span_corruption': Objective(
        denoisers=(Denoiser(kind='span', mean_span_length=SpanCorruptionSpec.mean_noise_span_length,
                            corruption_rate=SpanCorruptionSpec.noise_density),),
        preset_name='span_corruption'),
    # UL2's mixture of denoisers: R (3, 0.15), (8, 0.15) '[NLU]'; X (3, 0.5), (8, 0.5), (64, 0.15),
    # (64, 0.5) '[NLG]'; S prefix LM '[S2S]'; weights R 40% / X 40% / S 20% (see _ul2).
    'ul2': _ul2(),
}
