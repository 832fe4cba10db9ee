"""``recipes/train.py <recipe> --dry-run``: build everything a run needs but the GPUs and the data, say what it would do, exit.

A big recipe is meant for a GPU cluster, but its mistakes (a misspelt FSDP key, batch sizes
that do not divide on 8 GPUs, a schedule longer than the run) should show up on a laptop in
seconds. The dry run loads and validates the config, runs every preflight check that needs
neither a GPU nor the data (missing data becomes a note with the convert command), loads the
tokenizer, builds the model on the meta device (no memory and no init: T5-xl's 2.85B parameters
cost nothing), the optimizer, the schedule, the callbacks, loggers and algorithms, applies
Composer's FSDP wrap and activation-checkpointing policies to list the units, and prints a
summary with a per-GPU memory estimate.

The memory estimate is arithmetic, not a measurement: sharded fp32 parameters, gradients and
optimizer state, the units FSDP gathers at a time, and a rough activation count.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence, TextIO

import torch
from torch import nn

from t5composer.checkpoints import estimated_checkpoint_bytes, optimizer_state_bytes
from t5composer.components import build_components
from t5composer.config.parallelism import trainer_parallelism_config
from t5composer.config.schema import SNIDataConfig, TrainConfig
from t5composer.config.validation import ConfigError
from t5composer.data.plan import check_splits
from t5composer.durations import batches_of
from t5composer.errors import format_bytes
from t5composer.run.preflight import preflight

__all__ = ['DEFAULT_GPUS', 'DryRunArgs', 'FSDPPlan', 'MemoryEstimate', 'activation_bytes', 'dry_run', 'fsdp_plan',
           'memory_estimate', 'parse_dry_run_args', 'target_gpus']

# The GPUs of one node: what the large and xl recipes are written for.
DEFAULT_GPUS = 8
_GIB = 2**30


@dataclass
class DryRunArgs:
    """What ``--dry-run`` asked for.

    Args:
        gpus: ``--dry-run-gpus N``, or None to take WORLD_SIZE (``composer -n N``) or 8.
    """

    gpus: Optional[int] = None


def parse_dry_run_args(argv: Sequence[str]) -> tuple[list[str], Optional[DryRunArgs]]:
    """Split ``--dry-run`` (or ``--dry_run``) and ``--dry-run-gpus N`` out of ``argv``, wherever they are.

    ``--dry-run-gpus`` implies ``--dry-run``.

    Args:
        argv: the command line after the script name.

    Returns:
        The remaining arguments, and None when no dry run was asked for.

    Raises:
        ConfigError: ``--dry-run-gpus`` without a positive integer.
    """
    rest: list[str] = []
    args: Optional[DryRunArgs] = None
    items = list(argv)
    i = 0
    while i < len(items):
        item = items[i]
        flag = item.replace('_', '-')
        if flag == '--dry-run':
            args = args or DryRunArgs()
        elif flag == '--dry-run-gpus' or flag.startswith('--dry-run-gpus='):
            value = item.split('=', 1)[1] if '=' in item else (items[i + 1] if i + 1 < len(items) else '')
            i += 0 if '=' in item else 1
            if not value.isdigit() or int(value) <= 0:
                raise ConfigError([f"--dry-run-gpus needs a positive number of GPUs, e.g. --dry-run-gpus 8; got {value or 'nothing'!r}."])
            args = DryRunArgs(gpus=int(value))
        else:
            rest.append(item)
        i += 1
    return rest, args


def target_gpus(requested: Optional[int], environ: Optional[dict] = None, *, sharded: bool = False) -> tuple[int, str]:
    """How many GPUs the dry run plans for, and why.

    ``--dry-run-gpus`` wins; then WORLD_SIZE when the launcher started several processes
    (``composer -n 8 ... --dry-run``); otherwise what the recipe is written for: one node of 8
    for an FSDP recipe, 1 GPU for the others (pt_base's microbatch of 128 is its whole batch, so
    checking it for 8 GPUs would only report that). A plain ``composer`` launch on a machine
    without GPUs starts one process, which says nothing about the cluster the recipe targets.

    Args:
        requested: ``--dry-run-gpus``, or None.
        environ: the environment (default: ``os.environ``).
        sharded: the recipe sets ``parallelism_config.fsdp``.
    """
    environ = os.environ if environ is None else environ
    if requested is not None:
        return requested, '--dry-run-gpus'
    world = environ.get('WORLD_SIZE', '')
    if world.isdigit() and int(world) > 1:
        return int(world), 'WORLD_SIZE'
    if sharded:
        return DEFAULT_GPUS, 'an FSDP recipe: one node; --dry-run-gpus N for another count'
    return 1, 'a recipe without FSDP; --dry-run-gpus N for a multi-GPU run'


# ---------------------------------------------------------------------------------------------
# FSDP units, as Composer 0.32's prepare_fsdp_module picks them
# ---------------------------------------------------------------------------------------------


@dataclass
class FSDPPlan:
    """The FSDP units and checkpointed modules of a ComposerModel.

    Args:
        roots: qualified names of the root units (children of the ComposerModel).
        units: qualified names of the modules wrapped as their own units.
        checkpointed: qualified names of the modules activation checkpointing wraps.
        unit_params: parameters per unit (roots included; a root counts what no inner unit owns).
        kinds: class name of each module in ``units`` and ``checkpointed``.
    """

    roots: list[str] = field(default_factory=list)
    units: list[str] = field(default_factory=list)
    checkpointed: list[str] = field(default_factory=list)
    unit_params: dict[str, int] = field(default_factory=dict)
    kinds: dict[str, str] = field(default_factory=dict)


def fsdp_plan(model: nn.Module) -> FSDPPlan:
    """Apply Composer's FSDP wrap and activation-checkpointing rules to ``model`` without wrapping it.

    Composer (``prepare_fsdp_module``) makes every child of the ComposerModel that is not a
    metric a root unit; inside it a module is wrapped when its ``_fsdp_wrap`` attribute says so,
    else when the child's ``fsdp_wrap_fn(module)`` is truthy; activation checkpointing wraps a
    module when its ``_activation_checkpointing`` says so, else when the child's
    ``activation_checkpointing_fn(module)`` is true. Works on the meta device.

    Args:
        model: the ComposerModel (e.g. :class:`~t5composer.models.ComposerT5`).
    """
    from torchmetrics import Metric, MetricCollection

    plan = FSDPPlan()
    for root_name, root in model.named_children():
        if isinstance(root, (Metric, MetricCollection)) or (hasattr(root, '_fsdp_wrap') and not root._fsdp_wrap):
            continue
        plan.roots.append(root_name)
        wrap_fn = getattr(root, 'fsdp_wrap_fn', None)
        ckpt_fn = getattr(root, 'activation_checkpointing_fn', None)
        owned: set[int] = set()
        for name, module in root.named_modules():
            full = f'{root_name}.{name}' if name else root_name
            wrapped = bool(module._fsdp_wrap) if hasattr(module, '_fsdp_wrap') else bool(callable(wrap_fn) and wrap_fn(module))
            if module is not root and wrapped:
                plan.units.append(full)
                plan.kinds[full] = type(module).__name__
            checkpointed = (bool(module._activation_checkpointing) if hasattr(module, '_activation_checkpointing')
                            else bool(callable(ckpt_fn) and ckpt_fn(module)))
            if checkpointed:
                plan.checkpointed.append(full)
                plan.kinds[full] = type(module).__name__
        # Innermost units own their parameters; count each parameter once (tied weights too).
        for full in sorted(plan.units, key=lambda n: -n.count('.')):
            if not full.startswith(root_name + '.'):
                continue
            sub = root.get_submodule(full[len(root_name) + 1:])
            params = [p for p in sub.parameters() if id(p) not in owned]
            owned.update(id(p) for p in params)
            plan.unit_params[full] = sum(p.numel() for p in params)
        plan.unit_params[root_name] = sum(p.numel() for p in {id(p): p for p in root.parameters()}.values() if id(p) not in owned)
    return plan


def _describe(names: list[str], kinds: dict[str, str]) -> str:
    """'46 T5Block (23 encoder, 23 decoder)' for a list of qualified module names."""
    if not names:
        return 'none'
    by_kind: dict[str, list[str]] = {}
    for name in names:
        by_kind.setdefault(kinds.get(name, '?'), []).append(name)
    parts = []
    for kind, members in by_kind.items():
        stacks = [s for s in ('encoder', 'decoder') if any(f'.{s}.' in f'.{m}.' for m in members)]
        split = ', '.join(f"{sum(f'.{s}.' in f'.{m}.' for m in members)} {s}" for s in stacks)
        parts.append(f'{len(members)} {kind}' + (f' ({split})' if split else ''))
    return ' + '.join(parts)


# ---------------------------------------------------------------------------------------------
# Memory
# ---------------------------------------------------------------------------------------------


@dataclass
class MemoryEstimate:
    """Bytes per GPU.

    Args:
        params / grads / optimizer: fp32 master weights, gradients and optimizer state held by
            one GPU (its shard under FSDP); ``optimizer`` is None for an optimizer not modelled.
        gathered: transient full copies: the FSDP units being computed (and their unsharded
            gradients), all parameters under SHARD_GRAD_OP, a compute-dtype copy under NO_SHARD.
        shard_degree: GPUs the states are split over.
        notes: assumptions worth printing.
    """

    params: float
    grads: float
    optimizer: Optional[float]
    gathered: float
    shard_degree: int
    notes: list[str] = field(default_factory=list)

    @property
    def states(self) -> float:
        return self.params + self.grads + (self.optimizer or 0.0)


def _compute_bytes(cfg: TrainConfig) -> int:
    """Bytes of one parameter as FSDP gathers it for compute (its mixed_precision's param_dtype)."""
    low = 2 if cfg.precision in ('amp_bf16', 'amp_fp16') else 4
    fsdp = (cfg.parallelism_config.fsdp if cfg.parallelism_config is not None else None) or {}
    mixed = fsdp.get('mixed_precision', 'DEFAULT')
    if isinstance(mixed, dict):
        dtype = str(mixed.get('param_dtype') or 'fp32')
        return 2 if any(k in dtype for k in ('bf16', 'fp16', 'half', 'bfloat16', 'float16')) else 4
    return 4 if str(mixed).upper() == 'FULL' else low


def memory_estimate(cfg: TrainConfig, model: nn.Module, plan: Optional[FSDPPlan], gpus: int) -> MemoryEstimate:
    """Per-GPU bytes of parameters, gradients, optimizer state and gathered units.

    Args:
        cfg: the config (optimizer, precision, parallelism_config).
        model: the model (meta device is fine).
        plan: its FSDP plan, or None without FSDP.
        gpus: GPUs of the run.
    """
    n = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    opt = optimizer_state_bytes(cfg.optimizer.name, model, cfg.optimizer.kwargs)
    fsdp = cfg.parallelism_config.fsdp if cfg.parallelism_config is not None else None
    notes: list[str] = []
    if opt is None:
        notes.append(f"optimizer '{cfg.optimizer.name}' is not modelled: its state is left out")
    if fsdp is None or plan is None:
        # DDP (or one GPU): full replicas, plus DDP's gradient buckets when there are several GPUs.
        buckets = 4.0 * n if gpus > 1 else 0.0
        return MemoryEstimate(params=4.0 * n, grads=4.0 * n, optimizer=opt, gathered=buckets, shard_degree=1, notes=notes)
    strategy = str(fsdp.get('sharding_strategy', 'FULL_SHARD')).upper()
    if strategy in ('HYBRID_SHARD', '_HYBRID_SHARD_ZERO2'):
        degree = fsdp.get('data_parallel_shard_degree', -1)
        shard = degree if isinstance(degree, int) and degree > 0 else min(gpus, DEFAULT_GPUS)
        notes.append(f'{strategy} shards within groups of {shard} GPUs (one node of {DEFAULT_GPUS} unless data_parallel_shard_degree says otherwise)')
    elif strategy == 'NO_SHARD' or gpus == 1:
        shard = 1
    else:
        shard = gpus
    b = _compute_bytes(cfg)
    blocks = [v for k, v in plan.unit_params.items() if k not in plan.roots]
    root = sum(plan.unit_params[r] for r in plan.roots)
    biggest = max(blocks, default=0)
    in_flight = min(2, len(blocks))  # limit_all_gathers: the unit computing and the one prefetched
    if shard == 1:
        gathered = float(n * b) if b != 4 else 0.0  # FSDP's low-precision copy of the whole model
    elif strategy in ('SHARD_GRAD_OP', '_HYBRID_SHARD_ZERO2'):
        gathered = float(n * b + (root + in_flight * biggest) * b)  # kept from forward to backward, + unsharded grads
    else:
        # The root unit stays gathered through forward and backward; blocks are gathered one or
        # two at a time; each gathered unit also gets its unsharded gradient before reduce-scatter.
        gathered = float(2 * (root + in_flight * biggest) * b)
    if fsdp.get('cpu_offload'):
        notes.append('cpu_offload: the sharded parameters and gradients live in host memory, not on the GPU')
    return MemoryEstimate(params=4.0 * n / shard, grads=4.0 * n / shard, optimizer=None if opt is None else opt / shard,
                          gathered=gathered, shard_degree=shard, notes=notes)


def activation_bytes(config: Any, *, batch: int, encoder_length: int, decoder_length: int, element_bytes: int,
                     checkpointing: bool) -> float:
    """A rough count of the activation bytes kept for backward for one microbatch.

    Per token of a block, under autocast with ``element_bytes`` per activation: each RMS norm
    keeps its fp32 input and its output, attention keeps q, k, v and the output (PyTorch's
    memory-efficient SDPA kernel: no L x L probabilities kept), the gated FFN keeps four
    ``d_ff`` vectors; decoder blocks add cross-attention, whose keys and values span the encoder
    tokens. The loss keeps the logits in the compute dtype, their fp32 copy and log-softmax.
    With checkpointing only each block's input stays, plus one block being recomputed and the
    gradient of its attention bias. Allocator fragmentation and workspaces are not counted:
    read the result as +-50%.

    Args:
        config: a T5Config.
        batch: samples in the microbatch.
        encoder_length / decoder_length: tokens per sample.
        element_bytes: bytes of an activation (2 under bf16 autocast, 4 in fp32).
        checkpointing: activation checkpointing of every block.
    """
    d, ff, heads, vocab = config.d_model, config.d_ff, config.num_heads, config.vocab_size
    inner = heads * config.d_kv
    e = element_bytes
    n_enc = config.num_layers
    n_dec = config.num_decoder_layers or config.num_layers
    ffn = (4 if config.is_gated_act else 2) * ff * e
    norm = (4 + e) * d
    enc_block = encoder_length * (2 * norm + 4 * inner * e + ffn)
    dec_block = decoder_length * (3 * norm + 4 * inner * e + 2 * inner * e + ffn) + encoder_length * 2 * inner * e
    logits = decoder_length * vocab * (e + 4 + 4)
    if checkpointing:
        kept = (n_enc * encoder_length + n_dec * decoder_length) * d * e + encoder_length * d * e
        recompute = max(enc_block, dec_block) + heads * encoder_length * encoder_length * 4
        per_sample = kept + recompute + logits
    else:
        per_sample = n_enc * enc_block + n_dec * dec_block + logits
    return float(batch * per_sample)


# ---------------------------------------------------------------------------------------------
# The dry run
# ---------------------------------------------------------------------------------------------


def _lengths(cfg: TrainConfig) -> tuple[int, int]:
    d = cfg.data
    if isinstance(d, SNIDataConfig):
        return d.max_source_length, d.max_target_length
    objective = d.pretraining_objective
    if objective.is_span_corruption:
        return d.input_length, d.span_corruption.target_length
    # A mixture's microbatches hold one denoiser each; the longest of either side bounds the memory.
    shapes = objective.output_lengths(d.span_corruption.expanded_length)
    return max(e for e, _ in shapes), max(t for _, t in shapes)


def _gib(x: float) -> str:
    return f'{x / _GIB:.2f} GiB'


def _components(cfg: TrainConfig) -> str:
    parts = []
    for kind in ('algorithms', 'callbacks', 'loggers'):
        section = getattr(cfg, kind)
        build_components(kind, section)  # really constructed, so their arguments are checked
        parts.append(f"{kind}: {', '.join(section) or '-'}")
    return '; '.join(parts)


def dry_run(cfg: TrainConfig, *, recipe: str = '<config>', gpus: Optional[int] = None, out: Optional[TextIO] = None,
            config_checked: bool = True) -> int:
    """Validate and build ``cfg`` for a run on ``gpus`` GPUs without training; print a summary.

    The same steps as a run (:func:`preflight`, :func:`~t5composer.run.plan.plan_run`, the model,
    optimizer, schedule and components), with the model on the meta device and no data read.

    Args:
        cfg: the config.
        config_checked: see :func:`~t5composer.run.preflight.preflight`.
        recipe: the YAML path, for the launch command printed at the end.
        gpus: ``--dry-run-gpus``, or None (see :func:`target_gpus`).
        out: where the summary goes (default: sys.stdout at the time of the call).

    Returns:
        0; a config that cannot run raises :class:`ConfigError`.
    """
    # The model, Composer and transformers take seconds to import; this module is imported by
    # every command line for parse_dry_run_args.
    from t5composer.models import build_composer_t5
    from t5composer.optim import build_optimizer, build_scheduler
    from t5composer.run.plan import plan_run

    fsdp = trainer_parallelism_config(cfg)
    world, why = target_gpus(gpus, sharded=fsdp is not None)
    notes = list(preflight(cfg, dry_run_gpus=world, config_checked=config_checked))
    on_gpu = torch.cuda.is_available()
    if not on_gpu and (cfg.precision != 'fp32' or cfg.device_train_microbatch_size == 'auto' or fsdp):
        notes.append(f"not checked on this machine (no GPU): precision {cfg.precision}"
                     + (", device_train_microbatch_size 'auto'" if cfg.device_train_microbatch_size == 'auto' else '')
                     + (', FSDP' if fsdp else '') + '; the GPU machine checks them at launch')

    fine_tuning = isinstance(cfg.data, SNIDataConfig)
    data_missing = bool(notes)  # so far the notes are preflight's: splits not converted yet
    run = plan_run(cfg, world_size=world, dry_run=True)  # the builtin corpus is built once and cached, as a real run does
    notes += run.notes
    tokenizer, tokenizer_name, model_config = run.tokenizer, run.tokenizer_name, run.model_config
    if run.data is not None and tokenizer is not None and run.data.remote is None and not data_missing:
        # Local splits exist: refuse data converted with another tokenizer or length, damaged shards,
        # and splits (the builtin corpus's too) smaller than one batch of the target world, as a run would.
        d = cfg.data
        check_splits(cfg, run.data, run.rows_tokenizer, d.span_corruption.expanded_length, world_size=world)

    with torch.device('meta'):  # shapes only: no memory, no init
        model = build_composer_t5(config=model_config, init='random', lm_head_init_std=cfg.model.lm_head_init_std,
                                  gradient_checkpointing=cfg.model.gradient_checkpointing)
    optimizer = build_optimizer(model, name=cfg.optimizer.name, lr=cfg.optimizer.lr, weight_decay=cfg.optimizer.weight_decay,
                                sharded=fsdp is not None, **cfg.optimizer.kwargs)
    build_scheduler(cfg.scheduler.name, base_lr=cfg.optimizer.lr, **cfg.scheduler.kwargs)
    components = _components(cfg)

    n_params = model.model.num_parameters()
    plan = fsdp_plan(model) if fsdp else None
    mem = memory_estimate(cfg, model, plan, world)
    enc_len, dec_len = _lengths(cfg)
    device_batch, micro, _ = run.batches
    fsdp_opts = fsdp['fsdp'] if fsdp else {}
    checkpointing = bool(fsdp_opts.get('activation_checkpointing')) or cfg.model.gradient_checkpointing
    e = 2 if cfg.precision in ('amp_bf16', 'amp_fp16') else 4
    act = activation_bytes(model_config, batch=micro if isinstance(micro, int) else 1, encoder_length=enc_len,
                           decoder_length=dec_len, element_bytes=e, checkpointing=checkpointing)

    n_enc, n_dec = model_config.num_layers, model_config.num_decoder_layers or model_config.num_layers
    lines = [f'Dry run of {recipe} for {world} GPU(s) ({why}); nothing is trained, the model is built on the meta device.']
    add = lambda key, text: lines.append(f'  {key:<12} {text}')  # noqa: E731
    add('model', f'{cfg.model.name}: {n_params:,} parameters ({n_params / 1e9:.3f}B; {n_enc} encoder + {n_dec} decoder blocks, '
                 f'd_model {model_config.d_model}, d_ff {model_config.d_ff}, {model_config.num_heads} heads), init {cfg.model.init}')
    add('tokenizer', f'{tokenizer_name} ({len(tokenizer)} tokens), vocab_size {model_config.vocab_size}' if tokenizer is not None
        else f'{tokenizer_name} (not loaded, see notes), vocab_size {model_config.vocab_size}')
    if isinstance(micro, int):
        accumulation = device_batch // micro
        add('batch', f'global {cfg.global_train_batch_size} = {world} GPU(s) x {device_batch}; microbatch {micro}, '
                     + (f'{accumulation} microbatches per step (gradient accumulation)' if accumulation > 1 else 'no gradient accumulation'))
    else:
        add('batch', f"global {cfg.global_train_batch_size} = {world} GPU(s) x {device_batch}; microbatch 'auto' (Composer searches on the GPU)")
    add('sequences', f'{enc_len} encoder + {dec_len} decoder tokens per sample')
    steps = batches_of(cfg.max_duration)
    add('duration', f'{cfg.max_duration}'
        + (f' = {steps:,} optimizer steps, {steps * cfg.global_train_batch_size:,} samples' if steps is not None else ''))
    schedule = ', '.join(f'{k}={v}' for k, v in cfg.scheduler.kwargs.items())
    add('optimizer', f'{cfg.optimizer.name} lr {cfg.optimizer.lr:g}, weight_decay {cfg.optimizer.weight_decay:g} '
                     f'({len(optimizer.param_groups)} parameter groups); schedule {cfg.scheduler.name}' + (f' ({schedule})' if schedule else ''))
    add('precision', cfg.precision + (f", FSDP mixed_precision {fsdp_opts.get('mixed_precision', 'DEFAULT')}" if fsdp else ''))
    if plan is not None:
        strategy = str(fsdp_opts.get('sharding_strategy', 'FULL_SHARD')).upper()
        root_params = sum(plan.unit_params[r] for r in plan.roots)
        add('FSDP', f'{strategy} over {mem.shard_degree} GPU(s), state_dict_type {fsdp_opts.get("state_dict_type", "full")}')
        add('', f'wrap units: {_describe(plan.units, plan.kinds)}, {max((plan.unit_params[u] for u in plan.units), default=0) / 1e6:.1f}M '
                f'parameters each at most; + the root unit ({root_params / 1e6:.1f}M: embedding, lm_head, final norms and block 0 of each stack, '
                f'which owns the relative position bias the stack computes outside its blocks)')
        reentrant = fsdp_opts.get('activation_checkpointing_reentrant', True)
        add('checkpoint', (f"activation checkpointing of {_describe(plan.checkpointed, plan.kinds)} "
                           f"({'reentrant' if reentrant else 'non-reentrant'})") if fsdp_opts.get('activation_checkpointing') else 'no activation checkpointing')
    else:
        add('parallelism', f"{'DDP' if world > 1 else 'one process'}, no FSDP"
            + ('; model.gradient_checkpointing on' if cfg.model.gradient_checkpointing else ''))
    opt_text = _gib(mem.optimizer) if mem.optimizer is not None else 'not estimated'
    add('memory/GPU', f'params {_gib(mem.params)} + grads {_gib(mem.grads)} + optimizer {opt_text} (fp32'
                      + (f', sharded {mem.shard_degree} ways' if mem.shard_degree > 1 else '') + f') = {_gib(mem.states)}')
    add('', f'+ gathered units / buffers {_gib(mem.gathered)} + activations ~{_gib(act)} per microbatch '
            f"({'checkpointed' if checkpointing else 'not checkpointed'}; rough) = ~{_gib(mem.states + mem.gathered + act)} of an 80 GB GPU's 79.6 GiB")
    for note in mem.notes:
        add('', f'({note})')
    full_checkpoint = estimated_checkpoint_bytes(model, optimizer=cfg.optimizer.name, optimizer_kwargs=cfg.optimizer.kwargs)
    if cfg.save_folder:
        add('checkpoints', f'{cfg.save_folder} every {cfg.save_interval}, keep {cfg.save_num_checkpoints_to_keep}, '
                           f'~{format_bytes(full_checkpoint)} each (fp32 weights + optimizer state); autoresume {"on" if cfg.autoresume else "off"}')
    else:
        add('checkpoints', 'none (save_folder is not set)')
    if cfg.data.eval_split if not fine_tuning else cfg.data.eval:
        add('eval', f'every {cfg.eval_interval}' + (f', {cfg.eval_subset_num_batches} batches' if cfg.eval_subset_num_batches > 0 else ''))
    add('components', components)
    if notes:
        lines.append('Notes:')
        lines += ['  - ' + note.replace('\n', '\n    ') for note in notes]
    lines.append(f'Dry run OK: the config validates and builds. Launch: composer -n {world} recipes/train.py {recipe}')
    print('\n'.join(lines), file=out or sys.stdout, flush=True)
    return 0
