"""Small instruction tasks in Super-Natural Instructions' own file format, for the offline demo.

SNI itself has synthetic tasks of this kind (``task1331_reverse_array``,
``task1087_two_number_sum``, ...). Each generated task is a ``tasks/<name>.json`` with exactly
the keys, key order and layout of the upstream files (indent 4, raw UTF-8, ``"Source":
["synthetic"]`` and ``"URL": [NaN]`` like upstream's synthetic tasks), and
``splits/default/{train,test}_tasks.txt`` holds whole tasks out for testing, as SNI does; so
:func:`t5composer.data.sni.load_sni_split` reads the result unchanged.

The tasks are short (a few words or digits) so a tiny T5 (d_model 128, 2+2 layers, a 2,000-piece
tokenizer) learns them within minutes on a CPU. Each held-out test task has cousins among the
train tasks (reverse numbers / reverse words; sort numbers, sort words / sort numbers descending;
first word / first two words; yes-no questions on numbers), so some cross-task transfer shows in
RougeL even for such a model.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

__all__ = ['SYNTHETIC_VERSION', 'SYNTHETIC_TASKS', 'prepare_synthetic_sni', 'write_synthetic_sni']

SYNTHETIC_VERSION = 2  # bump when the tasks change, so cached copies are rebuilt

# Lowercase nouns that never occur in the definitions or the template (a word to copy must not
# also be the instruction's own word), and capitalised names.
_WORDS = (
    'apple', 'river', 'horse', 'cloud', 'stone', 'garden', 'tiger', 'violin', 'pepper', 'forest',
    'candle', 'mirror', 'rabbit', 'orange', 'silver', 'island', 'basket', 'dragon', 'winter',
    'pencil', 'monkey', 'castle', 'carpet', 'rocket', 'bridge', 'lemon', 'coffee', 'jacket',
    'planet', 'butter',
)
_NAMES = (
    'Alice', 'Bob', 'Carol', 'Paris', 'London', 'Berlin', 'Monday', 'Friday', 'Python', 'Linux',
    'Windows', 'Unix', 'March', 'June', 'Europe', 'Tokyo',
)

# A generator returns (input, output) for one instance.
_Gen = Callable[[random.Random], tuple[str, str]]


def _digits(rng: random.Random) -> list[int]:
    return [rng.randrange(10) for _ in range(rng.randint(3, 5))]


def _words(rng: random.Random) -> list[str]:
    return rng.sample(_WORDS, rng.randint(3, 5))


def _fmt_list(items: list[Any]) -> str:
    return '[' + ', '.join(str(x) for x in items) + ']'


def _reverse_numbers(rng: random.Random) -> tuple[str, str]:
    xs = _digits(rng)
    return _fmt_list(xs), _fmt_list(xs[::-1])


def _sort_numbers(rng: random.Random) -> tuple[str, str]:
    xs = _digits(rng)
    return _fmt_list(xs), _fmt_list(sorted(xs))


def _max_number(rng: random.Random) -> tuple[str, str]:
    xs = _digits(rng)
    return _fmt_list(xs), str(max(xs))


def _add_two(rng: random.Random) -> tuple[str, str]:
    a, b = rng.randrange(10), rng.randrange(10)
    return f'{a} + {b}', str(a + b)


def _even(rng: random.Random) -> tuple[str, str]:
    n = rng.randrange(100)
    return str(n), 'Yes' if n % 2 == 0 else 'No'


def _larger_than_fifty(rng: random.Random) -> tuple[str, str]:
    n = rng.randrange(100)
    return str(n), 'Yes' if n > 50 else 'No'


def _first_word(rng: random.Random) -> tuple[str, str]:
    ws = _words(rng)
    return ' '.join(ws), ws[0]


def _last_word(rng: random.Random) -> tuple[str, str]:
    ws = _words(rng)
    return ' '.join(ws), ws[-1]


def _uppercase(rng: random.Random) -> tuple[str, str]:
    w = rng.choice(_WORDS)
    return w, w.upper()


def _sort_words(rng: random.Random) -> tuple[str, str]:
    ws = _words(rng)
    return _fmt_list(ws), _fmt_list(sorted(ws))


def _reverse_words(rng: random.Random) -> tuple[str, str]:
    ws = _words(rng)
    return _fmt_list(ws), _fmt_list(ws[::-1])


def _sort_numbers_descending(rng: random.Random) -> tuple[str, str]:
    xs = _digits(rng)
    return _fmt_list(xs), _fmt_list(sorted(xs, reverse=True))


def _first_two_words(rng: random.Random) -> tuple[str, str]:
    ws = _words(rng)
    return ' '.join(ws), ' '.join(ws[:2])


def _capitalised(rng: random.Random) -> tuple[str, str]:
    names = rng.sample(_NAMES, rng.randint(1, 2))
    words = rng.sample(_WORDS, rng.randint(2, 3))
    mixed = names + words
    rng.shuffle(mixed)
    return ' '.join(mixed), ' '.join(w for w in mixed if w[0].isupper())


def _larger_than_five(rng: random.Random) -> tuple[str, str]:
    n = rng.randrange(10)
    return str(n), 'Yes' if n > 5 else 'No'


@dataclass(frozen=True)
class _Task:
    name: str
    split: str  # 'train' or 'test'
    category: str
    definition: str
    gen: _Gen
    domain: str
    reasoning: str


_NUM, _TXT = 'Reasoning on Numbers', 'Textual Reasoning'
SYNTHETIC_TASKS: tuple[_Task, ...] = (
    _Task('task9001_synthetic_reverse_numbers', 'train', 'Program Execution',
          'Reverse the order of the numbers in the list.', _reverse_numbers, 'Mathematics', _NUM),
    _Task('task9002_synthetic_sort_numbers', 'train', 'Program Execution',
          'Sort the numbers in the list from the smallest to the largest.', _sort_numbers, 'Mathematics', _NUM),
    _Task('task9003_synthetic_max_number', 'train', 'Program Execution',
          'Return the largest number in the list.', _max_number, 'Mathematics', _NUM),
    _Task('task9004_synthetic_add_two_numbers', 'train', 'Program Execution',
          'Add the two numbers and return the sum.', _add_two, 'Mathematics', 'Arithmetic'),
    _Task('task9005_synthetic_even_number', 'train', 'Classification',
          'Answer "Yes" if the number is even, otherwise answer "No".', _even, 'Mathematics', _NUM),
    _Task('task9006_synthetic_larger_than_fifty', 'train', 'Classification',
          'Answer "Yes" if the number is larger than 50, otherwise answer "No".', _larger_than_fifty,
          'Mathematics', _NUM),
    _Task('task9007_synthetic_first_word', 'train', 'Word Extraction',
          'Copy the first word of the sentence.', _first_word, 'Code', _TXT),
    _Task('task9008_synthetic_last_word', 'train', 'Word Extraction',
          'Copy the last word of the sentence.', _last_word, 'Code', _TXT),
    _Task('task9009_synthetic_uppercase_word', 'train', 'Text Transformation',
          'Write the word in capital letters.', _uppercase, 'Code', _TXT),
    _Task('task9010_synthetic_sort_words', 'train', 'Program Execution',
          'Sort the words in the list in alphabetical order.', _sort_words, 'Code', _TXT),
    _Task('task9011_synthetic_capitalised_words', 'train', 'Word Extraction',
          'Copy the capitalised words of the sentence, in order.', _capitalised, 'Code', _TXT),
    _Task('task9101_synthetic_reverse_words', 'test', 'Program Execution',
          'Reverse the order of the words in the list.', _reverse_words, 'Code', _TXT),
    _Task('task9102_synthetic_sort_numbers_descending', 'test', 'Program Execution',
          'Sort the numbers in the list from the largest to the smallest.', _sort_numbers_descending,
          'Mathematics', _NUM),
    _Task('task9103_synthetic_first_two_words', 'test', 'Word Extraction',
          'Copy the first two words of the sentence.', _first_two_words, 'Code', _TXT),
    _Task('task9104_synthetic_larger_than_five', 'test', 'Classification',
          'Answer "Yes" if the number is larger than 5, otherwise answer "No".', _larger_than_five,
          'Mathematics', _NUM),
)


def _draw(
    gen: _Gen, rng: random.Random, n: int, *, avoid: set[str], distinct_outputs: bool = False
) -> list[tuple[str, str]]:
    """n (input, output) pairs with distinct inputs not in ``avoid`` when the space allows it.

    Args:
        gen: the task's generator.
        rng: the task's random generator.
        n: pairs to draw.
        avoid: inputs not to draw (e.g. the examples', so no instance repeats an example).
        distinct_outputs: also make outputs distinct where possible (examples of a yes/no task
            then show both answers).
    """
    pairs: list[tuple[str, str]] = []
    seen, seen_out = set(avoid), set()
    tries = 0
    while len(pairs) < n:
        x, y = gen(rng)
        tries += 1
        # Small input spaces (e.g. 100 sums) cannot give n distinct inputs: allow repeats then.
        if (x in seen or (distinct_outputs and y in seen_out)) and tries < 50 * n:
            continue
        seen.add(x)
        seen_out.add(y)
        pairs.append((x, y))
    return pairs


def _task_json(task: _Task, *, seed: int, num_instances: int) -> dict[str, Any]:
    rng = random.Random(f'{seed}:{task.name}')
    examples = _draw(task.gen, rng, 3, avoid=set(), distinct_outputs=True)
    instances = _draw(task.gen, rng, num_instances, avoid={x for x, _ in examples})
    number = task.name.split('_')[0]  # 'task9001', the prefix upstream ids carry
    pos = [{'input': x, 'output': y, 'explanation': f'The output follows the rule: {task.definition}'}
           for x, y in examples[:2]]
    neg_x, neg_y = examples[2]
    wrong = neg_x if neg_x != neg_y else neg_y + ' ' + neg_y
    neg = [{'input': neg_x, 'output': wrong, 'explanation': f'The output does not follow the rule: {task.definition}'}]
    ids = [hashlib.md5(f'{seed}:{task.name}:{k}'.encode()).hexdigest() for k in range(num_instances)]
    # Key order of the upstream files.
    return {
        'Contributors': ['t5composer'],
        'Source': ['synthetic'],
        'URL': [float('nan')],
        'Categories': [task.category],
        'Reasoning': [task.reasoning],
        'Definition': [task.definition],
        'Input_language': ['English'],
        'Output_language': ['English'],
        'Instruction_language': ['English'],
        'Domains': [task.domain],
        'Positive Examples': pos,
        'Negative Examples': neg,
        'Instances': [{'id': f'{number}-{i}', 'input': x, 'output': [y]} for i, (x, y) in zip(ids, instances)],
        'Instance License': ['Apache 2.0'],
    }


def write_synthetic_sni(
    out_root: str | os.PathLike,
    *,
    seed: int = 0,
    instances_per_train_task: int = 200,
    instances_per_test_task: int = 50,
) -> dict[str, Any]:
    """Write the synthetic tasks as a natural-instructions checkout.

    Writes ``{out_root}/tasks/<task>.json`` and ``{out_root}/splits/default/{train,test}_tasks.txt``
    plus ``manifest.json``. The output depends only on the arguments (byte-identical re-runs).

    Args:
        out_root: directory to write into (created).
        seed: seed of every drawn example and instance.
        instances_per_train_task: instances of each train task.
        instances_per_test_task: instances of each test task.

    Returns:
        The manifest: version, seed, ``train_tasks``, ``test_tasks`` and per task its split,
        category, definition and instance count.
    """
    out = Path(os.path.expanduser(str(out_root)))
    (out / 'tasks').mkdir(parents=True, exist_ok=True)
    (out / 'splits' / 'default').mkdir(parents=True, exist_ok=True)
    manifest: dict[str, Any] = {'version': SYNTHETIC_VERSION, 'seed': seed, 'train_tasks': [], 'test_tasks': [],
                                'tasks': {}}
    for task in SYNTHETIC_TASKS:
        n = instances_per_train_task if task.split == 'train' else instances_per_test_task
        data = _task_json(task, seed=seed, num_instances=n)
        # indent 4 and raw UTF-8 like upstream; json writes the NaN of "URL" as upstream does.
        text = json.dumps(data, indent=4, ensure_ascii=False)
        (out / 'tasks' / f'{task.name}.json').write_text(text, encoding='utf-8')
        manifest[f'{task.split}_tasks'].append(task.name)
        manifest['tasks'][task.name] = {'split': task.split, 'category': task.category,
                                        'definition': task.definition, 'instances': n}
    for subset in ('train', 'test'):
        names = manifest[f'{subset}_tasks']
        (out / 'splits' / 'default' / f'{subset}_tasks.txt').write_text(''.join(f'{t}\n' for t in names),
                                                                        encoding='utf-8')
    (out / 'manifest.json').write_text(json.dumps(manifest, indent=2) + '\n', encoding='utf-8')
    return manifest


def prepare_synthetic_sni(
    *,
    cache_dir: str | os.PathLike,
    seed: int = 0,
    instances_per_train_task: int = 200,
    instances_per_test_task: int = 50,
) -> Path:
    """Write (once per settings) the synthetic SNI checkout under ``cache_dir``; return its root.

    A ``.complete`` marker and a file lock (the demo corpus's :func:`build_once`) make concurrent
    callers (``composer -n 2``) wait for a single build.

    Args:
        cache_dir: cache root (e.g. ``$T5COMPOSER_CACHE/demo``).
        seed: seed of the tasks' content.
        instances_per_train_task: instances of each train task.
        instances_per_test_task: instances of each test task.

    Returns:
        The root to pass to ``load_sni_split(root=...)``.
    """
    from t5composer.data.demo_corpus import build_once

    base = Path(os.path.expanduser(str(cache_dir)))
    root = base / (f'sni_synthetic-v{SYNTHETIC_VERSION}-s{seed}'
                   f'-n{instances_per_train_task}-{instances_per_test_task}')

    def build() -> str:
        m = write_synthetic_sni(root, seed=seed, instances_per_train_task=instances_per_train_task,
                                instances_per_test_task=instances_per_test_task)
        return json.dumps(m) + '\n'

    build_once(root / '.complete', build, lock_path=base / f'{root.name}.lock')
    return root

