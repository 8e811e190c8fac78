"""One typed config tree: dataclasses, loaded from ``configs/*.yaml``, with dotted overrides.

``load_config("configs/vit_small_imagenet.yaml", ["optim.base_lr=1e-3", "data.n_local=10"])`` (or the preset's
name alone, ``load_config("vit_small_imagenet")``) returns a validated :class:`Config`. Unknown keys and values
of the wrong type raise :class:`~dino_pipe.errors.UserError` naming the dotted key, so the CLI prints one line.

A preset may name another with ``base: other.yaml`` (relative to itself); its keys override
the base's (dict-valued keys such as ``model.arch_kwargs`` merge). A dotted override of a dict-valued
key replaces the dict: ``model.arch_kwargs={}`` clears it, ``model.arch_kwargs={depth: 4}`` sets exactly that.
"""

from __future__ import annotations

import copy
import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from dino_pipe.errors import UserError

OutputDtype = Literal["float32", "bfloat16", "float16"]
ContrastCenter = Literal["mean", "128"]
Interp = Literal["gaussian", "cubic", "linear"]
ClipMode = Literal["per_param", "global"]
Optimizer = Literal["adamw", "sgd", "lars"]
Centering = Literal["ema", "sinkhorn"]
Precision = Literal["auto", "bf16", "fp16", "fp32"]
FeatureDtype = Literal["float16", "bfloat16", "float32"]
PosInterp = Literal["reference", "timm"]
ReadMode = Literal["auto", "cache", "stream"]


def choices(tp: Any) -> tuple[str, ...]:
    """The allowed values of a ``Literal[...]`` choice type."""
    return typing.get_args(tp)


def _one_of(values: tuple[str, ...]) -> str:
    return ", ".join(values[:-1]) + " or " + values[-1] if len(values) > 1 else values[0]


def check_choice(value: Any, tp: Any, name: str) -> str:
    """``value`` when it is one of the ``Literal`` type ``tp``'s choices; else a UserError naming ``name``
    (a dotted config key or a CLI option). The one place a string choice is checked."""
    allowed = choices(tp)
    if isinstance(value, str) and value in allowed:
        return value
    raise UserError(f"{name}: must be {_one_of(allowed)}, got {value!r}")


def need(cond: bool, key: str, what: str) -> None:
    """A range check of one config key: ``config key KEY: WHAT`` as a UserError unless ``cond``."""
    if not cond:
        raise UserError(f"config key {key}: {what}")


@dataclass
class DataConfig:
    """The DINO multi-crop recipe (defaults: the reference DINO augmentation) and loader knobs."""

    batch_size: int = 64
    """Images per step per process (per GPU). Used when ``global_batch_size`` is 0; an explicit
    ``--batch-size`` or ``data.batch_size=N`` override sets ``global_batch_size`` to 0, so it wins."""
    global_batch_size: int = 0
    """Images per step over all processes, as the run a preset reproduces states it (e.g. 1,024 for 16 GPUs x
    64). When > 0 the per-process batch is global_batch_size / processes (it must divide) and data.batch_size
    is ignored; the learning rate scales with it (lr = optim.base_lr x global batch / 256). 0 = data.batch_size
    per process."""
    global_size: int = 224
    """Side of the global crops (pixels)."""
    global_scale: tuple[float, float] = (0.4, 1.0)
    """Area range of a global crop, as a share of the image."""
    local_size: int = 96
    """Side of the local crops (pixels)."""
    local_scale: tuple[float, float] = (0.05, 0.4)
    """Area range of a local crop, as a share of the image."""
    n_local: int = 8
    """Local crops per image."""
    aspect_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    """Aspect-ratio range of the random resized crops."""
    flip_p: float = 0.5
    """Probability of a horizontal flip."""
    jitter_p: float = 0.8
    """Probability of the colour jitter."""
    brightness: float = 0.4
    """Colour jitter: brightness strength."""
    contrast: float = 0.4
    """Colour jitter: contrast strength."""
    saturation: float = 0.2
    """Colour jitter: saturation strength."""
    hue: float = 0.1
    """Colour jitter: hue strength (at most 0.5)."""
    grayscale_p: float = 0.2
    """Probability of converting a view to grey."""
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    """Gaussian blur sigma range."""
    blur_p_global: tuple[float, ...] = (1.0, 0.1)
    """Blur probability of each global crop, one entry per global crop: the number of entries is the number of
    global crops (the teacher's views; DINO: 2), the same as in solarize_p_global."""
    blur_p_local: float = 0.5
    """Blur probability of a local crop."""
    solarize_p_global: tuple[float, ...] = (0.0, 0.2)
    """Solarization probability of each global crop, one entry per global crop (as blur_p_global)."""
    solarize_p_local: float = 0.0
    """Solarization probability of a local crop."""
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    """Normalization mean (ImageNet)."""
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    """Normalization std (ImageNet)."""
    eval_resize: int = 256
    """Evaluation: shorter side before the center crop."""
    eval_crop: int = 224
    """Evaluation: center crop size."""
    output_dtype: OutputDtype = "float32"
    """dtype of the views (half types on GPU only)."""
    threads: int = 0
    """DALI CPU threads; 0 = cores available / processes on this node (at most 8 per GPU pipeline)."""
    prefetch: int = 2
    """Batches DALI prepares ahead."""
    hw_decoder_load: float = 0.65
    """Share of JPEG decoding given to the hardware decoder (GPUs that have one)."""
    shuffle_buffer: int = 1024
    """Samples in the reader's shuffle buffer (per rank; JPEG bytes held in memory)."""
    contrast_center: ContrastCenter = "mean"
    """mean: torchvision (the view's mean grey); 128: DALI color_twist, one pass."""
    interp: Interp = "gaussian"
    """Crop resize filter: gaussian (shrink; cubic enlarge; ~PIL bicubic, cheaper), cubic (= PIL bicubic) or linear."""
    seed: int = 0
    """Seed of the shuffle and the augmentations."""
    cache_dir: str = ""
    """s3:// shard sets are fetched whole (one GET per tar / idx, sha256-checked) into this local cache first;
    "" = $DINO_PIPE_CACHE or ~/.cache/dino-pipe."""
    cache_gb: float = 0.0
    """Most GB the shard cache may hold (LRU sets evicted); 0 = $DINO_PIPE_CACHE_GB or 200."""
    fetch_threads: int = 0
    """Parallel shard downloads; 0 = $DINO_PIPE_FETCH_THREADS or 8."""
    read_mode: ReadMode = "auto"
    """How the shard set is read. auto: an s3:// set that fits in data.cache_gb is fetched whole into the cache
    (later epochs read local disk), a larger one is streamed; a local set is read in place. cache: fetch whole
    (refused when larger than the cache). stream: each epoch every rank fetches only its own shards, a few ahead,
    into a cache of at most data.cache_gb per node, and deletes each after use (also for a local set, e.g. one
    on a network file system)."""
    stream_window: int = 4
    """Streaming: shards each rank fetches ahead at most (fewer when data.cache_gb holds fewer)."""

    def validate(self) -> None:
        """Range checks of the data section; each failure names the key."""
        need(self.batch_size >= 1, "data.batch_size", "must be >= 1")
        need(self.global_batch_size >= 0, "data.global_batch_size", "must be >= 0 (0 = data.batch_size per process)")
        need(self.global_size >= 8, "data.global_size", "must be >= 8 pixels")
        need(self.local_size >= 8, "data.local_size", "must be >= 8 pixels")
        need(self.n_local >= 0, "data.n_local", "must be >= 0")
        need(self.stream_window >= 1, "data.stream_window", "must be >= 1 (shards fetched ahead)")
        for name in ("global_scale", "local_scale", "aspect_ratio", "blur_sigma"):
            lo, hi = getattr(self, name)
            need(0 < lo <= hi, f"data.{name}", f"needs 0 < low <= high, got {getattr(self, name)}")
        need(self.global_scale[1] <= 1.0 and self.local_scale[1] <= 1.0, "data.*_scale", "scales must be <= 1")
        for name in ("flip_p", "jitter_p", "grayscale_p", "blur_p_local", "solarize_p_local"):
            need(0.0 <= getattr(self, name) <= 1.0, f"data.{name}", "must be a probability in [0, 1]")
        for name in ("blur_p_global", "solarize_p_global"):
            need(all(0.0 <= p <= 1.0 for p in getattr(self, name)), f"data.{name}", "must be probabilities in [0, 1]")
        need(len(self.blur_p_global) == len(self.solarize_p_global) >= 1
             and len(self.blur_p_global) + self.n_local >= 2, "data.blur_p_global",
             "needs one entry per global crop, as many as data.solarize_p_global (at least 1), "
             "and at least 2 crops in all with data.n_local")
        for name in ("brightness", "contrast", "saturation"):
            need(getattr(self, name) >= 0, f"data.{name}", "must be >= 0")
        need(0 <= self.hue <= 0.5, "data.hue", "must be in [0, 0.5]")
        need(self.threads >= 0, "data.threads", "must be >= 0 (0 = automatic)")
        need(self.prefetch >= 1, "data.prefetch", "must be >= 1")
        need(self.shuffle_buffer >= 1, "data.shuffle_buffer", "must be >= 1")
        need(0.0 <= self.hw_decoder_load <= 1.0, "data.hw_decoder_load", "must be in [0, 1]")
        need(self.eval_crop <= self.eval_resize, "data.eval_crop", "must be <= data.eval_resize")


@dataclass
class ModelConfig:
    """timm backbone + DINO head."""

    arch: str = "vit_small_patch16_224"
    """timm architecture name."""
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    """Extra timm.create_model keyword arguments."""
    drop_path: float = 0.1
    """Stochastic depth rate (student only)."""
    out_dim: int = 65536
    """DINO head output dimension (prototypes)."""
    hidden_dim: int = 2048
    """DINO head MLP hidden dimension."""
    bottleneck_dim: int = 256
    """DINO head bottleneck dimension."""
    head_layers: int = 3
    """DINO head MLP layers."""
    use_bn_in_head: bool = False
    """Batch norm in the head MLP."""
    norm_last_layer: bool = True
    """Weight-normalize the head's last layer with a fixed norm."""
    pos_interp: PosInterp = "reference"
    """ViT position table for other crop sizes: reference (DINO's plain bicubic, scale (n+0.1)/N) or timm
    (antialiased)."""

    def validate(self) -> None:
        """Range checks of the model section; each failure names the key."""
        need(self.out_dim >= 1 and self.hidden_dim >= 1 and self.bottleneck_dim >= 1, "model.out_dim",
             "head sizes must be >= 1")
        need(self.head_layers >= 1, "model.head_layers", "must be >= 1")
        need(0 <= self.drop_path < 1, "model.drop_path", "must be in [0, 1)")


@dataclass
class LossConfig:
    """DINO loss: student/teacher temperatures, teacher temperature warm-up, centering."""

    student_temp: float = 0.1
    """Student softmax temperature."""
    warmup_teacher_temp: float = 0.04
    """Teacher temperature at the start of the warm-up."""
    teacher_temp: float = 0.04
    """Teacher temperature after the warm-up."""
    warmup_teacher_temp_epochs: int = 0
    """Epochs of linear teacher temperature warm-up."""
    center_momentum: float = 0.9
    """EMA momentum of the teacher output centre."""
    centering: Centering = "ema"
    """Teacher centering: ema (the reference DINO: subtract an EMA of the teacher outputs, then softmax) or
    sinkhorn (DINOv2/SwAV: Sinkhorn-Knopp over the global batch, every prototype gets an equal share)."""
    sinkhorn_iters: int = 3
    """Sinkhorn-Knopp iterations (centering=sinkhorn)."""
    koleo_weight: float = 0.0
    """Weight of the KoLeo regulariser on the student's backbone embeddings of each global view (DINOv2: 0.1;
    0 = off, the reference DINO)."""

    def validate(self) -> None:
        """Range checks of the loss section; each failure names the key."""
        need(
            self.student_temp > 0 and self.teacher_temp > 0 and self.warmup_teacher_temp > 0,
            "loss.*_temp",
            "temperatures must be > 0",
        )
        need(0 <= self.center_momentum < 1, "loss.center_momentum", "must be in [0, 1)")
        need(self.sinkhorn_iters >= 1, "loss.sinkhorn_iters", "must be >= 1")
        need(self.koleo_weight >= 0, "loss.koleo_weight", "must be >= 0 (0 = off)")
        need(self.warmup_teacher_temp_epochs >= 0, "loss.warmup_teacher_temp_epochs", "must be >= 0")


@dataclass
class OptimConfig:
    """AdamW with the reference DINO schedules."""

    base_lr: float = 5e-4
    """Learning rate for a global batch of 256; lr = base_lr * global_batch / 256."""
    min_lr: float = 1e-6
    """Learning rate at the end of the cosine schedule."""
    warmup_epochs: int = 10
    """Epochs of linear learning-rate warm-up."""
    weight_decay: float = 0.04
    """Weight decay at the start (cosine schedule)."""
    weight_decay_end: float = 0.4
    """Weight decay at the end."""
    clip_grad: float = 3.0
    """Gradient clipping norm; 0 disables."""
    clip_mode: ClipMode = "per_param"
    """per_param (reference) or global clipping."""
    freeze_last_layer_epochs: int = 1
    """Epochs the head's last layer stays frozen."""
    momentum_teacher: float = 0.996
    """Teacher EMA momentum at the start (cosine to 1.0 per iteration)."""
    optimizer: Optimizer = "adamw"
    """adamw (reference ViTs), sgd (momentum 0.9) or lars (reference ResNet-50 runs)."""

    def validate(self) -> None:
        """Range checks of the optim section; each failure names the key."""
        need(self.base_lr > 0, "optim.base_lr", "must be > 0")
        need(self.min_lr >= 0, "optim.min_lr", "must be >= 0")
        need(self.clip_grad >= 0, "optim.clip_grad", "must be >= 0 (0 disables)")
        need(0 <= self.momentum_teacher <= 1, "optim.momentum_teacher", "must be in [0, 1]")
        need(self.weight_decay >= 0 and self.weight_decay_end >= 0, "optim.weight_decay", "must be >= 0")
        need(self.warmup_epochs >= 0 and self.freeze_last_layer_epochs >= 0, "optim.warmup_epochs",
             "epochs must be >= 0")


@dataclass
class TrainConfig:
    """Loop, precision, checkpointing and logging."""

    epochs: int = 100
    """Training epochs."""
    max_steps: int = 0
    """Stop after this many steps in total (0 = run all epochs)."""
    seed: int = 0
    """Seed of the model initialisation and the run's RNGs."""
    precision: Precision = "auto"
    """auto (bf16 on GPU, fp32 on CPU), bf16, fp16 or fp32."""
    compile: bool = False
    """torch.compile the model."""
    checkpoint_every_steps: int = 500
    """Steps between checkpoints (0 = epoch ends only)."""
    keep_checkpoints: int = 3
    """Newest checkpoints kept."""
    log_every_steps: int = 10
    """Steps between metrics lines."""
    collapse_check_every_steps: int = 50
    """Steps between collapse checks of the teacher output."""
    cpu_threads: int = 0
    """torch intra-op threads per process on the CPU; 0 = automatic: the process's share of the cores minus the
    loader's data.threads (half the share when data.threads is automatic too), at least 1 (README: threads)."""

    def validate(self) -> None:
        """Range checks of the train section; each failure names the key."""
        need(self.epochs >= 1, "train.epochs", "must be >= 1")
        need(self.keep_checkpoints >= 1, "train.keep_checkpoints", "must be >= 1")
        need(self.checkpoint_every_steps >= 0, "train.checkpoint_every_steps", "must be >= 0 (0 = epoch ends only)")
        need(self.log_every_steps >= 1, "train.log_every_steps", "must be >= 1")
        need(self.collapse_check_every_steps >= 1, "train.collapse_check_every_steps", "must be >= 1")
        need(self.max_steps >= 0, "train.max_steps", "must be >= 0 (0 = run all epochs)")
        need(self.cpu_threads >= 0, "train.cpu_threads", "must be >= 0 (0 = automatic)")


@dataclass
class EvalConfig:
    """Evaluation protocol defaults (k-NN and linear probe)."""

    knn_k: tuple[int, ...] = (10, 20, 100, 200)
    """k-NN neighbour counts reported."""
    knn_temperature: float = 0.07
    """k-NN vote weight exp(sim / T)."""
    knn_chunk_size: int = 1024
    """Queries per similarity block."""
    batch_size: int = 128
    """Images per extraction / linear step per process."""
    linear_epochs: int = 100
    """Linear probe epochs."""
    linear_lr: float = 1e-3
    """Linear probe learning rate for batch 256."""
    linear_n_last_blocks: int = 4
    """ViT: concatenate the CLS tokens of the last n blocks."""
    linear_avgpool_patchtokens: bool = False
    """ViT: add the mean patch token (DINO's ViT-B setting)."""
    knn_bank_chunk_size: int = 65536
    """Train-bank rows per similarity block (memory: chunk x bank_chunk x 4 B)."""
    feature_dtype: FeatureDtype = "float16"
    """Storage dtype of extracted k-NN features."""
    linear_momentum: float = 0.9
    """Linear probe SGD momentum."""
    linear_weight_decay: float = 0.0
    """Linear probe weight decay."""
    linear_crop_scale: tuple[float, float] = (0.08, 1.0)
    """Linear probe train augmentation: random resized crop scale (+ flip)."""
    online_knn_train: str = ""
    """Online k-NN during `train`: labelled train shard set (the bank); measured with the teacher at step 0 (the
    untrained baseline), every epoch end (or every online_knn_every_steps steps) and the last step."""
    online_knn_val: str = ""
    """Online k-NN: labelled val shard set."""
    online_knn_every_steps: int = 0
    """Online k-NN period in steps (0 = at every epoch end)."""
    online_knn_k: int = 20
    """Online k-NN neighbour count."""
    online_knn_auto: bool = True
    """When online_knn_train/val are unset and --data is a labelled shard set (up to 100,000 images) with a labelled
    val/ set of the same classes beside it (as `dino-pipe shard` writes train/ + val/), measure the online k-NN on
    that pair, about 10 times a run at most (every epoch, or every few epochs); false = off."""

    @property
    def online_knn_on(self) -> bool:
        """The config names an online k-NN pair (or half of one, which the probe then refuses)."""
        return bool(self.online_knn_train or self.online_knn_val)

    def validate(self) -> None:
        """Range checks of the eval section; each failure names the key."""
        need(all(k >= 1 for k in self.knn_k) and len(self.knn_k) > 0, "eval.knn_k",
             "must be a non-empty list of k >= 1")
        need(self.knn_temperature > 0, "eval.knn_temperature", "must be > 0")
        need(self.knn_chunk_size >= 1 and self.knn_bank_chunk_size >= 1, "eval.knn_*chunk_size", "must be >= 1")
        need(self.batch_size >= 1 and self.linear_epochs >= 1, "eval.batch_size",
             "batch size and linear_epochs must be >= 1")
        need(
            self.linear_lr > 0 and self.linear_n_last_blocks >= 1,
            "eval.linear_lr",
            "linear_lr must be > 0 and linear_n_last_blocks >= 1",
        )
        need(
            0 < self.linear_crop_scale[0] <= self.linear_crop_scale[1] <= 1,
            "eval.linear_crop_scale",
            "needs 0 < low <= high <= 1",
        )
        need(
            bool(self.online_knn_train) == bool(self.online_knn_val),
            "eval.online_knn_train",
            "online k-NN needs both eval.online_knn_train and eval.online_knn_val (labelled shard sets)",
        )
        need(self.online_knn_every_steps >= 0, "eval.online_knn_every_steps", "must be >= 0 (0 = every epoch end)")
        need(self.online_knn_k >= 1, "eval.online_knn_k", "must be >= 1")


@dataclass
class Config:
    """The whole run: one section per stage."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict:
        return to_dict(self)


def to_dict(obj: Any) -> Any:
    """A plain (YAML/JSON-safe) dict of a config dataclass; tuples become lists."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check/convert ``value`` to the annotated type ``tp``; raise UserError naming ``key``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        for a in args:
            if a is type(None) and value is None:
                return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except UserError as e:
                errors.append(str(e))
        raise UserError(errors[0] if errors else f"config key {key}: bad value {value!r}")
    if tp is Any:
        return value
    if origin is Literal:
        return check_choice(value, tp, f"config key {key}")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise UserError(f"config key {key}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise UserError(f"config key {key}: expected {len(args)} values, got {len(value)} ({value!r})")
        return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if origin is dict:
        if not isinstance(value, dict):
            raise UserError(f"config key {key}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise UserError(f"config key {key}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise UserError(f"config key {key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise UserError(f"config key {key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise UserError(f"config key {key}: expected a string, got {value!r}")
    return value


def _merge_into(obj: Any, updates: dict, prefix: str = "") -> None:
    hints = typing.get_type_hints(type(obj))
    names = {f.name for f in dataclasses.fields(obj)}
    for k, v in updates.items():
        key = f"{prefix}{k}"
        if k not in names:
            close = ", ".join(sorted(names))
            raise UserError(f"unknown config key '{key}' (known here: {close})")
        cur = getattr(obj, k)
        if dataclasses.is_dataclass(cur):
            if not isinstance(v, dict):
                raise UserError(f"config key {key}: expected a section (mapping), got {v!r}")
            _merge_into(cur, v, prefix=f"{key}.")
        else:
            setattr(obj, k, _coerce(v, hints[k], key))


def parse_override(text: str) -> dict:
    """``"optim.base_lr=1e-3"`` -> ``{"optim": {"base_lr": 0.001}}`` (value parsed as YAML)."""
    if "=" not in text:
        raise UserError(f"override '{text}' is not of the form section.key=value")
    dotted, raw = text.split("=", 1)
    parts = [p for p in dotted.strip().split(".") if p]
    if not parts:
        raise UserError(f"override '{text}' has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    # YAML reads "1e-3" as a string; accept it as a float.
    if isinstance(value, str):
        try:
            value = float(value) if any(c in value for c in ".eE") else value
        except ValueError:
            pass
    out: dict = {}
    d = out
    for p in parts[:-1]:
        d = d.setdefault(p, {})
    d[parts[-1]] = value
    return out


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping (at any level) instead of
    silently keeping the last one."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key '{key}' given twice (lines {seen[key] + 1} and {key_node.start_mark.line + 1})",
                    key_node.start_mark)
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def _parse_yaml(path: Path) -> Any:
    """The YAML document of ``path`` (duplicate keys refused); bad YAML -> UserError naming the line."""
    try:
        return yaml.load(path.read_text(), Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.constructor.ConstructorError as e:
        raise UserError(f"config file {path}: {e.problem}; keep one") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise UserError(f"config file {path}{where}: not valid YAML") from None


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    if not path.is_file():
        raise UserError(f"config file {path} not found (presets live in configs/)")
    if path.resolve() in seen:
        raise UserError(f"config file {path}: 'base' chain loops back to itself")
    data = _parse_yaml(path)
    if data is None:
        raise UserError(f"config file {path}: empty (no settings); give a preset with settings, or leave out --config "
                        "for the defaults")
    if not isinstance(data, dict):
        raise UserError(f"config file {path}: expected a mapping at the top level")
    base = data.pop("base", None)
    if base:
        merged = _read_yaml((path.parent / base), seen + (path.resolve(),))
        _deep_update(merged, data)
        return merged
    return data


def _deep_update(dst: dict, src: dict) -> None:
    for k, v in src.items():
        if isinstance(v, dict) and isinstance(dst.get(k), dict):
            _deep_update(dst[k], v)
        else:
            dst[k] = v


def _apply_override(data: dict, override: dict, section: Any = None) -> None:
    """Merge one parsed override into ``data``: config sections merge key by key, but a value for a
    dict-valued key (``model.arch_kwargs={}`` or ``model.arch_kwargs={depth: 4}``) replaces that dict."""
    section = Config() if section is None else section
    for k, v in override.items():
        cur = getattr(section, k, None) if dataclasses.is_dataclass(section) else None
        if isinstance(v, dict) and dataclasses.is_dataclass(cur):
            if not isinstance(data.get(k), dict):
                data[k] = {}
            _apply_override(data[k], v, cur)
        else:
            data[k] = v


def _fix_yaml_floats(d: Any) -> Any:
    """YAML 1.1 reads ``5e-4`` (no dot) as a string; turn such strings into floats."""
    if isinstance(d, dict):
        return {k: _fix_yaml_floats(v) for k, v in d.items()}
    if isinstance(d, list):
        return [_fix_yaml_floats(v) for v in d]
    if isinstance(d, str):
        try:
            return float(d) if any(c in d for c in "eE") and d.strip()[0] in "+-.0123456789" else d
        except ValueError:
            return d
    return d


def config_from_dict(data: dict, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """A validated Config from a plain dict (e.g. a checkpoint's ``config``) plus dotted overrides.

    An override of ``data.batch_size`` (a per-process batch asked for explicitly) also sets
    ``data.global_batch_size`` to 0 unless the overrides set that too: the batch typed wins over the preset's.
    """
    data = copy.deepcopy(data)
    parsed = [parse_override(o) for o in overrides]
    for o in parsed:
        _apply_override(data, o)
    given = [set((o.get("data") or {}) if isinstance(o.get("data"), dict) else ()) for o in parsed]
    if any("batch_size" in g for g in given) and not any("global_batch_size" in g for g in given):
        data.setdefault("data", {})["global_batch_size"] = 0
    cfg = Config()
    _merge_into(cfg, _fix_yaml_floats(data))
    validate(cfg)
    return cfg


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Load a preset (a path, or a name in ``configs/``; the defaults when ``path`` is None) and apply
    dotted overrides."""
    return config_from_dict(_read_yaml(find_preset(path)) if path else {}, overrides)


PRESETS_DIR = Path(__file__).resolve().parent.parent / "configs"
"""The presets shipped beside the package (``configs/*.yaml`` of the source tree)."""
DEFAULT_PRESET = "vit_small_imagenet"
"""The preset ``dino-pipe train`` uses without ``--config``: ViT-S/16, the reference DINO 100-epoch run."""


def find_preset(path: str | Path) -> Path:
    """A config file: ``path`` itself when it exists, else the preset of that name in ``configs/``
    (``vit_small_best`` or ``vit_small_best.yaml``); a missing one is a UserError listing the presets."""
    p = Path(path)
    if p.is_file():
        return p
    if p.parent in (Path("."), Path("configs")):  # a bare name, or configs/NAME typed outside the source tree
        for candidate in (PRESETS_DIR / p.name, PRESETS_DIR / f"{p.name}.yaml"):
            if candidate.is_file():
                return candidate
    known = ", ".join(sorted(q.stem for q in PRESETS_DIR.glob("*.yaml"))) or "none found"
    raise UserError(f"config file {p} not found (presets in {PRESETS_DIR}: {known})")


def resolve_batch(cfg: Config, world_size: int) -> Config:
    """The config one of ``world_size`` processes trains with: ``data.batch_size`` = the preset's
    ``data.global_batch_size`` / ``world_size`` when that is set (a copy; ``cfg`` is unchanged)."""
    g = cfg.data.global_batch_size
    if g <= 0:
        return cfg
    if g % world_size:
        raise UserError(f"config key data.global_batch_size: {g} does not divide by the {world_size} processes; "
                        f"use a process count that divides it, or set a per-process batch with --batch-size")
    out = copy.deepcopy(cfg)
    out.data.batch_size = g // world_size
    return out


def vit_patch_size(m: ModelConfig) -> int | None:
    """The patch size of a ViT-like ``model.arch`` (``arch_kwargs.patch_size``, else the ``patchN`` in its
    timm name); None for CNNs. Read from the names so the config is checked before any model is built."""
    if "patch_size" in m.arch_kwargs:
        ps = m.arch_kwargs["patch_size"]
        ps = ps[0] if isinstance(ps, (list, tuple)) else ps
        return int(ps) if isinstance(ps, int) and ps > 0 else None
    found = re.search(r"(?:^|_)patch(\d+)(?:_|$)", m.arch)
    return int(found.group(1)) if found else None


def _check_choices(obj: Any, prefix: str = "") -> None:
    """Every ``Literal`` field of the config tree holds one of its choices (also for configs built in code)."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            _check_choices(value, f"{prefix}{f.name}.")
        elif typing.get_origin(hints[f.name]) is Literal:
            check_choice(value, hints[f.name], f"config key {prefix}{f.name}")


def validate(cfg: Config) -> None:
    """Every check of the tree: the choices, each section's own range checks (its ``validate()``, beside its
    fields) and the checks across sections; each failure names the key."""
    _check_choices(cfg)
    cfg.data.validate()
    _check_patch_multiples(cfg.data, cfg.model)
    cfg.model.validate()
    cfg.loss.validate()
    cfg.optim.validate()
    cfg.train.validate()
    cfg.eval.validate()


def _check_patch_multiples(d: DataConfig, m: ModelConfig) -> None:
    """A ViT cuts each crop into patch x patch tiles: the crop sizes must be multiples of its patch."""
    patch = vit_patch_size(m)
    if not patch:
        return
    sizes = [("data.global_size", d.global_size), ("data.eval_crop", d.eval_crop)]
    sizes += [("data.local_size", d.local_size)] if d.n_local > 0 else []
    for key, size in sizes:
        need(
            size % patch == 0,
            key,
            f"{size} is not a multiple of the patch size {patch} of model.arch "
            f"{m.arch} (use {max(patch, size // patch * patch)} or {(size // patch + 1) * patch})",
        )
