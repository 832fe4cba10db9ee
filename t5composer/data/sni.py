"""Super-Natural Instructions (SNI) read the way Tk-Instruct / nanoT5 read it.

A natural-instructions checkout has ``{root}/tasks/<task>.json`` (one task: definition, positive
and negative examples, instances) and ``{root}/splits/<split>/{train,test}_tasks.txt`` (task
names, one per line). This module:

- samples instances like Tk-Instruct: test tasks keep their first ``max_instances_per_task``
  instances in file order (upstream puts 100 label-balanced ones first), train tasks keep the
  first ``max_instances_per_task`` of a seeded shuffle;
- builds each source with Tk-Instruct's template (definition + up to 2 positive examples,
  examples added only while the tokenized source fits ``max_source_length``, then truncation),
  character for character, quirks included (see :func:`build_source`);
- tokenizes the examples into a map-style :class:`SNIDataset` (so Composer's DistributedSampler
  shards, shuffles and resumes it mid-epoch exactly) and pads batches with :class:`SNICollator`;
- optionally puts a UL2 mode token (``[S2S]``, ...) first in every source, within the length
  budget: the source text is built and truncated for one token less.

A task file that is missing, not valid JSON or lacks a required key is reported by name in
:attr:`SNISplit.problems` and skipped; the other tasks still load.
"""

from __future__ import annotations

import json
import os
import random
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import torch

from t5composer.tokenization import add_mode_tokens

__all__ = [
    'SNICollator',
    'SNIDataError',
    'SNIDataset',
    'SNIExample',
    'SNISplit',
    'build_source',
    'build_sources',
    'load_sni_split',
    'read_split_list',
]

_REQUIRED_KEYS = ('Definition', 'Positive Examples', 'Instances')
_SUBSETS = ('train', 'test')
_LAYOUT = (
    'a natural-instructions checkout: {root}/tasks/<task>.json and '
    '{root}/splits/<split_name>/{train,test}_tasks.txt '
    '(git clone https://github.com/allenai/natural-instructions)'
)


class SNIDataError(ValueError):
    """No usable task could be loaded (the message lists every problem found)."""


@dataclass(frozen=True)
class SNIExample:
    """One instance, ready to tokenize.

    Attributes:
        task: task name (the file name without ``.json``).
        id: the instance's id from the task file.
        source: the model input built by :func:`build_source`.
        references: all reference outputs of the instance (RougeL takes the best over them).
        target: the training target: one reference chosen from (seed, task, id) for train,
            the first reference for test.
        categories: the task file's ``Categories``.
    """

    task: str
    id: str
    source: str
    references: list[str]
    target: str
    categories: list[str]


@dataclass
class SNISplit:
    """The examples of one subset of a split, and what could not be loaded.

    Attributes:
        examples: the examples (test: shuffled with the seed; train: task by task).
        problems: one line per skipped task file or dropped instance, naming the file.
        tasks: names of the tasks that loaded, in split-list order.
        root: the checkout's root directory.
        split_name: e.g. ``default``.
        subset: ``train`` or ``test``.
    """

    examples: list[SNIExample]
    problems: list[str] = field(default_factory=list)
    tasks: list[str] = field(default_factory=list)
    root: Optional[Path] = None
    split_name: str = 'default'
    subset: str = 'test'


# --------------------------------------------------------------------------------------------
# Template


def _add_period(text: str) -> str:
    # Tk-Instruct appends '.' unless the last character so far is punctuation; with an empty
    # field the last character is the space after 'Input:', so '.' is appended then too.
    return text if text[-1] in string.punctuation else text + '.'


def _definition_part(definition: Any) -> str:
    text = definition[0] if isinstance(definition, (list, tuple)) else definition
    return _add_period('Definition: ' + text.strip()) + '\n\n'


def _example_part(index: int, example: Mapping[str, Any]) -> str:
    part = _add_period(f' Positive Example {index} -\nInput: {example["input"].strip()}') + '\n'
    part = _add_period(part + f' Output: {example["output"].strip()}') + '\n'
    return part + '\n'


def _input_part(task_input: str) -> str:
    part = _add_period(f'Now complete the following example -\nInput: {task_input.strip()}') + '\n'
    return part + 'Output: '


def _token_ids(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    # Tk-Instruct counts len(tokenizer(text)["input_ids"]): special tokens (EOS) included, no
    # truncation. verbose=False silences the "longer than model_max_length" warning.
    if not texts:
        return []
    return tokenizer(texts, verbose=False)['input_ids']


def build_sources(
    *,
    definition: Any,
    positive_examples: Sequence[Mapping[str, Any]],
    task_inputs: Sequence[str],
    tokenizer: Any,
    max_source_length: int = 1024,
    num_pos_examples: int = 2,
) -> list[str]:
    """Sources of many instances of one task, with batched tokenizer calls.

    Gives exactly what :func:`build_source` gives for each instance; faster, since the examples
    are tried for all instances at once (one tokenizer batch call per example).

    Args:
        definition: the task's ``Definition`` (a list: its first entry is used; or a string).
        positive_examples: the task's ``Positive Examples`` (``input`` / ``output`` strings).
        task_inputs: the ``input`` of each instance.
        tokenizer: a transformers tokenizer (lengths count its EOS).
        max_source_length: token budget of a source (Tk-Instruct: 1024).
        num_pos_examples: most positive examples to include (Tk-Instruct: 2).

    Returns:
        One source per task input.
    """
    head = _definition_part(definition)
    examples = [_example_part(i + 1, ex) for i, ex in enumerate(positive_examples[:num_pos_examples])]
    tails = [_input_part(x) for x in task_inputs]
    kept = [0] * len(tails)
    fitted: dict[int, str] = {}  # instance -> the last check text that fitted
    active = list(range(len(tails)))
    for k, example in enumerate(examples):
        if not active:
            break
        # Tk-Instruct's check joins the kept examples with ' ' (the source joins them with '')
        # and puts example k right after them; the first example that does not fit stops it.
        prefix = head + ' '.join(examples[:k]) + example
        texts = [prefix + tails[j] for j in active]
        lengths = [len(ids) for ids in _token_ids(tokenizer, texts)]
        still = []
        for j, text, n in zip(active, texts, lengths):
            if n <= max_source_length:
                kept[j] = k + 1
                fitted[j] = text
                still.append(j)
        active = still

    sources = [head + ''.join(examples[: kept[j]]) + tails[j] for j in range(len(tails))]
    # A source equal to its last check text (0-2 examples kept) is known to fit; only the rest
    # (no example fitted, or the ' '-joined check differs) is tokenized again.
    todo = [j for j in range(len(tails)) if fitted.get(j) != sources[j]]
    for j, ids in zip(todo, _token_ids(tokenizer, [sources[j] for j in todo])):
        if len(ids) > max_source_length:
            sources[j] = tokenizer.decode(ids[:max_source_length], skip_special_tokens=True)
    return sources


def build_source(
    task: Mapping[str, Any],
    instance: Mapping[str, Any],
    *,
    tokenizer: Any,
    max_source_length: int = 1024,
    num_pos_examples: int = 2,
) -> str:
    """The Tk-Instruct source of one instance ("definition + 2 positive examples").

    ``"Definition: {def}[.]\\n\\n"``, then for each kept example ``" Positive Example {i} -\\n
    Input: {input}[.]\\n Output: {output}[.]\\n\\n"``, then ``"Now complete the following
    example -\\nInput: {input}[.]\\nOutput: "``, all stripped and concatenated with no separator;
    ``[.]`` is a ``.`` added only when the last character so far is not in
    ``string.punctuation``. Example i is kept only if ``definition + " ".join(kept examples) +
    example_i + task_input`` is at most ``max_source_length`` tokens (EOS counted); the first
    example that does not fit ends the loop. A source still over the budget becomes the decoded
    first ``max_source_length`` ids (special tokens skipped). Negative examples and explanations
    are never used.

    Args:
        task: the task file's content (``Definition``, ``Positive Examples``).
        instance: one entry of its ``Instances`` (``input``).
        tokenizer: a transformers tokenizer.
        max_source_length: token budget (Tk-Instruct: 1024).
        num_pos_examples: most positive examples (Tk-Instruct: 2).
    """
    return build_sources(
        definition=task['Definition'],
        positive_examples=task['Positive Examples'],
        task_inputs=[instance['input']],
        tokenizer=tokenizer,
        max_source_length=max_source_length,
        num_pos_examples=num_pos_examples,
    )[0]


# --------------------------------------------------------------------------------------------
# Reading a checkout


def read_split_list(*, root: str | os.PathLike, split_name: str, subset: str) -> list[str]:
    """Task names listed in ``{root}/splits/{split_name}/{subset}_tasks.txt``.

    Blank lines are skipped; a repeated name is kept once.

    Args:
        root: the natural-instructions checkout.
        split_name: directory under ``splits/`` (``default`` is the official English split).
        subset: ``train`` or ``test``.

    Raises:
        FileNotFoundError: the root or the list file does not exist (the message names the path
            and the layout expected).
    """
    if subset not in _SUBSETS:
        raise ValueError(f"subset must be 'train' or 'test', got {subset!r}")
    base = Path(os.path.expanduser(str(root)))
    path = base / 'splits' / split_name / f'{subset}_tasks.txt'
    if not path.is_file():
        if not base.is_dir():
            where = f'the SNI root {base} does not exist'
        else:
            splits_dir = base / 'splits'
            have = sorted(p.name for p in splits_dir.iterdir() if p.is_dir()) if splits_dir.is_dir() else []
            where = f'splits found under {splits_dir}: {have}' if have else f'{splits_dir} has no splits'
        raise FileNotFoundError(f'SNI split list {path} not found ({where}). Expected {_LAYOUT}.')
    names = [line.strip() for line in path.read_text(encoding='utf-8').splitlines()]
    return list(dict.fromkeys(n for n in names if n))


class _TaskProblem(Exception):
    """A task file that cannot be used; the message says why."""


def _check_str_list(value: Any, what: str) -> list[str]:
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _TaskProblem(f'{what} must be a list of strings')
    return value


def _read_task(path: Path) -> dict[str, Any]:
    """The task file's content, checked for what the template and sampling use."""
    if not path.is_file():
        raise _TaskProblem('task file not found')
    try:
        # json.load accepts the NaN in upstream's '"URL": [NaN]' (strict parsers reject it).
        with open(path, encoding='utf-8') as f:
            task = json.load(f)
    except json.JSONDecodeError as e:
        raise _TaskProblem(f'invalid JSON ({e})') from None
    except (UnicodeDecodeError, OSError) as e:
        raise _TaskProblem(f'unreadable ({e})') from None
    if not isinstance(task, dict):
        raise _TaskProblem(f'expected a JSON object, found {type(task).__name__}')
    missing = [k for k in _REQUIRED_KEYS if k not in task]
    if missing:
        raise _TaskProblem(f'missing key(s) {", ".join(repr(k) for k in missing)}')
    definition = _check_str_list(task['Definition'], 'Definition')
    if not definition:
        raise _TaskProblem('Definition is empty')
    for key, fields in (('Positive Examples', ('input', 'output')), ('Instances', ('id', 'input', 'output'))):
        entries = task[key]
        if not isinstance(entries, list):
            raise _TaskProblem(f'{key} must be a list')
        for i, entry in enumerate(entries):
            if not isinstance(entry, dict) or any(f not in entry for f in fields):
                raise _TaskProblem(f'{key}[{i}] must be an object with {", ".join(fields)}')
            if not isinstance(entry['input'], str) or (key == 'Positive Examples' and not isinstance(entry['output'], str)):
                raise _TaskProblem(f'{key}[{i}] input/output must be strings')
    return task


def load_sni_split(
    *,
    root: str | os.PathLike,
    split_name: str = 'default',
    subset: str,
    tokenizer: Any,
    seed: int = 42,
    max_instances_per_task: Optional[int] = 100,
    max_source_length: int = 1024,
    max_target_length: int = 128,
    num_pos_examples: int = 2,
    mode_token: Optional[str] = None,
) -> SNISplit:
    """Load the train or test tasks of a split as Tk-Instruct samples and formats them.

    Test tasks: the first ``max_instances_per_task`` instances of each task file in file order,
    then the whole list shuffled with ``seed``. Train tasks: each task's instances shuffled with
    ``(seed, task)``, the first ``max_instances_per_task`` kept; the target is one reference
    chosen with ``(seed, task, id)``. Instances without any reference are dropped (noted in
    ``problems``). Everything depends on the seed only, so every rank builds the same list.

    Args:
        root: a natural-instructions checkout (``tasks/``, ``splits/``).
        split_name: directory under ``splits/``.
        subset: ``train`` or ``test``.
        tokenizer: a transformers tokenizer (for the source length budget).
        seed: sampling seed.
        max_instances_per_task: instances kept per task (``None`` or negative: all).
        max_source_length: source token budget (see :func:`build_source`).
        max_target_length: target token budget; kept for the record (targets are truncated when
            tokenized, see :class:`SNIDataset`).
        num_pos_examples: positive examples per source.
        mode_token: a mode token :class:`SNIDataset` will put first in each source (e.g.
            ``[S2S]``); the sources are then built for ``max_source_length - 1`` tokens. None:
            Tk-Instruct's sources exactly.

    Returns:
        The :class:`SNISplit`.

    Raises:
        FileNotFoundError: the split list is missing.
        SNIDataError: no task of the list could be loaded.
    """
    del max_target_length  # truncation happens at tokenization (SNIDataset), as in Tk-Instruct
    text_length = max_source_length - (1 if mode_token is not None else 0)  # the mode token counts within the budget
    base = Path(os.path.expanduser(str(root)))
    names = read_split_list(root=base, split_name=split_name, subset=subset)
    list_file = f'splits/{split_name}/{subset}_tasks.txt'
    limit = None if max_instances_per_task is None or max_instances_per_task < 0 else max_instances_per_task
    examples: list[SNIExample] = []
    problems: list[str] = []
    loaded: list[str] = []
    for name in names:
        rel = f'tasks/{name}.json'
        try:
            task = _read_task(base / rel)
        except _TaskProblem as e:
            missing = 'not found' in str(e)
            extra = f' (listed in {list_file})' if missing else ''
            fix = 'add the file' if missing else 'fix the file'
            problems.append(f"{rel}: {e}{extra}; task skipped ({fix}, or remove '{name}' from {list_file})")
            continue
        instances = []
        for inst in task['Instances']:
            refs = inst['output']
            refs = [refs] if isinstance(refs, str) else refs
            if isinstance(refs, list) and refs and all(isinstance(r, str) for r in refs):
                instances.append((str(inst['id']), inst['input'], list(refs)))
        if len(instances) < len(task['Instances']):
            problems.append(f'{rel}: {len(task["Instances"]) - len(instances)} instance(s) without a string '
                            'output dropped')
        if subset == 'train':
            # Seeded per task: one task's content never changes another task's sample.
            random.Random(f'{seed}:{name}').shuffle(instances)
        instances = instances[:limit]
        if not instances:
            problems.append(f"{rel}: no instances; task skipped (add instances, or remove '{name}' from {list_file})")
            continue
        sources = build_sources(
            definition=task['Definition'],
            positive_examples=task['Positive Examples'],
            task_inputs=[x for _, x, _ in instances],
            tokenizer=tokenizer,
            max_source_length=text_length,
            num_pos_examples=num_pos_examples,
        )
        categories = task.get('Categories') or []
        categories = [c for c in ([categories] if isinstance(categories, str) else categories) if isinstance(c, str)]
        for (iid, _, refs), source in zip(instances, sources):
            target = random.Random(f'{seed}:{name}:{iid}').choice(refs) if subset == 'train' else refs[0]
            examples.append(SNIExample(task=name, id=iid, source=source, references=refs, target=target,
                                       categories=list(categories)))
        loaded.append(name)
    if not loaded:
        detail = '\n  '.join(problems) if problems else f'{list_file} lists no tasks'
        raise SNIDataError(f'No SNI task of {base / list_file} could be loaded:\n  {detail}\nExpected {_LAYOUT}.')
    if subset == 'test':
        random.Random(seed).shuffle(examples)
    return SNISplit(examples=examples, problems=problems, tasks=loaded, root=base, split_name=split_name,
                    subset=subset)


# --------------------------------------------------------------------------------------------
# Tokenized dataset and collator


class _Ragged:
    """Lists of ints stored as one int32 array plus offsets (a fraction of Python lists' memory)."""

    def __init__(self, rows: list[list[int]]) -> None:
        lengths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
        self.offsets = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(lengths, out=self.offsets[1:])
        self.values = np.fromiter((t for r in rows for t in r), dtype=np.int32, count=int(self.offsets[-1]))

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> list[int]:
        return self.values[self.offsets[i]:self.offsets[i + 1]].tolist()


class SNIDataset(torch.utils.data.Dataset):
    """Tokenized SNI examples, map-style (index -> dict).

    Each item: ``input_ids`` (source + EOS, at most ``max_source_length`` ids, EOS kept last;
    with a mode token, its id first and the source truncated one id earlier), ``labels`` (target
    + EOS, at most ``max_target_length``, EOS kept last), and the metadata ``task``, ``id``,
    ``references``, ``source`` (the text, without the mode token), ``categories``. Sources and
    targets are tokenized once here, with one batch call each (Tk-Instruct's truncation=True
    tokenization).

    Args:
        examples: the examples (e.g. ``load_sni_split(...).examples``, built with the same
            ``mode_token``).
        tokenizer: a transformers tokenizer; a mode token it lacks is added to it
            (:func:`~t5composer.tokenization.add_mode_tokens`, which also adds UL2's three first).
        max_source_length: longest input, the mode token included.
        max_target_length: longest label sequence.
        mode_token: the token put first in every input (UL2 prompts generation with ``[S2S]``);
            None: none (Tk-Instruct's inputs exactly).

    Attributes:
        mode_token_id: the mode token's id, or None.
    """

    def __init__(
        self,
        examples: Sequence[SNIExample],
        *,
        tokenizer: Any,
        max_source_length: int = 1024,
        max_target_length: int = 128,
        mode_token: Optional[str] = None,
    ) -> None:
        self.examples = list(examples)
        self.max_source_length = max_source_length
        self.max_target_length = max_target_length
        self.mode_token_id: Optional[int] = None
        prefix: list[int] = []
        if mode_token is not None:
            if max_source_length < 2:
                raise ValueError(f'max_source_length must be at least 2 with a mode token (the token and EOS), got {max_source_length}.')
            self.mode_token_id = add_mode_tokens(tokenizer, [mode_token])[mode_token]
            prefix = [self.mode_token_id]
        sources = self._encode(tokenizer, [e.source for e in self.examples], max_source_length - len(prefix))
        self._inputs = _Ragged([prefix + ids for ids in sources] if prefix else sources)
        self._labels = _Ragged(self._encode(tokenizer, [e.target for e in self.examples], max_target_length))

    @staticmethod
    def _encode(tokenizer: Any, texts: list[str], max_length: int) -> list[list[int]]:
        if not texts:
            return []
        return tokenizer(texts, truncation=True, max_length=max_length)['input_ids']

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        e = self.examples[index]
        return {
            'input_ids': self._inputs[index],
            'labels': self._labels[index],
            'task': e.task,
            'id': e.id,
            'references': list(e.references),
            'source': e.source,
            'categories': list(e.categories),
        }


_PASS_THROUGH = ('task', 'id', 'references', 'source', 'categories')


class SNICollator:
    """Pad SNIDataset items into a batch for T5.

    Returns ``input_ids`` / ``attention_mask`` (right-padded with ``pad_id``), ``labels``
    (padded with -100, ignored by the loss) and ``decoder_input_ids`` (labels shifted right
    behind ``decoder_start_id``, -100 read as ``pad_id``), all int64 ``[B, L]``, plus the lists
    ``task``, ``id``, ``references``, ``source``, ``categories`` (Composer splits lists into
    microbatches like tensors).

    Args:
        pad_id: the tokenizer's pad id (T5: 0).
        decoder_start_id: first decoder input (T5: the pad id, 0).
        pad_to_multiple_of: pad lengths up to a multiple of this (e.g. 8); ``None``: the longest.
    """

    def __init__(self, *, pad_id: int = 0, decoder_start_id: int = 0, pad_to_multiple_of: Optional[int] = None) -> None:
        self.pad_id = pad_id
        self.decoder_start_id = decoder_start_id
        self.pad_to_multiple_of = pad_to_multiple_of

    def _width(self, rows: Sequence[Sequence[int]]) -> int:
        width = max((len(r) for r in rows), default=0)
        m = self.pad_to_multiple_of
        return -(-width // m) * m if m else width

    def _pad(self, rows: Sequence[Sequence[int]], value: int) -> torch.Tensor:
        out = torch.full((len(rows), self._width(rows)), value, dtype=torch.long)
        for i, r in enumerate(rows):
            out[i, : len(r)] = torch.as_tensor(r, dtype=torch.long)
        return out

    def __call__(self, items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """Pad a list of dataset items.

        Args:
            items: dicts with ``input_ids`` and ``labels`` (and optionally the metadata keys).
        """
        inputs = [it['input_ids'] for it in items]
        input_ids = self._pad(inputs, self.pad_id)
        attention_mask = torch.zeros_like(input_ids)
        for i, r in enumerate(inputs):
            attention_mask[i, : len(r)] = 1
        labels = self._pad([it['labels'] for it in items], -100)
        decoder_input_ids = torch.full_like(labels, self.decoder_start_id)
        decoder_input_ids[:, 1:] = labels[:, :-1]
        decoder_input_ids.masked_fill_(decoder_input_ids == -100, self.pad_id)
        batch: dict[str, Any] = {
            'input_ids': input_ids,
            'attention_mask': attention_mask,
            'labels': labels,
            'decoder_input_ids': decoder_input_ids,
        }
        for key in _PASS_THROUGH:
            if all(key in it for it in items):
                batch[key] = [it[key] for it in items]
        return batch
