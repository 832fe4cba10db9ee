"""data/ and models/ import nothing from the layers above them (config, callbacks, the run's glue)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / 't5composer'
ABOVE = ('t5composer.config', 't5composer.callbacks', 't5composer.training', 't5composer.dry_run', 't5composer.cli',
         't5composer.components', 't5composer.trainer')


def _imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text(encoding='utf-8'))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
        elif isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
    return names


@pytest.mark.parametrize('path', sorted((PACKAGE / 'data').glob('*.py')) + sorted((PACKAGE / 'models').glob('*.py')),
                         ids=lambda p: f'{p.parent.name}/{p.name}')
def test_no_imports_from_above(path):
    up = [name for name in _imports(path) if name.startswith(ABOVE)]
    assert not up, f'{path.relative_to(PACKAGE.parent)} imports {up}; move what it needs down (errors.py, models/, data/)'


def test_config_error_has_one_class():
    from t5composer.config import ConfigError as from_config
    from t5composer.config.validation import ConfigError as from_validation
    from t5composer.errors import ConfigError

    assert from_config is from_validation is ConfigError
    assert str(ConfigError(['a', 'b'])) == 'Invalid config (2 problem(s)):\n  - a\n  - b'


def test_checkpoint_metadata_names_have_one_home():
    import t5composer.callbacks.model_metadata as callback
    import t5composer.models.checkpoint_metadata as models

    for name in ('METADATA_KEY', 'TOKENIZER_FILENAMES', 'MetadataMissingError', 'metadata_from_checkpoint', 'read_tokenizer_files'):
        assert getattr(callback, name) is getattr(models, name)
    assert models.METADATA_KEY == callback.ModelMetadata.__qualname__  # where Composer stores the callback's state
