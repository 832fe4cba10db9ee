"""Tokenizer loading, fingerprints, sentinels, batch encoding and SentencePiece training."""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from t5composer.tokenization import (
    MODE_TOKENS,
    BatchEncoder,
    add_mode_tokens,
    load_tokenizer,
    mode_token_name_problem,
    mode_token_problems,
    sentinel_ids,
    tokenizer_fingerprint,
    vocab_size,
)
from t5composer.tokenizer_training import iter_sentences, train_tokenizer
from conftest import shared_data

REPO = Path(__file__).resolve().parents[1]
VOCAB = 600


@pytest.fixture(scope='session')
def demo_texts() -> list[str]:
    from t5composer.data.demo_corpus import demo_documents

    return [d['text'] for d in demo_documents()[:60]]


@pytest.fixture(scope='session')
def tiny_tok_dir(tmp_path_factory, demo_texts) -> Path:
    """A small T5-style tokenizer trained on part of the demo corpus (no ../shared needed)."""
    return train_tokenizer(out_dir=tmp_path_factory.mktemp('tok') / 'tiny', vocab_size=VOCAB, texts=demo_texts)


def test_trained_layout_matches_t5(tiny_tok_dir):
    tok = load_tokenizer(tiny_tok_dir)
    assert type(tok).__name__ == 'T5TokenizerFast'
    assert vocab_size(tok) == len(tok) == VOCAB + 100
    assert tok.convert_ids_to_tokens([0, 1, 2]) == ['<pad>', '</s>', '<unk>']
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2)
    assert tok.bos_token_id is None
    assert tok.convert_tokens_to_ids('<extra_id_0>') == VOCAB + 99
    assert tok.convert_tokens_to_ids('<extra_id_99>') == VOCAB
    assert sentinel_ids(tok, 3) == [VOCAB + 99, VOCAB + 98, VOCAB + 97]
    assert {p.name for p in tiny_tok_dir.iterdir()} >= {'spiece.model', 'tokenizer.json', 'tokenizer_config.json'}
    # The first word keeps its '▁' (a transformers 4.57 conversion bug drops it; see spiece_to_fast).
    assert tok.tokenize('Return the value')[0].startswith('▁')
    assert tok('Return the value.').input_ids[-1] == 1


def test_all_load_paths_agree(tiny_tok_dir, tmp_path, monkeypatch):
    spiece = tiny_tok_dir / 'spiece.model'
    only_spiece = tmp_path / 'only_spiece'
    only_spiece.mkdir()
    shutil.copy(spiece, only_spiece / 'spiece.model')
    home = tmp_path / 'home'
    shutil.copytree(tiny_tok_dir, home / 'tok')
    monkeypatch.setenv('HOME', str(home))
    toks = [load_tokenizer(tiny_tok_dir), load_tokenizer(spiece), load_tokenizer(str(only_spiece)), load_tokenizer('~/tok')]
    text = 'The for statement is used to iterate over the elements of a sequence.  Two  spaces.'
    assert len({tokenizer_fingerprint(t) for t in toks}) == 1
    assert len({tuple(t(text).input_ids) for t in toks}) == 1
    assert tokenizer_fingerprint(toks[0]).startswith('sha256:')


def test_fingerprint_differs_for_other_vocab(tiny_tok_dir, tmp_path, demo_texts):
    other = train_tokenizer(out_dir=tmp_path / 'other', vocab_size=VOCAB, texts=demo_texts[:40])
    assert tokenizer_fingerprint(load_tokenizer(other)) != tokenizer_fingerprint(load_tokenizer(tiny_tok_dir))


def test_training_is_deterministic(tiny_tok_dir, tmp_path, demo_texts):
    again = train_tokenizer(out_dir=tmp_path / 'again', vocab_size=VOCAB, texts=demo_texts)
    assert (again / 'spiece.model').read_bytes() == (tiny_tok_dir / 'spiece.model').read_bytes()


def test_train_from_files(tmp_path, demo_texts):
    c4 = tmp_path / 'c4-train.00000-of-00001.json.gz'
    with gzip.open(c4, 'wt', encoding='utf-8') as f:
        for t in demo_texts[:30]:
            f.write(json.dumps({'text': t, 'timestamp': 'x', 'url': 'u'}) + '\n')
        f.write('not json\n')
    txt = tmp_path / 'extra.txt'
    txt.write_text('\n'.join(demo_texts[30:40]), encoding='utf-8')
    out = train_tokenizer(out_dir=tmp_path / 'fromfiles', vocab_size=400, input_files=[c4, txt])
    assert len(load_tokenizer(out)) == 500


def test_training_errors(tmp_path):
    with pytest.raises(ValueError, match='too small for vocab_size'):
        train_tokenizer(out_dir=tmp_path / 'x', vocab_size=5000, texts=['just a few words here'] * 5)
    with pytest.raises(ValueError, match='exactly one'):
        train_tokenizer(out_dir=tmp_path / 'y', vocab_size=100)


def test_iter_sentences_cuts_long_lines():
    long = ' '.join(['word'] * 3000)  # 15k bytes
    parts = list(iter_sentences([f'a line\n\n  \n{long}'], max_sentence_length=4192))
    assert parts[0] == 'a line'
    assert all(0 < len(p.encode()) <= 4192 for p in parts)
    assert ' '.join(parts[1:]).split() == long.split()


def test_sentinel_ids_error_names_count(tiny_tok_dir):
    tok = load_tokenizer(tiny_tok_dir)
    with pytest.raises(ValueError, match=r'has 100 sentinel tokens.*101 are needed'):
        sentinel_ids(tok, 101)


def test_load_errors(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match='does not exist'):
        load_tokenizer(tmp_path / 'missing' / 'spiece.model')
    (tmp_path / 'empty').mkdir()
    with pytest.raises(FileNotFoundError, match='no tokenizer files'):
        load_tokenizer(tmp_path / 'empty')
    (tmp_path / 'notes.txt').write_text('x')
    with pytest.raises(FileNotFoundError, match='not a SentencePiece'):
        load_tokenizer(tmp_path / 'notes.txt')

    import transformers

    def offline(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files")

    monkeypatch.setattr(transformers.AutoTokenizer, 'from_pretrained', offline)
    with pytest.raises(OSError, match=r'(?s)hub was unreachable.*local directory.*spiece.model'):
        load_tokenizer('google/t5-v1_1-base')


# ---- UL2 mode tokens -------------------------------------------------------------------------
@pytest.mark.parametrize('asked', [['[S2S]'], ['[NLG]', '[NLU]'], ['[S2S]', '[NLU]', '[NLG]'], ['[R]', '[S2S]'], ['[NLU]', '[R]', '[X]']])
def test_mode_token_ids_do_not_depend_on_the_subset_asked(tiny_tok_dir, asked):
    tok = load_tokenizer(tiny_tok_dir)
    base_len, sentinels, base_special = len(tok), sentinel_ids(tok, 100), list(tok.additional_special_tokens)
    ids = add_mode_tokens(tok, asked)
    canonical = {t: VOCAB + 100 + k for k, t in enumerate(MODE_TOKENS)}
    custom = [t for t in asked if t not in MODE_TOKENS]
    assert ids == {t: canonical[t] if t in canonical else VOCAB + 103 + custom.index(t) for t in asked}
    assert tok.convert_tokens_to_ids(list(MODE_TOKENS)) == list(canonical.values())
    assert len(tok) == base_len + 3 + len(custom)
    # Idempotent: asking again (or for fewer) adds nothing and gives the same ids.
    assert add_mode_tokens(tok, asked) == ids and add_mode_tokens(tok, asked[:1]) == {asked[0]: ids[asked[0]]}
    assert len(tok) == base_len + 3 + len(custom) and add_mode_tokens(tok, []) == {}
    # T5's sentinels stay what they were, as additional special tokens.
    assert sentinel_ids(tok, 100) == sentinels and tok.additional_special_tokens[:100] == base_special


def test_mode_token_encodes_as_one_id_and_decodes_away(tiny_tok_dir):
    tok = load_tokenizer(tiny_tok_dir)
    s2s = add_mode_tokens(tok, ['[S2S]'])['[S2S]']
    assert tok('[S2S]', add_special_tokens=False).input_ids == [s2s]
    ids = tok('Return [S2S] the value.').input_ids
    assert ids.count(s2s) == 1 and ids[-1] == tok.eos_token_id
    assert '[S2S]' not in tok.decode(ids, skip_special_tokens=True) and '[S2S]' in tok.decode(ids)
    assert tok.decode(tok('[S2S] Return the value.').input_ids, skip_special_tokens=True) == 'Return the value.'


def test_fingerprint_of_the_loaded_tokenizer_has_no_mode_tokens(tiny_tok_dir, tmp_path):
    """Loading adds nothing, so the converter's fingerprint matches until mode tokens are added (compare before)."""
    base = tokenizer_fingerprint(load_tokenizer(tiny_tok_dir))
    tok = load_tokenizer(tiny_tok_dir)
    add_mode_tokens(tok, ['[NLU]'])
    assert len(load_tokenizer(tiny_tok_dir)) == VOCAB + 100 and tokenizer_fingerprint(load_tokenizer(tiny_tok_dir)) == base
    assert tokenizer_fingerprint(tok) != base
    # Saved (as checkpoints and Hugging Face exports save it) and loaded back: same ids, same fingerprint.
    from t5composer.models.checkpoint_metadata import read_tokenizer_files

    tok.save_pretrained(tmp_path / 'saved')
    carried = tmp_path / 'carried'
    carried.mkdir()
    for name, data in read_tokenizer_files(tok).items():
        (carried / name).write_bytes(data)
    for again in (load_tokenizer(tmp_path / 'saved'), load_tokenizer(carried)):
        assert again.convert_tokens_to_ids(list(MODE_TOKENS)) == [VOCAB + 100, VOCAB + 101, VOCAB + 102]
        assert tokenizer_fingerprint(again) == tokenizer_fingerprint(tok) and sentinel_ids(again, 100) == sentinel_ids(tok, 100)
        assert add_mode_tokens(again, ['[S2S]']) == {'[S2S]': VOCAB + 102} and len(again) == len(tok)


def test_bad_mode_tokens_are_refused(tiny_tok_dir):
    tok = load_tokenizer(tiny_tok_dir)
    piece = tok.convert_ids_to_tokens(10)
    for bad in ('', ' [S2S]', 3):
        assert 'non-empty string' in mode_token_name_problem(bad)
        with pytest.raises(ValueError, match='non-empty string without surrounding whitespace'):
            add_mode_tokens(tok, [bad])
    for taken in ('</s>', '<pad>', '<extra_id_0>', piece):
        with pytest.raises(ValueError, match='already a piece, sentinel or special token'):
            add_mode_tokens(tok, [taken])
    assert len(tok) == VOCAB + 100  # a refused request adds nothing
    assert mode_token_name_problem('[S2S]') is None


def test_mode_token_problems_name_token_id_size_and_fix():
    assert mode_token_problems({'[NLU]': 32100, '[S2S]': 32102}, 32128) == []
    (problem,) = mode_token_problems({'[S2S]': 32102, '[R]': 32128}, 32128)
    assert problem.startswith('The mode token [R] has id 32128, but the model has vocab_size 32128')
    assert 'model.vocab_size to at least 32129' in problem and 'fewer custom mode tokens' in problem


def test_batch_encoder_backends(tiny_tok_dir, tmp_path, demo_texts):
    tok = load_tokenizer(tiny_tok_dir)
    sp_enc, hf_enc = BatchEncoder(tok), BatchEncoder(tok, backend='tokenizers')
    assert (sp_enc.backend, hf_enc.backend) == ('sentencepiece', 'tokenizers')
    texts = ['Hello world.', 'Lists are  mutable sequences.\n\nNew paragraph', '', 'é ñ ü x']
    assert sp_enc(texts) == hf_enc(texts) == [tok(t, add_special_tokens=False).input_ids for t in texts]
    # On ordinary prose the backends agree; they may differ on ties in runs like '-----'.
    prose = [t for t in demo_texts if '--' not in t and '**' not in t and '==' not in t][:20]
    assert sp_enc(prose) == hf_enc(prose)
    # Without its spiece.model the tokenizer can only use the tokenizers backend.
    no_sp = tmp_path / 'no_sp'
    no_sp.mkdir()
    for f in tiny_tok_dir.iterdir():
        if f.name != 'spiece.model':
            shutil.copy(f, no_sp / f.name)
    tok2 = load_tokenizer(no_sp)
    assert tokenizer_fingerprint(tok2) == tokenizer_fingerprint(tok)
    assert BatchEncoder(tok2).backend == 'tokenizers'
    with pytest.raises(ValueError, match='sentencepiece backend needs'):
        BatchEncoder(tok2, backend='sentencepiece')


def test_batch_encoder_pickles_without_transformers(tiny_tok_dir, tmp_path):
    # Conversion workers get the pickled encoder: same ids, and no transformers import (seconds
    # of start-up per worker); the sentencepiece encoder does not even carry the tokenizers object.
    import pickle

    tok = load_tokenizer(tiny_tok_dir)
    texts = ['Hello world.', 'Lists are  mutable sequences.\n\nNew paragraph', 'é ñ ü x']
    for backend in ('sentencepiece', 'tokenizers'):
        enc = BatchEncoder(tok, backend=backend)
        blob = tmp_path / f'{backend}.pkl'
        blob.write_bytes(pickle.dumps(enc))
        assert pickle.loads(blob.read_bytes())(texts) == enc(texts)
        code = ('import pickle, sys; enc = pickle.load(open(sys.argv[1], "rb")); '
                'print(enc(sys.argv[2:]), "transformers" in sys.modules, "tokenizers" in sys.modules)')
        out = subprocess.run([sys.executable, '-c', code, str(blob), *texts], cwd=REPO, capture_output=True, text=True, check=True)
        assert out.stdout.split('] ')[-1].split() == ['False', str(backend == 'tokenizers')], out.stdout
        assert out.stdout.startswith(str(enc(texts)))


def test_train_tokenizer_recipe(tmp_path, demo_texts):
    src = tmp_path / 'corpus.txt'
    src.write_text('\n'.join(demo_texts[:20]), encoding='utf-8')
    script = str(REPO / 'recipes' / 'train_tokenizer.py')
    assert 'vocab_size' in subprocess.run([sys.executable, script, '--help'], capture_output=True, text=True, check=True).stdout
    out = subprocess.run(
        [sys.executable, script, '--input', str(src), '--out', str(tmp_path / 'rt'), '--vocab_size', '300'],
        capture_output=True, text=True, cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    assert '<extra_id_0> = 399' in out.stdout
    assert len(load_tokenizer(tmp_path / 'rt')) == 400


# ---- real T5 tokenizer (../shared/data; skipped when absent) --------------------------------
def test_real_t5_tokenizer_ids():
    spiece = shared_data('tokenizer', 't5', 'spiece.model')
    for tok in (load_tokenizer(spiece), load_tokenizer(spiece.parent)):
        assert tok('translate English to German: That is good.').input_ids == [13959, 1566, 12, 2968, 10, 466, 19, 207, 5, 1]
        assert tok.convert_ids_to_tokens(tok('The quick brown fox jumps over the lazy dog.').input_ids[:-1]) == [
            '▁The', '▁quick', '▁brown', '▁', 'fox', '▁jump', 's', '▁over', '▁the', '▁lazy', '▁dog', '.']
        assert len(tok) == 32100
        assert sentinel_ids(tok, 2) == [32099, 32098]
        assert sentinel_ids(tok, 100)[-1] == 32000
    assert tokenizer_fingerprint(load_tokenizer(spiece)) == tokenizer_fingerprint(load_tokenizer(spiece.parent))


def test_real_t5_mode_token_ids():
    tok = load_tokenizer(shared_data('tokenizer', 't5', 'spiece.model'))
    assert add_mode_tokens(tok, ['[S2S]']) == {'[S2S]': 32102}
    assert tok.convert_tokens_to_ids(list(MODE_TOKENS)) == [32100, 32101, 32102]
    assert mode_token_problems(add_mode_tokens(tok, list(MODE_TOKENS)), 32128) == []  # T5 v1.1's vocab_size
    assert sentinel_ids(tok, 100) == list(range(32099, 31999, -1))
    assert tok('[NLG] translate English to German: That is good.').input_ids == [32101, 13959, 1566, 12, 2968, 10, 466, 19, 207, 5, 1]


def test_real_t5_backends_agree_on_c4():
    spiece = shared_data('tokenizer', 't5', 'spiece.model')
    c4 = shared_data('c4_sample', 'c4-validation.00000-of-00001.json.gz')
    with gzip.open(c4, 'rt', encoding='utf-8') as f:
        texts = [json.loads(line)['text'] for line in f]
    tok = load_tokenizer(spiece)
    assert BatchEncoder(tok)(texts) == BatchEncoder(tok, backend='tokenizers')(texts)


def test_test_sentencepiece_fixture_fingerprint_differs():
    other = shared_data('tokenizer', 'test_sentencepiece', 'test_sentencepiece.model')
    t5 = shared_data('tokenizer', 't5', 'spiece.model')
    assert tokenizer_fingerprint(load_tokenizer(other)) != tokenizer_fingerprint(load_tokenizer(t5))
