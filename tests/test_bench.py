"""Smoke tests of the benchmark cases (python -m bench) at tiny sizes, so they cannot rot.

Correctness of the fast paths is tested where they live (span corruption, conversion,
tokenization); these only check that each case runs end to end and reports what it should.
Timings are not checked.
"""

from __future__ import annotations

import gzip
import json

import pytest


@pytest.fixture(scope='module')
def cli():
    """``python -m bench``'s module (CASES, build_parser, main)."""
    import bench.__main__

    return bench.__main__


def run_case(cli, tmp_path, *argv: str) -> list[dict]:
    out = tmp_path / 'bench.json'
    assert cli.main([*argv, '--device', 'cpu', '--warmup', '0', '--repeats', '1', '--json', str(out)]) == 0
    results = json.loads(out.read_text())
    (name,) = results['cases']
    return results['cases'][name]


def test_help_lists_the_cases(cli, capsys):
    with pytest.raises(SystemExit):
        cli.main(['--help'])
    text = capsys.readouterr().out
    for name in ('generation', 'collator', 'dataloader', 'objectives', 'converter', 'model', 'optimizer', 'scaling'):
        assert name in text


def test_collator_case(cli, tmp_path):
    rows = run_case(cli, tmp_path, '--only', 'collator', '--collator-batch', '4', '--collator-batches', '2')
    assert [r['variant'].split()[0] for r in rows] == ['SpanCorruptionCollator', 'per-example']
    for row in rows:
        assert row['output_shapes'] == {'input_ids': [4, 512], 'labels': [4, 114], 'decoder_input_ids': [4, 114]}
        assert row['samples_per_s'] > 0 and row['peak_mib'] > 0 and row['threads'] == 1
    assert rows[1]['speedup_vs_reference'] == 1.0


def test_dataloader_case(cli, tmp_path):
    rows = run_case(cli, tmp_path, '--only', 'dataloader', '--dataloader-workers', '0', '--dataloader-batch', '8',
                    '--dataloader-batches', '3')
    (row,) = rows
    assert row['num_workers'] == 0 and row['samples_per_s'] > 0 and row['batch'] == 8
    assert row['dtypes'] == {'input_ids': 'int64', 'labels': 'int64', 'decoder_input_ids': 'int64'}
    assert {'pin_memory', 'persistent_workers', 'prefetch_factor', 'peak_mib'} <= set(row)


def test_objectives_case(cli, tmp_path):
    rows = run_case(cli, tmp_path, '--only', 'objectives', '--objectives-batch', '16', '--objectives-batches', '2',
                    '--objectives-pad-batches', '4', '--objectives-workers', '0', '--objectives-loader-batches', '2')
    assert [(r['preset'], r['collator'], r['training_collator']) for r in rows] == [
        ('span_corruption', 'SpanCorruptionCollator', True), ('span_corruption', 'MixtureCollator', False),
        ('ul2', 'MixtureCollator', True)]
    for row in rows:
        assert row['samples_per_s'] > 0 and row['raw_length'] == 568 and row['batch'] == 16
        assert (row['loader_samples_per_s'] is not None) == row['training_collator']
    for row in rows[:2]:  # plain span corruption: one shape, no padding
        assert row['shapes'] == [[512, 114]] and row['encoder_padding'] == row['decoder_padding'] == 0
        assert row['expected_encoder_padding'] == row['expected_decoder_padding'] == 0
    ul2 = rows[2]
    assert ul2['num_shapes'] == len(ul2['shapes']) <= 7 and [485, 200] in ul2['shapes']  # 64 rows: S is there
    assert 0 < ul2['encoder_padding'] < 0.1 and 0 < ul2['decoder_padding'] < 0.2
    assert 0.02 < ul2['expected_encoder_padding'] < 0.03 and 0.05 < ul2['expected_decoder_padding'] < 0.07
    with pytest.raises(ValueError, match="unknown objective preset 'ul3'"):
        run_case(cli, tmp_path, '--only', 'objectives', '--objectives-presets', 'ul3')


@pytest.mark.slow  # ~7 s: the conversion runs in a fresh interpreter, as the command does
def test_converter_case(cli, tmp_path):
    from t5composer.data.demo_corpus import demo_documents
    from t5composer.tokenizer_training import train_tokenizer

    texts = [d['text'] for d in demo_documents()[:40]]
    src = tmp_path / 'src'
    src.mkdir()
    with gzip.open(src / 'c4-train.00000-of-00001.json.gz', 'wt') as f:
        f.writelines(json.dumps({'text': t, 'timestamp': '2019', 'url': 'u'}) + '\n' for t in texts)
    tok = train_tokenizer(out_dir=tmp_path / 'tok', vocab_size=500, texts=texts)
    rows = run_case(cli, tmp_path, '--only', 'converter', '--converter-source', str(src), '--converter-tokenizer', str(tok),
                    '--converter-copies', '2', '--converter-workers', '1')
    by_variant = {r['variant']: r for r in rows}
    raw = by_variant['raw sentencepiece encode (1 thread)']
    converted = by_variant['convert_c4 (1 worker, sentencepiece)']
    assert 'raw HF tokenizers batch encode (1 thread)' in by_variant
    # The converter's tokens (one EOS per document) are exactly the raw encoder's.
    assert converted['tokens'] == raw['tokens'] and converted['vs_raw'] > 0


@pytest.mark.slow  # ~15 s: three points, each in a fresh interpreter
def test_scaling_case(cli, tmp_path):
    import transformers

    tiny = tmp_path / 'tiny'
    transformers.T5Config(vocab_size=300, d_model=32, d_kv=8, num_heads=4, d_ff=64, num_layers=2, num_decoder_layers=2,
                          feed_forward_proj='gated-gelu', tie_word_embeddings=False, dropout_rate=0.0).save_pretrained(tiny)
    rows = run_case(cli, tmp_path, '--only', 'scaling', '--scaling-models', str(tiny), '--scaling-model', str(tiny),
                    '--scaling-batch', '1', '--scaling-length', '32', '--scaling-batches', '1,2', '--scaling-lengths', '16,32')
    assert [(r['sweep'], r['batch'], r['lengths']) for r in rows] == [
        ('model', 1, '32+8'), ('batch', 1, '32+8'), ('batch', 2, '32+8'), ('length', 1, '16+5'), ('length', 1, '32+8')]
    assert rows[0]['times_s'] == rows[1]['times_s']  # a point shared by sweeps is measured once
    from t5composer.models import load_model_config, t5_flops_per_batch

    config = load_model_config(str(tiny))
    for r in rows:
        assert r['flops_per_step'] == t5_flops_per_batch(config, batch_size=r['batch'], encoder_length=r['encoder_length'],
                                                         decoder_length=r['decoder_length'])
        assert r['step_s'] > 0 and r['peak_mib'] > 0 and 0 < r['attention_share'] < 1
    assert rows[2]['flops_per_step'] == 2 * rows[1]['flops_per_step']  # FLOPs are linear in the batch
    assert rows[3]['attention_share'] < rows[4]['attention_share']  # and the attention share grows with length
    assert rows[1]['s_per_flop_vs_first'] == 1.0 and rows[3]['s_per_flop_vs_first'] == 1.0


@pytest.mark.slow
def test_optimizer_case(cli, tmp_path):
    import transformers

    tiny = tmp_path / 'tiny'
    transformers.T5Config(vocab_size=300, d_model=32, d_kv=8, num_heads=4, d_ff=64, num_layers=2, num_decoder_layers=2,
                          feed_forward_proj='gated-gelu', tie_word_embeddings=False, dropout_rate=0.0).save_pretrained(tiny)
    rows = run_case(cli, tmp_path, '--only', 'optimizer', '--optimizer-model', str(tiny), '--optimizer-step-batch', '1')
    assert [r['variant'] for r in rows] == ['nanot5', 'adamwscale', 'adamwscale+compile']
    for r in rows:
        assert r['step_ms'] > 0 and r['gb_per_s'] > 0 and 0 < r['share_of_step'] < 1 and r['forward_backward_s'] > 0
        assert r['tensors'] == 52 and r['threads'] == 1 and r['interleaved']  # 2+2 layers of v1.1
    assert rows[0]['speedup_vs_nanot5'] == 1.0 and rows[2]['compile_s'] is not None and rows[1]['compile_s'] is None
    with pytest.raises(ValueError, match='unknown optimizer variant'):
        run_case(cli, tmp_path, '--only', 'optimizer', '--optimizer-model', str(tiny), '--optimizer-variants', 'adam')


def test_scaling_plan_rejects_an_unknown_sweep(cli, capsys):
    from bench import scaling

    with pytest.raises(SystemExit):  # the command line refuses it before any case runs
        cli.main(['--device', 'cpu', '--only', 'scaling', '--scaling-sweeps', 'model,width'])
    assert "unknown sweep(s) ['width']; choose among 'model,batch,length'" in capsys.readouterr().err
    args = cli.build_parser().parse_args(['--device', 'cpu'])
    args.scaling_sweeps = 'model,width'  # a library caller's arguments
    with pytest.raises(ValueError, match="unknown sweep.*'width'.*model,batch,length"):
        scaling.plan(args)
    args = cli.build_parser().parse_args(['--device', 'cpu', '--scaling-sweeps', 'batch'])
    assert [p['batch'] for _, p in scaling.plan(args)] == [1, 2, 4, 8]


def test_objective_comparison_pieces(tmp_path):
    """The equal-FLOPs rule, the scores it reads from a fine-tuning run and the table it prints."""
    from bench import objective_comparison as cmp
    from t5composer.data.objectives import Objective
    from t5composer.models import load_model_config, t5_flops_per_batch

    config = load_model_config('google/t5-v1_1-small')
    span = Objective.preset('span_corruption')
    assert cmp.expected_flops_per_row(span, 568, config) == t5_flops_per_batch(config, batch_size=1, encoder_length=512,
                                                                               decoder_length=114)
    ul2 = Objective.preset('ul2')
    by_hand = sum(w * t5_flops_per_batch(config, batch_size=1, encoder_length=e, decoder_length=d)
                  for w, (e, d) in zip(ul2.weights, ul2.output_lengths(568)))
    assert cmp.expected_flops_per_row(ul2, 568, config) == pytest.approx(by_hand)

    for step, score in ((50, 10.0), (300, 30.0)):  # the last eval counts, not the last file name in sort order
        folder = tmp_path / 'ft' / 'predictions'
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f'sni-ba{step}-scores.json').write_text(json.dumps({'RougeL': score, 'RougeL_per_task': {'t1': score + 1}}))
    assert cmp._final_scores(tmp_path / 'ft', 'RougeL') == {'overall': 30.0, 't1': 31.0}

    results = {'seeds': [1, 2], 'pretrain_steps': {1: {'span_corruption': 400, 'ul2': 370}},
               'scores': {'span_corruption': {1: {'overall': 20.0, 't1': 10.0}, 2: {'overall': 30.0, 't1': 14.0}},
                          'ul2': {1: {'overall': 25.0, 't1': 12.0}, 2: {'overall': 27.0, 't1': 12.0}}}}
    table = cmp.markdown(results)
    assert '| t1 | 12.0 (10.0-14.0) | 12.0 (12.0-12.0) |' in table
    assert '| overall | 25.0 (20.0-30.0) | 26.0 (25.0-27.0) |' in table
    assert 'ul2 370 batches' in table
