"""Super-Natural Instructions data: Tk-Instruct's template, sampling, bad files, tokenized batches."""

from __future__ import annotations

import copy
import json
import random
import string
from pathlib import Path

import pytest
import torch

from conftest import shared_data
from t5composer.data.sni import (
    SNICollator,
    SNIDataError,
    SNIDataset,
    SNIExample,
    build_source,
    build_sources,
    load_sni_split,
)
from t5composer.data.sni_synthetic import SYNTHETIC_TASKS, prepare_synthetic_sni, write_synthetic_sni
from t5composer.tokenization import load_tokenizer

UPSTREAM_KEYS = [
    'Contributors', 'Source', 'URL', 'Categories', 'Reasoning', 'Definition', 'Input_language',
    'Output_language', 'Instruction_language', 'Domains', 'Positive Examples', 'Negative Examples',
    'Instances', 'Instance License',
]


class CharTokenizer:
    """One id per character plus EOS: token counts are character counts, so budgets are exact."""

    def __call__(self, texts, verbose=True, truncation=False, max_length=None):
        single = isinstance(texts, str)
        rows = []
        for t in [texts] if single else texts:
            ids = [ord(c) + 3 for c in t]
            if truncation and max_length is not None:
                ids = ids[: max_length - 1]
            rows.append(ids + [1])
        return {'input_ids': rows[0] if single else rows}

    def decode(self, ids, skip_special_tokens=False):
        return ''.join(chr(i - 3) for i in ids if i > 2)


@pytest.fixture(scope='session')
def tok(tmp_path_factory):
    """A small T5-layout tokenizer trained on Python's help topics (no ../shared needed)."""
    from pydoc_data.topics import topics

    from t5composer.tokenizer_training import train_tokenizer

    texts = [topics[k] for k in sorted(topics)[:40]]  # the demo corpus's topic documents, in <1 s
    return load_tokenizer(train_tokenizer(out_dir=tmp_path_factory.mktemp('sni_tok'), vocab_size=600, texts=texts))


def n_tokens(tokenizer, text: str) -> int:
    return len(tokenizer(text)['input_ids'])


def reference_source(task, instance, tokenizer, max_source_length=1024, num_pos_examples=2) -> str:
    """A line-by-line port of Tk-Instruct's DataCollatorForNI source building (no task name,
    definition, positive examples, no negatives, no explanation), one instance at a time."""
    task_input = 'Now complete the following example -\n'
    task_input += f"Input: {instance['input'].strip()}"
    if not task_input[-1] in string.punctuation:
        task_input += '.'
    task_input += '\n'
    task_input += 'Output: '
    definition = 'Definition: ' + task['Definition'][0].strip()
    if not definition[-1] in string.punctuation:
        definition += '.'
    definition += '\n\n'
    pos_examples = []
    for idx, pos_example in enumerate(task['Positive Examples'][:num_pos_examples]):
        pos_example_str = f' Positive Example {idx + 1} -\n'
        pos_example_str += f"Input: {pos_example['input'].strip()}"
        if not pos_example_str[-1] in string.punctuation:
            pos_example_str += '.'
        pos_example_str += '\n'
        pos_example_str += f" Output: {pos_example['output'].strip()}"
        if not pos_example_str[-1] in string.punctuation:
            pos_example_str += '.'
        pos_example_str += '\n'
        pos_example_str += '\n'
        if len(tokenizer(definition + ' '.join(pos_examples) + pos_example_str + task_input)['input_ids']) <= max_source_length:
            pos_examples.append(pos_example_str)
        else:
            break
    source = definition + ''.join(pos_examples) + task_input
    tokenized_source = tokenizer(source)['input_ids']
    if len(tokenized_source) <= max_source_length:
        return source
    return tokenizer.decode(tokenized_source[:max_source_length], skip_special_tokens=True)


TASK = {
    'Definition': ['  Given a list of numbers, reverse it  ', 'A second definition is never used.'],
    'Positive Examples': [
        {'input': '[1, 2, 3]', 'output': '[3, 2, 1]', 'explanation': 'Explanations are never used.'},
        {'input': ' 4 5 ', 'output': 'five four', 'explanation': 'x'},
        {'input': 'seven', 'output': 'seven!', 'explanation': 'x'},
    ],
    'Negative Examples': [{'input': 'NEGATIVE', 'output': 'NEGATIVE', 'explanation': 'never used'}],
}


# ------------------------------------------------------------------------------------- template


def test_template_hand_worked(tok):
    # '[1, 2, 3]' ends in ']' and 'What is 6?' in '?': no '.'; ' 4 5 ' and 'five four' get one.
    want = (
        'Definition: Given a list of numbers, reverse it.\n\n'
        ' Positive Example 1 -\nInput: [1, 2, 3]\n Output: [3, 2, 1]\n\n'
        ' Positive Example 2 -\nInput: 4 5.\n Output: five four.\n\n'
        'Now complete the following example -\nInput: What is 6?\nOutput: '
    )
    assert build_source(TASK, {'input': 'What is 6?'}, tokenizer=tok) == want
    assert build_source(TASK, {'input': 'What is 6?'}, tokenizer=CharTokenizer()) == want


def test_template_punctuation_rule_everywhere(tok):
    # Every field already ends in punctuation: nothing is appended. An empty field ends in the
    # space after 'Input:', which is not punctuation, so Tk-Instruct appends '.' to it.
    task = {
        'Definition': ['Answer "Yes" or "No"!'],
        'Positive Examples': [{'input': 'Is 4 even?', 'output': 'Yes;'}, {'input': '', 'output': ' '}],
    }
    want = (
        'Definition: Answer "Yes" or "No"!\n\n'
        ' Positive Example 1 -\nInput: Is 4 even?\n Output: Yes;\n\n'
        ' Positive Example 2 -\nInput: .\n Output: .\n\n'
        'Now complete the following example -\nInput: 7 (odd)\nOutput: '
    )
    assert build_source(task, {'input': '7 (odd)'}, tokenizer=tok) == want
    # A plain-string Definition (older files) reads like a one-element list.
    assert build_source({**task, 'Definition': 'Answer "Yes" or "No"!'}, {'input': '7 (odd)'}, tokenizer=tok) == want


def test_fit_rule_drops_example_that_does_not_fit(tok):
    inst = {'input': 'What is 6?'}
    one = (
        'Definition: Given a list of numbers, reverse it.\n\n'
        ' Positive Example 1 -\nInput: [1, 2, 3]\n Output: [3, 2, 1]\n\n'
        'Now complete the following example -\nInput: What is 6?\nOutput: '
    )
    full = build_source(TASK, inst, tokenizer=tok)
    assert n_tokens(tok, one) < n_tokens(tok, full)
    # Budget = the one-example source (EOS counted): example 2 no longer fits and is dropped.
    assert build_source(TASK, inst, tokenizer=tok, max_source_length=n_tokens(tok, one)) == one
    assert build_source(TASK, inst, tokenizer=tok, max_source_length=n_tokens(tok, full)) == full
    # The first example that does not fit ends the loop: with example 1 too long, example 2
    # (short) is not tried.
    long_first = {**TASK, 'Positive Examples': [{'input': 'x' * 400, 'output': 'y'}] + TASK['Positive Examples'][1:]}
    none = 'Definition: Given a list of numbers, reverse it.\n\nNow complete the following example -\nInput: What is 6?\nOutput: '
    assert build_source(long_first, inst, tokenizer=tok, max_source_length=n_tokens(tok, full)) == none


def test_fit_rule_checks_with_space_join():
    # Tk-Instruct's check is definition + " ".join(kept) + example_i + input while the source is
    # definition + "".join(kept) + input. With 3 examples the check of example 3 carries one more
    # character than the source would: a budget of exactly the source's length drops example 3.
    # (T5 tokenizers fold whitespace, so this never changes a count with them.)
    char = CharTokenizer()
    inst = {'input': 'What is 6?'}
    three = (
        'Definition: Given a list of numbers, reverse it.\n\n'
        ' Positive Example 1 -\nInput: [1, 2, 3]\n Output: [3, 2, 1]\n\n'
        ' Positive Example 2 -\nInput: 4 5.\n Output: five four.\n\n'
        ' Positive Example 3 -\nInput: seven.\n Output: seven!\n\n'
        'Now complete the following example -\nInput: What is 6?\nOutput: '
    )
    two = three.replace(' Positive Example 3 -\nInput: seven.\n Output: seven!\n\n', '')
    n = len(three) + 1  # characters + EOS
    assert build_source(TASK, inst, tokenizer=char, num_pos_examples=3, max_source_length=n + 1) == three
    assert build_source(TASK, inst, tokenizer=char, num_pos_examples=3, max_source_length=n) == two
    # With two examples the join of one kept example has no space: the source's own length counts.
    assert build_source(TASK, inst, tokenizer=char, max_source_length=len(two) + 1) == two
    assert len(build_source(TASK, inst, tokenizer=char, max_source_length=len(two))) < len(two)


def test_final_truncation_decodes_first_ids(tok):
    char = CharTokenizer()
    inst = {'input': 'What is 6?'}
    # Even without examples the source is 113 characters + EOS: it becomes the first 20 ids.
    assert build_source(TASK, inst, tokenizer=char, max_source_length=20) == 'Definition: Given a '
    got = build_source(TASK, inst, tokenizer=tok, max_source_length=12)
    none = 'Definition: Given a list of numbers, reverse it.\n\nNow complete the following example -\nInput: What is 6?\nOutput: '
    assert got == tok.decode(tok(none)['input_ids'][:12], skip_special_tokens=True)
    assert got.startswith('Definition') and n_tokens(tok, got) <= 13


@pytest.mark.parametrize('num_pos', [0, 1, 2, 3])
def test_batched_sources_equal_tk_instruct_loop(tok, num_pos):
    rng = random.Random(num_pos)
    words = 'the list of numbers value returns a new string object when called'.split()
    inputs = [' '.join(rng.choices(words, k=rng.randint(0, 30))) + rng.choice(['', '.', '?', ' ']) for _ in range(40)]
    for tokenizer in (tok, CharTokenizer()):
        full = max(n_tokens(tokenizer, reference_source(TASK, {'input': x}, tokenizer, 10**6, num_pos)) for x in inputs)
        for budget in (10, 40, 70, 90, full // 2, full - 5, full):
            want = [reference_source(TASK, {'input': x}, tokenizer, budget, num_pos) for x in inputs]
            got = build_sources(definition=TASK['Definition'], positive_examples=TASK['Positive Examples'],
                                task_inputs=inputs, tokenizer=tokenizer, max_source_length=budget,
                                num_pos_examples=num_pos)
            assert got == want, (budget, num_pos)


# ------------------------------------------------------------------------------------- loading


def _task(n: int, *, refs: int = 1, name: str = 't', category: str = 'Misc.') -> dict:
    return {
        'Contributors': ['me'], 'Source': ['synthetic'], 'URL': ['https://example.org'],
        'Categories': [category], 'Reasoning': [], 'Definition': [f'Solve {name}.'],
        'Input_language': ['English'], 'Output_language': ['English'], 'Instruction_language': ['English'],
        'Domains': ['Mathematics'],
        'Positive Examples': [{'input': 'a', 'output': 'b', 'explanation': 'e'}],
        'Negative Examples': [],
        'Instances': [{'id': f'{name}-{i}', 'input': f'input {i}', 'output': [f'out {i} {r}' for r in range(refs)]}
                      for i in range(n)],
        'Instance License': ['Unknown'],
    }


def _checkout(root: Path, tasks: dict, *, train=(), test=(), split='default') -> Path:
    (root / 'tasks').mkdir(parents=True, exist_ok=True)
    for name, content in tasks.items():
        text = content if isinstance(content, str) else json.dumps(content, indent=4)
        (root / 'tasks' / f'{name}.json').write_text(text, encoding='utf-8')
    (root / 'splits' / split).mkdir(parents=True, exist_ok=True)
    (root / 'splits' / split / 'train_tasks.txt').write_text(''.join(f'{t}\n' for t in train))
    (root / 'splits' / split / 'test_tasks.txt').write_text(''.join(f'{t}\n' for t in test))
    return root


def test_test_subset_first_n_in_file_order_then_shuffled(tmp_path):
    root = _checkout(tmp_path, {'ta': _task(30, name='ta'), 'tb': _task(5, name='tb')}, test=['ta', 'tb'])
    split = load_sni_split(root=root, subset='test', tokenizer=CharTokenizer(), max_instances_per_task=10)
    ids = [e.id for e in split.examples]
    assert sorted(ids) == sorted([f'ta-{i}' for i in range(10)] + [f'tb-{i}' for i in range(5)])
    assert ids != sorted(ids, key=lambda s: (s[:2], int(s.split('-')[1])))  # shuffled ...
    again = load_sni_split(root=root, subset='test', tokenizer=CharTokenizer(), max_instances_per_task=10)
    assert [e.id for e in again.examples] == ids  # ... deterministically
    other = load_sni_split(root=root, subset='test', tokenizer=CharTokenizer(), max_instances_per_task=10, seed=1)
    assert [e.id for e in other.examples] != ids and sorted(e.id for e in other.examples) == sorted(ids)
    assert split.tasks == ['ta', 'tb'] and split.problems == []
    e = split.examples[0]
    assert e.target == e.references[0] and e.categories == ['Misc.']
    assert e.source.endswith(f'Input: input {e.id.split("-")[1]}.\nOutput: ')


def test_train_subset_seeded_sample_and_target(tmp_path):
    root = _checkout(tmp_path, {'ta': _task(50, refs=3, name='ta')}, train=['ta'])
    kw = dict(root=root, subset='train', tokenizer=CharTokenizer(), max_instances_per_task=20)
    split = load_sni_split(**kw)
    ids = [e.id for e in split.examples]
    assert len(ids) == len(set(ids)) == 20
    assert ids != [f'ta-{i}' for i in range(20)]  # a shuffle, not the first 20
    assert [(e.id, e.target) for e in load_sni_split(**kw).examples] == [(e.id, e.target) for e in split.examples]
    for e in split.examples:
        assert e.references == [f'out {e.id[3:]} {r}' for r in range(3)] and e.target in e.references
    assert len({e.references.index(e.target) for e in split.examples}) > 1  # not always the first
    # The target depends on (seed, task, id) only, not on the sample around it.
    small = {e.id: e.target for e in load_sni_split(**{**kw, 'max_instances_per_task': 50}).examples}
    assert all(small[e.id] == e.target for e in split.examples)
    other = load_sni_split(**{**kw, 'seed': 7})
    assert [e.id for e in other.examples] != ids
    everything = load_sni_split(**{**kw, 'max_instances_per_task': None})
    assert len(everything.examples) == 50


def test_bad_task_files_are_reported_by_name(tmp_path):
    no_def = _task(3, name='nodef')
    del no_def['Definition']
    tasks = {'good': _task(4, name='good'), 'broken': '{"Definition": ["x"], "Instances": [', 'nodef': no_def}
    root = _checkout(tmp_path, tasks, test=['good', 'broken', 'absent', 'nodef'])
    split = load_sni_split(root=root, subset='test', tokenizer=CharTokenizer())
    assert split.tasks == ['good'] and len(split.examples) == 4
    text = '\n'.join(split.problems)
    assert len(split.problems) == 3
    assert 'tasks/broken.json: invalid JSON' in text
    assert "tasks/nodef.json: missing key(s) 'Definition'" in text
    assert 'tasks/absent.json: task file not found (listed in splits/default/test_tasks.txt)' in text


def test_no_task_loaded_and_missing_split_are_clear_errors(tmp_path):
    root = _checkout(tmp_path, {'broken': 'not json'}, test=['broken', 'absent'])
    with pytest.raises(SNIDataError, match=r'(?s)No SNI task.*tasks/broken.json: invalid JSON.*tasks/absent.json'):
        load_sni_split(root=root, subset='test', tokenizer=CharTokenizer())
    with pytest.raises(FileNotFoundError, match=r"splits/other/train_tasks.txt not found.*\['default'\].*tasks/<task>.json"):
        load_sni_split(root=root, split_name='other', subset='train', tokenizer=CharTokenizer())
    with pytest.raises(FileNotFoundError, match='does not exist'):
        load_sni_split(root=tmp_path / 'nowhere', subset='test', tokenizer=CharTokenizer())


def test_url_nan_quirk_parses(tmp_path):
    text = json.dumps(_task(2, name='nan'), indent=4).replace('"https://example.org"', 'NaN')
    assert '"URL": [\n        NaN\n    ]' in text
    root = _checkout(tmp_path, {'nan': text}, train=['nan'])
    split = load_sni_split(root=root, subset='train', tokenizer=CharTokenizer())
    assert split.problems == [] and len(split.examples) == 2


# ------------------------------------------------------------------------------------- tensors


def _example(source: str, target: str, i: int) -> SNIExample:
    return SNIExample(task='t', id=f't-{i}', source=source, references=[target, 'other'], target=target,
                      categories=['Misc.'])


def test_dataset_truncates_keeping_eos(tok):
    examples = [_example('Return the value of the list ' * 20, 'The value of the list ' * 10, 0),
                _example('Return.', 'A.', 1)]
    ds = SNIDataset(examples, tokenizer=tok, max_source_length=16, max_target_length=8)
    assert len(ds) == 2
    item = ds[0]
    assert len(item['input_ids']) == 16 and item['input_ids'][-1] == tok.eos_token_id
    assert len(item['labels']) == 8 and item['labels'][-1] == tok.eos_token_id
    assert item['input_ids'][:15] == tok(examples[0].source)['input_ids'][:15]
    assert ds[1]['input_ids'] == tok('Return.')['input_ids'] and ds[1]['labels'] == tok('A.')['input_ids']
    assert {k: ds[1][k] for k in ('task', 'id', 'references', 'source', 'categories')} == {
        'task': 't', 'id': 't-1', 'references': ['A.', 'other'], 'source': 'Return.', 'categories': ['Misc.']}
    assert all(isinstance(x, int) for x in item['input_ids'])
    # Map-style: DistributedSampler shards it into disjoint parts per rank.
    from torch.utils.data.distributed import DistributedSampler

    big = SNIDataset([_example(f's {i}', f't {i}', i) for i in range(10)], tokenizer=tok)
    parts = [list(DistributedSampler(big, num_replicas=2, rank=r, shuffle=True, seed=3)) for r in (0, 1)]
    assert sorted(parts[0] + parts[1]) == list(range(10))


def test_mode_token_is_the_first_input_id_within_the_budget(tok):
    base = copy.deepcopy(tok)  # the session's tokenizer stays without mode tokens
    examples = [_example('Return the value of the list ' * 20, 'The value.', 0), _example('Return.', 'A.', 1)]
    plain = SNIDataset(examples, tokenizer=base, max_source_length=15, max_target_length=8)
    ds = SNIDataset(examples, tokenizer=base, max_source_length=16, max_target_length=8, mode_token='[S2S]')
    assert ds.mode_token_id == base.convert_tokens_to_ids('[S2S]') == len(tok) + 2 and plain.mode_token_id is None
    long, short = ds[0]['input_ids'], ds[1]['input_ids']
    assert len(long) == 16 and long[0] == ds.mode_token_id and long[-1] == tok.eos_token_id
    assert long[1:] == plain[0]['input_ids']  # the text truncated one id earlier, EOS kept
    assert short == [ds.mode_token_id] + tok('Return.')['input_ids']
    assert ds[0]['labels'] == plain[0]['labels'] and ds[1]['source'] == 'Return.'  # the text, without the token
    assert SNIDataset(examples, tokenizer=base, max_source_length=2, mode_token='[S2S]')[0]['input_ids'] == [ds.mode_token_id, 1]
    with pytest.raises(ValueError, match='at least 2 with a mode token'):
        SNIDataset(examples, tokenizer=base, max_source_length=1, mode_token='[S2S]')
    assert len(tok) == 700  # untouched


def test_mode_token_sources_leave_room_for_it(tmp_path, tok):
    base = copy.deepcopy(tok)
    write_synthetic_sni(tmp_path, seed=3, instances_per_train_task=6, instances_per_test_task=4)
    for subset in ('train', 'test'):
        kw = dict(root=tmp_path, subset=subset, tokenizer=base, max_instances_per_task=6)
        before = load_sni_split(**kw, max_source_length=48).examples
        assert load_sni_split(**kw, max_source_length=48, mode_token=None).examples == before  # None: as before
        with_token = load_sni_split(**kw, max_source_length=49, mode_token='[S2S]').examples
        assert with_token == before  # the text is built for one token less
        ds = SNIDataset(with_token, tokenizer=base, max_source_length=49, mode_token='[S2S]')
        assert all(ds[i]['input_ids'][0] == ds.mode_token_id and len(ds[i]['input_ids']) <= 49 for i in range(len(ds)))
        assert [ds[i]['input_ids'][1:] for i in range(len(ds))] == [
            SNIDataset(before, tokenizer=tok, max_source_length=48)[i]['input_ids'] for i in range(len(ds))]


def test_collator_pads_and_shifts():
    items = [
        {'input_ids': [5, 6, 7, 1], 'labels': [8, 9, 1], 'task': 'a', 'id': 'a-0', 'references': ['x'],
         'source': 's0', 'categories': ['C']},
        {'input_ids': [5, 1], 'labels': [4, 3, 2, 7, 1], 'task': 'b', 'id': 'b-0', 'references': ['y', 'z'],
         'source': 's1', 'categories': []},
    ]
    b = SNICollator(pad_id=0, decoder_start_id=0)(items)
    assert b['input_ids'].tolist() == [[5, 6, 7, 1], [5, 1, 0, 0]]
    assert b['attention_mask'].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    assert b['labels'].tolist() == [[8, 9, 1, -100, -100], [4, 3, 2, 7, 1]]
    assert b['decoder_input_ids'].tolist() == [[0, 8, 9, 1, 0], [0, 4, 3, 2, 7]]
    assert all(b[k].dtype == torch.long for k in ('input_ids', 'attention_mask', 'labels', 'decoder_input_ids'))
    assert b['task'] == ['a', 'b'] and b['id'] == ['a-0', 'b-0'] and b['references'] == [['x'], ['y', 'z']]
    assert b['source'] == ['s0', 's1'] and b['categories'] == [['C'], []]
    b8 = SNICollator(pad_id=3, decoder_start_id=2, pad_to_multiple_of=8)(items)
    assert b8['input_ids'].shape == (2, 8) and b8['labels'].shape == (2, 8)
    assert b8['input_ids'][1].tolist() == [5, 1] + [3] * 6 and b8['attention_mask'].sum().item() == 6
    assert b8['decoder_input_ids'][0].tolist() == [2, 8, 9, 1, 3, 3, 3, 3]


# ------------------------------------------------------------------------------------- synthetic


def test_synthetic_tasks_round_trip(tmp_path, tok):
    m = write_synthetic_sni(tmp_path / 'a', seed=3, instances_per_train_task=30, instances_per_test_task=10)
    write_synthetic_sni(tmp_path / 'b', seed=3, instances_per_train_task=30, instances_per_test_task=10)
    files = sorted(p.name for p in (tmp_path / 'a' / 'tasks').iterdir())
    assert len(files) == len(SYNTHETIC_TASKS) >= 6 + 3
    for name in files:  # byte-identical for the same seed, upstream's key order and layout
        text = (tmp_path / 'a' / 'tasks' / name).read_text(encoding='utf-8')
        assert text == (tmp_path / 'b' / 'tasks' / name).read_text(encoding='utf-8')
        data = json.loads(text)
        assert list(data) == UPSTREAM_KEYS and text.startswith('{\n    "Contributors": [')
        assert list(data['Instances'][0]) == ['id', 'input', 'output']
        assert list(data['Positive Examples'][0]) == ['input', 'output', 'explanation']
    assert not set(m['train_tasks']) & set(m['test_tasks']) and len(m['test_tasks']) >= 3
    train = load_sni_split(root=tmp_path / 'a', subset='train', tokenizer=tok, max_instances_per_task=None)
    test = load_sni_split(root=tmp_path / 'a', subset='test', tokenizer=tok)
    assert train.problems == [] and test.problems == []
    assert train.tasks == m['train_tasks'] and test.tasks == m['test_tasks']
    assert len(train.examples) == 30 * len(m['train_tasks']) and len(test.examples) == 10 * len(m['test_tasks'])
    assert all(e.source.endswith('Output: ') and 'Positive Example 2' in e.source for e in train.examples)
    assert all(e.categories for e in test.examples)
    # Inputs are distinct within a task where the input space allows it, and never an example's.
    for name in m['train_tasks'] + m['test_tasks']:
        data = json.loads((tmp_path / 'a' / 'tasks' / f'{name}.json').read_text(encoding='utf-8'))
        inputs = [i['input'] for i in data['Instances']]
        assert not {e['input'] for e in data['Positive Examples']} & set(inputs)
        assert len(data['Positive Examples']) == 2
    other = write_synthetic_sni(tmp_path / 'c', seed=4, instances_per_train_task=30, instances_per_test_task=10)
    assert other['tasks'].keys() == m['tasks'].keys()
    assert (tmp_path / 'c' / 'tasks' / files[0]).read_text() != (tmp_path / 'a' / 'tasks' / files[0]).read_text()
    ds = SNIDataset(train.examples, tokenizer=tok, max_source_length=256, max_target_length=32)
    assert max(len(ds[i]['input_ids']) for i in range(len(ds))) <= 256


def test_synthetic_outputs_are_correct(tmp_path):
    write_synthetic_sni(tmp_path, seed=0, instances_per_train_task=20, instances_per_test_task=20)

    def instances(suffix):
        (path,) = (tmp_path / 'tasks').glob(f'*_{suffix}.json')
        return [(i['input'], i['output'][0]) for i in json.loads(path.read_text())['Instances']]

    nums = lambda s: [int(x) for x in s.strip('[]').split(', ')]  # noqa: E731
    assert all(nums(y) == nums(x)[::-1] for x, y in instances('reverse_numbers'))
    assert all(nums(y) == sorted(nums(x)) for x, y in instances('sort_numbers'))
    assert all(int(y) == sum(int(v) for v in x.split(' + ')) for x, y in instances('add_two_numbers'))
    assert all(y == ('Yes' if int(x) % 2 == 0 else 'No') for x, y in instances('even_number'))
    assert all(nums(y) == sorted(nums(x), reverse=True) for x, y in instances('sort_numbers_descending'))
    assert all(y == ' '.join(x.split()[:2]) for x, y in instances('first_two_words'))
    assert all(y.strip('[]').split(', ') == x.strip('[]').split(', ')[::-1] for x, y in instances('reverse_words'))
    assert all(y == ' '.join(w for w in x.split() if w[0].isupper()) for x, y in instances('capitalised_words'))


def test_prepare_synthetic_sni_builds_once(tmp_path):
    root = prepare_synthetic_sni(cache_dir=tmp_path, seed=0)
    marker = root / '.complete'
    assert marker.is_file() and (root / 'splits' / 'default' / 'test_tasks.txt').is_file()
    stamp = (root / 'tasks').stat().st_mtime_ns, marker.stat().st_mtime_ns
    (root / 'manifest.json').unlink()  # a finished build is never redone
    assert prepare_synthetic_sni(cache_dir=tmp_path, seed=0) == root
    assert not (root / 'manifest.json').exists() and ((root / 'tasks').stat().st_mtime_ns, marker.stat().st_mtime_ns) == stamp
    assert prepare_synthetic_sni(cache_dir=tmp_path, seed=1) != root


# ------------------------------------------------------------------------------------- real data


@pytest.fixture(scope='module')
def t5_tok():
    return load_tokenizer(shared_data('tokenizer', 't5', 'spiece.model'))


def test_real_sni_sample(t5_tok):
    root = shared_data('sni_sample')
    train = load_sni_split(root=root, split_name='sample', subset='train', tokenizer=t5_tok)
    test = load_sni_split(root=root, split_name='sample', subset='test', tokenizer=t5_tok)
    assert len(train.tasks) == len(test.tasks) == 10 and train.problems == test.problems == []
    for split in (train, test):
        counts = {t: sum(e.task == t for e in split.examples) for t in split.tasks}
        assert all(0 < c <= 100 for c in counts.values())
        assert all(e.source.startswith('Definition: ') and e.source.endswith('Output: ') for e in split.examples)
        assert all(e.target in e.references and e.categories for e in split.examples)
    # The full upstream files have more than 100 instances: the test subset keeps the first 100.
    assert {t: sum(e.task == t for e in test.examples) for t in ('task648_answer_generation',
                                                                 'task1393_superglue_copa_text_completion')} == {
        'task648_answer_generation': 100, 'task1393_superglue_copa_text_completion': 100}
    upstream = json.loads((root / 'tasks' / 'task648_answer_generation.json').read_text(encoding='utf-8'))
    assert {e.id for e in test.examples if e.task == 'task648_answer_generation'} == {
        i['id'] for i in upstream['Instances'][:100]}
    # Train tasks with '"URL": [NaN]' (upstream's synthetic tasks) load.
    assert {'task1087_two_number_sum', 'task1331_reverse_array', 'task1403_check_validity_date_mmddyyyy'} <= set(train.tasks)
    ds = SNIDataset(test.examples, tokenizer=t5_tok)
    assert all(len(ds[i]['input_ids']) <= 1024 for i in range(len(ds)))


def test_real_sni_sample_with_mode_token(t5_tok):
    tok = copy.deepcopy(t5_tok)
    split = load_sni_split(root=shared_data('sni_sample'), split_name='sample', subset='test', tokenizer=tok,
                           max_instances_per_task=5, max_source_length=128, mode_token='[S2S]')
    ds = SNIDataset(split.examples, tokenizer=tok, max_source_length=128, mode_token='[S2S]')
    rows = [ds[i]['input_ids'] for i in range(len(ds))]
    assert ds.mode_token_id == 32102 and all(r[0] == 32102 and r[-1] == 1 and len(r) <= 128 for r in rows)
    assert max(map(len, rows)) == 128


def test_real_template_and_truncation(t5_tok):
    root = shared_data('sni_sample')
    task = json.loads((root / 'tasks' / 'task1331_reverse_array.json').read_text(encoding='utf-8'))
    inst = task['Instances'][0]
    src = build_source(task, inst, tokenizer=t5_tok)
    assert src == (
        'Definition: In this task, you are given a list of integers in a random order. You need to return the '
        'same list of integers in the reverse order.\n\n'
        f' Positive Example 1 -\nInput: {task["Positive Examples"][0]["input"]}\n'
        f' Output: {task["Positive Examples"][0]["output"]}\n\n'
        f' Positive Example 2 -\nInput: {task["Positive Examples"][1]["input"]}\n'
        f' Output: {task["Positive Examples"][1]["output"]}\n\n'
        f'Now complete the following example -\nInput: {inst["input"]}\nOutput: '
    )
    assert build_source(task, inst, tokenizer=t5_tok, max_source_length=12) == 'Definition: In this task, you are given a list'
    # No example fits 40 tokens, and T5's tokenizer folds newlines into spaces: the decoded
    # truncation reads as one line.
    assert build_source(task, inst, tokenizer=t5_tok, max_source_length=40) == (
        'Definition: In this task, you are given a list of integers in a random order. You need to return the '
        'same list of integers in the reverse order. Now complete the following')
    for budget in (1024, 200, 120, 60):
        for name in ('task648_answer_generation', 'task1393_superglue_copa_text_completion', 'task190_snli_classification'):
            t = json.loads((root / 'tasks' / f'{name}.json').read_text(encoding='utf-8'))
            for i in t['Instances'][:5]:
                assert build_source(t, i, tokenizer=t5_tok, max_source_length=budget) == reference_source(
                    t, i, t5_tok, budget)
