"""Every command the README and docs/ show is run here, top to bottom as a user would, at tiny sizes.

Commands are read from the Markdown itself (fenced code blocks, and inline code that starts like a
command), so a command added to the docs is run without touching this file, and one that breaks
(a renamed key, a recipe that no longer builds, a script that crashes) fails the suite.

How a command runs offline and in seconds:
* Resources the hub or a GPU machine would give are replaced: the T5 tokenizer by a small
  SentencePiece model trained here, ``allenai/c4`` by a local C4-style folder, hub weights by a
  tiny Hugging Face directory, the natural-instructions checkout by generated SNI tasks, and
  placeholders (``DIR``, ``FILES...``) by real paths.
* Training runs get tiny sizes appended (2 steps, a 2+2-layer model, 64-token rows, fp32 on CPU)
  after the documented arguments, which are still parsed and validated.
* Multi-GPU and multi-node commands run as the dry run of the same recipe for that many GPUs.
* A few are not run, each for a stated reason (the test suite itself, a venv install, the GPU
  script, downloads).
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / 'README.md', *sorted((REPO / 'docs').glob('*.md'))]
_COMMAND_START = ('composer ', 'python recipes/', 'python -m bench', 'python -m pytest', 'bash bench/', 'python3 -m venv')

# Commands not run here, and why (matched by prefix).
NOT_RUN = {
    'python3 -m venv': 'creates a virtual environment and installs the requirements (network); .ci/run does exactly this',
    'python -m pytest': 'the test suite itself',
    'bash bench/gpu_check.sh': 'needs an H100/H200; its Composer-loop part runs on CPU in tests/test_bench_model.py',
    'bash bench/fetch_wheels.sh': 'downloads wheels from PyPI',
}
# Values in the docs that stand for the reader's own paths.
PLACEHOLDERS = {'DIR': 'tok', '/tmp/c4': 'data/c4', 'FILES...': 'corpus.txt', 'OUT_DIR': 'out', '$OUT': 'out',
                # the real samples next to the checkout (../shared/data), where a measurement used them
                '../shared/data/c4_sample': 'c4_en', '../shared/data/tokenizer/t5': 'tok'}
_TINY_MODEL = ['model.d_model=32', 'model.d_kv=8', 'model.d_ff=64', 'model.num_heads=4', 'model.num_layers=2',
               'model.num_decoder_layers=2', 'model.vocab_size=tokenizer', 'model.name=google/t5-v1_1-small']


@dataclass(frozen=True)
class Command:
    source: str  # file:line
    text: str


def documented_commands() -> list[Command]:
    """Commands in fenced code blocks (continuation lines joined, comments and ``&&`` split) and inline code."""
    found: list[Command] = []
    for path in DOCS:
        in_block, pending = False, ''
        for number, line in enumerate(path.read_text(encoding='utf-8').splitlines(), 1):
            if line.strip().startswith('```'):
                in_block, pending = not in_block, ''
                continue
            if in_block:
                text = f'{pending} {line.strip()}' if pending else line.strip()
                if text.endswith('\\'):
                    pending = text[:-1].rstrip()
                    continue
                pending = ''
                text = re.sub(r'\s+#.*$', '', text)
                parts = [p.strip() for p in text.split('&&')]
            else:
                parts = [m.strip() for m in re.findall(r'`([^`]+)`', line)]
            found += [Command(f'{path.name}:{number}', p) for p in parts if p.startswith(_COMMAND_START)]
    return found


# ------------------------------------------------------------------------------------ the workspace


@dataclass
class Workspace:
    root: Path
    tok: Path
    c4_source: Path
    hf_model: Path


@pytest.fixture(scope='module')
def workspace(tmp_path_factory) -> Workspace:
    """A working directory laid out like a clone (yamls/, recipes/ linked), with offline stand-ins."""
    from pydoc_data.topics import topics

    from t5composer.config.loading import cache_dir
    from t5composer.data.sni_synthetic import prepare_synthetic_sni
    from t5composer.models import T5ForConditionalGeneration, export_hf
    from t5composer.models.presets import load_model_config
    from t5composer.tokenizer_training import train_tokenizer

    root = tmp_path_factory.mktemp('docs_workspace')
    for name in ('yamls', 'recipes'):
        (root / name).symlink_to(REPO / name)
    texts = [topics[k] for k in sorted(topics)]
    tok = train_tokenizer(out_dir=root / 'tok', vocab_size=500, texts=texts[:40])
    (root / 'corpus.txt').write_text('\n'.join(texts[:20]))
    source = root / 'c4_en'
    source.mkdir()
    for name, part in (('c4-train.00000-of-00001.json.gz', texts[40:70]), ('c4-validation.00000-of-00001.json.gz', texts[70:79])):
        with gzip.open(source / name, 'wb') as f:
            f.writelines(json.dumps({'text': t, 'timestamp': '2019-04-25T00:00:00Z', 'url': 'https://example.org'}).encode() + b'\n'
                         for t in part)
    sni = prepare_synthetic_sni(cache_dir=os.path.join(cache_dir(), 'sni_synthetic'), seed=0)
    (root / 'data').mkdir()
    (root / 'data' / 'sni').symlink_to(sni)
    config = load_model_config('google/t5-v1_1-small', d_model=32, d_kv=8, d_ff=64, num_heads=4, num_layers=2,
                               num_decoder_layers=2, vocab_size=640, dropout_rate=0.0)
    hf_model = export_hf(model=T5ForConditionalGeneration(config), out_dir=root / 'hf_t5', tokenizer=str(tok))
    return Workspace(root=root, tok=Path(tok), c4_source=source, hf_model=hf_model)


# ------------------------------------------------------------------------------------ runners


def _substituted(args: list[str], ws: Workspace) -> list[str]:
    out = []
    for arg in args:
        key, eq, value = arg.partition('=')
        if eq and value in PLACEHOLDERS:
            arg = f'{key}={ws.root / PLACEHOLDERS[value]}'
        elif arg in PLACEHOLDERS:
            arg = str(ws.root / PLACEHOLDERS[arg])
        out.append(arg)
    return out


def _is_hub_name(name: Optional[str]) -> bool:
    return bool(name) and not os.path.exists(os.path.expanduser(name)) and not name.startswith(('.', '/', '~')) and '/' in name


def _stand_ins(args: list[str], ws: Workspace) -> list[str]:
    """Overrides that replace what the hub would give (tokenizer, weights): for every run, dry ones too."""
    from t5composer.config import load_config

    cfg = load_config(args[0], [a for a in args[1:] if not a.startswith('--')])
    extra = []
    if _is_hub_name(cfg.tokenizer.name):
        extra.append(f'tokenizer.name={ws.tok}')
    if cfg.model.init == 'hf' and _is_hub_name(cfg.model.name):
        extra.append(f'model.name={ws.hf_model}')
    return extra


def _tiny(args: list[str], *, train: bool) -> list[str]:
    """Sizes that make a run take seconds on a CPU; appended after the documented arguments."""
    import torch

    from t5composer.config import load_config
    from t5composer.config.schema import DataConfig

    cfg = load_config(args[0], args[1:])
    extra = ['eval_subset_num_batches=1', 'progress_bar=false']
    if not torch.cuda.is_available():
        extra += ['precision=fp32', 'compile=false']
    if isinstance(cfg.data, DataConfig):
        extra += ['data.input_length=64', 'data.num_workers=0']
    else:
        extra += ['data.max_instances_per_task=4', 'data.max_new_tokens=4', 'data.max_source_length=256', 'data.max_target_length=32']
    if train:
        extra.append('max_duration=2ba')
        if 't_warmup' in cfg.scheduler.kwargs:
            extra.append('scheduler.t_warmup=1ba')
        if 't_max' in cfg.scheduler.kwargs:
            extra.append('scheduler.t_max=2ba')
        if cfg.model.init == 'random':
            extra += _TINY_MODEL
    return extra


def _split_launcher(tokens: list[str]) -> tuple[int, list[str]]:
    """``composer [launcher options] recipes/train.py ARGS``: the number of processes (all nodes) and ARGS."""
    script = next(i for i, t in enumerate(tokens) if t.endswith('.py'))
    options = tokens[1:script]
    values = {options[i]: options[i + 1] for i in range(len(options) - 1) if options[i].startswith('-')}
    procs = int(values.get('--world_size', values.get('-n', values.get('--nproc', '1'))))
    return procs, tokens[script + 1:]


def run_train(tokens: list[str], ws: Workspace) -> None:
    from t5composer.cli import train_main
    from t5composer.config import load_config

    procs, args = _split_launcher(tokens)
    args = _substituted(args, ws)
    args += _stand_ins(args, ws)
    if '--dry-run' in args or procs > 1:
        # Several GPUs or nodes: the dry run validates and builds the recipe for exactly that many.
        args += [] if '--dry-run' in args else ['--dry-run', '--dry-run-gpus', str(procs)]
        assert train_main(args) == 0
        return
    args += _tiny(args, train=True)
    assert train_main(args) == 0
    cfg = load_config(args[0], args[1:])
    if cfg.save_folder is not None:
        assert (Path(cfg.save_folder) / 'latest-rank0.pt').exists(), f'{cfg.save_folder} holds no checkpoint'


def run_evaluate(tokens: list[str], ws: Workspace, capsys: pytest.CaptureFixture) -> None:
    from t5composer.cli import evaluate_main

    args = _substituted(tokens[2:], ws)
    args += _stand_ins(args, ws) + _tiny(args, train=False)
    capsys.readouterr()
    assert evaluate_main(args) == 0
    out = capsys.readouterr().out
    assert re.search(r'^\w+/LanguageNLL: \d+\.\d{4}$', out, flags=re.MULTILINE), out[-2000:]


def _recipe_main(name: str) -> Callable[[list[str]], int]:
    spec = importlib.util.spec_from_file_location(f'recipe_{name}', REPO / 'recipes' / f'{name}.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module.main


def run_recipe(tokens: list[str], ws: Workspace) -> None:
    """convert_c4 (from the local C4 folder, with the small tokenizer), export_hf, train_tokenizer, plot_runs, verify_data."""
    name = Path(tokens[1]).stem
    args = _substituted(tokens[2:], ws)
    if name == 'convert_c4':
        for flag, value in (('--source', ws.c4_source), ('--tokenizer', ws.tok), ('--input_length', 64)):
            if flag not in args:
                args += [flag, str(value)]
        args.append('--no_progress')
    if name == 'train_tokenizer':
        args[args.index('--out') + 1] = str(ws.root / 'trained_tokenizer')  # not DIR: that stands for the run's tokenizer
        args[args.index('--vocab_size') + 1] = '300'  # a corpus of a few pages holds no 32,000 pieces
    assert _recipe_main(name)(args) == 0


def run_benchmark(tokens: list[str], ws: Workspace) -> None:
    """``python -m bench ...``: the options parse; each case runs at tiny sizes in tests/test_bench*.py."""
    del ws
    from bench.__main__ import build_parser

    build_parser().parse_args(tokens[3:])


def plan(command: Command) -> tuple[str, Optional[str]]:
    """``(runner name, reason not run)`` for a documented command; ``('none', reason)`` when it is not run."""
    for prefix, reason in NOT_RUN.items():
        if command.text.startswith(prefix):
            return 'none', reason
    tokens = command.text.split()
    mention = 'a mention or synopsis, not a command (no recipe, or ... / [options] / <placeholder>)'
    if '...' in tokens or '[' in command.text or any(t.startswith('<') and t.endswith('>') for t in tokens):
        return 'none', mention
    if tokens[:3] == ['python', '-m', 'bench']:
        return 'benchmark', None
    if not any(t.endswith(('.py', '.yaml')) for t in tokens[1:]):
        return 'none', mention
    script = next((t for t in tokens[1:] if t.endswith('.py')), '')
    if script == 'recipes/train.py':
        has_recipe = any(t.endswith('.yaml') for t in tokens)
        return ('train', None) if has_recipe else ('none', 'a mention, not a command (no recipe)')
    if script == 'recipes/evaluate.py':
        return 'evaluate', None
    if script in ('recipes/convert_c4.py', 'recipes/export_hf.py', 'recipes/train_tokenizer.py', 'recipes/plot_runs.py',
                  'recipes/verify_data.py'):
        return 'recipe', None
    return 'unknown', f'no runner for {script}: add one to tests/test_documented_commands.py'


# ------------------------------------------------------------------------------------ tests


def test_every_documented_command_has_a_runner():
    commands = documented_commands()
    assert len(commands) >= 40
    unknown = [f'{c.source}: {c.text}' for c in commands if plan(c)[0] == 'unknown']
    assert not unknown, unknown
    # The main recipes' commands are among them (the reader follows these).
    texts = {c.text for c in commands}
    for expected in ('composer recipes/train.py yamls/demo.yaml', 'composer recipes/train.py yamls/pt_base.yaml',
                     'python recipes/evaluate.py yamls/pt_base.yaml load_path=runs/pt_base/latest-rank0.pt precision=fp32'):
        assert expected in texts


@pytest.mark.slow
def test_documented_commands_run(workspace, monkeypatch, capsys):
    monkeypatch.chdir(workspace.root)
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')  # a hub name fails at once instead of retrying
    monkeypatch.setenv('S3_ENDPOINT_URL', 'http://127.0.0.1:9')  # s3:// refuses at once (the multi-node dry run)
    monkeypatch.setenv('OMP_NUM_THREADS', '1')
    failures = []
    ran = 0
    for command in documented_commands():
        kind, _ = plan(command)
        if kind == 'none':
            continue
        tokens = shlex.split(command.text)
        try:
            if kind == 'train':
                run_train(tokens, workspace)
            elif kind == 'evaluate':
                run_evaluate(tokens, workspace, capsys)
            elif kind == 'benchmark':
                run_benchmark(tokens, workspace)
            else:
                run_recipe(tokens, workspace)
            ran += 1
        except (AssertionError, Exception, SystemExit) as e:  # noqa: B014 - report every broken command at once
            err = capsys.readouterr().err[-1500:]
            failures.append(f'{command.source}: {command.text}\n    {type(e).__name__}: {e}\n    {err}')
    assert not failures, '\n'.join(failures)
    assert ran >= 30
