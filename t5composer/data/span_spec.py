"""The span-corruption objective as one value: what a converted row is made for.

:class:`SpanCorruptionSpec` holds T5's three settings (encoder input length, noise density, mean
noise span length), the lengths they imply (the raw *expanded* row length the converter writes and
the decoder target length), their checks, and the ``recipes/convert_c4.py`` command that makes
rows for them. The converter, the split metadata, the config checks, the dry run and the collator
take their numbers from it, so the lengths are computed, the ranges checked and the command
written in one place.

Pure Python (no numpy or torch), so that config checks can use it without their import cost.
"""

from __future__ import annotations

import functools
import math
import numbers
import re
import shlex
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

__all__ = [
    'CONVERT_SCRIPT',
    'SpanCorruptionSpec',
    'check_noise',
    'convert_command',
    'noise_problems',
    'noise_span_counts',
    'random_spans_helper',
    'span_count_problems',
]

CONVERT_SCRIPT = 'recipes/convert_c4.py'
_MIN_INPUT_LENGTH = 4  # below this, rows too short for a noise span beside the sentinel and EOS


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def noise_problems(noise_density: Any, mean_noise_span_length: Any, *, key: str = '{}',
                   names: tuple[str, str] = ('noise_density', 'mean_noise_span_length')) -> list[str]:
    """Why ``noise_density`` / ``mean_noise_span_length`` cannot be used (empty when they can).

    The one home of their ranges: density in (0, 1), mean span a finite number >= 1.

    Args:
        noise_density: fraction of raw tokens that are noise.
        mean_noise_span_length: average noise span length.
        key: how the messages name a setting: a format with one ``{}`` for the field name,
            e.g. ``"'data.{}'"`` (config keys) or ``'--{}'`` (the converter's flags).
        names: the two settings' field names in the messages (a denoiser of
            :mod:`t5composer.data.objectives` calls them ``corruption_rate`` and ``mean_span_length``).
    """
    p: list[str] = []
    fields = dict(zip(('noise_density', 'mean_noise_span_length'), names))

    def name(field: str) -> str:
        return key.format(fields[field])

    if not _is_number(noise_density):
        p.append(f'{name("noise_density")} must be a number, got {noise_density!r}; T5 uses {SpanCorruptionSpec.noise_density:g}.')
    elif not 0.0 < noise_density < 1.0:
        p.append(f'{name("noise_density")} must be in (0, 1), got {noise_density}; T5 uses {SpanCorruptionSpec.noise_density:g}.')
    mean = mean_noise_span_length
    t5_mean = f'T5 uses {SpanCorruptionSpec.mean_noise_span_length:g}.'
    if not _is_number(mean):
        p.append(f'{name("mean_noise_span_length")} must be a number, got {mean!r}; {t5_mean}')
    elif not mean >= 1.0:  # also refuses nan
        p.append(f'{name("mean_noise_span_length")} must be >= 1, got {mean}; {t5_mean}')
    elif not math.isfinite(mean):
        p.append(f'{name("mean_noise_span_length")} must be a finite number >= 1, got {mean}; {t5_mean}')
    return p


def check_noise(noise_density: Any, mean_noise_span_length: Any) -> None:
    """Raise ``ValueError`` with the problems of :func:`noise_problems`.

    For functions that take the two settings as arguments (the collator, the mask function,
    :func:`random_spans_helper`).
    """
    problems = noise_problems(noise_density, mean_noise_span_length)
    if problems:
        raise ValueError(' '.join(problems))


def random_spans_helper(
    inputs_length: int,
    noise_density: float,
    mean_noise_span_length: float,
) -> tuple[int, int]:
    """Raw row length that span corruption turns into exactly ``inputs_length`` encoder tokens.

    Same loop as T5's ``random_spans_helper`` (one sentinel per span in inputs and targets, one
    EOS each): grow the raw length while the resulting encoder length still fits, then apply
    T5's ``noise_density == 0.5`` adjustment that keeps targets no longer than inputs.
    :class:`SpanCorruptionSpec` is the usual way to get these numbers.

    Args:
        inputs_length: desired encoder input length (sentinels and EOS included).
        noise_density: fraction of raw tokens that are noise.
        mean_noise_span_length: average noise span length.

    Returns:
        ``(tokens_length, targets_length)``: raw row length and decoder target length.
        ``(512, 0.15, 3.0) -> (568, 114)``.
    """
    if int(inputs_length) != inputs_length or inputs_length < 2:
        raise ValueError(f'inputs_length must be an integer >= 2, got {inputs_length!r}')
    check_noise(noise_density, mean_noise_span_length)
    inputs_length = int(inputs_length)

    def lengths(tokens_length: int) -> tuple[int, int]:
        # Python's round (half to even), as in T5, without the clipping of the mask function.
        num_noise = int(round(tokens_length * noise_density))
        num_nonnoise = tokens_length - num_noise
        num_spans = int(round(num_noise / mean_noise_span_length))
        return num_nonnoise + num_spans + 1, num_noise + num_spans + 1

    tokens_length = inputs_length - 1
    while lengths(tokens_length + 1)[0] <= inputs_length:
        tokens_length += 1
    # As in T5, the comparison below uses the *achieved* inputs length, not the argument.
    achieved_inputs_length, targets_length = lengths(tokens_length)
    if noise_density == 0.5 and targets_length > achieved_inputs_length:
        tokens_length -= 1
        targets_length -= 1
    return tokens_length, targets_length


def span_count_problems(length: int, noise_density: float, mean_noise_span_length: float) -> list[str]:
    """Why rows of ``length`` tokens cannot be span-corrupted into fixed shapes (empty when they can).

    The settings themselves must already be valid (:func:`noise_problems`).

    Args:
        length: raw row length.
        noise_density: fraction of tokens that are noise.
        mean_noise_span_length: average noise span length.
    """
    if length < 2:
        return [f'rows must have at least 2 tokens to hold one noise span, got length {length}']
    num_noise, num_spans = noise_span_counts(length, noise_density, mean_noise_span_length)
    if num_spans > length - num_noise:
        # T5 would silently merge spans here (zero-length gaps), giving rows different shapes.
        return [
            f'length {length} with noise_density={noise_density} and mean_noise_span_length='
            f'{mean_noise_span_length} gives {num_spans} noise spans but only {length - num_noise} '
            'non-noise tokens to separate them; lower noise_density or raise mean_noise_span_length',
        ]
    return []


def noise_span_counts(length: int, noise_density: float, mean_noise_span_length: float) -> tuple[int, int]:
    """Number of noise tokens and noise spans in a row of ``length`` tokens (T5's rule).

    Args:
        length: raw row length.
        noise_density: fraction of tokens that are noise.
        mean_noise_span_length: average noise span length.

    Returns:
        ``(num_noise, num_spans)`` with ``num_noise = round(length * density)`` clipped to
        ``[1, length - 1]`` and ``num_spans = max(1, round(num_noise / mean))``.
    """
    num_noise = int(round(length * noise_density))
    num_noise = min(max(num_noise, 1), length - 1)
    num_spans = max(1, int(round(num_noise / mean_noise_span_length)))
    return num_noise, num_spans


_PLACEHOLDER = re.compile(r'<[^<>\s]+>')


def _arg(value: Any) -> str:
    # A '<placeholder>' the reader fills in is shown as is; anything else is quoted for the shell.
    text = str(value)
    return text if _PLACEHOLDER.fullmatch(text) else shlex.quote(text)


def convert_command(
    *,
    out_root: str,
    splits: str | Sequence[str],
    tokenizer: str,
    spec: Optional[SpanCorruptionSpec] = None,
    source: str = 'allenai/c4',
    overwrite: bool = False,
) -> str:
    """The ``python recipes/convert_c4.py ...`` command a message tells a user to run.

    Args:
        out_root: ``--out_root`` (a directory or an object-store URL).
        splits: ``--splits`` (``train``, ``val`` or both).
        tokenizer: ``--tokenizer``; a ``<placeholder>`` such as ``<tokenizer.name>`` when unknown.
        spec: the rows' span-corruption settings; None (nothing known, e.g. a split without
            metadata) asks for ``--input_length <data.input_length>`` and leaves the noise flags
            at the converter's defaults.
        source: ``--source``.
        overwrite: add ``--overwrite`` (the split exists and is to be replaced).
    """
    parts = ['python', CONVERT_SCRIPT, '--source', _arg(source), '--out_root', _arg(out_root), '--splits']
    parts += [_arg(s) for s in ([splits] if isinstance(splits, str) else splits)]
    parts += ['--tokenizer', _arg(tokenizer)]
    if spec is None:
        parts += ['--input_length', '<data.input_length>']
    else:
        parts += ['--input_length', str(spec.input_length), '--noise_density', str(spec.noise_density),
                  '--mean_noise_span_length', str(spec.mean_noise_span_length)]
    return ' '.join(parts) + (' --overwrite' if overwrite else '')


@dataclass(frozen=True, kw_only=True)
class SpanCorruptionSpec:
    """T5's span-corruption objective; the defaults are T5's (``data:`` in the config uses them).

    Building one checks nothing, so that a config can list every problem at once:
    :meth:`problems` lists them, :meth:`check` raises them, and the lengths raise them when asked
    for on a spec that has any.

    Args:
        input_length: encoder input length (sentinels and EOS included).
        noise_density: fraction of raw tokens that are noise, in (0, 1).
        mean_noise_span_length: average noise span length, >= 1.
    """

    # The one place T5's values are written: DataConfig, the converter and its flags, and the
    # collator take their defaults from these fields.
    input_length: int = 512
    noise_density: float = 0.15
    mean_noise_span_length: float = 3.0

    # Fields of the converter's metadata (t5composer_meta.json) that a spec is read back from.
    FIELDS = ('input_length', 'noise_density', 'mean_noise_span_length')

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> SpanCorruptionSpec:
        """The spec of a mapping with these fields (a split's metadata); absent fields keep T5's values."""
        return cls(**{k: values[k] for k in cls.FIELDS if values.get(k) is not None})

    def problems(self, *, key: str = '{}') -> list[str]:
        """Why rows cannot be made for these settings, one message per problem (empty when they can).

        Args:
            key: how the messages name a setting: a format with one ``{}`` for the field name,
                e.g. ``"'data.{}'"`` (config keys) or ``'--{}'`` (the converter's flags).
        """
        p = noise_problems(self.noise_density, self.mean_noise_span_length, key=key)
        n = self.input_length
        too_small = (f'{key.format("input_length")} {n} is too small to hold one noise span and EOS; '
                     f'use at least {_MIN_INPUT_LENGTH} ({type(self).input_length} is standard).')
        if isinstance(n, bool) or not isinstance(n, numbers.Integral):
            p.append(f'{key.format("input_length")} must be an integer, got {n!r}; {type(self).input_length} is standard.')
        elif n < _MIN_INPUT_LENGTH:
            p.append(too_small)
        elif not p:
            expanded, _ = random_spans_helper(n, self.noise_density, self.mean_noise_span_length)
            num_noise, _ = noise_span_counts(expanded, self.noise_density, self.mean_noise_span_length)
            if expanded - num_noise < 1:
                p.append(too_small)
        return p

    def check(self, *, key: str = '{}') -> None:
        """Raise ``ValueError`` with every problem of :meth:`problems` (``key`` as there)."""
        problems = self.problems(key=key)
        if problems:
            raise ValueError(' '.join(problems))

    @functools.cached_property
    def _lengths(self) -> tuple[int, int]:
        self.check()
        return random_spans_helper(self.input_length, self.noise_density, self.mean_noise_span_length)

    @property
    def expanded_length(self) -> int:
        """Raw row length: the converter's rows, which span corruption turns into ``input_length`` tokens (568 for T5's)."""
        return self._lengths[0]

    @property
    def target_length(self) -> int:
        """Decoder target length of a row (114 for T5's)."""
        return self._lengths[1]

    @property
    def noise_spans(self) -> int:
        """Noise spans per row, hence the ``<extra_id_k>`` sentinel tokens the tokenizer needs (28 for T5's)."""
        return noise_span_counts(self.expanded_length, self.noise_density, self.mean_noise_span_length)[1]

    def convert_command(self, *, out_root: str, splits: str | Sequence[str], tokenizer: str,
                        source: str = 'allenai/c4', overwrite: bool = False) -> str:
        """The ``recipes/convert_c4.py`` command that makes rows for this spec (see :func:`convert_command`)."""
        return convert_command(out_root=out_root, splits=splits, tokenizer=tokenizer, spec=self, source=source,
                               overwrite=overwrite)
