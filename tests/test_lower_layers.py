"""data/ and models/ import nothing from the layers above them (config, callbacks, the run's glue).

The exception is data's own wiring, the three modules that turn a run's config into its data
plan, checks and loaders (``data/plan.py``, ``data/preflight.py``, ``data/loaders.py``): they
read the config's schema, so they sit above ``config/`` (which uses the leaves of ``data/``, such as
the span-corruption spec) and below the run pipeline (``run/``).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from test_import_graph import _project_imports

PACKAGE = Path(__file__).resolve().parents[1] / 't5composer'
ABOVE = ('t5composer.config', 't5composer.callbacks', 't5composer.run', 't5composer.dry_run', 't5composer.cli',
         't5composer.components', 't5composer.trainer')
DATA_WIRING = ('plan.py', 'preflight.py', 'loaders.py')


@pytest.mark.parametrize('path', sorted((PACKAGE / 'data').glob('*.py')) + sorted((PACKAGE / 'models').glob('*.py')),
                         ids=lambda p: f'{p.parent.name}/{p.name}')
def test_no_imports_from_above(path):
    above = tuple(a for a in ABOVE if not (path.parent.name == 'data' and path.name in DATA_WIRING and a == 't5composer.config'))
    up = [name for _, name, _ in _project_imports(path) if any(name == a or name.startswith(a + '.') for a in above)]
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
