"""The one rule for a learning rate: a finite number >= 0, checked the same way everywhere.

The config checks (``optimizer.lr``), the optimizer registry and the optimizers themselves call
:func:`learning_rate_problem`, so a value refused in one place is refused in all, with the same
words. 0 is allowed (the weights stay put, e.g. to measure a loop or evaluate); schedules that
divide by their base rate require it to be positive themselves. Imports nothing of the project.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Optional

__all__ = ['check_learning_rate', 'learning_rate_problem']


def learning_rate_problem(lr: Any) -> Optional[str]:
    """Why ``lr`` cannot be a learning rate, as the end of a sentence that names it, or None.

    Args:
        lr: the value (``'must be >= 0, got -1.0'`` for -1.0).
    """
    if isinstance(lr, bool) or not isinstance(lr, numbers.Real):
        return f'must be a number, got {lr!r}'
    if not math.isfinite(lr):
        return f'must be a finite number, got {lr}'
    if lr < 0:
        return f'must be >= 0, got {lr}'
    return None


def check_learning_rate(lr: Any, *, name: str = 'lr') -> None:
    """Raise unless ``lr`` is a learning rate (:func:`learning_rate_problem`).

    Args:
        lr: the value.
        name: what the message calls it.

    Raises:
        TypeError: not a number.
        ValueError: not finite, or negative.
    """
    problem = learning_rate_problem(lr)
    if problem is not None:
        number = isinstance(lr, numbers.Real) and not isinstance(lr, bool)
        raise (ValueError if number else TypeError)(f'{name} {problem}')
