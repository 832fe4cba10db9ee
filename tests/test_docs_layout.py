"""The layout map in docs/design.md is the one tools/layout_map.py generates from the tree.

A module added, moved or removed, or a docstring's first paragraph changed, makes the map stale:
the test says so with the command that regenerates it.
"""

from __future__ import annotations

import difflib
import importlib.util
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _layout_tool():
    spec = importlib.util.spec_from_file_location('layout_map', REPO / 'tools' / 'layout_map.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


layout = _layout_tool()


def test_design_md_map_matches_the_tree():
    written = layout.map_in(layout.DESIGN.read_text(encoding='utf-8'))
    generated = layout.layout_map()
    diff = '\n'.join(difflib.unified_diff(written.splitlines(), generated.splitlines(), 'docs/design.md', 'the tree', lineterm=''))
    assert written == generated, f'docs/design.md lists another layout than the tree holds; regenerate it with: {layout.COMMAND}\n{diff}'


def test_map_lists_every_module_of_the_library():
    generated = layout.layout_map()
    names = {line.split()[0] for line in generated.splitlines()[1:-1]}
    for path in (REPO / 't5composer').rglob('*.py'):
        if '__pycache__' not in path.parts:
            assert (path.parent.name + '/' if path.name == '__init__.py' else path.name) in names, path


def test_purpose_is_the_docstrings_first_paragraph(tmp_path):
    pkg = tmp_path / 'lib'
    (pkg / 'sub').mkdir(parents=True)
    (pkg / '__init__.py').write_text('"""The library."""\n')
    (pkg / 'sub' / '__init__.py').write_text('"""A sub-package\nover two lines.\n\nDetails."""\n')
    (pkg / 'sub' / 'mod.py').write_text('"""Uses :class:`~lib.sub.Thing` and ``code``."""\n')
    (pkg / 'long.py').write_text('"""' + 'A first sentence that runs on. ' * 2 + 'And a second one that makes it long, ' * 3 + '."""\n')
    (tmp_path / 'scripts').mkdir()
    (tmp_path / 'scripts' / 'go.sh').write_text('#!/usr/bin/env bash\n# Run it.\n#\n# Usage: ...\nset -e\n')
    generated = layout.layout_map(tmp_path, ('lib', 'scripts', 'absent'))
    assert generated.splitlines() == [
        '```',
        'lib/        The library.',
        '  long.py   A first sentence that runs on.',
        '  sub/      A sub-package over two lines.',
        '    mod.py  Uses Thing and code.',
        'scripts/',
        '  go.sh     Run it.',
        '```',
    ]


def test_a_module_without_docstring_is_named_with_the_fix(tmp_path):
    (tmp_path / 'lib').mkdir()
    (tmp_path / 'lib' / '__init__.py').write_text('"""The library."""\n')
    (tmp_path / 'lib' / 'bare.py').write_text('x = 1\n')
    with pytest.raises(layout.LayoutError, match=r"bare\.py has no docstring.*python tools/layout_map\.py --write"):
        layout.layout_map(tmp_path, ('lib',))


def test_write_replaces_only_the_block_between_the_markers(tmp_path):
    page = f'# Title\n\nBefore.\n\n{layout.BEGIN}\n```\nold\n```\n{layout.END}\n\nAfter.\n'
    new = layout.with_map(page, '```\nnew\n```')
    assert new == page.replace('old', 'new')
    assert layout.map_in(new) == '```\nnew\n```'
    with pytest.raises(layout.LayoutError, match='markers'):
        layout.map_in('# no map here\n', tmp_path / 'page.md')
