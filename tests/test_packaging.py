"""Packaging: pyproject.toml's console scripts are the recipes' functions, nothing edits sys.path,
the versions are written once, and the benchmarks stay out of the installed library."""

from __future__ import annotations

import ast
import importlib
import inspect
import re
from pathlib import Path

import pytest

tomllib = pytest.importorskip('tomllib')  # Python 3.11+

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / 'pyproject.toml').read_text())
SOURCES = [p for folder in ('t5composer', 'recipes', 'bench', 'tests') for p in sorted((REPO / folder).rglob('*.py'))]


def _recipe_target(path: Path) -> str:
    """``module:function`` that ``recipes/<name>.py`` imports as its ``main``."""
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom):
            for alias in node.names:
                if alias.asname == 'main':
                    return f'{node.module}:{alias.name}'
    raise AssertionError(f'{path.name} imports no main')


def test_every_recipe_is_a_console_script_of_the_same_function():
    scripts = PYPROJECT['project']['scripts']
    recipes = sorted((REPO / 'recipes').glob('*.py'))
    assert len(recipes) == 7
    for recipe in recipes:
        target = _recipe_target(recipe)
        name = 't5composer-' + recipe.stem.replace('_', '-')
        assert scripts.get(name) == target, f'{name} in pyproject.toml [project.scripts] should be {target!r}'
    assert len(scripts) == len(recipes)


@pytest.mark.parametrize('target', sorted(PYPROJECT['project']['scripts'].values()))
def test_console_script_targets_run_without_arguments(target):
    """A console script calls its function with no arguments; each reads sys.argv itself then."""
    module, name = target.split(':')
    function = getattr(importlib.import_module(module), name)
    required = [p for p in inspect.signature(function).parameters.values()
                if p.default is inspect.Parameter.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    assert not required, f'{target} needs {required}'


def test_nothing_edits_sys_path():
    """The package is installed (pip install -e .) or the checkout is on PYTHONPATH; no script finds it itself."""
    edit = re.compile(r'sys\.path\.(insert|append|extend)|sys\.path\s*(\+=|=[^=])')
    found = [f'{p.relative_to(REPO)}:{n}' for p in SOURCES if p.name != Path(__file__).name
             for n, line in enumerate(p.read_text().splitlines(), 1) if edit.search(line)]
    assert not found


def test_versions_are_written_once_in_pyproject():
    requirements = [line.split('#')[0].strip() for line in (REPO / 'requirements.txt').read_text().splitlines()]
    assert [r for r in requirements if r] == ['-e .[test]']
    pinned = PYPROJECT['project']['dependencies'] + PYPROJECT['project']['optional-dependencies']['test']
    names = [re.split(r'[\[=<>]', spec)[0] for spec in pinned]
    assert len(names) == len(set(names)) and 'torch' in names and 'pytest' in names


def test_the_library_does_not_import_the_benchmarks():
    """bench/ (cases, baselines) is not installed: the library must not need it."""
    assert PYPROJECT['tool']['setuptools']['packages']['find']['include'] == ['t5composer*']
    assert not (REPO / 't5composer' / 'bench').exists()
    for path in (REPO / 't5composer').rglob('*.py'):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ''] if isinstance(node, ast.ImportFrom) and not node.level else [])
            assert not [n for n in names if n == 'bench' or n.startswith('bench.')], path
