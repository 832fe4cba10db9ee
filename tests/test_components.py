"""Algorithms, callbacks and loggers named in YAML: built with checked arguments."""

from __future__ import annotations

import pytest

from t5composer.components import build_components, register
from t5composer.config import ConfigError


def test_builds_named_components_with_arguments():
    from composer.algorithms import GradientClipping
    from composer.callbacks import SpeedMonitor

    from t5composer.callbacks.nanot5_log import NanoT5Log

    (clip,) = build_components('algorithms', {'gradient_clipping': {'clipping_type': 'norm', 'clipping_threshold': 1.0}})
    assert isinstance(clip, GradientClipping) and clip.clipping_threshold == 1.0
    speed, log = build_components('callbacks', {'speed_monitor': {'window_size': 7}, 'nanot5_log': None})
    assert isinstance(speed, SpeedMonitor) and isinstance(log, NanoT5Log) and log.interval == 100


def test_unknown_name_and_misspelt_argument_are_named():
    with pytest.raises(ConfigError) as info:
        build_components('callbacks', {'sped_monitor': {}, 'nanot5_log': {'intervall': 5}})
    message = str(info.value)
    assert "Unknown callback 'sped_monitor' in 'callbacks'. Did you mean 'speed_monitor'?" in message
    assert "Unknown key 'callbacks.nanot5_log.intervall'. Did you mean 'interval'?" in message


def test_bad_argument_value_is_reported_with_its_component():
    with pytest.raises(ConfigError, match=r"'callbacks.nanot5_log': nanot5_log.interval must be positive"):
        build_components('callbacks', {'nanot5_log': {'interval': 0}})


def test_missing_package_names_the_fix(monkeypatch):
    import sys

    from t5composer import components, registry

    monkeypatch.setitem(sys.modules, 'wandb', None)  # importing it fails as it does where it is not installed
    monkeypatch.setitem(components.LOGGERS, 'wandb', registry.LazyEntry('wandb:WandBLogger'))
    monkeypatch.setattr(registry, 'installed', lambda package: True)  # past the by-name check, to the import
    with pytest.raises(ConfigError, match=r"'loggers.wandb' needs a package that is not installed \(wandb\); pip install it"):
        build_components('loggers', {'wandb': {}})


@pytest.mark.parametrize('logger', ['wandb', 'mlflow'])
def test_missing_logger_package_is_named_by_preflight_before_any_import(logger, monkeypatch):
    from test_training import tiny

    from t5composer import components, registry
    from t5composer.config import config_from_dict
    from t5composer.run.preflight import preflight

    def must_not_import():
        raise AssertionError('the logger class was imported before the package check')

    monkeypatch.setattr(registry, 'installed', lambda package: package != logger)
    monkeypatch.setattr(dict.__getitem__(components.LOGGERS, logger), 'load', must_not_import)  # the entry, not yet imported
    with pytest.raises(ConfigError) as info:
        preflight(config_from_dict(tiny(loggers={logger: {}, 'tensorboard': {}})))
    assert str(info.value).count('needs the') == 1
    assert (f"'loggers.{logger}' needs the '{logger}' package, which is not installed: pip install {logger} "
            f"(or remove '{logger}' from 'loggers').") in str(info.value)


def test_logger_option_typo_is_named():
    with pytest.raises(ConfigError, match=r"Unknown key 'loggers.tensorboard.logdir'. Did you mean 'log_dir'\?"):
        build_components('loggers', {'tensorboard': {'logdir': 'tb'}})


def test_register_adds_a_component():
    from composer.core import Callback

    @register('callbacks', 'my_test_callback')
    class Mine(Callback):
        def __init__(self, *, flag: bool = False):
            self.flag = flag

    try:
        (mine,) = build_components('callbacks', {'my_test_callback': {'flag': True}})
        assert isinstance(mine, Mine) and mine.flag
    finally:
        from t5composer.components import CALLBACKS

        CALLBACKS.pop('my_test_callback')
