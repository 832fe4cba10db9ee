"""Our fused attention with a batch-shared learned bias (``attn_impl='triton'``) computes what SDPA computes.

Without a GPU the Triton kernels run in Triton's interpreter (``TRITON_INTERPRET=1``, which
conftest.py sets before triton is first imported): the kernel tests in tiles of 16 so that every
shape crosses several blocks and their ragged edges, the model-level ones in tiles of 64 (faster
in the interpreter); with a GPU they run compiled. The Hopper code of every
tuned tile configuration is checked without a GPU too, by compiling it here
(``python -m bench --only kernels``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from t5composer.models import ComposerT5, T5ForConditionalGeneration
from t5composer.models import t5 as t5_module
from t5composer.models.bias_attention import bias_attention, bias_attention_problem
from test_model import _model_kwargs, make_batch, tiny_config

REPO = Path(__file__).resolve().parents[1]
DEVICE = 'cuda' if torch.cuda.is_available() else 'cpu'

pytestmark = pytest.mark.usefixtures('one_thread')


def _inputs(batch, heads, lq, lk, d, *, mask=None, dtype=torch.float32, bias_dims=4, seed=0):
    g = torch.Generator().manual_seed(seed)

    def heads_view(length):  # the head split of a projection: a strided [B, H, L, d] view
        return torch.randn(batch, length, heads, d, generator=g).to(DEVICE, dtype).transpose(1, 2)

    q, k, v = heads_view(lq), heads_view(lk), heads_view(lk)
    bias = torch.randn(heads, lq, lk, generator=g).to(DEVICE, dtype)
    hidden = {
        None: None,
        'causal': ~torch.ones(lq, lk, dtype=torch.bool).tril(),
        # Every row's first key blocks all masked: the running maximum starts at -inf.
        'leading': (torch.arange(lk) < lk - 7).expand(lq, lk),
    }[mask]
    if hidden is not None:
        bias = bias.masked_fill(hidden.to(DEVICE), torch.finfo(dtype).min)
    if bias_dims == 4:
        bias = bias[None]
    grad = torch.randn(batch, heads, lq, d, generator=g).to(DEVICE, dtype)
    return [t.requires_grad_() for t in (q, k, v, bias)], grad


def _run(fn, inputs, grad):
    out = fn(*inputs)
    return (out, *torch.autograd.grad(out, inputs, grad))


def _sdpa(q, k, v, bias):
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=1.0)


@pytest.mark.parametrize(('batch', 'heads', 'lq', 'lk', 'd', 'mask', 'bias_dims'), [
    (2, 3, 37, 37, 16, None, 4),       # encoder-like, ragged last block
    (2, 3, 37, 37, 16, 'causal', 4),   # decoder-like: the causal mask travels in the bias
    (3, 2, 33, 50, 32, None, 3),       # Lq != Lk, a [H, Lq, Lk] bias
    (2, 2, 21, 21, 8, 'causal', 4),    # d_kv below tl.dot's 16: padded tiles
    (1, 2, 19, 19, 24, None, 4),       # d_kv not a power of two
    (2, 2, 20, 40, 16, 'leading', 4),  # whole key blocks masked before any visible key
])
def test_equals_sdpa_output_and_every_gradient(batch, heads, lq, lk, d, mask, bias_dims):
    inputs, grad = _inputs(batch, heads, lq, lk, d, mask=mask, bias_dims=bias_dims)
    ours = _run(bias_attention, inputs, grad)
    ref = _run(_sdpa, inputs, grad)
    for name, got, want in zip(('out', 'dq', 'dk', 'dv', 'dbias'), ours, ref):
        assert got.shape == want.shape and got.dtype == want.dtype, name
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * want.abs().max().item(), msg=name)
    out = ours[0]
    # The output is a view of a [B, Lq, H, d] buffer, so the head merge after it copies nothing.
    assert out.transpose(1, 2).is_contiguous()


def test_half_precision_error_is_sdpas():
    """In fp16 (the interpreter cannot multiply bf16) ours is as close to an fp64 reference as SDPA is."""
    inputs, grad = _inputs(2, 3, 37, 37, 32, mask='causal')
    ref = _run(_sdpa, [t.detach().double().requires_grad_() for t in inputs], grad.double())
    half = [t.detach().half().requires_grad_() for t in inputs]
    ours = _run(bias_attention, half, grad.half())
    theirs = _run(_sdpa, half, grad.half())
    for name, r, o, t in zip(('out', 'dq', 'dk', 'dv', 'dbias'), ref, ours, theirs):
        scale = r.abs().max()
        ours_err, sdpa_err = (o.double() - r).abs().max() / scale, (t.double() - r).abs().max() / scale
        assert ours_err <= 2 * sdpa_err + 1e-3, (name, ours_err.item(), sdpa_err.item())


def test_bias_gradient_is_summed_in_the_kernel_deterministically():
    """No atomics: two backward passes give the same bits."""
    inputs, grad = _inputs(3, 2, 40, 40, 16)
    first = _run(bias_attention, inputs, grad)
    second = _run(bias_attention, inputs, grad)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


def _pair(kind: str, seed: int = 0, **overrides):
    cfg = tiny_config(kind, **overrides)
    torch.manual_seed(seed)
    sdpa = T5ForConditionalGeneration(cfg).to(DEVICE)
    ours = T5ForConditionalGeneration(cfg, attn_impl='triton').to(DEVICE)
    ours.load_state_dict(sdpa.state_dict())
    return sdpa, ours


def _batch(n, **kwargs):
    return {k: v.to(DEVICE) for k, v in make_batch(n, **kwargs).items()}


@pytest.mark.parametrize('checkpointing', [False, True])
@pytest.mark.parametrize('kind', ['v1_1', 'original'])
@pytest.mark.usefixtures('large_interpreter_tiles')
def test_model_equals_sdpa_logits_loss_and_grads(kind, checkpointing):
    sdpa, ours = _pair(kind, seed=1)
    ours.set_gradient_checkpointing(checkpointing)  # unlike FlexAttention, allowed
    batch = _batch(2, enc_len=24, dec_len=11)  # unpadded, as in pre-training
    ref, out = sdpa(**_model_kwargs(batch)), ours(**_model_kwargs(batch))
    torch.testing.assert_close(out.logits, ref.logits, rtol=1e-5, atol=2e-5)
    torch.testing.assert_close(out.loss, ref.loss, rtol=1e-6, atol=1e-6)
    ref.loss.backward()
    out.loss.backward()
    ours_grads = dict(ours.named_parameters())
    for name, p in sdpa.named_parameters():
        grad = ours_grads[name].grad
        if 'relative_attention_bias' in name:
            assert grad.abs().max() > 0, name  # the table learns
        torch.testing.assert_close(grad, p.grad, rtol=1e-4, atol=1e-6 + 1e-5 * p.grad.abs().max().item(), msg=name)


@pytest.mark.usefixtures('large_interpreter_tiles')
def test_both_self_attentions_run_the_kernel_and_padded_batches_sdpa(monkeypatch):
    calls = []

    def recording(q, k, v, bias):
        calls.append(tuple(bias.shape))
        return bias_attention(q, k, v, bias)

    monkeypatch.setattr(t5_module, 'bias_attention', recording)
    sdpa, ours = _pair('v1_1')
    batch = _batch(2, enc_len=24, dec_len=11)
    ours(**_model_kwargs(batch))
    heads = ours.config.num_heads
    assert calls == [(1, heads, 24, 24)] * ours.config.num_layers + [(1, heads, 11, 11)] * ours.config.num_decoder_layers
    calls.clear()
    padded = _batch(4, padded=True)
    with torch.no_grad():
        assert torch.equal(ours(**_model_kwargs(padded)).logits, sdpa(**_model_kwargs(padded)).logits)
    assert calls == []


@pytest.mark.usefixtures('large_interpreter_tiles')
def test_generation_equals_sdpa():
    sdpa, ours = _pair('v1_1', seed=5)
    sdpa.eval()
    ours.eval()
    input_ids = _batch(3, enc_len=12)['input_ids']
    expected = sdpa.generate(input_ids, max_new_tokens=5, min_new_tokens=5)
    for use_cache in (True, False):  # cached steps use SDPA; the uncached decoder runs the kernel
        assert torch.equal(ours.generate(input_ids, max_new_tokens=5, min_new_tokens=5, use_cache=use_cache), expected)


def test_refusals_say_what_to_do():
    with pytest.raises(ValueError, match='no attention dropout'):
        T5ForConditionalGeneration(tiny_config('v1_1', dropout_rate=0.1), attn_impl='triton')
    with pytest.raises(ValueError, match=r"at most d_kv=128.*attn_impl='sdpa'"):
        T5ForConditionalGeneration(tiny_config('v1_1', d_kv=160), attn_impl='triton')
    assert bias_attention_problem(DEVICE, 64) is None
    assert 'at most 128' in bias_attention_problem(DEVICE, 256)


def test_without_a_gpu_the_kernel_and_the_recipe_key_refuse_clearly(monkeypatch):
    if DEVICE == 'cuda':
        pytest.skip('a GPU is present')
    from t5composer.config import ConfigError, load_config
    from t5composer.run.preflight import preflight

    demo = str(REPO / 'yamls' / 'demo.yaml')
    preflight(load_config(demo, ['model.attn_impl=triton']))  # under the interpreter it runs
    monkeypatch.delenv('TRITON_INTERPRET')
    assert 'run on CUDA' in bias_attention_problem('cpu', 64)
    inputs, _ = _inputs(1, 1, 16, 16, 16)
    with pytest.raises(RuntimeError, match='run on CUDA'):
        bias_attention(*inputs)
    with pytest.raises(ConfigError, match='model.attn_impl=triton cannot run here.*Set model.attn_impl=sdpa'):
        preflight(load_config(demo, ['model.attn_impl=triton']))


@pytest.mark.slow
@pytest.mark.usefixtures('large_interpreter_tiles')
def test_compiled_training_step_keeps_the_kernel_whole():
    """Under torch.compile the custom op sits in the graph (no breaks) and the step's loss and grads match."""
    torch._dynamo.reset()
    sdpa, ours = _pair('v1_1', seed=2)
    batch = _batch(2, enc_len=24, dec_len=11)
    model = ComposerT5(model=ours)

    def step(batch):
        return model.loss(model(batch), batch)

    explanation = torch._dynamo.explain(step)(batch)
    assert explanation.graph_break_count == 0 and explanation.graph_count == 1, explanation.break_reasons
    loss = torch.compile(step)(batch)
    loss.backward()
    ref = ComposerT5(model=sdpa)
    ref_loss = ref.loss(ref(batch), batch)
    ref_loss.backward()
    torch.testing.assert_close(loss, ref_loss, rtol=1e-6, atol=1e-6)
    for (name, p), q in zip(sdpa.named_parameters(), ours.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-6 + 1e-5 * p.grad.abs().max().item(), msg=name)
    torch._dynamo.reset()


@pytest.mark.slow
def test_every_tuned_tile_compiles_to_pipelined_tensor_core_code_without_spills(tmp_path):
    """The Hopper (sm90) code of each autotuner configuration (and of adamwscale's fused update), compiled here without a GPU."""
    env = {k: v for k, v in os.environ.items() if k != 'TRITON_INTERPRET'}
    out = tmp_path / 'kernels.json'
    subprocess.run([sys.executable, '-m', 'bench', '--only', 'kernels', '--device', 'cpu', '--json', str(out)],
                   cwd=REPO, env=env, check=True, capture_output=True, text=True, timeout=600)
    rows = json.loads(out.read_text())['cases']['kernels']
    from t5composer.models.bias_attention_kernels import TILES

    attention = [r for r in rows if r['kernel'] != 'adamwscale']
    assert sorted((r['kernel'], tuple(r['tile'])) for r in attention) == sorted((k, t) for k, tiles in TILES.items() for t in tiles)
    for r in attention:
        assert r['tensor_core_ops'] > 0 and r['async_copies'] > 0 and r['spill_bytes'] == 0, r
    # The optimizer's fused update (tests/test_optim.py has its numerics): whole tiles move 4 floats
    # per load and store, 4 streams in and 3 out.
    (optimizer,) = [r for r in rows if r['kernel'] == 'adamwscale']
    assert optimizer['spill_bytes'] == 0 and optimizer['vector_accesses'] >= 7, optimizer
