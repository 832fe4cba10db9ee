"""The layering of t5composer, read from the imports themselves (``ast``, nothing is imported).

- No module imports a private (underscore) name from another project module: what a module
  offers to others is public and documented, so the real dependencies show in the names.
- The bottom layer (errors, durations, redaction, atomic_files, learning_rate) imports nothing from the project,
  so every other module may use it without creating a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / 't5composer'
BOTTOM = ('errors', 'durations', 'redaction', 'atomic_files', 'learning_rate')


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix('').parts)
    return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


def _project_imports(path: Path, *, module_level: bool = False) -> list[tuple[int, str, list[str]]]:
    """``(line, module, names)`` of each import of a project module in ``path`` (names: the
    imported names of a ``from`` import, empty for a plain ``import``), function-level ones included
    unless ``module_level`` (then only what runs when the module is imported)."""
    tree = ast.parse(path.read_text(encoding='utf-8'), filename=str(path))
    package = _module_name(path) if path.name == '__init__.py' else _module_name(path).rpartition('.')[0]
    found = []
    for node in (_import_time_statements(tree) if module_level else ast.walk(tree)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name, []) for a in node.names if a.name.split('.')[0] == 't5composer']
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ''
            if node.level:  # relative: resolve against this module's package
                base = package.split('.')[:len(package.split('.')) - node.level + 1]
                module = '.'.join(base + ([module] if module else []))
            if module.split('.')[0] == 't5composer':
                found.append((node.lineno, module, [a.name for a in node.names]))
    return found


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob('*.py'))


def test_the_walk_sees_the_package():
    names = {_module_name(p) for p in _modules()}
    assert {'t5composer.errors', 't5composer.run.build', 't5composer.config.loading'} <= names
    assert any(module == 't5composer.errors' for p in _modules() for _, module, _ in _project_imports(p))


def test_no_private_name_is_imported_across_modules():
    offenders = []
    for path in _modules():
        here = _module_name(path)
        for line, module, names in _project_imports(path):
            if module == here:
                continue
            private = [n for n in names if n.startswith('_') and not n.startswith('__')]
            private += [part for part in module.split('.') if part.startswith('_') and not part.startswith('__')]
            if private:
                offenders.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {', '.join(private)} from {module}")
    assert not offenders, 'private names imported across modules (make them public, or move the code):\n' + '\n'.join(offenders)


def test_the_bottom_layer_imports_nothing_of_the_project():
    offenders = []
    for name in BOTTOM:
        path = PACKAGE / f'{name}.py'
        assert path.is_file(), path
        offenders += [f'{path.name}:{line} imports {module}' for line, module, _ in _project_imports(path)]
    assert not offenders, 'the bottom layer must import nothing from t5composer:\n' + '\n'.join(offenders)


def _import_time_statements(tree: ast.Module) -> list[ast.stmt]:
    """The module's top-level statements, with those of a top-level ``if`` / ``try`` (run on import too)."""
    nodes = list(tree.body)
    for node in tree.body:
        if isinstance(node, (ast.If, ast.Try)):
            nodes += node.body + node.orelse + [n for h in getattr(node, 'handlers', []) for n in h.body]
    return nodes


def _module_level_imports(path: Path, known: set[str]) -> set[str]:
    """Project modules ``path`` imports when it is itself imported (``from pkg import mod`` names ``pkg.mod``)."""
    deps: set[str] = set()
    for _, module, names in _project_imports(path, module_level=True):
        targets = [f'{module}.{n}' for n in names if f'{module}.{n}' in known]
        deps |= set(targets) if targets else {module}
    return (deps & known) - {_module_name(path)}


def test_no_import_cycles_between_modules():
    # With no cycle, the modules form layers: each can be read (and tested) after what it imports.
    paths = {_module_name(p): p for p in _modules()}
    graph = {name: _module_level_imports(path, set(paths)) for name, path in paths.items()}
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(name: str, trail: list[str]) -> None:
        state[name] = 1
        for dep in sorted(graph[name]):
            if state.get(dep) == 1:
                cycles.append(trail[trail.index(dep):] + [dep] if dep in trail else [name, dep])
            elif dep not in state:
                visit(dep, trail + [dep])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not cycles, 'module-level import cycles:\n' + '\n'.join(' -> '.join(c) for c in cycles)
