"""Tk-Instruct RougeL / exact match: per-instance functions, Metric aggregation and 2-rank sync."""

from __future__ import annotations

import json
import os
import socket
import time
import warnings
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from rouge_score import rouge_scorer

from t5composer.models import text_metrics
from t5composer.models.text_metrics import ExactMatch, RougeL, exact_match, normalize_answer, rouge_l


# ----------------------------------------------------------------------------- rouge_l


def test_rouge_l_equals_rouge_score_max_over_references():
    scorer = rouge_scorer.RougeScorer(['rougeL'], use_stemmer=True)
    cases = [
        ('the quick brown fox jumps', ['a quick brown dog jumped', 'the fox jumps high', 'nothing here']),
        ('Paris is the capital of France.', ['France', 'The capital of France is Paris', 'paris']),
        ('yes', ['no', 'Yes', 'maybe']),
        ('running dogs were barking loudly', ['the dog runs', 'dogs bark loud']),
    ]
    for prediction, references in cases:
        expected = max(scorer.score(ref, prediction)['rougeL'].fmeasure for ref in references)
        assert rouge_l(prediction, references) == pytest.approx(expected, abs=1e-12)
        assert 0.0 <= rouge_l(prediction, references) <= 1.0
    # The max, not the first or the mean: only the second reference matches exactly.
    assert rouge_l('the fox jumps high', ['zzz', 'the fox jumps high', 'fox']) == 1.0


def test_rouge_l_hand_value():
    # LCS 2 of 2 predicted / 4 reference tokens: P=1, R=0.5, F=2/3.
    assert rouge_l('the cat', ['the cat sat down']) == pytest.approx(2 / 3)


def test_rouge_l_stemming():
    assert rouge_l('running', ['run']) == 1.0
    # Proof that the match comes from the stemmer: without it the tokens differ.
    plain = rouge_scorer.RougeScorer(['rougeL'], use_stemmer=False)
    assert plain.score('run', 'running')['rougeL'].fmeasure == 0.0


def test_rouge_l_case_and_punctuation_insensitive():
    assert rouge_l('Hello, WORLD!!', ['hello world']) == 1.0
    assert rouge_l('state-of-the-art', ['State of the art']) == 1.0


def test_rouge_l_empty_and_bad_inputs():
    assert rouge_l('', ['some answer']) == 0.0
    assert rouge_l('some answer', ['']) == 0.0
    assert rouge_l('', ['']) == 0.0
    assert rouge_l('?!', ['...']) == 0.0  # token-free after the tokenizer
    with pytest.raises(ValueError, match='empty'):
        rouge_l('x', [])
    with pytest.raises(TypeError):
        rouge_l('x', 'x')  # a bare str would be scored character by character


def test_rouge_scorer_is_reused():
    assert text_metrics._rouge_scorer() is text_metrics._rouge_scorer()


# ----------------------------------------------------------------------------- exact_match


@pytest.mark.parametrize(
    ('prediction', 'references', 'expected'),
    [
        ('The Answer.', ['the answer'], 1.0),
        ('  multiple \t spaces\n', ['multiple spaces'], 1.0),
        ("don't", ['dont'], 1.0),  # punctuation is deleted ...
        ("don't", ['don t'], 0.0),  # ... not replaced by a space
        ('a cat', ['cat'], 0.0),  # articles are kept (Tk-Instruct, not SQuAD)
        ('yes', ['no', 'Yes!'], 1.0),  # best over references
        ('yes', ['no', 'maybe'], 0.0),
        ('', [''], 1.0),
        ('', ['x'], 0.0),
        ('café', ['CAFÉ'], 1.0),
    ],
)
def test_exact_match(prediction, references, expected):
    assert exact_match(prediction, references) == expected


def test_normalize_answer():
    assert normalize_answer('  Hello,   World!  ') == 'hello world'


# ----------------------------------------------------------------------------- Metric aggregation

TASKS = ['t1', 't2', 't3', 't4']
CATEGORIES = {'t1': ['A'], 't2': ['A'], 't3': ['B']}  # t4: no category, and no examples below
# (prediction, references, task); exact-match outcomes: t1 = 1,1,0  t2 = 0  t3 = 1
EM_DATA = [
    ('Yes.', ['yes'], 't1'),
    ('no', ['maybe', 'No'], 't1'),
    ('blue', ['red'], 't1'),
    ('cat', ['dog'], 't2'),
    ('Paris', ['paris', 'Paris, France'], 't3'),
]


def _update(metric, data):
    preds, refs, tasks = zip(*data) if data else ((), (), ())
    metric.update(list(preds), [list(r) for r in refs], list(tasks))


def test_exact_match_metric_overall_task_category():
    metric = ExactMatch(task_names=TASKS, task_categories=CATEGORIES)
    _update(metric, EM_DATA[:2])  # two batches: the sums must accumulate
    _update(metric, EM_DATA[2:])
    assert metric.compute().item() == pytest.approx(60.0)  # 3 / 5
    assert metric.per_task() == pytest.approx({'t1': 200 / 3, 't2': 0.0, 't3': 100.0})  # t4 left out
    # Category A pools its 4 instances (2 correct) = 50, not the mean of task means (33.3).
    assert metric.per_category() == pytest.approx({'A': 50.0, 'B': 100.0})


def test_rouge_metric_hand_values_and_multi_category():
    metric = RougeL(task_names=['x', 'y'], task_categories={'x': ['C', 'D'], 'y': ['D']})
    metric.update(
        ['the cat sat', 'the cat', 'a b'],
        [['the cat sat'], ['the cat sat down'], ['c d']],
        ['x', 'x', 'y'],
    )
    # per instance: 1, 2/3, 0
    assert metric.compute().item() == pytest.approx(100 * (1 + 2 / 3) / 3, rel=1e-6)
    assert metric.per_task() == pytest.approx({'x': 100 * (1 + 2 / 3) / 2, 'y': 0.0})
    # A task in two categories counts toward both.
    assert metric.per_category() == pytest.approx({'C': 100 * (1 + 2 / 3) / 2, 'D': 100 * (1 + 2 / 3) / 3})


def test_metric_without_tasks_and_empty():
    metric = RougeL()
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # torchmetrics warns about compute() before update()
        empty = metric.compute()
    assert empty.ndim == 0 and empty.item() == 0.0 and not torch.isnan(empty)
    metric.update(['hello world'], [['Hello, world!']])  # tasks=None: overall only
    assert metric.compute().item() == pytest.approx(100.0)
    assert metric.per_task() == {} and metric.per_category() == {}


def test_metric_reset_and_update_after_compute():
    metric = ExactMatch(task_names=TASKS, task_categories=CATEGORIES)
    _update(metric, EM_DATA)
    assert metric.compute().item() == pytest.approx(60.0)
    _update(metric, [('x', ['x'], 't4')])  # invalidates the cached value and breakdown
    assert metric.compute().item() == pytest.approx(400 / 6)
    assert metric.per_task()['t4'] == 100.0
    metric.reset()
    assert metric.count.item() == 0 and metric.task_count.sum().item() == 0
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # compute() before update() after the reset
        assert metric.per_task() == {}
    _update(metric, EM_DATA[3:4])
    assert metric.compute().item() == 0.0
    assert metric.per_task() == {'t2': 0.0}
    assert metric.per_category() == {'A': 0.0}


def test_metric_errors():
    metric = RougeL(task_names=['t1'])
    with pytest.raises(ValueError, match='nope'):
        metric.update(['a'], [['a']], ['nope'])
    with pytest.raises(ValueError, match='predictions'):
        metric.update(['a', 'b'], [['a']], ['t1', 't1'])
    with pytest.raises(ValueError, match='task names'):
        metric.update(['a'], [['a']], ['t1', 't1'])
    with pytest.raises(ValueError, match='ghost'):
        RougeL(task_names=['t1'], task_categories={'ghost': ['A']})
    with pytest.raises(ValueError, match='duplicate'):
        RougeL(task_names=['t1', 't1'])
    assert metric.count.item() == 0  # nothing was half-applied


# ----------------------------------------------------------------------------- 2-rank sync (gloo)

ROUGE_DATA = [
    ('the quick brown fox', ['a quick brown fox', 'fox'], 't1'),
    ('running fast', ['he runs fast'], 't1'),
    ('Paris', ['paris'], 't2'),
    ('completely wrong', ['right answer'], 't3'),
    ('the cat sat on the mat', ['a cat sat on a mat', 'the mat'], 't3'),
    ('', ['empty prediction'], 't2'),
    ('dogs bark', ['the dog barks'], 't1'),
    ('yes', ['Yes.'], 't3'),
]
# Uneven shards, and t2 appears only on rank 1: the sync must still line the task states up.
SHARDS = [
    [ROUGE_DATA[0], ROUGE_DATA[3], ROUGE_DATA[4]],
    [ROUGE_DATA[1], ROUGE_DATA[2], ROUGE_DATA[5], ROUGE_DATA[6], ROUGE_DATA[7]],
]


def _results(data):
    rouge = RougeL(task_names=TASKS, task_categories=CATEGORIES)
    em = ExactMatch()  # no tasks: zero-length per-task states must sync too
    _update(rouge, data)
    em.update([d[0] for d in data], [d[1] for d in data])
    out = {
        'rouge': rouge.compute().item(),
        'per_task': rouge.per_task(),
        'per_category': rouge.per_category(),
        'em': em.compute().item(),
        'local_count_after_compute': rouge.count.item(),
    }
    return out


def _dist_worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    # The timeout turns a rank stuck in a collective (its peer failed) into an error, not a hang.
    dist.init_process_group(
        'gloo',
        init_method=f'tcp://127.0.0.1:{port}',
        rank=rank,
        world_size=world_size,
        timeout=timedelta(seconds=120),
    )
    out = _results(SHARDS[rank])
    with open(os.path.join(out_dir, f'rank{rank}.json'), 'w') as f:
        json.dump(out, f)
    dist.barrier()  # both ranks are done with every collective and have written their results
    # No destroy_process_group / normal exit: in torch 2.7 ~ProcessGroupGloo joins its worker
    # threads while holding the GIL, and a worker freeing a finished collective's tensors needs
    # the GIL, so teardown deadlocks now and then (seen here). Exit without running destructors.
    os._exit(0)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def test_two_rank_sync_equals_single_process_union(tmp_path, monkeypatch):
    monkeypatch.setenv('OMP_NUM_THREADS', '1')  # inherited by the spawned ranks
    ctx = mp.spawn(_dist_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=False)
    deadline = time.monotonic() + 150
    # join() raises if a rank failed; the deadline keeps a stuck rank from hanging the test run.
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for proc in ctx.processes:
                proc.kill()
            pytest.fail('2-rank sync test timed out')
    union = _results(SHARDS[0] + SHARDS[1])
    assert union['per_task'].keys() == {'t1', 't2', 't3'}
    for rank in range(2):
        got = json.loads((tmp_path / f'rank{rank}.json').read_text())
        assert got['rouge'] == pytest.approx(union['rouge'], rel=1e-6)
        assert got['em'] == pytest.approx(union['em'], rel=1e-6)
        assert got['per_task'] == pytest.approx(union['per_task'], rel=1e-9)
        assert got['per_category'] == pytest.approx(union['per_category'], rel=1e-9)
        # compute() restored the local states afterwards, so accumulation can go on.
        assert got['local_count_after_compute'] == len(SHARDS[rank])
