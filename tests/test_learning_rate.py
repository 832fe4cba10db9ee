"""One rule for a learning rate (finite, >= 0), the same in the config checks and the optimizer builder."""

from __future__ import annotations

import math

import pytest
from torch import nn

from t5composer.config import ConfigError, config_from_dict
from t5composer.learning_rate import check_learning_rate, learning_rate_problem
from t5composer.optim import build_optimizer

BAD = [(-1.0, ValueError, 'must be >= 0, got -1.0'), (math.nan, ValueError, 'must be a finite number, got nan'),
       (math.inf, ValueError, 'must be a finite number, got inf'), ('0.01', TypeError, "must be a number, got '0.01'"),
       (True, TypeError, 'must be a number, got True')]


@pytest.mark.parametrize(('lr', 'error', 'message'), BAD)
def test_bad_learning_rates(lr, error, message):
    assert learning_rate_problem(lr) == message
    with pytest.raises(error, match=f'^lr {message}$'):
        check_learning_rate(lr)
    with pytest.raises(error, match=message):
        build_optimizer(nn.Linear(2, 2), name='adamw', lr=lr)


@pytest.mark.parametrize('lr', [0, 0.0, 1e-3, 2])
def test_good_learning_rates(lr):
    assert learning_rate_problem(lr) is None
    check_learning_rate(lr)
    build_optimizer(nn.Linear(2, 2), name='adamw', lr=lr)


def _config(lr):
    return {'max_duration': '10ba', 'global_train_batch_size': 8, 'data': {'local': 'data/c4'},
            'optimizer': {'name': 'adamw', 'lr': lr}}


@pytest.mark.parametrize(('lr', 'message'), [(-1.0, 'must be >= 0, got -1.0'), (math.nan, 'must be a finite number, got nan'),
                                             (math.inf, 'must be a finite number, got inf')])
def test_the_config_uses_the_same_rule(lr, message):
    with pytest.raises(ConfigError) as e:
        config_from_dict(_config(lr))
    assert [p for p in e.value.problems if 'optimizer.lr' in p] == [f"'optimizer.lr' {message}; set e.g. optimizer.lr=0.01."]
    assert config_from_dict(_config(0.0)).optimizer.lr == 0.0
