"""Greedy generation: cached == uncached == transformers' greedy generate on the same weights."""

from __future__ import annotations

import pytest
import torch
import transformers

from t5composer.models import T5ForConditionalGeneration
from t5composer.models.t5 import DecoderCache

VOCAB = 128
EOS = 1


pytestmark = pytest.mark.usefixtures('one_thread')


def tiny_config(kind: str = 'v1_1', **overrides) -> transformers.T5Config:
    kw = dict(
        vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=4,
        # Few buckets and a short max distance: a 20-token decode crosses into the log buckets.
        relative_attention_num_buckets=8, relative_attention_max_distance=16,
        dropout_rate=0.0, decoder_start_token_id=0, pad_token_id=0, eos_token_id=EOS,
    )
    if kind == 'v1_1':
        kw.update(feed_forward_proj='gated-gelu', tie_word_embeddings=False)
    else:
        kw.update(feed_forward_proj='relu', tie_word_embeddings=True)
    kw.update(overrides)
    return transformers.T5Config(**kw)


def hf_and_ours(kind: str = 'v1_1', seed: int = 0, **overrides):
    """An HF model with random weights and ours loaded from its state_dict (both eval mode).

    The attention and FFN output projections are scaled up 3x: at transformers' init the
    residual stream is dominated by the current token's embedding, and the tied model then
    repeats one token whatever the source.
    """
    cfg = tiny_config(kind, **overrides)
    torch.manual_seed(seed)
    hf = transformers.T5ForConditionalGeneration(cfg).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if name.endswith(('.o.weight', '.wo.weight')):
                p.mul_(3.0)
    ours = T5ForConditionalGeneration(cfg).eval()
    ours.load_state_dict(hf.state_dict())
    return hf, ours


def make_rows_stop(hf, ours, ids, mask, *, max_new_tokens: int, every_row: bool) -> list[int | None]:
    """Tilt EOS's lm_head row toward the mean decoder output until rows stop at different steps.

    Random weights rarely emit EOS on their own (and a tied lm_head rules out a bias term).
    Adding ``c * mean hidden state`` to the EOS row raises its logit most where the hidden state
    is typical; ``c`` is raised until at least two rows finish at different steps and, when
    ``every_row``, all rows finish, otherwise at least one row does not. Returns the EOS steps.
    """
    with torch.no_grad():
        enc = ours.encode(ids, mask)
        tokens = ours.generate(ids, mask, max_new_tokens=max_new_tokens)
        mean = ours.decoder(tokens[:, :-1], encoder_hidden_states=enc, encoder_attention_mask=mask).mean((0, 1))
        base = hf.lm_head.weight[EOS].clone()  # also the embedding row when tied
        for c in torch.arange(0.5, 40.0, 0.5).tolist():
            hf.lm_head.weight[EOS] = base + c * mean
            ours.load_state_dict(hf.state_dict())
            steps = _finish_steps(ours.generate(ids, mask, max_new_tokens=max_new_tokens))
            done = [s for s in steps if s is not None]
            if len(set(done)) >= 2 and (len(done) == len(steps) if every_row else len(done) < len(steps)):
                return steps
    raise AssertionError('no EOS tilt makes rows stop at different steps; change the seed')


def padded_batch(seed: int = 0, *, batch: int = 6, length: int = 17, side: str = 'right'):
    """Rows of different lengths padded with 0 on one side, and their attention mask."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, VOCAB, (batch, length), generator=g)
    lengths = torch.tensor([length, length - 3, 5, length - 8, 2, length - 1][:batch])
    pos = torch.arange(length)[None, :]
    if side == 'right':
        mask = (pos < lengths[:, None]).long()
    else:
        mask = (pos >= length - lengths[:, None]).long()
    return ids.masked_fill(mask == 0, 0), mask


def hf_generate(hf, ids, mask, **kwargs):
    with torch.no_grad():
        return hf.generate(input_ids=ids, attention_mask=mask, do_sample=False, num_beams=1, **kwargs)


def _finish_steps(tokens: torch.Tensor) -> list[int | None]:
    """Per row, the index of its first EOS (None when it never finished)."""
    out = []
    for row in tokens.tolist():
        out.append(row.index(EOS) if EOS in row else None)
    return out


@pytest.mark.parametrize('kind', ['v1_1', 'original'])
@pytest.mark.parametrize('side', ['right', 'left'])
def test_cached_uncached_and_transformers_agree(kind, side):
    hf, ours = hf_and_ours(kind, seed=0)
    ids, mask = padded_batch(2, side=side)
    make_rows_stop(hf, ours, ids, mask, max_new_tokens=20, every_row=False)
    ref = hf_generate(hf, ids, mask, max_new_tokens=20)
    cached = ours.generate(ids, mask, max_new_tokens=20)
    uncached = ours.generate(ids, mask, max_new_tokens=20, use_cache=False)
    assert torch.equal(cached, ref), (cached, ref)
    assert torch.equal(uncached, ref)
    assert cached.shape == (6, 21) and cached.dtype == torch.long and (cached[:, 0] == 0).all()
    # Not a degenerate case: rows finish at different steps, some not at all, and finished
    # rows are padded with 0 after their EOS.
    steps = _finish_steps(cached)
    assert len({s for s in steps if s is not None}) >= 2 and None in steps, steps
    for row, s in zip(cached.tolist(), steps):
        if s is not None:
            assert all(t == 0 for t in row[s + 1:])


def test_stops_when_every_row_finished_and_matches_transformers():
    hf, ours = hf_and_ours('v1_1', seed=0)
    ids, mask = padded_batch(2)
    make_rows_stop(hf, ours, ids, mask, max_new_tokens=20, every_row=True)
    ref = hf_generate(hf, ids, mask, max_new_tokens=20)
    out = ours.generate(ids, mask, max_new_tokens=20)
    assert torch.equal(out, ref)
    assert torch.equal(ours.generate(ids, mask, max_new_tokens=20, use_cache=False), ref)
    steps = _finish_steps(out)
    assert all(s is not None for s in steps) and len(set(steps)) >= 2, steps
    assert out.shape[1] == max(steps) + 1  # stopped right after the last row's EOS


def test_min_new_tokens_matches_transformers_and_forces_full_length():
    hf, ours = hf_and_ours('v1_1', seed=2)
    ids, mask = padded_batch(3)
    make_rows_stop(hf, ours, ids, mask, max_new_tokens=12, every_row=True)
    assert ours.generate(ids, mask, max_new_tokens=12).shape[1] < 13
    ref = hf_generate(hf, ids, mask, max_new_tokens=12, min_new_tokens=7)
    assert torch.equal(ours.generate(ids, mask, max_new_tokens=12, min_new_tokens=7), ref)
    assert torch.equal(ours.generate(ids, mask, max_new_tokens=12, min_new_tokens=7, use_cache=False), ref)
    full = ours.generate(ids, mask, max_new_tokens=12, min_new_tokens=12)
    assert full.shape == (6, 13) and not full[:, 1:].eq(EOS).any()


def test_no_mask_infers_it_from_pad_ids_and_single_token():
    hf, ours = hf_and_ours('v1_1', seed=5)
    ids, mask = padded_batch(5)
    ref = hf_generate(hf, ids, None, max_new_tokens=20)  # transformers masks the pad ids itself
    assert torch.equal(ours.generate(ids, max_new_tokens=20), ref)
    assert torch.equal(ours.generate(ids, mask, max_new_tokens=20), ref)
    unpadded = ids[:, :2]  # no pad id anywhere: no mask at all
    assert torch.equal(ours.generate(unpadded, max_new_tokens=20), hf_generate(hf, unpadded, None, max_new_tokens=20))
    one = ours.generate(ids, max_new_tokens=1)
    assert torch.equal(one, ref[:, :2])
    with pytest.raises(ValueError, match='max_new_tokens'):
        ours.generate(ids, max_new_tokens=0)


def test_cached_step_logits_equal_full_decoder():
    """Each cached step's hidden state equals the full decoder's at that position."""
    _, ours = hf_and_ours('v1_1', seed=2)
    ids, mask = padded_batch(6)
    dec = torch.randint(2, VOCAB, (6, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        enc = ours.encode(ids, mask)
        full = ours.decoder(dec, encoder_hidden_states=enc, encoder_attention_mask=mask)
        cache = ours.decoder.init_cache(enc, mask, max_length=20)
        assert isinstance(cache, DecoderCache) and len(cache.self_kv) == 2
        assert cache.cross_kv[0].k.shape == (6, 4, 17, 8) and cache.self_kv[0].k.shape == (6, 4, 20, 8)
        steps = [ours.decoder(dec[:, t:t + 1], encoder_hidden_states=enc, cache=cache) for t in range(20)]
    assert cache.position.item() == 20
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match='one token'):
        ours.decoder(dec[:, :2], encoder_hidden_states=enc, cache=ours.decoder.init_cache(enc, mask, max_length=4))


def test_decoder_deeper_than_encoder():
    """num_decoder_layers != num_layers. transformers 4.57's own cache breaks on this config (its
    DynamicCache is sized by num_layers), so the reference is its generate(use_cache=False)."""
    hf, ours = hf_and_ours('v1_1', seed=0, num_decoder_layers=3)
    ids, mask = padded_batch(2)
    make_rows_stop(hf, ours, ids, mask, max_new_tokens=20, every_row=False)
    ref = hf_generate(hf, ids, mask, max_new_tokens=20, use_cache=False)
    assert torch.equal(ours.generate(ids, mask, max_new_tokens=20), ref)
    assert torch.equal(ours.generate(ids, mask, max_new_tokens=20, use_cache=False), ref)


def test_bias_row_uses_causal_buckets_beyond_max_distance():
    """Positions past relative_attention_max_distance (16) use the last buckets, as in transformers."""
    hf, ours = hf_and_ours('v1_1', seed=3)
    ids, mask = padded_batch(7)
    ref = hf_generate(hf, ids, mask, max_new_tokens=40)
    assert ref.shape[1] == 41  # no row stopped: the whole 40-token range is compared
    assert torch.equal(ours.generate(ids, mask, max_new_tokens=40), ref)


def test_generate_leaves_no_grad_and_keeps_mode():
    _, ours = hf_and_ours('v1_1')
    ids, mask = padded_batch(8)
    out = ours.generate(ids, mask, max_new_tokens=3)
    assert not out.requires_grad and not ours.training
    assert not out.is_inference()  # usable as input of a later training step


def test_bf16_generation_runs_and_is_finite():
    _, ours = hf_and_ours('v1_1', seed=4)
    ids, mask = padded_batch(9)
    ref = ours.generate(ids, mask, max_new_tokens=8)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        auto = ours.generate(ids, mask, max_new_tokens=8)
        auto_uncached = ours.generate(ids, mask, max_new_tokens=8, use_cache=False)
    assert auto.shape == ref.shape and (auto[:, 0] == 0).all()
    assert torch.equal(auto, auto_uncached) or (auto != auto_uncached).float().mean() < 0.2
