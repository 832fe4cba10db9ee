"""The model's fast paths compute what the plain path computes.

FlexAttention (``attn_impl='flex'`` / ``'flex_dense'``) against SDPA: logits, loss and every
gradient, the relative position table's included. Pre-training batches (no padding) build no
padding mask. The training step has no graph breaks under torch.compile (slow).
On CPU, torch 2.7 compiles FlexAttention for inference only, so these tests run it eagerly
(unfused, the same maths); the fused kernel is exercised by bench/gpu_check.sh on a GPU.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from t5composer.models import ComposerT5, T5ForConditionalGeneration
from t5composer.models import t5 as t5_module
from test_model import VOCAB, _model_kwargs, make_batch, tiny_config

pytestmark = pytest.mark.usefixtures('one_thread')

FLEX_IMPLS = ['flex', 'flex_dense']


def _pair(kind: str, impl: str, seed: int = 0) -> tuple[T5ForConditionalGeneration, T5ForConditionalGeneration]:
    """Our model with SDPA and a copy with ``impl``, same weights."""
    cfg = tiny_config(kind)
    torch.manual_seed(seed)
    sdpa = T5ForConditionalGeneration(cfg)
    other = T5ForConditionalGeneration(cfg, attn_impl=impl)
    other.load_state_dict(sdpa.state_dict())
    return sdpa, other


def _grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.grad for name, p in model.named_parameters()}


@pytest.mark.parametrize('kind', ['v1_1', 'original'])
@pytest.mark.parametrize('impl', FLEX_IMPLS)
def test_flex_equals_sdpa_logits_loss_and_grads(kind, impl):
    sdpa, flex = _pair(kind, impl, seed=1)
    batch = make_batch(2, enc_len=24, dec_len=11)  # unpadded, as in pre-training
    ref = sdpa(**_model_kwargs(batch))
    out = flex(**_model_kwargs(batch))
    torch.testing.assert_close(out.logits, ref.logits, rtol=1e-5, atol=2e-5)
    torch.testing.assert_close(out.loss, ref.loss, rtol=1e-6, atol=1e-6)
    ref.loss.backward()
    out.loss.backward()
    ref_grads, flex_grads = _grads(sdpa), _grads(flex)
    for name in ('encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight',
                 'decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight'):
        assert flex_grads[name] is not None and flex_grads[name].abs().max() > 0, name  # the table learns
    for name, grad in ref_grads.items():
        scale = grad.abs().max().item()
        torch.testing.assert_close(flex_grads[name], grad, rtol=1e-4, atol=1e-6 + 1e-5 * scale, msg=name)


def test_flex_bias_is_factored_not_materialised():
    """'flex' hands the kernel the [buckets, H] table and [L, L] bucket ids; 'flex_dense' an [H, L, L] bias."""
    _, flex = _pair('v1_1', 'flex')
    bias = flex.encoder._flex_bias(24)
    table = flex.encoder.block[0].layer[0].SelfAttention.relative_attention_bias.weight
    assert bias.table is table and bias.buckets.shape == (24, 24) and bias.dense is None and not bias.causal
    assert bias.buckets.dtype == torch.long and not bias.buckets.requires_grad
    expected = flex.encoder.block[0].layer[0].SelfAttention.compute_bias(24, 24)[0]
    torch.testing.assert_close(table[bias.buckets].permute(2, 0, 1), expected, rtol=0, atol=0)
    flex.set_attn_impl('flex_dense')
    dense = flex.decoder._flex_bias(9)
    assert dense.causal and dense.dense.shape == (4, 9, 9)


def test_flex_refuses_activation_checkpointing():
    """torch 2.7's unfused FlexAttention under torch.utils.checkpoint gives the captured table wrong gradients."""
    _, flex = _pair('v1_1', 'flex')
    with pytest.raises(ValueError, match='activation checkpointing'):
        flex.set_gradient_checkpointing(True)
    sdpa, _ = _pair('v1_1', 'flex')
    sdpa.set_gradient_checkpointing(True)
    with pytest.raises(ValueError, match='activation checkpointing'):
        sdpa.set_attn_impl('flex_dense')
    sdpa.set_gradient_checkpointing(False)
    sdpa.set_attn_impl('flex_dense')


@pytest.mark.parametrize('impl', FLEX_IMPLS)
def test_flex_padded_batches_fall_back_to_sdpa(impl):
    sdpa, flex = _pair('v1_1', impl)
    batch = make_batch(4, padded=True)
    with torch.no_grad():
        assert torch.equal(flex(**_model_kwargs(batch)).logits, sdpa(**_model_kwargs(batch)).logits)


def test_flex_generation_equals_sdpa():
    sdpa, flex = _pair('v1_1', 'flex', seed=5)
    sdpa.eval()
    flex.eval()
    input_ids = make_batch(5, enc_len=12)['input_ids']
    expected = sdpa.generate(input_ids, max_new_tokens=6, min_new_tokens=6)
    for use_cache in (True, False):  # cached steps use SDPA; the uncached decoder runs flex
        assert torch.equal(flex.generate(input_ids, max_new_tokens=6, min_new_tokens=6, use_cache=use_cache), expected)


def test_attn_impl_is_checked():
    cfg = tiny_config('v1_1')
    with pytest.raises(ValueError, match='attn_impl must be one of'):
        T5ForConditionalGeneration(cfg, attn_impl='flash')
    with pytest.raises(ValueError, match='no attention dropout'):
        T5ForConditionalGeneration(tiny_config('v1_1', dropout_rate=0.1), attn_impl='flex')
    model = T5ForConditionalGeneration(cfg, attn_impl='flex')
    assert model.encoder.attn_impl == model.decoder.attn_impl == 'flex'
    model.set_attn_impl('sdpa')
    assert model.encoder.attn_impl == model.decoder.attn_impl == 'sdpa'


# ---------------------------------------------------------------------------------------------
# Pre-training batches carry no padding mask
# ---------------------------------------------------------------------------------------------


def _pretraining_batch(input_length: int = 32, batch: int = 3) -> dict[str, torch.Tensor]:
    from t5composer.data.span_corruption import SpanCorruptionCollator, random_spans_helper

    raw, _ = random_spans_helper(input_length, 0.15, 3.0)
    rng = np.random.default_rng(0)
    samples = [{'tokens': rng.integers(3, VOCAB - 10, raw), 'sample_idx': i, 'epoch': 0} for i in range(batch)]
    collate = SpanCorruptionCollator(sentinel_ids=list(range(VOCAB - 1, VOCAB - 11, -1)), eos_id=1, seed=0)
    return collate(samples)


@pytest.mark.parametrize('impl', ['sdpa', 'flex'])
def test_pretraining_batches_build_no_padding_mask(monkeypatch, impl):
    batch = _pretraining_batch()
    assert 'attention_mask' not in batch and 'decoder_attention_mask' not in batch
    assert batch['input_ids'].shape == (3, 32)

    def no_padding_mask(*args, **kwargs):
        raise AssertionError('a padding mask was built for an unpadded batch')

    masks = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def recording_sdpa(q, k, v, attn_mask=None, **kwargs):
        masks.append(None if attn_mask is None else tuple(attn_mask.shape))
        return sdpa(q, k, v, attn_mask=attn_mask, **kwargs)

    monkeypatch.setattr(t5_module, '_padding_to_bias', no_padding_mask)
    monkeypatch.setattr(t5_module.F, 'scaled_dot_product_attention', recording_sdpa)
    torch.manual_seed(0)
    model = ComposerT5(model=T5ForConditionalGeneration(tiny_config('v1_1'), attn_impl=impl))
    model.loss(model(batch), batch).backward()

    heads, enc, dec = 4, 32, batch['labels'].shape[1]
    if impl == 'sdpa':
        # Self-attention: the position bias once for the whole batch ([1, H, L, L], no batch dim);
        # cross-attention: no mask at all (the fused kernels' fast path).
        assert masks == [(1, heads, enc, enc)] * 2 + [(1, heads, dec, dec), None] * 2
    else:
        assert masks == [None] * 2  # only the decoder's cross-attention goes through SDPA


@pytest.mark.parametrize('padded', [False, True])
@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
def test_sdpa_gets_the_self_attention_bias_contiguous(monkeypatch, padded, dtype):
    """compute_bias is a permuted view (last-dim stride H); SDPA must get a dense copy.

    With the view, the compiled CUDA step ran the biased self-attention on the fp32 math path
    instead of the memory-efficient kernel (docs/performance.md, "Which SDPA kernel").
    """
    batch = _pretraining_batch()
    if padded:
        batch['attention_mask'] = torch.ones_like(batch['input_ids'])
        batch['attention_mask'][0, -5:] = 0
    layouts = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def recording_sdpa(q, k, v, attn_mask=None, **kwargs):
        if attn_mask is not None:
            layouts.append((attn_mask.is_contiguous(), attn_mask.dtype))
        return sdpa(q, k, v, attn_mask=attn_mask, **kwargs)

    monkeypatch.setattr(t5_module.F, 'scaled_dot_product_attention', recording_sdpa)
    torch.manual_seed(0)
    model = ComposerT5(model=T5ForConditionalGeneration(tiny_config('v1_1')))
    with torch.autocast('cpu', dtype=dtype, enabled=dtype != torch.float32):
        model.loss(model(batch), batch).backward()
    assert layouts and all(layout == (True, dtype) for layout in layouts), layouts


# ---------------------------------------------------------------------------------------------
# Compile-friendliness
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(('impl', 'autocast', 'checkpointing'), [
    ('sdpa', False, False), ('sdpa', True, False), ('flex', True, False), ('sdpa', True, True),
])
def test_training_step_has_no_graph_breaks(impl, autocast, checkpointing):
    """torch._dynamo.explain over forward + loss of a Composer step: one graph, no breaks
    (bf16 autocast as amp_bf16 runs it; activation checkpointing as the large recipes do)."""
    torch._dynamo.reset()
    batch = _pretraining_batch()
    torch.manual_seed(0)
    model = ComposerT5(model=T5ForConditionalGeneration(tiny_config('v1_1'), attn_impl=impl))
    model.model.set_gradient_checkpointing(checkpointing)

    def step(batch):
        with torch.autocast('cpu', dtype=torch.bfloat16, enabled=autocast):
            return model.loss(model(batch), batch)

    explanation = torch._dynamo.explain(step)(batch)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1
    torch._dynamo.reset()


# ---------------------------------------------------------------------------------------------
# The recipe key
# ---------------------------------------------------------------------------------------------


def test_attn_impl_recipe_key_is_checked_before_anything_is_built():
    from t5composer.config import ConfigError, load_config
    from t5composer.run.preflight import preflight

    demo = str(Path(__file__).resolve().parents[1] / 'yamls' / 'demo.yaml')
    assert load_config(demo, ['model.attn_impl=flex']).model.attn_impl == 'flex'
    preflight(load_config(demo, ['model.attn_impl=flex']))  # the demo sets dropout_rate 0
    with pytest.raises(ConfigError, match="'model.attn_impl' must be one of"):
        load_config(demo, ['model.attn_impl=flash'])
    with pytest.raises(ConfigError, match='no attention dropout') as info:
        preflight(load_config(demo, ['model.attn_impl=flex_dense', '~model.dropout_rate']))
    assert 'model.dropout_rate=0' in str(info.value)
    with pytest.raises(ConfigError, match='activation checkpointing'):
        preflight(load_config(demo, ['model.attn_impl=flex', 'model.gradient_checkpointing=true']))


# ---------------------------------------------------------------------------------------------
# transformers 5 configs (the GPU image's)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize('kind', ['v1_1', 'original'])
def test_transformers5_style_config_keeps_the_architecture(kind):
    """transformers 5 sets tie_word_embeddings=True on every T5Config and keeps the made-with value as
    scale_decoder_outputs; a v1.1 model must stay untied and unscaled (as under transformers 4)."""
    from t5composer.models.t5 import ties_word_embeddings

    reference = tiny_config(kind)
    v5 = tiny_config(kind)
    v5.scale_decoder_outputs = reference.tie_word_embeddings
    v5.tie_word_embeddings = True
    assert ties_word_embeddings(v5) == ties_word_embeddings(reference) == (kind == 'original')
    torch.manual_seed(0)
    a = T5ForConditionalGeneration(reference)
    torch.manual_seed(0)
    b = T5ForConditionalGeneration(v5)
    assert (b.lm_head.weight is b.shared.weight) == (kind == 'original')
    assert list(a.state_dict()) == list(b.state_dict())
    batch = make_batch(6)
    with torch.no_grad():
        assert torch.equal(a(**_model_kwargs(batch)).logits, b(**_model_kwargs(batch)).logits)


def test_the_recipe_key_offers_every_attention_implementation():
    """model.attn_impl's allowed values (the schema) are the model's ATTN_IMPLS, in order."""
    import typing

    from t5composer.config.schema import ModelConfig

    assert typing.get_args(typing.get_type_hints(ModelConfig)['attn_impl']) == t5_module.ATTN_IMPLS
