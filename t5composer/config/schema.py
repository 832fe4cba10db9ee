"""The schema of a training run: every key a YAML recipe may set, its type and its default.

The names follow llm-foundry where one exists (run_name, max_duration, global_train_batch_size,
device_train_microbatch_size, save_folder, ...). Sections whose keys depend on a chosen
component (optimizer, scheduler, algorithms, callbacks, loggers) are checked against that
component's constructor when it is built.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal, Optional, Union

from t5composer.config.validation import required
from t5composer.data.objectives import Denoiser, Objective
from t5composer.data.span_spec import SpanCorruptionSpec

__all__ = ['TokenizerConfig', 'ModelConfig', 'DataConfig', 'SNIDataConfig', 'OptimizerConfig', 'SchedulerConfig', 'NonFiniteConfig', 'ParallelismConfig', 'TrainConfig']


@dataclass
class TokenizerConfig:
    """Args:
    name: hub name (google/t5-v1_1-base), a local directory with tokenizer files or a
        spiece.model, or a path to a SentencePiece ``.model`` file. Leave null with
        ``data.builtin_corpus``, which trains its own.
    """

    name: Optional[str] = 'google/t5-v1_1-base'


@dataclass
class ModelConfig:
    """Args:
    name: a built-in config name (google/t5-v1_1-small/base/large/xl/xxl), a local directory
        with config.json, or a hub name.
    init: where weights start: ``random`` (the reference's init, see docs/design.md), ``hf``
        (Hugging Face weights of ``name``: a hub name, a local directory or a ``.safetensors``
        file; safetensors only, since other formats are pickles that can run code), or ``checkpoint`` (the weights of the Composer checkpoint ``load_path``,
        with a fresh optimizer and schedule).
    revision: with ``init: hf`` and a hub name, the branch, tag or commit of the weights.
    lm_head_init_std: std of the untied lm_head at init; null keeps the reference's 1.0
        (first loss ~60). d_model**-0.5 is the common alternative.
    gradient_checkpointing: recompute block activations in backward to save memory.
    attn_impl: self-attention kernel of unpadded batches: ``sdpa`` (default), or FlexAttention
        with the position bias looked up per score, ``flex`` (bucket table) or ``flex_dense``
        (an [H, L, L] bias per forward), or ``triton``, our fused kernel that sums the bias
        gradient over the batch (CUDA); all but sdpa need dropout_rate 0. See
        docs/performance.md for which is faster where.
    vocab_size: an integer, or ``tokenizer`` for the tokenizer's size rounded up to a multiple
        of 128 (for tokenizers trained in-house).
    The remaining keys override the named config; null keeps the config's value.
    """

    name: str = 'google/t5-v1_1-base'
    init: Literal['random', 'hf', 'checkpoint'] = 'random'
    revision: Optional[str] = None
    lm_head_init_std: Optional[float] = None
    gradient_checkpointing: bool = False
    attn_impl: Literal['sdpa', 'flex', 'flex_dense', 'triton'] = 'sdpa'
    vocab_size: Union[int, Literal['tokenizer'], None] = None
    d_model: Optional[int] = None
    d_kv: Optional[int] = None
    d_ff: Optional[int] = None
    num_layers: Optional[int] = None
    num_decoder_layers: Optional[int] = None
    num_heads: Optional[int] = None
    relative_attention_num_buckets: Optional[int] = None
    relative_attention_max_distance: Optional[int] = None
    dropout_rate: Optional[float] = None
    feed_forward_proj: Optional[str] = None
    tie_word_embeddings: Optional[bool] = None

    def config_overrides(self) -> dict[str, Any]:
        """The T5Config attributes this section sets."""
        own = {'name', 'init', 'revision', 'lm_head_init_std', 'gradient_checkpointing', 'attn_impl', 'vocab_size'}
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in own and v is not None}


@dataclass
class DataConfig:
    """Pre-training data: span-corrupted C4 (or any corpus converted like it).

    Args:
        name: ``c4`` (the default data section).
    local: directory holding the converted MDS splits (or the local cache of ``remote``).
    remote: object-store or other remote location of the splits (s3://, gs://, ...).
    train_split / eval_split: split names under local/remote (``recipes/convert_c4.py`` writes
        ``train`` and ``val``).
    input_length / noise_density / mean_noise_span_length: the span-corruption objective (T5's
        by default; :attr:`span_corruption` holds them as one value); the data must have been
        converted with the same values (checked).
    builtin_corpus: ``python_docs`` builds an offline demo corpus, tokenizer and splits on first
        use (see yamls/demo.yaml); then leave tokenizer.name, local and remote null.
    builtin_vocab_size: SentencePiece pieces for the builtin corpus's tokenizer.
    objective: what pre-training makes of each row; null (the default) is T5's span corruption
        with ``noise_density`` / ``mean_noise_span_length`` above, exactly as before. A mixture of
        denoisers: ``{preset: ul2}`` or ``{denoisers: [{kind: span, mean_span_length: 8,
        corruption_rate: 0.15, mode_token: '[NLU]', weight: 1}, {kind: prefix, target_fraction:
        [0.15, 0.35], mode_token: '[S2S]', weight: 1}, ...]}`` (docs/objectives.md). The
        mixture reads the same converted rows (``input_length`` etc. still say which rows: no
        reconversion); its mode tokens are added to the tokenizer.
    verify_hashes: at the start, compare every shard file with the checksum the converter
        recorded in its index.json (reads all the data once; xxh3_64 runs at several GB/s), and
        check shards Streaming fetches or unpacks later as well. Off: only presence, sizes and row
        counts are checked at the start (a stat per shard). Splits converted before checksums were
        recorded train either way, with a warning. ``python recipes/verify_data.py`` checks
        everything, rows included.
    """

    name: Literal['c4'] = 'c4'
    local: Optional[str] = None
    remote: Optional[str] = None
    train_split: str = 'train'
    eval_split: Optional[str] = 'val'
    input_length: int = SpanCorruptionSpec.input_length
    noise_density: float = SpanCorruptionSpec.noise_density
    mean_noise_span_length: float = SpanCorruptionSpec.mean_noise_span_length
    shuffle: bool = True
    shuffle_seed: Optional[int] = None
    shuffle_algo: str = 'py1e'
    num_canonical_nodes: Optional[int] = None
    predownload: Optional[int] = None
    download_timeout: float = 60.0
    num_workers: int = 2
    prefetch_factor: Optional[int] = 2
    pin_memory: bool = True
    persistent_workers: bool = True
    builtin_corpus: Optional[Literal['python_docs']] = None
    builtin_vocab_size: int = 2000
    verify_hashes: bool = False
    objective: Optional[dict[str, Any]] = None

    @property
    def pretraining_objective(self) -> Objective:
        """``objective`` as a value; T5's span corruption with this section's noise settings when it is null."""
        if self.objective is None:
            return Objective(denoisers=(Denoiser(kind='span', mean_span_length=self.mean_noise_span_length,
                                                 corruption_rate=self.noise_density),))
        return Objective.from_config(self.objective)

    @property
    def span_corruption(self) -> SpanCorruptionSpec:
        """``input_length`` / ``noise_density`` / ``mean_noise_span_length`` as one value (lengths, checks, convert command)."""
        return SpanCorruptionSpec(input_length=self.input_length, noise_density=self.noise_density,
                                  mean_noise_span_length=self.mean_noise_span_length)


@dataclass
class SNIDataConfig:
    """Fine-tuning data: Super-Natural Instructions in the Tk-Instruct setup.

    Args:
        name: ``sni``.
        root: a natural-instructions checkout (``tasks/*.json``, ``splits/<split_name>/``).
        split_name: which split lists to use (``default``: 756 train / 119 test tasks).
        builtin_tasks: ``synthetic`` generates small SNI-format tasks offline for the CPU demo
            (leave ``root`` null).
        max_instances_per_task: instances sampled per task (Tk-Instruct: 100).
        max_source_length / max_target_length: token limits of sources and targets.
        num_pos_examples: positive examples in each source (Tk-Instruct: 2).
        max_new_tokens: generation length at evaluation.
        eval: evaluate RougeL / exact match on the test tasks.
        mode_token: a UL2 mode token put first in every source, in training and evaluation
            (``[S2S]`` for generation-style prompting; counted within max_source_length), added
            to the tokenizer if missing; null: Tk-Instruct's sources exactly.
    """

    name: Literal['sni'] = 'sni'
    root: Optional[str] = None
    split_name: str = 'default'
    builtin_tasks: Optional[Literal['synthetic']] = None
    max_instances_per_task: int = 100
    max_source_length: int = 1024
    max_target_length: int = 128
    num_pos_examples: int = 2
    max_new_tokens: int = 128
    eval: bool = True
    shuffle: bool = True
    num_workers: int = 0
    pin_memory: bool = True
    mode_token: Optional[str] = None


@dataclass
class OptimizerConfig:
    """Args:
    name: a registered optimizer (adamwscale, adafactor, adamw).
    lr: base learning rate (the schedule multiplies it).
    weight_decay: decoupled weight decay; never applied to biases and norm weights.
    Any other key goes to the optimizer's constructor (betas, eps, ...), checked there.
    """

    __extra_keys__ = 'kwargs'
    name: str = required()
    lr: float = required()
    weight_decay: float = 0.0
    kwargs: dict = field(default_factory=dict)


@dataclass
class SchedulerConfig:
    """Args:
    name: a registered schedule (cosine, inverse_sqrt, constant).
    Any other key goes to the scheduler's constructor (t_warmup, final_lr, ...), checked there.
    """

    __extra_keys__ = 'kwargs'
    name: str = 'constant'
    kwargs: dict = field(default_factory=dict)


@dataclass
class NonFiniteConfig:
    """Args:
    action: what a non-finite loss or gradient does: ``stop`` the run (the default; the last
        checkpoint stays good) or ``skip`` the batch without an optimizer step.
    max_skips: with ``skip``, stop once this many batches were skipped in the run.
    """

    action: Literal['stop', 'skip'] = 'stop'
    max_skips: int = 10


@dataclass
class ParallelismConfig:
    """Args:
    fsdp: Composer's FSDP options, as llm-foundry writes them (sharding_strategy, mixed_precision,
        activation_checkpointing, activation_checkpointing_reentrant, state_dict_type,
        limit_all_gathers, ...); every key is checked against Composer 0.32's ``FSDPConfig``
        (t5composer/config/parallelism.py). FSDP units are the T5 blocks (see
        ``T5ForConditionalGeneration.fsdp_wrap_fn``); ``activation_checkpointing`` checkpoints
        every block. Needs CUDA GPUs; ``recipes/train.py <recipe> --dry-run`` validates on CPU.
    """

    fsdp: Optional[dict[str, Any]] = None


@dataclass
class TrainConfig:
    """One pre-training run. See README for what each key does and yamls/ for examples."""

    max_duration: Union[str, int] = required()
    global_train_batch_size: int = required()
    run_name: Optional[str] = None
    seed: int = 2137
    device_train_microbatch_size: Union[int, Literal['auto'], None] = None
    device_eval_batch_size: Optional[int] = None
    precision: Literal['fp32', 'amp_bf16', 'amp_fp16'] = 'fp32'
    tf32: bool = True
    compile: bool = False
    eval_interval: Union[str, int] = '1000ba'
    eval_first: bool = False
    eval_subset_num_batches: int = -1
    save_folder: Optional[str] = None
    save_interval: Union[str, int] = '1000ba'
    save_num_checkpoints_to_keep: int = -1
    save_overwrite: bool = False
    autoresume: bool = False
    load_path: Optional[str] = None
    load_weights_only: bool = False
    load_strict_model_weights: bool = True
    progress_bar: bool = False
    log_to_console: bool = True
    console_log_interval: Union[str, int] = '100ba'
    python_log_level: Optional[str] = 'info'
    dist_timeout: float = 600.0
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: Union[DataConfig, SNIDataConfig] = field(default_factory=DataConfig)
    optimizer: OptimizerConfig = required()
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    nonfinite: NonFiniteConfig = field(default_factory=NonFiniteConfig)
    parallelism_config: Optional[ParallelismConfig] = None
    algorithms: dict[str, Optional[dict[str, Any]]] = field(default_factory=dict)
    callbacks: dict[str, Optional[dict[str, Any]]] = field(default_factory=dict)
    loggers: dict[str, Optional[dict[str, Any]]] = field(default_factory=dict)
    variables: dict[str, Any] = field(default_factory=dict)
