"""Text-level metrics for instruction fine-tuning (Tk-Instruct / nanoT5 style), synced across ranks.

``rouge_l`` and ``exact_match`` score one prediction against all references of an instance and
keep the best, exactly like Tk-Instruct's ``metric_max_over_ground_truths``. The torchmetrics
classes ``RougeL`` and ``ExactMatch`` accumulate those per-instance scores as sums and counts
(``dist_reduce_fx='sum'``), so after a multi-rank sync every mean is the exact corpus-level
instance mean, not a mean of per-rank means. Reported values are x 100, as in Tk-Instruct.

Note: rouge-score's default tokenizer keeps only ``[a-z0-9]`` tokens, so text with no ASCII
letters or digits scores 0. That is what Tk-Instruct does for English tasks (the default SNI
test split); its cross-lingual tokenizer for non-English tasks is not reproduced here.
"""

from __future__ import annotations

import functools
import string
from collections.abc import Mapping, Sequence

import torch
from torchmetrics import Metric

__all__ = ['ExactMatch', 'RougeL', 'exact_match', 'normalize_answer', 'rouge_l']


@functools.lru_cache(maxsize=1)
def _rouge_scorer():
    """The one shared ``RougeScorer`` (building it sets up a Porter stemmer; do that once)."""
    # Imported lazily: rouge_score pulls in nltk, which training-only users never need.
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(['rougeL'], use_stemmer=True)


def _check_references(references: Sequence[str]) -> None:
    # A bare string is a Sequence[str] too; iterating it would score against single characters.
    if isinstance(references, str):
        raise TypeError('references must be a sequence of strings, got a single str')
    if len(references) == 0:
        raise ValueError('references is empty: every instance needs at least one reference')


def rouge_l(prediction: str, references: Sequence[str]) -> float:
    """Tk-Instruct's RougeL: best rouge-score ``rougeL`` F-measure over the references.

    Uses ``RougeScorer(['rougeL'], use_stemmer=True)`` with its default tokenizer (lowercase,
    non-alphanumerics to spaces, Porter stemming of tokens longer than 3 characters).

    Args:
        prediction: the generated text.
        references: all reference answers of the instance (at least one).

    Returns:
        The maximum F-measure in [0, 1]; 0 for an empty (or token-free) prediction.
    """
    _check_references(references)
    scorer = _rouge_scorer()
    return max(scorer.score(target=ref, prediction=prediction)['rougeL'].fmeasure for ref in references)


_PUNCTUATION = frozenset(string.punctuation)


def normalize_answer(text: str) -> str:
    """Tk-Instruct's answer normalisation: lowercase, strip ASCII punctuation, fold whitespace.

    Punctuation is deleted, not replaced by a space ("don't" -> "dont"), and articles are kept,
    as in Tk-Instruct (unlike SQuAD's normalisation).

    Args:
        text: the string to normalise.
    """
    text = ''.join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return ' '.join(text.split())


def exact_match(prediction: str, references: Sequence[str]) -> float:
    """1.0 if the normalised prediction equals any normalised reference, else 0.0.

    Args:
        prediction: the generated text.
        references: all reference answers of the instance (at least one).
    """
    _check_references(references)
    pred = normalize_answer(prediction)
    return float(any(pred == normalize_answer(ref) for ref in references))


class _InstanceScoreMetric(Metric):
    """Mean of a per-instance text score x 100; overall, per task and per category.

    Subclasses set ``_score_fn``. States are sums and counts only, so ranks combine by ``sum``.

    Args:
        task_names: tasks to break the score down by. Every ``tasks`` entry passed to
            ``update`` must be one of these; an unknown task raises ``ValueError`` (silently
            scoring it only overall would hide a mis-wired evaluation).
        task_categories: task name -> that task's categories (the task file's ``Categories``
            list). Each key must be in ``task_names``. A task listed under several categories
            counts toward each of them. Tasks absent from the mapping belong to no category.
        dist_sync_on_step: torchmetrics option; sync at every ``forward`` call.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    @staticmethod
    def _score_fn(prediction: str, references: Sequence[str]) -> float:
        raise NotImplementedError

    def __init__(
        self,
        *,
        task_names: Sequence[str] = (),
        task_categories: Mapping[str, Sequence[str]] | None = None,
        dist_sync_on_step: bool = False,
    ) -> None:
        super().__init__(dist_sync_on_step=dist_sync_on_step)
        if isinstance(task_names, str):
            raise TypeError('task_names must be a sequence of task names, got a single str')
        self.task_names = list(task_names)
        self._task_index = {name: i for i, name in enumerate(self.task_names)}
        if len(self._task_index) != len(self.task_names):
            dupes = sorted({n for n in self.task_names if self.task_names.count(n) > 1})
            raise ValueError(f'duplicate task names: {dupes}')

        # category -> indices of its tasks, in first-seen order, so reports are stable.
        self._category_tasks: dict[str, list[int]] = {}
        for task, categories in (task_categories or {}).items():
            if task not in self._task_index:
                raise ValueError(
                    f'task_categories has task {task!r} which is not in task_names '
                    '(the mapping is task -> categories)'
                )
            if isinstance(categories, str):
                categories = [categories]  # tolerate a single category given as a plain str
            for category in dict.fromkeys(categories):
                self._category_tasks.setdefault(category, []).append(self._task_index[task])

        num_tasks = len(self.task_names)
        # fp64 sums: hundreds of thousands of [0, 1] scores; fp32 would drift in the last digits.
        self.add_state('score_sum', default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx='sum')
        self.add_state('count', default=torch.tensor(0, dtype=torch.long), dist_reduce_fx='sum')
        self.add_state(
            'task_score_sum', default=torch.zeros(num_tasks, dtype=torch.float64), dist_reduce_fx='sum'
        )
        self.add_state('task_count', default=torch.zeros(num_tasks, dtype=torch.long), dist_reduce_fx='sum')
        # Breakdown computed from the synced states by the last compute(); see per_task().
        self._breakdown: tuple[dict[str, float], dict[str, float]] | None = None

    def update(
        self,
        predictions: list[str],
        references: list[list[str]],
        tasks: list[str] | None = None,
    ) -> None:
        """Score a batch of instances.

        Args:
            predictions: decoded predictions, one per instance.
            references: all references of each instance (each a non-empty list of str).
            tasks: task name of each instance, or ``None`` to score only overall.
        """
        if isinstance(predictions, str):
            raise TypeError('predictions must be a list of str, got a single str')
        if len(references) != len(predictions):
            raise ValueError(f'{len(predictions)} predictions but {len(references)} reference lists')
        if tasks is not None:
            if len(tasks) != len(predictions):
                raise ValueError(f'{len(predictions)} predictions but {len(tasks)} task names')
            unknown = sorted({t for t in tasks if t not in self._task_index})
            if unknown:
                raise ValueError(
                    f'unknown task(s) {unknown}: not in task_names given to {type(self).__name__}'
                )

        scores = torch.tensor(
            [self._score_fn(p, r) for p, r in zip(predictions, references)], dtype=torch.float64
        )
        self.score_sum += scores.sum().to(self.score_sum.device)
        self.count += len(scores)
        if tasks is not None and len(scores) > 0:
            index = torch.tensor([self._task_index[t] for t in tasks], device=self.task_count.device)
            self.task_score_sum.index_add_(0, index, scores.to(self.task_score_sum.device))
            self.task_count.index_add_(0, index, torch.ones_like(index))
        self._breakdown = None

    def compute(self) -> torch.Tensor:
        """Mean instance score x 100 over all ranks (0 when nothing was scored).

        Runs inside torchmetrics' sync context, so it also caches the per-task and per-category
        breakdown of the synced states for ``per_task`` / ``per_category``.
        """
        task_sum = self.task_score_sum.double().cpu()
        task_count = self.task_count.cpu()
        per_task = {
            name: 100.0 * task_sum[i].item() / task_count[i].item()
            for i, name in enumerate(self.task_names)
            if task_count[i] > 0
        }
        per_category = {}
        for category, idx in self._category_tasks.items():
            n = task_count[idx].sum().item()
            if n > 0:
                # Instance-weighted: pool the category's examples, as Tk-Instruct groups them.
                per_category[category] = 100.0 * task_sum[idx].sum().item() / n
        self._breakdown = (per_task, per_category)
        # clamp: an empty metric reports 0, not NaN (it is logged unconditionally).
        return (100.0 * self.score_sum / self.count.clamp(min=1)).float()

    def _synced_breakdown(self) -> tuple[dict[str, float], dict[str, float]]:
        # compute() returns its cached value (no collective) when nothing changed since it last
        # ran; otherwise it syncs, which in a distributed run every rank must join. The body
        # re-runs whenever torchmetrics drops its cache, so the breakdown is never stale.
        self.compute()
        if self._breakdown is None:  # compute_with_cache stale-cache corner: recompute once
            self._computed = None
            self.compute()
        assert self._breakdown is not None
        return self._breakdown

    def per_task(self) -> dict[str, float]:
        """Mean score x 100 per task, from the synced states.

        Tasks that received no instances are left out. Calls ``compute()`` if it has not run
        since the last update (a collective in a distributed run: call it on every rank then).
        """
        return dict(self._synced_breakdown()[0])

    def per_category(self) -> dict[str, float]:
        """Mean score x 100 per category, from the synced states.

        A category's score is the mean over all instances of its tasks (instance-weighted, not a
        mean of task means). Categories without instances are left out. Same sync caveat as
        ``per_task``.
        """
        return dict(self._synced_breakdown()[1])

    def reset(self) -> None:
        """Reset the states and drop the cached breakdown."""
        super().reset()
        self._breakdown = None


class RougeL(_InstanceScoreMetric):
    """Tk-Instruct RougeL (best over references, see ``rouge_l``), mean x 100.

    Args:
        task_names: tasks to break the score down by (see ``_InstanceScoreMetric``).
        task_categories: task name -> its categories.
        dist_sync_on_step: torchmetrics option; sync at every ``forward`` call.
    """

    _score_fn = staticmethod(rouge_l)


class ExactMatch(_InstanceScoreMetric):
    """Tk-Instruct exact match (best over references, see ``exact_match``), mean x 100.

    Args:
        task_names: tasks to break the score down by (see ``_InstanceScoreMetric``).
        task_categories: task name -> its categories.
        dist_sync_on_step: torchmetrics option; sync at every ``forward`` call.
    """

    _score_fn = staticmethod(exact_match)
