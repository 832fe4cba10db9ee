"""Train step of a tiny T5 under real FSDP (FULL_SHARD, 2 CPU processes over gloo), wrapped the way Composer wraps it.

Composer's ``prepare_fsdp_module`` needs CUDA (it passes ``torch.cuda.current_device()``), so
this applies the same rules by hand: the model's ``fsdp_wrap_fn`` as the auto-wrap policy and
its ``activation_checkpointing_fn`` for non-reentrant checkpoint wrappers inside the units.
Each rank takes half of a batch; the gathered gradients must equal those of the unwrapped model
on the whole batch, the shared gradient norm and clipping must equal FSDP's own
``clip_grad_norm_``, and the weights after an adamwscale step on the shards (RMS over whole
tensors; eager and compiled, with the non-finite flag) must equal the unwrapped model's. Prints
one JSON line per rank.

    python tests/drivers/fsdp_cpu.py
"""

from __future__ import annotations

import json
import os
import socket
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _rank(rank: int, world: int, port: int) -> None:
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
        CheckpointImpl, CheckpointWrapper, apply_activation_checkpointing, checkpoint_wrapper)
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    from torch.distributed.fsdp import ShardingStrategy
    from torch.distributed.fsdp.wrap import CustomPolicy

    # Not t5composer.models: its __init__ imports Composer (seconds), which this needs not.
    from t5composer.models.presets import load_model_config
    from t5composer.models.t5 import T5ForConditionalGeneration

    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    dist.init_process_group('gloo', rank=rank, world_size=world)
    torch.set_num_threads(1)
    config = load_model_config('google/t5-v1_1-small', d_model=32, d_kv=8, d_ff=64, num_heads=4, num_layers=3,
                               vocab_size=128, dropout_rate=0.0)
    torch.manual_seed(0)
    reference = T5ForConditionalGeneration(config)
    torch.manual_seed(0)
    model = T5ForConditionalGeneration(config)
    inputs = torch.randint(0, 128, (4, 16), generator=torch.Generator().manual_seed(1))
    labels = torch.randint(0, 128, (4, 5), generator=torch.Generator().manual_seed(2))
    reference(input_ids=inputs, labels=labels).loss.backward()

    wrapped = FSDP(model, auto_wrap_policy=CustomPolicy(model.fsdp_wrap_fn), sharding_strategy=ShardingStrategy.FULL_SHARD,
                   device_id=torch.device('cpu'), use_orig_params=True)
    apply_activation_checkpointing(
        wrapped,
        checkpoint_wrapper_fn=lambda m: checkpoint_wrapper(m, checkpoint_impl=CheckpointImpl.NO_REENTRANT),
        check_fn=lambda m: not isinstance(m, FSDP) and model.activation_checkpointing_fn(m),
    )
    half = slice(rank * 2, rank * 2 + 2)
    result: dict = {'rank': rank}
    try:
        wrapped(input_ids=inputs[half], labels=labels[half]).loss.backward()
        with FSDP.summon_full_params(wrapped, with_grads=True):
            grads = {n.replace('_fsdp_wrapped_module.', '').replace('_checkpoint_wrapped_module.', ''): p.grad
                     for n, p in wrapped.named_parameters()}
            result['max_grad_diff'] = max(float((grads[n] - p.grad).abs().max()) for n, p in reference.named_parameters())
            result['compared'] = sum(1 for n, _ in reference.named_parameters() if n in grads)
            result['parameters'] = len(list(reference.named_parameters()))
        # The step's gradient norm (clipping, the guard, nanot5_log) and the weights norm from the
        # shards equal the unwrapped model's.
        from t5composer.optim.grad_norm import fsdp_copies, global_l2

        copies = fsdp_copies(wrapped)
        result['copies'] = copies
        result['grad_l2_diff'] = abs(float(global_l2([p.grad for p in wrapped.parameters() if p.grad is not None], copies=copies))
                                     - float(global_l2([p.grad for p in reference.parameters()])))
        result['weights_l2_diff'] = abs(float(global_l2([p.detach() for p in wrapped.parameters()], copies=copies))
                                        - float(global_l2([p.detach() for p in reference.parameters()])))
        result['grad_l2_local_diff'] = abs(float(global_l2([p.grad for p in wrapped.parameters() if p.grad is not None]))
                                           - float(global_l2([p.grad for p in reference.parameters()])))
        # Clipping with that norm is FSDP's own clip_grad_norm_: the same norm, the same gradients.
        params = [p for p in wrapped.parameters() if p.grad is not None]
        grads = [p.grad.clone() for p in params]
        fsdp_norm = wrapped.clip_grad_norm_(0.05)
        fsdp_clipped = [p.grad.clone() for p in params]
        for p, g in zip(params, grads):
            p.grad.copy_(g)
        ours = global_l2([p.grad for p in params], copies=copies)
        torch.nn.utils.clip_grads_with_norm_(params, 0.05, ours)
        result['clip_norm_diff'] = abs(float(ours) - float(fsdp_norm))
        result['clip_grad_diff'] = max(float((p.grad - g).abs().max()) for p, g in zip(params, fsdp_clipped))
        result['clipped'] = float(fsdp_norm) > 0.05
        for p, g in zip(params, grads):
            p.grad.copy_(g)
        # adamwscale on the shards: with sharded_params its RMS is the whole tensor's, so the
        # step equals the unwrapped model's (eager, compiled or our fused kernel, with the non-finite
        # flag or without); without it each shard scales by its own RMS. A flagged step changes nothing.
        from t5composer.optim import AdamWScale

        AdamWScale(reference.parameters(), lr=1e-2).step()
        start = [p.detach().clone() for p in wrapped.parameters()]
        for key, sharded_params, implementation, flag in (('max_step_diff_sharded_rms', True, {}, None),
                                                          ('max_step_diff_sharded_rms_compiled', True, {'compiled': True}, False),
                                                          ('max_step_diff_sharded_rms_fused', True, {'fused': True}, False),
                                                          ('max_step_diff_shard_local_rms', False, {}, None),
                                                          ('max_change_flagged_step', True, {'compiled': True}, True),
                                                          ('max_change_flagged_step_fused', True, {'fused': True}, True)):
            with torch.no_grad():
                for p, p0 in zip(wrapped.parameters(), start):
                    p.copy_(p0)
            optimizer = AdamWScale(wrapped.parameters(), lr=1e-2, sharded_params=sharded_params, **implementation)
            if flag is not None:
                optimizer.skip_next_step_if(torch.tensor(flag))
            optimizer.step()
            if flag:
                result[key] = max(float((p - p0).abs().max()) for p, p0 in zip(wrapped.parameters(), start) if p.numel())
                continue
            with FSDP.summon_full_params(wrapped):
                stepped = {n.replace('_fsdp_wrapped_module.', '').replace('_checkpoint_wrapped_module.', ''): p.detach().clone()
                           for n, p in wrapped.named_parameters()}
            result[key] = max(float((stepped[n] - p).abs().max()) for n, p in reference.named_parameters())
        result['fsdp_units'] = sum(isinstance(m, FSDP) for m in wrapped.modules())
        result['checkpointed'] = sum(isinstance(m, CheckpointWrapper) for m in wrapped.modules())
    except Exception as e:  # reported, not raised: the test shows what failed
        result['error'] = f'{type(e).__name__}: {e}'
    sys.stdout.write(json.dumps(result) + '\n')  # one write: the two ranks share stdout
    sys.stdout.flush()
    dist.destroy_process_group()


def main() -> None:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    mp.spawn(_rank, args=(2, port), nprocs=2)


if __name__ == '__main__':
    main()
