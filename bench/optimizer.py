"""Benchmark case ``optimizer``: the adamwscale step against nanoT5's per-parameter loop, at T5 shapes.

The parameters of ``--optimizer-model`` (default T5 v1.1-base: 282 tensors, 248M weights), with
gradients from one real forward + backward pass of the model (``--optimizer-step-batch`` rows of
512 + 114 tokens; 0: random gradients of a similar scale), stepped by:

- ``nanot5``: nanoT5's ``AdamWScale`` (its ``optim.py``), one parameter at a time in a Python
  loop: eight tensor ops per parameter, and ``max(1e-3, RMS)`` and ``addcdiv_(value=...)`` read
  the RMS on the host (two waits for the device per parameter on a GPU). The baseline,
  :class:`NanoT5AdamWScale`; it is also the reference the tests compare our step with.
- ``adamwscale``: :class:`t5composer.optim.AdamWScale` run eagerly, as training runs it: every
  step gets the non-finite guard's device flag (``skip_next_step_if``), so it computes the new
  weights and moments and selects them on the device.
- ``adamwscale+compile``: the same with ``compiled=True`` (what ``compile: true`` recipes run):
  the update of each tensor is one fused pass. Its first step compiles (printed as ``compile s``;
  minutes on a CPU for T5-base, seconds with a warm inductor cache).
- ``adamwscale+fused``: the same with ``fused=True`` (``optimizer.fused: true``): the update of
  every tensor of a group in one Triton kernel launch. CUDA only (not in the CPU default).

Each variant has its own optimizer state over the same weights (which drift from step to step;
the work does not change). On CPU the variants' steps are interleaved, as in the ``model`` case,
so a changing load hits them alike (the process then holds every variant's state: ~6 GB for
T5-base); on CUDA each runs in turn. Reported: median step time, the speed-up over
``nanot5``, the effective bandwidth (bytes of weights, gradients and both moments read and written
once, over the step time) and, when a model step was timed, the optimizer's share of a training
step (``optimizer / (forward + backward + optimizer)`` at that batch). Peak memory per variant
as in the other cases (on CPU the process's peak RSS, with the model, the gradients and every
variant's state).
Defaults: one thread on CPU (``--optimizer-threads``), fp32.
"""

from __future__ import annotations

import argparse
import gc
import math
import statistics
import time
from typing import Any, Callable

import torch
import torch.nn.functional as F

from bench.measure import peak_memory_mib, reset_peak_memory, sync

HELP = "adamwscale step vs nanoT5's per-parameter loop at T5 shapes (ms/step, speed-up, share of a training step)"

COLUMNS = (
    ('variant', 'variant', '{}'),
    ('threads', 'threads', '{}'),
    ('step_ms', 'step ms', '{:,.1f}'),
    ('speedup_vs_nanot5', 'vs nanot5', '{:.2f}x'),
    ('gb_per_s', 'GB/s', '{:.1f}'),
    ('share_of_step', 'share of step', '{:.1%}'),
    ('compile_s', 'compile s', '{:.1f}'),
    ('peak_mib', 'peak MiB', '{:,.0f}'),
)

VARIANTS = ('nanot5', 'adamwscale', 'adamwscale+compile', 'adamwscale+fused')
CPU_VARIANTS = VARIANTS[:3]  # the fused kernel runs on CUDA


class NanoT5AdamWScale(torch.optim.Optimizer):
    """nanoT5's ``AdamWScale`` as its repository has it: the per-parameter loop (the baseline).

    Args:
        params: parameters or parameter groups.
        lr: learning rate.
        betas: Adam's coefficients.
        eps: added to the denominator.
        weight_decay: decoupled weight decay.
    """

    def __init__(self, params: Any, *, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-6,
                 weight_decay: float = 0.0) -> None:
        super().__init__(params, {'lr': lr, 'betas': betas, 'eps': eps, 'weight_decay': weight_decay})

    @staticmethod
    def _rms(tensor: torch.Tensor) -> torch.Tensor:
        return tensor.norm(2) / (tensor.numel() ** 0.5)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One step of every parameter with a gradient, in turn."""
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            for p in group['params']:
                if p.grad is None:
                    continue
                grad = p.grad
                state = self.state[p]
                beta1, beta2 = group['betas']
                if len(state) == 0:
                    state['step'] = 0
                    state['exp_avg'] = torch.zeros_like(p)
                    state['exp_avg_sq'] = torch.zeros_like(p)
                exp_avg, exp_avg_sq = state['exp_avg'], state['exp_avg_sq']
                state['step'] += 1
                exp_avg.mul_(beta1).add_(grad, alpha=1.0 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
                denom = exp_avg_sq.sqrt().add_(group['eps'])
                step_size = group['lr']
                bias_correction1 = 1.0 - beta1 ** state['step']
                bias_correction2 = 1.0 - beta2 ** state['step']
                step_size = step_size * math.sqrt(bias_correction2) / bias_correction1
                step_size = step_size * max(1e-3, self._rms(p))  # the host reads the RMS (a tensor comparison)
                p.addcdiv_(exp_avg, denom, value=-step_size)  # and again (a 0-dim tensor as a Python number)
                if group['weight_decay'] > 0.0:
                    p.add_(p, alpha=-group['lr'] * group['weight_decay'])
        return loss


def add_args(parser: argparse.ArgumentParser) -> None:
    """Add the case's ``--optimizer-*`` options to ``parser``."""
    g = parser.add_argument_group('optimizer')
    g.add_argument('--optimizer-model', default='google/t5-v1_1-base', help='preset or config dir whose parameter shapes are stepped')
    g.add_argument('--optimizer-variants', default=None,
                   help=f'comma-separated, of {", ".join(VARIANTS)} (default: all on cuda, {", ".join(CPU_VARIANTS)} on cpu)')
    g.add_argument('--optimizer-threads', type=int, default=1, help='torch CPU threads (CPU only; default 1)')
    g.add_argument('--optimizer-step-batch', type=int, default=None,
                   help='rows of the forward + backward pass that makes the gradients and is timed for the share of a step '
                        '(default: 2 on cpu, 0 on cuda, where the model case times the step; 0: random gradients, no share)')


def _variant_optimizer(name: str, model: torch.nn.Module) -> torch.optim.Optimizer:
    """pt_base's optimizer as training builds it (its parameter groups: the same compiled graphs as
    the loop's and the model case's, which share the inductor cache), or the baseline over the same groups."""
    from t5composer.optim import build_optimizer, param_groups

    if name == 'nanot5':
        return NanoT5AdamWScale(param_groups(model, weight_decay=0.0), lr=2e-2)
    if name in ('adamwscale', 'adamwscale+compile', 'adamwscale+fused'):
        fused = {'fused': True} if name.endswith('+fused') else {}
        return build_optimizer(model, name='adamwscale', lr=2e-2, compile_step=name.endswith('+compile'), **fused)
    raise ValueError(f'unknown optimizer variant {name!r} ({", ".join(VARIANTS)})')


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Time each variant's step at the model's parameter shapes; one row per variant.

    Args:
        args: the parsed command line (``device``, ``warmup``, ``repeats`` and the ``optimizer_*`` options).
    """
    from bench.model import DECODER_LENGTH, ENCODER_LENGTH, make_batch
    from t5composer.models import T5ForConditionalGeneration, load_model_config

    device = args.device
    on_cuda = device == 'cuda'
    names = [v.strip() for v in (args.optimizer_variants or ','.join(VARIANTS if on_cuda else CPU_VARIANTS)).split(',') if v.strip()]
    for name in names:
        if name not in VARIANTS:
            raise ValueError(f'unknown optimizer variant {name!r} ({", ".join(VARIANTS)})')
    if not on_cuda:
        torch.set_num_threads(args.optimizer_threads)
    step_batch = args.optimizer_step_batch if args.optimizer_step_batch is not None else (0 if on_cuda else 2)

    config = load_model_config(args.optimizer_model, dropout_rate=0.0)
    torch.manual_seed(0)
    model = T5ForConditionalGeneration(config, lm_head_std=config.d_model**-0.5).to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    numel = sum(p.numel() for p in params)
    forward_backward_s = None
    if step_batch > 0:
        batch = make_batch(config.vocab_size, batch=step_batch, device=device)

        def forward_backward() -> None:
            for p in params:
                p.grad = None
            logits = model(batch['input_ids'], decoder_input_ids=batch['decoder_input_ids'])
            F.cross_entropy(logits.float().flatten(0, 1), batch['labels'].flatten()).backward()

        forward_backward()  # warm-up; its gradients are the ones every variant steps with
        times = []
        for _ in range(args.repeats):
            sync(device)
            start = time.perf_counter()
            forward_backward()
            sync(device)
            times.append(time.perf_counter() - start)
        forward_backward_s = statistics.median(times)
    else:
        g = torch.Generator(device=device).manual_seed(1)
        for p in params:
            p.grad = torch.randn(p.shape, device=device, generator=g) * 1e-3
    threads = None if on_cuda else torch.get_num_threads()
    print(f'[optimizer] {args.optimizer_model}: {len(params)} tensors, {numel / 1e6:.1f}M weights, fp32, '
          f'{"cuda" if on_cuda else f"cpu, {threads} thread(s)"}; gradients from '
          + (f'a forward + backward of {step_batch} x {ENCODER_LENGTH}+{DECODER_LENGTH} tokens ({forward_backward_s:.3f} s)'
             if forward_backward_s else 'random numbers'), flush=True)

    moved_bytes = 7 * 4 * numel  # read weights, gradients and both moments; write weights and both moments
    flag = torch.zeros((), dtype=torch.bool, device=device)

    def stepper(optimizer: torch.optim.Optimizer) -> Callable[[], None]:
        def step() -> None:
            if hasattr(optimizer, 'skip_next_step_if'):
                optimizer.skip_next_step_if(flag)  # as the non-finite guard does every batch
            optimizer.step()
        return step

    def timed(step: Callable[[], None]) -> float:
        sync(device)
        start = time.perf_counter()
        step()
        sync(device)
        return time.perf_counter() - start

    # On CPU the variants' steps are interleaved (round r steps each variant once), so a load that
    # changes during the run hits them alike; on CUDA each runs in turn and frees its state after.
    steps: dict[str, Callable[[], None]] = {}
    first: dict[str, float] = {}
    times: dict[str, list[float]] = {name: [] for name in names}
    peaks: dict[str, float] = {}
    for name in names:
        steps[name] = stepper(_variant_optimizer(name, model))
        first[name] = timed(steps[name])  # creates the state (and compiles)
        for _ in range(max(args.warmup - 1, 0)):
            steps[name]()
        if on_cuda:
            reset_peak_memory(device)
            times[name] = [timed(steps[name]) for _ in range(args.repeats)]
            peaks[name] = peak_memory_mib(device)
            print(f'  [optimizer] {name}: {statistics.median(times[name]) * 1e3:,.1f} ms/step (first step {first[name]:.1f} s)',
                  flush=True)
            del steps[name]
            gc.collect()
            torch.cuda.empty_cache()
    if not on_cuda:
        for _ in range(args.repeats):
            for name in names:
                times[name].append(timed(steps[name]))
        peak = peak_memory_mib(device)  # the process's, holding every variant's state
        for name in names:
            peaks[name] = peak
            print(f'  [optimizer] {name}: {statistics.median(times[name]) * 1e3:,.1f} ms/step', flush=True)
    rows: list[dict[str, Any]] = []
    for name in names:
        median = statistics.median(times[name])
        rows.append({
            'variant': name, 'threads': threads, 'step_ms': median * 1e3, 'times_ms': [t * 1e3 for t in times[name]],
            'gb_per_s': moved_bytes / median / 1e9, 'peak_mib': peaks[name], 'model': args.optimizer_model,
            'tensors': len(params), 'weights': numel, 'torch': torch.__version__, 'interleaved': not on_cuda,
            'compile_s': first[name] - median if name.endswith(('+compile', '+fused')) else None,
            'forward_backward_s': forward_backward_s, 'step_batch': step_batch or None,
            'share_of_step': median / (forward_backward_s + median) if forward_backward_s else None,
        })
    base = next((r for r in rows if r['variant'] == 'nanot5'), None)
    for r in rows:
        if base is not None:
            r['speedup_vs_nanot5'] = base['step_ms'] / r['step_ms']
    return rows
