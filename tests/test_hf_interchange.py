"""Hugging Face interchange: export/import round trips, Composer checkpoints, ModelMetadata, HFExport."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers
from safetensors import safe_open

from t5composer.callbacks.hf_export import HFExport
from t5composer.callbacks.model_metadata import MetadataMissingError, ModelMetadata, metadata_from_checkpoint, read_tokenizer_files
from t5composer.models import ComposerT5, T5ForConditionalGeneration, build_composer_t5, export_composer_checkpoint, export_hf, hf_state_dict
from test_generation import tiny_config as generation_tiny_config

REPO = Path(__file__).resolve().parents[1]
SP_VOCAB = 60  # SentencePiece pieces; the tokenizer adds 100 sentinels -> 160 ids
VOCAB = 192

TEXTS = [
    'The quick brown fox jumps over the lazy dog.',
    'Return the value of the named attribute of object.',
    'A list is a mutable sequence, typically used to store collections of items.',
    'Tuples are immutable sequences, typically used to store heterogeneous data.',
    'Export the model to a directory that transformers can load.',
] * 20


def tiny_config(kind: str = 'v1_1', **overrides) -> transformers.T5Config:
    # The generation tests' tiny config, with room for this module's trained tokenizer.
    return generation_tiny_config(kind, **{'vocab_size': VOCAB, **overrides})


pytestmark = pytest.mark.usefixtures('one_thread')


@pytest.fixture(scope='module')
def tok_dir(tmp_path_factory) -> Path:
    """A tiny T5-layout tokenizer (spiece.model + HF files), trained offline."""
    from t5composer.tokenizer_training import train_tokenizer

    return train_tokenizer(out_dir=tmp_path_factory.mktemp('tok') / 'tok', vocab_size=SP_VOCAB, texts=TEXTS)


def batch(seed: int = 0, n: int = 3):
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(2, VOCAB, (n, 12), generator=g)
    mask = torch.ones_like(input_ids)
    mask[1, 8:] = 0
    dec = torch.randint(2, VOCAB, (n, 7), generator=g)
    dec[:, 0] = 0
    return input_ids.masked_fill(mask == 0, 0), mask, dec


def our_logits(model: torch.nn.Module, seed: int = 0) -> torch.Tensor:
    ids, mask, dec = batch(seed)
    with torch.no_grad():
        return model.eval()(ids, decoder_input_ids=dec, attention_mask=mask)


def hf_logits(hf: transformers.T5ForConditionalGeneration, seed: int = 0) -> torch.Tensor:
    ids, mask, dec = batch(seed)
    with torch.no_grad():
        return hf.eval()(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits


def load_hf(path: Path) -> transformers.T5ForConditionalGeneration:
    """from_pretrained, failing on any missing or unexpected key."""
    hf, info = transformers.T5ForConditionalGeneration.from_pretrained(path, output_loading_info=True)
    assert not info['missing_keys'] and not info['unexpected_keys'] and not info['mismatched_keys'], info
    return hf


# ---------------------------------------------------------------------------------------------
# export_hf
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize('kind', ['v1_1', 'original'])
def test_export_roundtrip_keeps_logits(kind, tok_dir, tmp_path):
    torch.manual_seed(0)
    ours = T5ForConditionalGeneration(tiny_config(kind), lm_head_std=0.2).eval()
    out = export_hf(model=ours, out_dir=tmp_path / 'hf', tokenizer=str(tok_dir))
    names = {p.name for p in out.iterdir()}
    assert {'config.json', 'generation_config.json', 'model.safetensors', 'spiece.model', 'tokenizer.json'} <= names
    with safe_open(out / 'model.safetensors', 'pt') as f:
        keys = set(f.keys())
        assert f.metadata() == {'format': 'pt'}
    assert not keys & {'encoder.embed_tokens.weight', 'decoder.embed_tokens.weight'}
    assert ('lm_head.weight' in keys) == (kind == 'v1_1')

    ref = our_logits(ours)
    hf = load_hf(out)
    assert hf.config.architectures == ['T5ForConditionalGeneration']
    assert (hf_logits(hf) - ref).abs().max().item() <= 1e-5
    back = build_composer_t5(config=hf.config, init='pretrained', pretrained=str(out)).model
    assert torch.equal(our_logits(back), ref)
    # transformers generates the same tokens from the exported directory as we do.
    ids, mask, _ = batch(1)
    with torch.no_grad():
        hf_tokens = hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=10, do_sample=False, num_beams=1)
    assert torch.equal(ours.generate(ids, mask, max_new_tokens=10), hf_tokens)

    tok = transformers.AutoTokenizer.from_pretrained(out)
    orig = transformers.AutoTokenizer.from_pretrained(tok_dir)
    assert tok('Return the quick fox.').input_ids == orig('Return the quick fox.').input_ids


def test_export_composer_model_and_tokenizer_object(tok_dir, tmp_path):
    torch.manual_seed(1)
    model = build_composer_t5(config=tiny_config(), lm_head_init_std=0.2)
    tok = transformers.AutoTokenizer.from_pretrained(tok_dir)
    out = export_hf(model=model, out_dir=tmp_path / 'hf', tokenizer=tok)
    assert (out / 'tokenizer.json').is_file()
    assert (hf_logits(load_hf(out)) - our_logits(model.model)).abs().max().item() <= 1e-5
    with pytest.raises(TypeError, match='T5ForConditionalGeneration or ComposerT5'):
        export_hf(model=torch.nn.Linear(2, 2), out_dir=tmp_path / 'x')


def test_hf_state_dict_checks_keys_and_shapes():
    cfg = tiny_config()
    state = T5ForConditionalGeneration(cfg).state_dict()
    assert set(hf_state_dict(state, config=cfg)) == set(state) - {'encoder.embed_tokens.weight', 'decoder.embed_tokens.weight'}
    with pytest.raises(ValueError, match=r'missing 1 keys.*lm_head'):
        hf_state_dict({k: v for k, v in state.items() if k != 'lm_head.weight'}, config=cfg)
    with pytest.raises(ValueError, match='shapes differ'):
        hf_state_dict(state, config=tiny_config(d_ff=96))
    with pytest.raises(ValueError, match='unexpected'):
        hf_state_dict({**state, 'extra.weight': torch.zeros(1)}, config=cfg)


def test_import_from_transformers_save_pretrained(tmp_path):
    """The other direction: a directory written by transformers loads into ours unchanged."""
    torch.manual_seed(2)
    hf = transformers.T5ForConditionalGeneration(tiny_config('original')).eval()
    hf.save_pretrained(tmp_path / 'hf')
    ours = build_composer_t5(config=hf.config, init='pretrained', pretrained=str(tmp_path / 'hf')).model
    assert (our_logits(ours) - hf_logits(hf)).abs().max().item() <= 1e-5


# ---------------------------------------------------------------------------------------------
# ModelMetadata
# ---------------------------------------------------------------------------------------------


def test_model_metadata_state_roundtrip(tok_dir, tmp_path):
    cfg = tiny_config()
    meta = ModelMetadata(config=cfg, tokenizer_dir=str(tok_dir))
    state = meta.state_dict()
    assert state['t5_config'] == cfg.to_dict()
    assert set(state['tokenizer_files']) >= {'spiece.model', 'tokenizer.json', 'tokenizer_config.json'}
    assert state['tokenizer_files']['spiece.model'] == (tok_dir / 'spiece.model').read_bytes()

    config, files = metadata_from_checkpoint({'state': {'callbacks': {'ModelMetadata': state}}})
    assert config.to_dict() == cfg.to_dict() and files == state['tokenizer_files']
    fresh = ModelMetadata(config=cfg, tokenizer_dir=None)
    fresh.load_state_dict(state)  # adopts the tokenizer it lacked
    assert fresh.tokenizer_files == state['tokenizer_files']
    with pytest.raises(MetadataMissingError, match='NanoT5Log'):
        metadata_from_checkpoint({'state': {'callbacks': {'NanoT5Log': {}}}})
    with pytest.raises(ValueError, match='t5_config'):
        fresh.load_state_dict({'tokenizer_files': {}})

    # A spiece.model alone becomes a complete HF tokenizer file set; a dir without files is an error.
    from_model = read_tokenizer_files(str(tok_dir / 'spiece.model'))
    assert {'spiece.model', 'tokenizer.json', 'tokenizer_config.json'} <= set(from_model)
    (tmp_path / 'empty').mkdir()
    with pytest.raises(FileNotFoundError, match='no tokenizer files'):
        read_tokenizer_files(str(tmp_path / 'empty'))


# ---------------------------------------------------------------------------------------------
# A real Composer run: checkpoint contents, export script, HFExport callback
# ---------------------------------------------------------------------------------------------


def _dataloader(n_batches: int = 4, batch_size: int = 2):
    g = torch.Generator().manual_seed(0)
    samples = []
    for _ in range(n_batches * batch_size):
        labels = torch.randint(2, VOCAB, (6,), generator=g)
        samples.append({
            'input_ids': torch.randint(2, VOCAB, (10,), generator=g),
            'labels': labels,
            'decoder_input_ids': torch.cat([torch.zeros(1, dtype=torch.long), labels[:-1]]),
        })
    return torch.utils.data.DataLoader(samples, batch_size=batch_size)


@pytest.fixture(scope='module')
def trained_run(tmp_path_factory, tok_dir):
    """4 batches of a tiny ComposerT5 with ModelMetadata + HFExport; checkpoints every 2 batches."""
    from composer import Trainer

    cfg = tiny_config()
    save_folder = tmp_path_factory.mktemp('run') / 'ckpt'
    torch.manual_seed(0)
    model = build_composer_t5(config=cfg, lm_head_init_std=0.2)
    trainer = Trainer(
        model=model,
        train_dataloader=_dataloader(),
        max_duration='4ba',
        optimizers=torch.optim.AdamW(model.parameters(), lr=1e-2),
        callbacks=[ModelMetadata(config=cfg, tokenizer_dir=str(tok_dir)), HFExport(interval='2ba')],
        save_folder=str(save_folder),
        save_interval='2ba',
        device='cpu',
        progress_bar=False,
        log_to_console=False,
        seed=0,
    )
    trainer.fit()
    trainer.close()
    return save_folder, model


def test_composer_checkpoint_carries_metadata(trained_run, tok_dir):
    save_folder, _ = trained_run
    ckpt = torch.load(save_folder / 'latest-rank0.pt', map_location='cpu', weights_only=False)
    entry = ckpt['state']['callbacks']['ModelMetadata']  # keyed by the class __qualname__
    assert entry['t5_config']['d_model'] == 32
    assert entry['tokenizer_files']['spiece.model'] == (tok_dir / 'spiece.model').read_bytes()
    assert all(k.startswith('model.') for k in ckpt['state']['model'])  # ComposerT5's attribute
    assert 'model.shared.weight' in ckpt['state']['model']


def test_export_script_on_composer_checkpoint(trained_run, tmp_path):
    save_folder, model = trained_run
    out, missing = tmp_path / 'exported', tmp_path / 'nope.pt'

    def script(*args: Path) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, str(REPO / 'recipes' / 'export_hf.py'), *map(str, args)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
            env={**os.environ, 'OMP_NUM_THREADS': '1'},
        )

    # Both runs at once: each spends most of its time importing torch and transformers.
    ok, bad = script(save_folder / 'latest-rank0.pt', out), script(missing, tmp_path / 'x')
    ok_out, ok_err = ok.communicate(timeout=120)
    _, bad_err = bad.communicate(timeout=120)
    assert ok.returncode == 0, ok_err
    assert 'Wrote' in ok_out
    assert (hf_logits(load_hf(out)) - our_logits(model.model)).abs().max().item() <= 1e-5
    assert transformers.AutoTokenizer.from_pretrained(out).eos_token_id == 1
    assert bad.returncode == 2
    assert f'{missing} does not exist' in bad_err and 'Traceback' not in bad_err


def test_export_errors_and_overrides(trained_run, tok_dir, tmp_path):
    save_folder, model = trained_run
    ckpt = torch.load(save_folder / 'latest-rank0.pt', map_location='cpu', weights_only=False)
    del ckpt['state']['callbacks']['ModelMetadata']
    bare = tmp_path / 'bare.pt'
    torch.save(ckpt, bare)
    with pytest.raises(ValueError, match=r'ModelMetadata.*--config NAME_OR_DIR --tokenizer DIR'):
        export_composer_checkpoint(bare, tmp_path / 'x')

    # The overrides supply what the checkpoint lacks (config as a HF config directory here).
    tiny_config().save_pretrained(tmp_path / 'cfg')
    with pytest.warns(UserWarning, match='no tokenizer files'):
        out = export_composer_checkpoint(bare, tmp_path / 'no_tok', config=str(tmp_path / 'cfg'))
    assert not (out / 'tokenizer.json').exists()
    out = export_composer_checkpoint(bare, tmp_path / 'hf', config=tiny_config(), tokenizer=str(tok_dir))
    assert (out / 'spiece.model').is_file()
    assert (hf_logits(load_hf(out)) - our_logits(model.model)).abs().max().item() <= 1e-5
    # A save folder works too (its latest-rank0.pt).
    assert (export_composer_checkpoint(save_folder, tmp_path / 'from_dir') / 'model.safetensors').is_file()

    with pytest.raises(FileNotFoundError, match='missing.pt does not exist'):
        export_composer_checkpoint(tmp_path / 'missing.pt', tmp_path / 'x')
    (tmp_path / 'junk.pt').write_text('not a checkpoint')
    with pytest.raises(ValueError, match='cannot be loaded: it is truncated or not a torch checkpoint'):
        export_composer_checkpoint(tmp_path / 'junk.pt', tmp_path / 'x')
    torch.save({'shared.weight': torch.zeros(2)}, tmp_path / 'weights.pt')
    with pytest.raises(ValueError, match=r"not a Composer checkpoint.*state\['model'\]"):
        export_composer_checkpoint(tmp_path / 'weights.pt', tmp_path / 'x')
    with pytest.raises(ValueError, match='do not fit the model config'):
        export_composer_checkpoint(save_folder / 'latest-rank0.pt', tmp_path / 'x', config=tiny_config(d_ff=96))


def test_hf_export_callback_leaves_loadable_dirs(trained_run):
    save_folder, model = trained_run
    hf_root = save_folder / 'hf'
    assert sorted(p.name for p in hf_root.iterdir()) == ['ba2', 'ba4', 'final']
    final = load_hf(hf_root / 'final')
    assert (hf_logits(final) - our_logits(model.model)).abs().max().item() <= 1e-5
    assert (hf_root / 'final' / 'spiece.model').is_file()
    # ba2 is the model after 2 batches: loadable, and different from the final one.
    assert (hf_logits(load_hf(hf_root / 'ba2')) - hf_logits(final)).abs().max().item() > 1e-4
    assert not any(p.name.startswith('.') for p in (hf_root / 'final').iterdir())  # no temp files left


def test_hf_export_options():
    from t5composer.components import build_components

    (cb,) = build_components('callbacks', {'hf_export': {'interval': '500ba'}})
    assert isinstance(cb, HFExport) and cb.interval == 500 and cb.folder == '{save_folder}/hf'
    assert HFExport(interval='3ba').interval == 3
    with pytest.raises(ValueError, match=r'in one of the units ba \(batches\)'):
        HFExport(interval='1ep')
    with pytest.raises(ValueError, match='without a unit.*500ba'):  # the one duration rule: bare numbers are refused
        HFExport(interval=500)
    with pytest.raises(ValueError, match='local path'):
        HFExport(folder='s3://bucket/hf')


def test_hf_export_needs_save_folder_or_folder(tok_dir, tmp_path):
    from composer import Trainer

    cfg = tiny_config()
    model = build_composer_t5(config=cfg)
    trainer = Trainer(
        model=model, train_dataloader=_dataloader(1), max_duration='1ba', device='cpu',
        optimizers=torch.optim.SGD(model.parameters(), lr=0.1),
        callbacks=[HFExport()], progress_bar=False, log_to_console=False,
    )
    with pytest.raises(ValueError, match='no save_folder'):
        trainer.fit()
    trainer.close()
    # An explicit folder works without save_folder (and without ModelMetadata: no tokenizer).
    trainer = Trainer(
        model=model, train_dataloader=_dataloader(1), max_duration='1ba', device='cpu',
        optimizers=torch.optim.SGD(model.parameters(), lr=0.1),
        callbacks=[HFExport(folder=str(tmp_path / '{run_name}'))], progress_bar=False, log_to_console=False,
        run_name='r1',
    )
    trainer.fit()
    trainer.close()
    assert (tmp_path / 'r1' / 'final' / 'model.safetensors').is_file()
    assert not (tmp_path / 'r1' / 'final' / 'spiece.model').exists()
    assert isinstance(model, ComposerT5)
    assert (hf_logits(load_hf(tmp_path / 'r1' / 'final')) - our_logits(model.model)).abs().max().item() <= 1e-5


def test_export_refuses_a_corrupt_checkpoint_and_names_the_intact_one(trained_run, tmp_path):
    """A flipped byte inside the weights loads without a word in torch.load; export refuses it (zip CRCs)."""
    save_folder, _ = trained_run
    folder = tmp_path / 'run'
    folder.mkdir()
    good, bad = folder / 'ep0-ba2-rank0.pt', folder / 'ep0-ba4-rank0.pt'
    shutil.copy(os.path.realpath(save_folder / 'latest-rank0.pt'), good)
    data = bytearray(good.read_bytes())
    data[len(data) // 2] ^= 0xFF  # inside a tensor's bytes: the pickle still loads
    bad.write_bytes(bytes(data))
    torch.load(bad, map_location='cpu', weights_only=False)  # what made the export silent before
    with pytest.raises(ValueError, match='it is corrupt') as info:
        export_composer_checkpoint(bad, tmp_path / 'hf')
    assert f'python recipes/export_hf.py {good} {tmp_path / "hf"}' in str(info.value)
    assert not (tmp_path / 'hf').exists()


def test_export_never_writes_among_other_files(trained_run, tmp_path):
    """A non-empty out_dir is refused without overwrite; with it, an earlier export is replaced whole,
    and a folder holding anything else is never replaced."""
    save_folder, model = trained_run
    out = tmp_path / 'hf'
    export_composer_checkpoint(save_folder, out)
    (out / 'model.safetensors').write_bytes(b'stale')
    with pytest.raises(FileExistsError, match='is not empty .*pass --overwrite'):
        export_composer_checkpoint(save_folder, out)
    assert (out / 'model.safetensors').read_bytes() == b'stale'  # untouched
    export_composer_checkpoint(save_folder, out, overwrite=True)
    assert (hf_logits(load_hf(out)) - our_logits(model.model)).abs().max().item() <= 1e-5
    assert not [p for p in tmp_path.iterdir() if p.name.startswith('.')]  # no temporary left beside it

    mixed = tmp_path / 'mixed'
    mixed.mkdir()
    (mixed / 'notes.txt').write_text('mine')
    with pytest.raises(FileExistsError, match=r'holds files that are not part of a Hugging Face model \(notes.txt\)'):
        export_composer_checkpoint(save_folder, mixed, overwrite=True)
    assert sorted(p.name for p in mixed.iterdir()) == ['notes.txt']
    (tmp_path / 'file').write_text('x')
    with pytest.raises(FileExistsError, match='is not a directory'):
        export_composer_checkpoint(save_folder, tmp_path / 'file')


def test_export_cli_overwrite_flag(trained_run, tmp_path):
    save_folder, _ = trained_run
    out = tmp_path / 'hf'
    out.mkdir()
    (out / 'config.json').write_text('{}')
    refused = subprocess.run([sys.executable, str(REPO / 'recipes' / 'export_hf.py'), str(save_folder), str(out)],
                             capture_output=True, text=True, cwd=REPO)
    assert refused.returncode == 2 and 'pass --overwrite' in refused.stderr and 'Traceback' not in refused.stderr
    done = subprocess.run([sys.executable, str(REPO / 'recipes' / 'export_hf.py'), str(save_folder), str(out), '--overwrite'],
                          capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert (out / 'model.safetensors').is_file()
