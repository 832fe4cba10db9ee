"""The ``model`` benchmark case, the Composer-loop helper and bench/gpu_check.sh, on CPU at tiny size.

Correctness only (never speed): every variant runs, the models really share their weights (same
first loss), the SDPA kernel check reports, and the GPU script's loop part runs end to end.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench import model as model_case
from bench import train_loop
from test_model import tiny_config

REPO = Path(__file__).resolve().parents[1]


def _args(**kw) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--warmup', type=int, default=1)
    parser.add_argument('--repeats', type=int, default=1)
    model_case.add_args(parser)
    args = parser.parse_args([])
    for k, v in kw.items():
        setattr(args, k, v)
    return args


def test_model_case_variants_share_weights_and_report(tmp_path, one_thread):
    tiny_config('v1_1', vocab_size=512).save_pretrained(tmp_path)
    args = _args(model_name=str(tmp_path), model_batch=2, model_microbatch=1, model_threads='1',
                 model_variants='hf,sdpa,flex,flex_dense,sdpa+ckpt,hf+ckpt,sdpa+opt')
    rows = model_case.run(args)
    assert [r['variant'] for r in rows] == ['hf', 'sdpa', 'flex', 'flex_dense', 'sdpa+ckpt', 'hf+ckpt', 'sdpa+opt']
    assert not [r for r in rows if 'error' in r]
    first = rows[0]['first_loss']
    for r in rows:
        assert r['first_loss'] == pytest.approx(first, rel=1e-5), r['variant']  # same weights, same batch
        assert r['step_s'] > 0 and r['tokens_per_s'] > 0 and r['peak_mib'] > 0 and r['mfu'] is None
        assert r['flops_per_step'] == rows[0]['flops_per_step'] and r['batch'] == 2 and r['microbatch'] == 1
    assert rows[1]['speedup_vs_hf'] == pytest.approx(rows[0]['step_s'] / rows[1]['step_s'])
    assert 'speedup_vs_hf' in rows[4]  # sdpa+ckpt against hf+ckpt
    assert 'speedup_vs_hf' not in rows[6]  # no hf+opt to compare with
    assert set(rows[0]['projection_fusion_ms']) == {'qkv separate', 'qkv fused', 'wi separate', 'wi fused'}


def test_registered_in_the_benchmark_script(tmp_path, one_thread):
    import bench.__main__ as bench
    assert bench.CASES['model'] is model_case
    tiny_config('v1_1', vocab_size=512).save_pretrained(tmp_path / 'cfg')
    out = tmp_path / 'bench.json'
    assert bench.main(['--only', 'model', '--device', 'cpu', '--warmup', '0', '--repeats', '1', '--json', str(out),
                       '--model-name', str(tmp_path / 'cfg'), '--model-batch', '1', '--model-variants', 'hf,sdpa',
                       '--model-threads', '1']) == 0
    rows = json.loads(out.read_text())['cases']['model']
    assert [r['variant'] for r in rows] == ['hf', 'sdpa'] and rows[0]['hf_attn_implementation'] == 'eager'


def test_bad_variant_names_fail_before_building():
    with pytest.raises(ValueError, match='unknown model variant'):
        model_case.run(_args(model_variants='sdpa,flash'))
    with pytest.raises(ValueError, match='unknown flags'):
        model_case.run(_args(model_variants='sdpa+fast'))


def test_compile_modes_and_the_fused_loss_imply_compiling():
    assert model_case._parse_variant('sdpa+cudagraphs') == ('sdpa', {'cudagraphs', 'compile'})
    assert model_case._parse_variant('hf+autotune') == ('hf', {'autotune', 'compile'})
    assert model_case._parse_variant('sdpa+closs+opt') == ('sdpa', {'closs', 'compile', 'opt'})
    assert model_case._parse_variant('sdpa+ckpt') == ('sdpa', {'ckpt'})


@pytest.mark.slow
def test_the_loss_compiled_with_the_model_gives_the_same_step(tmp_path, one_thread):
    # +closs (GPU option: the fp32 cross-entropy inside the compiled function) compiles and computes
    # the same loss; the compiled +opt step (clipping, flag, compiled adamwscale) runs too.
    tiny_config('v1_1', vocab_size=512).save_pretrained(tmp_path)
    rows = model_case.run(_args(model_name=str(tmp_path), model_batch=2, model_threads='1',
                                model_variants='sdpa,sdpa+closs+opt'))
    assert not [r for r in rows if 'error' in r], rows
    assert rows[1]['first_loss'] == pytest.approx(rows[0]['first_loss'], rel=1e-5)


def test_sdpa_kernel_check_on_cpu():
    """On CPU a biased call that needs the bias gradient runs the math path; the mask-free one flash."""
    report = model_case.sdpa_kernel_check('cpu', dtype=torch.float32, heads=2, length=32, d_kv=8)
    assert report['self_attention']['default'] == ['aten::_scaled_dot_product_attention_math']
    assert report['self_attention']['accepts']['MATH']
    assert not report['self_attention']['accepts']['FLASH_ATTENTION']
    assert 'aten::_scaled_dot_product_flash_attention_for_cpu' in report['cross_attention']['default']


def test_device_peaks():
    assert model_case.device_peak_tflops('NVIDIA H100 80GB HBM3') == 989.0
    assert model_case.device_peak_tflops('NVIDIA H200') == 989.0
    assert model_case.device_peak_tflops('NVIDIA A100-SXM4-80GB') == 312.0
    assert model_case.device_peak_tflops('NVIDIA GeForce RTX 3090') is None


@pytest.mark.usefixtures('large_interpreter_tiles')
def test_attn_impl_correctness_check_on_cpu():
    report = model_case.attn_impl_correctness_check('cpu', ('flex', 'flex_dense', 'triton'))
    for diffs in report.values():
        assert diffs['logits_max_abs_diff'] < 1e-4 and diffs['grad_max_rel_diff'] < 1e-4 and diffs['table_grad_rel_diff'] < 1e-4


def test_bias_attention_timing_on_cpu():
    """The GPU script's kernel comparison, at toy size in Triton's interpreter (fp32: both match fp32 SDPA)."""
    report = model_case.bias_attention_timing('cpu', dtype=torch.float32, heads=2, d_kv=16, batch=2, repeats=1,
                                              encoder_length=40, decoder_length=19)
    assert set(report) == {'encoder', 'decoder'}
    for entry in report.values():
        assert set(entry) == {'sdpa', 'ours'}
        for e in entry.values():
            assert e['fwd_ms'] > 0 and e['fwd_bwd_tflops'] > 0 and max(e['error_vs_fp32'].values()) < 1e-5, e


def test_side_by_side_and_the_results_file_name():
    bare = {'variant': 'sdpa+compile+opt', 'step_s': 0.2, 'tokens_per_s': 400_000.0, 'mfu': 0.4}
    rows = train_loop.side_by_side(bare, 0.25)
    assert [r['what'] for r in rows] == ['bare step (sdpa+compile+opt)', 'Composer loop']
    assert rows[1]['tokens_per_s'] == pytest.approx(320_000.0) and rows[1]['mfu'] == pytest.approx(0.32)
    assert train_loop.results_name('NVIDIA H200', '2026-12-04') == 'h200-2026-12-04.json'
    assert train_loop.results_name('NVIDIA H100 80GB HBM3', '2026-12-04') == 'h100-80gb-hbm3-2026-12-04.json'
    # The windows that hold a probed batch (sync debug, profiler) are left out of the loop's s/step.
    log = '\n'.join(f'[train] Step {n} out of 60 | Loss --> 1.0 | Seconds_per_step --> {s} |'
                    for n, s in ((10, 9.0), (20, 0.2), (30, 0.3), (40, 0.5), (50, 0.21), (60, 0.22)))
    assert train_loop.loop_report(log, bare_step_s=0.2, probed=((21, 29), (31, 39)))['loop_step_s'] == 0.21
    assert train_loop.loop_report(log, bare_step_s=0.2)['loop_step_s'] == 0.22


def test_loop_report_parses_windows_and_bare_step(tmp_path):
    log = '\n'.join([
        'noise',
        '[train] Step 10 out of 50 | Loss --> 9.0 | Grad_l2 --> 1.0 | Weights_l2 --> 5.0 | Lr --> 0.001 | Seconds_per_step --> 9.970 |',
        '[train] Step 20 out of 50 | Loss --> 8.0 | Grad_l2 --> 1.0 | Weights_l2 --> 5.0 | Lr --> 0.002 | Seconds_per_step --> 0.350 |',
        '[train] Step 30 out of 50 | Loss --> 7.0 | Grad_l2 --> 1.0 | Weights_l2 --> 5.0 | Lr --> 0.003 | Seconds_per_step --> 0.330 |',
        '[train] Step 40 out of 50 | Loss --> 7.0 | Grad_l2 --> 1.0 | Weights_l2 --> 5.0 | Lr --> 0.003 | Seconds_per_step --> 0.340 |',
    ])
    rep = train_loop.loop_report(log, bare_step_s=0.32)
    assert [s for s, _ in rep['windows']] == [10, 20, 30, 40]
    assert rep['loop_step_s'] == pytest.approx(0.34) and rep['overhead'] == pytest.approx(0.34 / 0.32 - 1)
    with pytest.raises(ValueError, match='windows'):
        train_loop.loop_report(log.splitlines()[1], bare_step_s=None)
    (tmp_path / 'model.json').write_text(json.dumps({'cases': {'model': [{'variant': 'sdpa+compile+opt', 'step_s': 0.3}]}}))
    (tmp_path / 'model.log').write_text('  [model] sdpa+compile+opt: 0.3125 s/step\n')
    assert train_loop.bare_step_seconds('sdpa+compile+opt', model_json=str(tmp_path / 'model.json')) == 0.3
    assert train_loop.bare_step_seconds('sdpa+compile+opt', model_log=str(tmp_path / 'model.log')) == 0.3125
    assert train_loop.bare_step_seconds('sdpa+compile+opt', model_json=str(tmp_path / 'missing.json')) is None


def test_gpu_check_script_parses():
    for script in ('bench/gpu_check.sh', 'bench/fetch_wheels.sh'):
        subprocess.run(['bash', '-n', str(REPO / script)], check=True)


@pytest.fixture(scope='module')
def tokenizer_dir(tmp_path_factory) -> Path:
    """A T5-layout tokenizer saved as tokenizer.json (what fetch_wheels.sh carries), trained on CPython's help topics."""
    from pydoc_data.topics import topics

    from t5composer.tokenization import load_tokenizer
    from t5composer.tokenizer_training import train_tokenizer

    root = tmp_path_factory.mktemp('bench_tok')
    trained = train_tokenizer(out_dir=root / 'spm', vocab_size=800, texts=[topics[k] for k in sorted(topics)])
    out = root / 'tok'
    load_tokenizer(trained).save_pretrained(out)
    (out / 'spiece.model').unlink(missing_ok=True)
    return out


@pytest.mark.slow
def test_gpu_check_loop_part_runs_on_cpu(tmp_path, tokenizer_dir):
    """Parts 2 and 5 of bench/gpu_check.sh (synthetic data, Composer launcher, report) at tiny size on CPU."""
    env = dict(os.environ)
    env.update(
        SKIP_MODEL='1', SKIP_OPT='1', LOOP_STEPS='16', LOOP_INPUT_LENGTH='64', LOOP_TOKENIZER=str(tokenizer_dir),
        LOOP_PROBE='sync_start=5 sync_steps=2 profile_start=9 profile_steps=2', RESULTS_DIR=str(tmp_path / 'results'),
        LOOP_OVERRIDES=('precision=fp32 compile=false global_train_batch_size=8 device_train_microbatch_size=8 data.num_workers=1 '
                        'model.d_model=32 model.d_kv=8 model.d_ff=64 model.num_heads=4 model.num_layers=2 '
                        'model.num_decoder_layers=2 callbacks.nanot5_log.interval=4 callbacks.speed_monitor.window_size=4'),
        OMP_NUM_THREADS='1', PYTHON=sys.executable,
    )
    env.pop('PYTHONPATH', None)
    out = tmp_path / 'out'
    proc = subprocess.run(['bash', str(REPO / 'bench/gpu_check.sh'), str(out)], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert '(installed)' in proc.stdout  # nothing installed on a development machine
    loop_log = (out / 'loop.log').read_text()
    assert len(train_loop.parse_step_lines(loop_log)) == 4, loop_log[-3000:]
    report = (out / 'loop_report.md').read_text()
    assert 'Composer loop (median of windows after the first 1 and those the probe watched) | ' in report and 'not measured' in report
    # The loop probe ran in the training process (no sync debug mode without CUDA; a CPU profile),
    # and the report's JSON landed in RESULTS_DIR and in OUT.
    probe = json.loads((out / 'loop_probe.json').read_text())
    assert probe['sync_debug'] == {'available': False, 'batches': [5, 7]}
    assert probe['profile']['batches'] == [9, 11] and probe['profile']['wall_s_per_batch'] > 0 and probe['profile']['top']
    (result,) = (tmp_path / 'results').iterdir()
    assert result.name.startswith('cpu-') and (out / result.name).is_file()
    saved = json.loads(result.read_text())
    assert saved['loop_probe'] == probe and saved['side_by_side'][0]['what'] == 'Composer loop'
    assert 'sync debug mode: not available here' in report and 'loop profile (batches [9, 11])' in report


def test_the_loop_probe_counts_overlapping_device_work_once():
    from t5composer.callbacks.loop_probe import busy_us

    assert busy_us([]) == 0.0
    assert busy_us([(0, 10), (20, 25)]) == 15.0
    # Overlapping (two streams) and nested intervals count once; order does not matter.
    assert busy_us([(5, 12), (0, 10), (2, 3), (30, 31), (11, 14)]) == 15.0


def test_the_loop_probe_keeps_host_ranges_out_of_the_gpus_busy_time():
    # The optimizer's record_function range spans its kernels and the gaps between them on the
    # device's timeline: counting it made an H200 loop with ~29% idle time read 0.0%.
    from types import SimpleNamespace

    from t5composer.callbacks.loop_probe import device_profile

    def event(name, start, end, annotation=False, device='DeviceType.CUDA'):
        return SimpleNamespace(name=name, device_type=device, is_user_annotation=annotation,
                               time_range=SimpleNamespace(start=start, end=end))

    events = [event('gemm', 0, 400), event('adam_kernel', 500, 520), event('adam_kernel', 700, 720),
              event('Optimizer.step#AdamWScale.step', 450, 800, annotation=True),
              event('aten::mm', 0, 900, device='DeviceType.CPU')]
    got = device_profile(events, steps=1, wall_s=1e-3, top=5)
    assert got['gpu_busy_s_per_batch'] == pytest.approx(440e-6)
    assert got['gpu_idle_fraction'] == pytest.approx(0.56)
    assert [(t['name'], t['calls_per_batch']) for t in got['top']] == [('gemm', 1), ('adam_kernel', 2)]
    assert got['host_ranges_on_device'] == [{'name': 'Optimizer.step#AdamWScale.step', 'ms_per_batch': pytest.approx(0.35)}]


def test_model_attention_kernels_on_cpu():
    """Our own eager step on CPU: the biased self-attention runs the math path, cross-attention flash."""
    found = model_case.model_attention_kernels('cpu', tiny_config('v1_1', vocab_size=512), dtype=torch.float32, compiled=False)
    assert 'aten::_scaled_dot_product_attention_math' in found
    assert 'aten::_scaled_dot_product_flash_attention_for_cpu' in found
    assert not [n for n in found if 'log_softmax' in n or n.startswith('autograd::')], found
