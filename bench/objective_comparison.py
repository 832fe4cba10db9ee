"""Span corruption against UL2's mixture of denoisers at equal FLOPs, on CPU, end to end.

For each seed: pre-train the demo model (``yamls/demo.yaml``: d_model 128, 2+2 layers, the builtin
corpus and tokenizer) with T5's span corruption for ``--pretrain-steps`` batches, then with the
``ul2`` preset for as many batches as give the same training FLOPs (the mixture's rows cost more:
:func:`expected_flops_per_row`); fine-tune both identically on the synthetic SNI tasks
(``yamls/demo_ft.yaml``; the UL2 model with ``data.mode_token: '[S2S]'``, the mode UL2 prompts
generation with), and read the fine-tuned RougeL per task from the final generation eval.

    python -m bench.objective_comparison --seeds 1 2 --out runs/objective_comparison

Writes ``results.json`` and ``results.md`` (RougeL per task and overall, mean and spread over the
seeds) under ``--out``; each run's own folder there holds its log, ``metrics.jsonl`` and (fine-tuning) its
predictions and their scores. Every
run is ``recipes/train.py`` as a user runs it, with command-line overrides only.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from t5composer.data.objectives import Objective
from t5composer.models import t5_flops_per_batch

REPO = Path(__file__).resolve().parents[1]

# What differs between the two arms; everything else is the demo recipes' own settings.
ARMS: dict[str, dict[str, list[str]]] = {
    'span_corruption': {'pretrain': [], 'finetune': []},
    'ul2': {'pretrain': ['data.objective.preset=ul2'], 'finetune': ["data.mode_token='[S2S]'"]},
}


def expected_flops_per_row(objective: Objective, raw_length: int, config: Any) -> float:
    """Training FLOPs (forward + backward matmuls) per raw row, averaged over the mixture's weights.

    Each denoiser's rows are computed at its fixed envelope (padding included, as they run).

    Args:
        objective: the pre-training objective.
        raw_length: tokens per converted row.
        config: the model's T5Config.
    """
    return sum(float(weight) * t5_flops_per_batch(config, batch_size=1, encoder_length=encoder_length, decoder_length=decoder_length)
               for weight, (encoder_length, decoder_length) in zip(objective.weights, objective.output_lengths(raw_length)))


def _train(overrides: list[str], log: Path) -> None:
    cmd = [sys.executable, str(REPO / 'recipes' / 'train.py'), *overrides]
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, 'w') as f:
        f.write(' '.join(cmd) + '\n')
        f.flush()
        code = subprocess.run(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT,
                              env={**os.environ, 'PYTHONPATH': str(REPO)}).returncode
    if code != 0:
        raise SystemExit(f'run failed (exit {code}); see {log}')


def _pretrain_config(folder: Path) -> Any:
    """The model config of a finished pre-training run (from its checkpoint)."""
    from t5composer.checkpoints import load_start_checkpoint
    from t5composer.models.checkpoint_metadata import metadata_from_checkpoint

    config, _ = metadata_from_checkpoint(load_start_checkpoint(str(folder / 'latest-rank0.pt')))
    return config


def _final_scores(folder: Path, metric: str) -> dict[str, float]:
    """The last generation eval's overall and per-task ``metric`` of a fine-tuning run (its predictions' scores file)."""
    files = sorted((folder / 'predictions').glob('*-ba*-scores.json'), key=lambda p: int(p.stem.rsplit('-ba', 1)[1].split('-')[0]))
    if not files:
        raise SystemExit(f'no predictions/*-scores.json in {folder}: did the fine-tuning run evaluate?')
    scores = json.loads(files[-1].read_text())
    return {'overall': scores[metric], **scores[f'{metric}_per_task']}


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Pre-train and fine-tune both arms for every seed; return the scores."""
    from t5composer.config import load_config

    out = Path(args.out).resolve()
    demo = load_config(str(REPO / 'yamls' / 'demo.yaml'))
    raw_length = demo.data.span_corruption.expanded_length
    results: dict[str, Any] = {'pretrain_steps': {}, 'scores': {}, 'seeds': args.seeds}
    for seed in args.seeds:
        steps = {}
        for arm in args.arms:
            pt = out / f'pt_{arm}_s{seed}'
            if arm == 'span_corruption':
                steps[arm] = args.pretrain_steps
            else:
                # Equal FLOPs: the span-corruption arm of this seed has run (it comes first) and its
                # checkpoint holds the model config (the builtin tokenizer sets the vocabulary).
                config = _pretrain_config(out / f'pt_span_corruption_s{seed}')
                ratio = (expected_flops_per_row(demo.data.pretraining_objective, raw_length, config)
                         / expected_flops_per_row(Objective.preset(arm), raw_length, config))
                steps[arm] = max(1, round(args.pretrain_steps * ratio))
            common = [f'seed={seed}', 'autoresume=false', 'save_overwrite=true', 'progress_bar=false']
            _train([str(REPO / 'yamls' / 'demo.yaml'), f'run_name=pt_{arm}_s{seed}', f'save_folder={pt}',
                    f'max_duration={steps[arm]}ba', f'save_interval={steps[arm]}ba', 'data.eval_split=null',
                    f'scheduler.t_warmup={max(1, steps[arm] // 10)}ba',  # the demo's 40 of 400
                    *common, *ARMS[arm]['pretrain']], pt / 'train.log')
            ft = out / f'ft_{arm}_s{seed}'
            _train([str(REPO / 'yamls' / 'demo_ft.yaml'), f'run_name=ft_{arm}_s{seed}', f'save_folder={ft}',
                    f'load_path={pt / "latest-rank0.pt"}', f'max_duration={args.finetune_steps}ba',
                    f'save_interval={args.finetune_steps}ba', f'eval_interval={args.finetune_steps}ba', 'eval_first=false',
                    '~callbacks.hf_export', *common, *ARMS[arm]['finetune']], ft / 'train.log')
            results['scores'].setdefault(arm, {})[seed] = _final_scores(ft, 'RougeL')
        results['pretrain_steps'][seed] = steps
    return results


def markdown(results: dict[str, Any]) -> str:
    """RougeL per task (and overall) per arm: mean over seeds, the spread (min-max), each seed."""
    arms = list(results['scores'])
    tasks = sorted({t for arm in arms for s in results['scores'][arm].values() for t in s if t != 'overall'}) + ['overall']
    lines = ['| task | ' + ' | '.join(f'{arm}: mean (min-max)' for arm in arms) + ' |',
             '|---|' + '---|' * len(arms)]
    for task in tasks:
        cells = []
        for arm in arms:
            values = [s[task] for s in results['scores'][arm].values() if task in s]
            cells.append(f'{statistics.mean(values):.1f} ({min(values):.1f}-{max(values):.1f})' if values else '-')
        lines.append(f'| {task} | ' + ' | '.join(cells) + ' |')
    steps = '; '.join(f'seed {seed}: ' + ', '.join(f'{arm} {n} batches' for arm, n in arms_steps.items())
                      for seed, arms_steps in results['pretrain_steps'].items())
    return '\n'.join(lines) + f'\n\nPre-training (equal FLOPs): {steps}.\n'


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog='python -m bench.objective_comparison', description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--seeds', type=int, nargs='+', default=[1, 2])
    parser.add_argument('--out', default='runs/objective_comparison')
    parser.add_argument('--arms', nargs='+', default=list(ARMS), choices=list(ARMS))
    parser.add_argument('--pretrain-steps', type=int, default=400, help="span corruption's batches (the demo's 400)")
    parser.add_argument('--finetune-steps', type=int, default=300, help="fine-tuning batches (demo_ft's 300)")
    args = parser.parse_args(argv)
    if args.arms[0] != 'span_corruption':
        parser.error('--arms must start with span_corruption (the others are matched to its FLOPs)')
    results = run(args)
    out = Path(args.out)
    (out / 'results.json').write_text(json.dumps(results, indent=1, default=str) + '\n')
    table = markdown(results)
    (out / 'results.md').write_text(table)
    print(table)
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
