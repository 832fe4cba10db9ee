"""One duration parser for every key a recipe sets: units required, whole counts, positive."""

from __future__ import annotations

import pytest

from t5composer.config import ConfigError, load_config
from t5composer.durations import Duration, DurationError, batches_of, parse_duration
from test_training import tiny

ALL = ('ba', 'ep', 'sp', 'tok', 'dur')


@pytest.mark.parametrize(
    ('value', 'expected'),
    [('65536ba', Duration(65536, 'ba')), (' 2ep ', Duration(2, 'ep')), ('1e3ba', Duration(1000, 'ba')),
     ('100tok', Duration(100, 'tok')), ('0.1dur', Duration(0.1, 'dur')), ('1dur', Duration(1.0, 'dur')),
     ('12BA', Duration(12, 'ba'))],
)
def test_valid_durations(value, expected):
    assert parse_duration(value, key='k', units=ALL) == expected


@pytest.mark.parametrize(
    ('value', 'message'),
    [
        (20, "'k' is 20, a number without a unit"),
        ('20', "'k' is '20', a number without a unit"),
        (1.5, 'e.g. 2ba (batches) or 2ep (epochs)'),
        ('1.5ba', "'k' is '1.5ba': batches are counted whole; write a whole number such as 1ba or 2ba"),
        ('0.5ep', 'such as 1ep'),
        ('0ba', "'k' must be positive, got '0ba'"),
        ('-3ba', "'k' must be positive, got '-3ba'"),
        ('2dur', 'at most 1dur'),
        ('10 batches', "'k' must be a duration like '1000ba'"),
        ('soon', "'k' must be a duration like '1000ba'"),
        (True, "'k' must be a duration like"),
        (None, "'k' must be a duration like"),
    ],
)
def test_refused_durations_say_how_to_write_them(value, message):
    with pytest.raises(DurationError) as info:
        parse_duration(value, key='k', units=ALL)
    assert message in str(info.value)


def test_units_and_zero_follow_the_key():
    with pytest.raises(DurationError, match=r"must be in one of the units ba \(batches\), ep \(epochs\); got '100tok'"):
        parse_duration('100tok', key='k', units=('ba', 'ep'))
    assert parse_duration('0ba', key='k', units=('ba',), allow_zero=True) == Duration(0, 'ba')
    assert batches_of('4000ba') == 4000 and batches_of('2ep') is None and batches_of(20) is None


@pytest.mark.parametrize(
    ('override', 'message'),
    [
        # The case: a bare 20 meant 20 epochs to Composer and 20 batches to the warmup check.
        ('max_duration=20', "'max_duration' is 20, a number without a unit, which Composer and the schedules would read "
                            'differently (epochs or steps); write it with its unit, e.g. 20ba (batches) or 20ep (epochs)'),
        ('eval_interval=5', "'eval_interval' is 5, a number without a unit"),
        ('save_interval=5', "'save_interval' is 5, a number without a unit"),
        ('console_log_interval=5', "'console_log_interval' is 5, a number without a unit"),
        ('scheduler.t_warmup=3', "'scheduler.t_warmup' is 3, a number without a unit"),
        ('scheduler.t_max=30', "'scheduler.t_max' is 30, a number without a unit"),
        ('max_duration=2.5ba', "'max_duration' is '2.5ba': batches are counted whole"),
        ('max_duration=0ba', "'max_duration' must be positive, got '0ba'"),
        ('eval_interval=0ep', "'eval_interval' must be positive, got '0ep'"),
        ('scheduler.t_warmup=-2ba', "'scheduler.t_warmup' must be zero or more, got '-2ba'"),
        ('scheduler.t_warmup=1dur', "must be shorter than the run (below 1dur)"),
        ('seed=-1', "'seed' must be between 0 and 4294967295 (2**32 - 1), got -1; e.g. seed=2137."),
        ('seed=4294967296', "'seed' must be between 0 and 4294967295"),
    ],
)
def test_config_durations_and_seeds(override, message):
    with pytest.raises(ConfigError) as info:
        load_config(None, [override], base=tiny())
    assert message in str(info.value)


def test_every_duration_problem_is_listed_at_once():
    with pytest.raises(ConfigError) as info:
        load_config(None, ['max_duration=20', 'eval_interval=1.5ba', 'save_interval=0ba'], base=tiny())
    assert len(info.value.problems) == 3


def test_zero_warmup_and_fractions_of_the_run_are_valid():
    cfg = load_config(None, ['scheduler.t_warmup=0ba', 'scheduler.t_max=0.5dur', 'data.shuffle_seed=0'], base=tiny())
    assert cfg.scheduler.kwargs == {'t_warmup': '0ba', 't_max': '0.5dur', 'final_lr': 1e-4}


def test_the_schedules_use_the_same_parser():
    from t5composer.optim.schedulers import NanoT5CosineScheduler

    with pytest.raises(DurationError, match="'t_warmup' is '1.5ba': batches are counted whole"):
        NanoT5CosineScheduler(t_warmup='1.5ba', base_lr=0.01)
