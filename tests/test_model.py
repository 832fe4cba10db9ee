"""Model tests: HF parity (keys, logits, loss, grads), causality, init, presets, metrics, wrapper."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
import transformers
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from t5composer.models import (
    ComposerT5,
    LanguageNLL,
    T5ForConditionalGeneration,
    TokenAccuracy,
    build_composer_t5,
    load_model_config,
    preset_names,
    t5_flops_per_batch,
)

VOCAB = 128


def tiny_config(kind: str = 'v1_1', **overrides) -> transformers.T5Config:
    """d_model 32, 2+2 layers, 4 heads of 8, d_ff 64, 8 buckets / distance 16, no dropout."""
    kw = dict(
        vocab_size=VOCAB,
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=16,
        dropout_rate=0.0,
        decoder_start_token_id=0,
        pad_token_id=0,
        eos_token_id=1,
    )
    if kind == 'v1_1':
        kw.update(feed_forward_proj='gated-gelu', tie_word_embeddings=False)
    elif kind == 'original':
        kw.update(feed_forward_proj='relu', tie_word_embeddings=True)
    else:
        raise ValueError(kind)
    kw.update(overrides)
    return transformers.T5Config(**kw)


def hf_and_ours(kind: str, seed: int = 0):
    """An HF model with random weights and ours loaded from its state_dict (both eval mode)."""
    cfg = tiny_config(kind)
    torch.manual_seed(seed)
    hf = transformers.T5ForConditionalGeneration(cfg).eval()
    ours = T5ForConditionalGeneration(cfg).eval()
    ours.load_state_dict(hf.state_dict())
    return hf, ours


def make_batch(seed: int = 0, *, batch: int = 3, enc_len: int = 20, dec_len: int = 9, padded: bool = False):
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(2, VOCAB, (batch, enc_len), generator=g)
    labels = torch.randint(2, VOCAB, (batch, dec_len), generator=g)
    out = {'input_ids': input_ids, 'labels': labels}
    if padded:
        # Right padding of different lengths; an ignored (-100) label tail on the decoder side.
        attention_mask = torch.ones(batch, enc_len, dtype=torch.long)
        attention_mask[1, enc_len - 6:] = 0
        attention_mask[2, enc_len - 11:] = 0
        input_ids = input_ids.masked_fill(attention_mask == 0, 0)
        decoder_attention_mask = torch.ones(batch, dec_len, dtype=torch.long)
        decoder_attention_mask[0, dec_len - 3:] = 0
        labels = labels.masked_fill(decoder_attention_mask == 0, -100)
        out.update(
            input_ids=input_ids,
            labels=labels,
            attention_mask=attention_mask,
            decoder_attention_mask=decoder_attention_mask,
        )
    return out


def _model_kwargs(batch: dict) -> dict:
    return {k: batch[k] for k in ('input_ids', 'attention_mask', 'decoder_attention_mask', 'labels') if k in batch}


# ---------------------------------------------------------------------------------------------
# Parity with transformers
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize('kind', ['v1_1', 'original'])
def test_state_dict_keys_equal_transformers(kind):
    cfg = tiny_config(kind)
    hf_keys = list(transformers.T5ForConditionalGeneration(cfg).state_dict())
    ours = T5ForConditionalGeneration(cfg)
    assert list(ours.state_dict()) == hf_keys
    assert 'encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight' in hf_keys
    assert 'encoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight' not in hf_keys
    for name, tensor in transformers.T5ForConditionalGeneration(cfg).state_dict().items():
        assert ours.state_dict()[name].shape == tensor.shape, name
    if kind == 'original':
        assert ours.lm_head.weight is ours.shared.weight
    else:
        assert ours.lm_head.weight is not ours.shared.weight
    assert ours.encoder.embed_tokens is ours.shared and ours.decoder.embed_tokens is ours.shared


@pytest.mark.parametrize('kind', ['v1_1', 'original'])
@pytest.mark.parametrize('padded', [False, True])
def test_logits_and_loss_match_transformers(kind, padded):
    hf, ours = hf_and_ours(kind)
    batch = make_batch(1, padded=padded)
    with torch.no_grad():
        ref = hf(**_model_kwargs(batch))
        loss, logits = ours(**_model_kwargs(batch))
        plain = ours(
            batch['input_ids'],
            decoder_input_ids=hf._shift_right(batch['labels']),
            attention_mask=batch.get('attention_mask'),
            decoder_attention_mask=batch.get('decoder_attention_mask'),
        )
    assert logits.shape == (3, 9, VOCAB)
    assert (logits - ref.logits).abs().max().item() <= 1e-4
    assert torch.equal(plain, logits)  # labels -> shift_right equals explicit decoder_input_ids
    torch.testing.assert_close(loss, ref.loss, rtol=1e-5, atol=1e-5)


def test_encode_decode_equal_forward():
    _, ours = hf_and_ours('v1_1')
    batch = make_batch(2, padded=True)
    dec_in = torch.randint(2, VOCAB, batch['labels'].shape)
    with torch.no_grad():
        enc = ours.encode(batch['input_ids'], batch['attention_mask'])
        logits = ours.decode(dec_in, enc, batch['attention_mask'], batch['decoder_attention_mask'])
        full = ours(
            batch['input_ids'],
            decoder_input_ids=dec_in,
            attention_mask=batch['attention_mask'],
            decoder_attention_mask=batch['decoder_attention_mask'],
        )
    assert enc.shape == (3, 20, 32)
    assert torch.equal(logits, full)


@pytest.mark.parametrize('kind', ['v1_1', 'original'])
def test_gradients_match_transformers(kind):
    hf, ours = hf_and_ours(kind, seed=3)
    batch = make_batch(4, padded=True)
    hf(**_model_kwargs(batch)).loss.backward()
    ours(**_model_kwargs(batch)).loss.backward()
    hf_params = dict(hf.named_parameters())
    our_params = dict(ours.named_parameters())
    assert set(hf_params) == set(our_params)
    assert 'decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight' in our_params
    for name, p in our_params.items():
        assert p.grad is not None, name
        scale = hf_params[name].grad.abs().max().item()
        assert scale > 0, name
        torch.testing.assert_close(p.grad, hf_params[name].grad, rtol=1e-4, atol=1e-6 + 1e-5 * scale, msg=name)


def test_gradient_checkpointing_same_grads():
    cfg = tiny_config('v1_1')
    torch.manual_seed(0)
    a = T5ForConditionalGeneration(cfg)
    b = T5ForConditionalGeneration(cfg)
    b.load_state_dict(a.state_dict())
    b.set_gradient_checkpointing(True)
    batch = make_batch(5, padded=True)
    a(**_model_kwargs(batch)).loss.backward()
    b(**_model_kwargs(batch)).loss.backward()
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(pa.grad, pb.grad, rtol=1e-5, atol=1e-7, msg=name)


# ---------------------------------------------------------------------------------------------
# Masking behaviour
# ---------------------------------------------------------------------------------------------


def test_decoder_is_causal():
    _, ours = hf_and_ours('v1_1')
    batch = make_batch(6)
    dec = torch.randint(2, VOCAB, (3, 9))
    changed = dec.clone()
    changed[:, 5] = (changed[:, 5] + 7) % VOCAB
    with torch.no_grad():
        a = ours(batch['input_ids'], decoder_input_ids=dec)
        b = ours(batch['input_ids'], decoder_input_ids=changed)
    torch.testing.assert_close(a[:, :5], b[:, :5], rtol=0, atol=0)
    assert (a[:, 5:] - b[:, 5:]).abs().max() > 1e-3


def test_padded_encoder_tokens_are_ignored():
    _, ours = hf_and_ours('v1_1')
    batch = make_batch(7, padded=True)
    other = batch['input_ids'].clone()
    other[batch['attention_mask'] == 0] = 5
    dec = torch.randint(2, VOCAB, (3, 9))
    with torch.no_grad():
        a = ours(batch['input_ids'], decoder_input_ids=dec, attention_mask=batch['attention_mask'])
        b = ours(other, decoder_input_ids=dec, attention_mask=batch['attention_mask'])
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_bf16_masks_stay_finite_and_fully_masked_rows_do_not_nan():
    """Masked scores use the compute dtype's min (fp32's min would round to -inf in bf16)."""
    _, ours = hf_and_ours('v1_1')
    batch = make_batch(10, padded=True)
    dec = torch.randint(2, VOCAB, (3, 9))
    dec_mask = torch.ones(3, 9, dtype=torch.long)
    dec_mask[1, :4] = 0  # left padding: decoder row 1's first queries see only masked keys
    enc_mask = batch['attention_mask'].clone()
    enc_mask[2] = 0  # an all-padding encoder row
    kwargs = dict(decoder_input_ids=dec, attention_mask=enc_mask, decoder_attention_mask=dec_mask)
    bias = ours.decoder._self_attn_bias(9, dec_mask, torch.bfloat16)
    assert bias.dtype == torch.bfloat16 and torch.isfinite(bias).all()
    with torch.no_grad():
        ref = ours(batch['input_ids'], **kwargs)
        with torch.autocast('cpu', dtype=torch.bfloat16):
            auto = ours(batch['input_ids'], **kwargs)
        half = ours.to(torch.bfloat16)(batch['input_ids'], **kwargs)
    for out in (ref, auto, half):
        assert torch.isfinite(out).all()
    assert (auto.float() - ref).abs().max() < 0.5 and (half.float() - ref).abs().max() < 0.5


def test_dropout_active_only_in_training():
    cfg = tiny_config('v1_1', dropout_rate=0.3)
    torch.manual_seed(0)
    model = T5ForConditionalGeneration(cfg)
    batch = make_batch(8)
    dec = torch.randint(2, VOCAB, (3, 9))
    model.eval()
    with torch.no_grad():
        e1, e2 = model(batch['input_ids'], decoder_input_ids=dec), model(batch['input_ids'], decoder_input_ids=dec)
    assert torch.equal(e1, e2)
    model.train()
    with torch.no_grad():
        t1 = model(batch['input_ids'], decoder_input_ids=dec)
    assert not torch.allclose(t1, e1)


# ---------------------------------------------------------------------------------------------
# Initialisation
# ---------------------------------------------------------------------------------------------


def _init_config(**kw):
    return tiny_config('v1_1', vocab_size=512, d_model=64, d_kv=16, d_ff=256, **kw)


def test_init_statistics_default():
    cfg = _init_config()
    torch.manual_seed(0)
    m = T5ForConditionalGeneration(cfg)
    d, dkv, h, dff = cfg.d_model, cfg.d_kv, cfg.num_heads, cfg.d_ff
    att = m.encoder.block[1].layer[0].SelfAttention
    ffn = m.decoder.block[0].layer[2].DenseReluDense
    expected = {
        'shared': (m.shared.weight, 1.0),
        'lm_head': (m.lm_head.weight, 1.0),  # the reference's std 1.0 (first loss ~60)
        'q': (att.q.weight, (d * dkv) ** -0.5),
        'k': (att.k.weight, d**-0.5),
        'v': (att.v.weight, d**-0.5),
        'o': (att.o.weight, (h * dkv) ** -0.5),
        'wi_0': (ffn.wi_0.weight, d**-0.5),
        'wi_1': (ffn.wi_1.weight, d**-0.5),
        'wo': (ffn.wo.weight, dff**-0.5),
    }
    for name, (w, std) in expected.items():
        assert abs(w.std().item() / std - 1.0) < 0.1, name
        assert abs(w.mean().item()) < 0.1 * std, name
    assert torch.all(m.encoder.final_layer_norm.weight == 1.0)
    assert torch.all(m.decoder.block[1].layer[1].layer_norm.weight == 1.0)
    rel = m.encoder.block[0].layer[0].SelfAttention.relative_attention_bias.weight
    assert rel.shape == (cfg.relative_attention_num_buckets, h)
    assert 0.5 * d**-0.5 < rel.std().item() < 1.5 * d**-0.5


def test_init_lm_head_std_option_and_initializer_factor():
    cfg = _init_config()
    torch.manual_seed(0)
    m = T5ForConditionalGeneration(cfg, lm_head_std=cfg.d_model**-0.5)
    assert abs(m.lm_head.weight.std().item() / cfg.d_model**-0.5 - 1) < 0.1
    assert abs(m.shared.weight.std().item() - 1.0) < 0.1  # embedding untouched by the option
    m.init_weights()  # re-init without the option -> back to std 1.0
    assert abs(m.lm_head.weight.std().item() - 1.0) < 0.1
    half = T5ForConditionalGeneration(_init_config(initializer_factor=0.5))
    assert abs(half.shared.weight.std().item() - 0.5) < 0.05
    assert torch.all(half.encoder.final_layer_norm.weight == 0.5)


def test_first_loss_scale_depends_on_lm_head_std():
    """std 1.0 lm_head gives a far larger first loss than ln(V); d_model**-0.5 gives ~ln(V)."""
    cfg = _init_config()
    batch = make_batch(9)
    batch['input_ids'] %= cfg.vocab_size
    torch.manual_seed(0)
    big = T5ForConditionalGeneration(cfg).eval()
    torch.manual_seed(0)
    small = T5ForConditionalGeneration(cfg, lm_head_std=cfg.d_model**-0.5).eval()
    with torch.no_grad():
        loss_big = big(**_model_kwargs(batch)).loss.item()
        loss_small = small(**_model_kwargs(batch)).loss.item()
    assert loss_big > 2 * torch.log(torch.tensor(512.0)).item()
    assert abs(loss_small - torch.log(torch.tensor(512.0)).item()) < 1.0


def test_num_parameters():
    cfg = tiny_config('v1_1')
    m = T5ForConditionalGeneration(cfg)
    hf = transformers.T5ForConditionalGeneration(cfg)
    assert m.num_parameters() == sum(p.numel() for p in hf.parameters())
    assert m.num_parameters(exclude_embeddings=True) == m.num_parameters() - VOCAB * 32
    tied = T5ForConditionalGeneration(tiny_config('original'))
    assert tied.num_parameters() == sum(p.numel() for p in set(tied.parameters()))


# ---------------------------------------------------------------------------------------------
# Presets
# ---------------------------------------------------------------------------------------------

PRESET_SHAPES = {
    'google/t5-v1_1-small': (512, 1024, 8, 6),
    'google/t5-v1_1-base': (768, 2048, 12, 12),
    'google/t5-v1_1-large': (1024, 2816, 24, 16),
    'google/t5-v1_1-xl': (2048, 5120, 24, 32),
    'google/t5-v1_1-xxl': (4096, 10240, 24, 64),
}


@pytest.mark.parametrize('name', list(PRESET_SHAPES))
def test_presets_resolve_offline(name):
    cfg = load_model_config(name)
    d_model, d_ff, layers, heads = PRESET_SHAPES[name]
    assert (cfg.d_model, cfg.d_ff, cfg.num_layers, cfg.num_decoder_layers, cfg.num_heads, cfg.d_kv) == (
        d_model,
        d_ff,
        layers,
        layers,
        heads,
        64,
    )
    assert cfg.vocab_size == 32128 and cfg.is_gated_act and cfg.dense_act_fn == 'gelu_new'
    assert cfg.tie_word_embeddings is False
    assert (cfg.relative_attention_num_buckets, cfg.relative_attention_max_distance) == (32, 128)
    assert cfg.dropout_rate == 0.1 and cfg.layer_norm_epsilon == 1e-6
    assert (cfg.pad_token_id, cfg.eos_token_id, cfg.decoder_start_token_id) == (0, 1, 0)


def test_preset_overrides_and_short_name():
    assert set(preset_names()) == set(PRESET_SHAPES)
    cfg = load_model_config('t5-v1_1-base', dropout_rate=0.0, num_layers=2, d_model=64)
    assert (cfg.dropout_rate, cfg.num_layers, cfg.num_decoder_layers, cfg.d_model) == (0.0, 2, 2, 64)
    cfg = load_model_config('google/t5-v1_1-small', num_layers=3, num_decoder_layers=1)
    assert (cfg.num_layers, cfg.num_decoder_layers) == (3, 1)
    relu = load_model_config('google/t5-v1_1-small', feed_forward_proj='relu')
    assert relu.dense_act_fn == 'relu' and not relu.is_gated_act
    # Presets are not mutated by overrides.
    assert load_model_config('google/t5-v1_1-base').num_layers == 12


def test_override_typo_names_closest_key():
    with pytest.raises(ValueError, match=r"'d_modle'.*'d_model'"):
        load_model_config('google/t5-v1_1-small', d_modle=64)
    with pytest.raises(ValueError, match=r"'num_layer'.*'num_layers'"):
        load_model_config('google/t5-v1_1-small', num_layer=2)


def test_local_config_dir_and_file(tmp_path):
    tiny_config('original').save_pretrained(tmp_path)
    cfg = load_model_config(str(tmp_path), d_ff=96)
    assert (cfg.d_model, cfg.d_ff, cfg.tie_word_embeddings, cfg.dense_act_fn) == (32, 96, True, 'relu')
    cfg = load_model_config(str(tmp_path / 'config.json'))
    assert cfg.d_ff == 64
    assert json.loads((tmp_path / 'config.json').read_text())['d_model'] == 32


def test_unknown_name_error_lists_presets(monkeypatch):
    import huggingface_hub.constants

    # Fail fast instead of retrying an unreachable hub.
    monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_OFFLINE', True)
    with pytest.raises(OSError, match='google/t5-v1_1-base') as info:
        load_model_config('google/t5-v1_1-nonexistent')
    assert 'hub' in str(info.value)
    assert info.value.__cause__ is not None


# ---------------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------------


def test_language_nll_equals_cross_entropy():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 11, generator=g)
    labels = torch.randint(0, 11, (2, 5), generator=g)
    labels[0, 3:] = -100
    logits2 = torch.randn(3, 4, 11, generator=g)
    labels2 = torch.randint(0, 11, (3, 4), generator=g)
    labels2[2, :] = -100
    metric = LanguageNLL()
    metric.update(logits, labels)
    metric.update(logits2, labels2)
    all_logits = torch.cat([logits.flatten(0, 1), logits2.flatten(0, 1)])
    all_labels = torch.cat([labels.flatten(), labels2.flatten()])
    expected = F.cross_entropy(all_logits, all_labels, ignore_index=-100)
    torch.testing.assert_close(metric.compute(), expected)
    assert metric.num_tokens.item() == int((all_labels != -100).sum())


def test_token_accuracy_ignores_masked():
    logits = torch.zeros(1, 4, 3)
    logits[0, 0, 1] = logits[0, 1, 2] = logits[0, 2, 0] = logits[0, 3, 1] = 1.0  # argmax 1, 2, 0, 1
    labels = torch.tensor([[1, 0, -100, 1]])  # correct, wrong, ignored (argmax 0 != -100), correct
    metric = TokenAccuracy()
    metric.update(logits, labels)
    assert metric.compute().item() == pytest.approx(2 / 3)
    metric.update(logits, torch.full((1, 4), -100))
    assert metric.compute().item() == pytest.approx(2 / 3)


# ---------------------------------------------------------------------------------------------
# Composer wrapper
# ---------------------------------------------------------------------------------------------


def _composer_batch(seed=0, batch=3, enc_len=20, dec_len=9, padded=False):
    b = make_batch(seed, batch=batch, enc_len=enc_len, dec_len=dec_len, padded=padded)
    start = torch.zeros_like(b['labels'][:, :1])
    b['decoder_input_ids'] = torch.cat([start, b['labels'][:, :-1].clamp(min=0)], dim=1)
    return b


def test_composer_t5_forward_loss_metrics():
    hf, ours = hf_and_ours('v1_1')
    model = ComposerT5(model=ours)
    batch = _composer_batch(padded=True)
    logits = model(batch)
    assert logits.shape == (3, 9, VOCAB)
    loss = model.loss(logits, batch)
    with torch.no_grad():
        ref = hf(**_model_kwargs(batch))
    torch.testing.assert_close(loss, ref.loss, rtol=1e-5, atol=1e-5)
    loss.backward()
    assert model.model.lm_head.weight.grad is not None

    assert model.get_metrics(is_train=True) == {}
    metrics = model.get_metrics(is_train=False)
    assert set(metrics) == {'LanguageNLL', 'TokenAccuracy'}
    with torch.no_grad():
        out = model.eval_forward(batch)
    assert model.eval_forward(batch, out) is out
    for metric in metrics.values():
        model.update_metric(batch, out, metric)
    torch.testing.assert_close(metrics['LanguageNLL'].compute(), loss.detach(), rtol=1e-5, atol=1e-5)
    acc = metrics['TokenAccuracy'].compute().item()
    assert 0.0 <= acc <= 1.0

    # decoder_input_ids missing -> built from labels by shifting right.
    no_dec = {k: v for k, v in batch.items() if k != 'decoder_input_ids'}
    torch.testing.assert_close(model(no_dec), logits)


def test_build_composer_t5_random_and_pretrained(tmp_path):
    cfg = tiny_config('v1_1')
    model = build_composer_t5(config=cfg, lm_head_init_std=0.05, gradient_checkpointing=True)
    assert isinstance(model, ComposerT5) and model.model.encoder.gradient_checkpointing
    assert model.model.lm_head.weight.std().item() < 0.1
    with pytest.raises(ValueError):
        build_composer_t5(config=cfg, init='bogus')

    torch.manual_seed(1)
    hf = transformers.T5ForConditionalGeneration(cfg).eval()
    hf.save_pretrained(tmp_path / 'hf')  # safetensors without the tied copies
    batch = _composer_batch(1)
    with torch.no_grad():
        ref = hf(**_model_kwargs(batch)).logits
    for source in (tmp_path / 'hf', tmp_path / 'hf' / 'model.safetensors'):
        loaded = build_composer_t5(config=cfg, init='pretrained', pretrained=str(source)).eval()
        with torch.no_grad():
            assert (loaded(batch) - ref).abs().max().item() <= 1e-4


def test_flops_per_batch_positive_linear_and_matches_counter():
    cfg = tiny_config('v1_1')
    model = ComposerT5(model=T5ForConditionalGeneration(cfg))
    b1 = _composer_batch(0, batch=2)
    b2 = _composer_batch(0, batch=4)
    f1, f2 = model.flops_per_batch(b1), model.flops_per_batch(b2)
    assert f1 > 0 and f2 == 2 * f1
    assert model.flops_per_batch(_composer_batch(0, batch=2, enc_len=40)) > f1

    # The formula counts exactly the matmuls torch runs in forward + backward. FlopCounterMode
    # has no formula for the CPU flash kernel (used by the mask-free cross-attention), so pin
    # SDPA to the math backend, whose bmm's it counts.
    counter = FlopCounterMode(display=False)
    with sdpa_kernel(SDPBackend.MATH), counter:
        model.loss(model(b1), b1).backward()
    assert counter.get_total_flops() == f1

    orig = tiny_config('original')
    assert t5_flops_per_batch(orig, batch_size=2, encoder_length=20, decoder_length=9) < f1  # 2 FFN mats, not 3
