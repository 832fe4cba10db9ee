"""Logger destinations of t5composer (Composer's own are registered in t5composer.components)."""

from t5composer.loggers.metrics_jsonl import MetricsJSONL

__all__ = ['MetricsJSONL']
