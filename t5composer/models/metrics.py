"""Token-level metrics for seq2seq language modelling, synced across ranks.

Both metrics keep only sums (``dist_reduce_fx='sum'``), so the value after a multi-rank sync is
the exact corpus-level ratio, not a mean of per-rank means.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchmetrics import Metric

__all__ = ['LanguageNLL', 'TokenAccuracy']


class LanguageNLL(Metric):
    """Mean per-token negative log-likelihood (nats) over target tokens != ``ignore_index``.

    Args:
        ignore_index: label value to skip (padding / unused positions).
        dist_sync_on_step: torchmetrics option; sync at every ``forward`` call.
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    def __init__(self, *, ignore_index: int = -100, dist_sync_on_step: bool = False) -> None:
        super().__init__(dist_sync_on_step=dist_sync_on_step)
        self.ignore_index = ignore_index
        # fp64 sum: millions of tokens of ~2-nat losses lose digits in fp32.
        self.add_state('sum_nll', default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx='sum')
        self.add_state('num_tokens', default=torch.tensor(0, dtype=torch.long), dist_reduce_fx='sum')

    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """Accumulate a batch.

        Args:
            logits: ``[B, L, V]`` (any float dtype; the loss is computed in fp32).
            labels: ``[B, L]`` target ids with ``ignore_index`` where there is no target.
        """
        nll = F.cross_entropy(
            logits.float().flatten(0, 1),
            labels.flatten(),
            ignore_index=self.ignore_index,
            reduction='sum',
        )
        self.sum_nll += nll.detach().double()
        self.num_tokens += (labels != self.ignore_index).sum()

    def compute(self) -> torch.Tensor:
        """Summed NLL / token count (NaN when no tokens were seen)."""
        return (self.sum_nll / self.num_tokens).float()


class TokenAccuracy(Metric):
    """Fraction of target tokens != ``ignore_index`` whose argmax prediction is correct.

    Args:
        ignore_index: label value to skip.
        dist_sync_on_step: torchmetrics option; sync at every ``forward`` call.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, *, ignore_index: int = -100, dist_sync_on_step: bool = False) -> None:
        super().__init__(dist_sync_on_step=dist_sync_on_step)
        self.ignore_index = ignore_index
        self.add_state('correct', default=torch.tensor(0, dtype=torch.long), dist_reduce_fx='sum')
        self.add_state('num_tokens', default=torch.tensor(0, dtype=torch.long), dist_reduce_fx='sum')

    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """Accumulate a batch.

        Args:
            logits: ``[B, L, V]``.
            labels: ``[B, L]`` target ids with ``ignore_index`` where there is no target.
        """
        keep = labels != self.ignore_index
        self.correct += ((logits.argmax(dim=-1) == labels) & keep).sum()
        self.num_tokens += keep.sum()

    def compute(self) -> torch.Tensor:
        """Correct / token count (NaN when no tokens were seen)."""
        return self.correct.float() / self.num_tokens
