"""Write generation-eval predictions and per-task / per-category scores after every evaluation.

For each evaluation with generated predictions (the SNI eval), rank 0 writes
``{folder}/predictions/{label}-ba{batch}.jsonl`` (one object per instance: task, id, source,
prediction, references, rougeL) and ``{label}-ba{batch}-scores.json`` (overall, per task and per
category RougeL and exact match), and logs the per-task / per-category scores.
"""

from __future__ import annotations

import json
import os
from typing import Any, Optional

from composer.core import Callback, State
from composer.loggers import Logger
from composer.utils import dist

__all__ = ['PredictionWriter']


class PredictionWriter(Callback):
    """Collect predictions of generation evals on every rank; rank 0 writes them.

    Args:
        folder: where ``predictions/`` goes (usually the run's save_folder; ``{run_name}`` is
            filled in). None: scores are logged but no file is written.
    """

    def __init__(self, *, folder: Optional[str]):
        self.folder = folder
        self._rows: list[dict[str, Any]] = []
        self.last_written: Optional[str] = None

    def eval_start(self, state: State, logger: Logger) -> None:
        self._rows = []

    def eval_after_forward(self, state: State, logger: Logger) -> None:
        # Per microbatch: state.batch and state.outputs belong together only here.
        outputs = state.outputs
        if not isinstance(outputs, dict) or 'predictions' not in outputs:
            return
        from t5composer.models.text_metrics import rouge_l

        batch = state.batch
        for i, prediction in enumerate(outputs['predictions']):
            references = list(batch['references'][i])
            self._rows.append({
                'task': batch['task'][i],
                'id': batch['id'][i],
                'source': batch['source'][i],
                'prediction': prediction,
                'references': references,
                'rougeL': round(100.0 * rouge_l(prediction, references), 4),
            })

    def eval_end(self, state: State, logger: Logger) -> None:
        gathered = dist.all_gather_object(self._rows)
        self._rows = []
        rows = sorted((r for part in gathered for r in part), key=lambda r: (r['task'], str(r['id'])))
        if not rows:
            return
        label = state.dataloader_label or 'eval'
        metrics = state.eval_metrics.get(label, {})
        scores: dict[str, Any] = {'instances': len(rows)}
        for name in ('RougeL', 'ExactMatch'):
            metric = metrics.get(name)
            if metric is None:
                continue
            scores[name] = float(metric.compute())
            scores[f'{name}_per_task'] = metric.per_task()
            scores[f'{name}_per_category'] = metric.per_category()
            logger.log_metrics({f'metrics/{label}/{name}/task/{k}': v for k, v in scores[f'{name}_per_task'].items()})
            logger.log_metrics({f'metrics/{label}/{name}/category/{k}': v for k, v in scores[f'{name}_per_category'].items()})
        if self.folder is None or dist.get_global_rank() != 0:
            return
        out_dir = os.path.join(self.folder.format(run_name=state.run_name), 'predictions')
        os.makedirs(out_dir, exist_ok=True)
        stem = os.path.join(out_dir, f'{label}-ba{int(state.timestamp.batch)}')
        with open(stem + '.jsonl', 'w', encoding='utf-8') as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + '\n')
        with open(stem + '-scores.json', 'w', encoding='utf-8') as f:
            json.dump(scores, f, indent=2, ensure_ascii=False)
        self.last_written = stem + '.jsonl'
