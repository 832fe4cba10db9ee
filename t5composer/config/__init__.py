"""Run configuration: schema, loading and validation."""

from t5composer.config.loading import cache_dir, config_from_dict, load_config, redact
from t5composer.config.schema import DataConfig, ModelConfig, OptimizerConfig, SchedulerConfig, TokenizerConfig, TrainConfig
from t5composer.config.validation import ConfigError

__all__ = [
    'ConfigError', 'DataConfig', 'ModelConfig', 'OptimizerConfig', 'SchedulerConfig', 'TokenizerConfig', 'TrainConfig',
    'cache_dir', 'config_from_dict', 'load_config', 'redact',
]
