"""Config sections of SSL pretraining: `ssl`, `multicrop`, `augment`, `heads` (paper "Contrastive
self-supervised pretraining": ResNet-50, LARC, cosine annealing, batch 128).

Where the paper is silent (epochs, learning rate, temperature, weight decay) the values follow
the strongest public recipes (ssl.md): SimCLR's linear scaling lr = 0.3 · B / 256 with LARC and a
10-epoch warm-up, temperature 0.1, weight decay 1e-6. The `smoke` profile swaps the ResNet-50 for a
ResNet-18 and shrinks views, heads and epochs so the whole paper suite runs on a CPU in minutes;
its numbers only show that the pipeline runs.

The SwAV queue (``ssl.swav_queue``, off by default) follows the official bs-256 recipe (ssl.md §1.3:
3840 per global crop, started at epoch 15): filled with every step's global-crop projections from
the first step, its scores join Sinkhorn from epoch ``ssl.swav_queue_start`` once it is full; like
the official code's, its length is a multiple of the batch size.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from bench.config import register_section
from bench.errors import BenchError
from methods.augment import AugmentConfig
from methods.compiling import CompileMode
from methods.encoders import check_encoder_name
from methods.multicrop import MultiCropConfig
from methods.ssl.heads import HEAD_PROFILES, HeadConfig


@dataclass
class SSLConfig:
    """Self-supervised pretraining of the encoder on bone patches."""

    method: Literal["simclr", "supcon", "swav", "vicreg"] = "simclr"   # SSL objective
    crop_policy: Literal["bone-aware", "conventional"] = "bone-aware"  # multi-crop policy (Table 7 ablates it)
    encoder: str = "resnet50"                   # timm backbone (paper: ResNet-50)
    epochs: int = 100                           # pretraining epochs (paper silent; solo-learn's short schedule); 0: the random encoder
    batch_size: int = 128                       # patches per step (paper: 128)
    optimizer: Literal["larc", "lars", "adam"] = "larc"  # paper: LARC
    lr: float = 0.15                            # base learning rate (SimCLR scaling 0.3 * 128 / 256)
    weight_decay: float = 1e-6                  # weight decay (not on biases and norms)
    warmup_epochs: int = 10                     # linear warm-up before the cosine decay
    temperature: float = 0.1                    # NT-Xent / SupCon / SwAV temperature
    swav_epsilon: float = 0.05                  # SwAV Sinkhorn entropy
    swav_iterations: int = 3                    # SwAV Sinkhorn iterations
    swav_freeze_epochs: int = 1                 # SwAV prototypes frozen for the first epochs
    swav_queue: int = 0                         # SwAV queue per global crop, a multiple of batch_size; 0: off (bs-256: 3840)
    swav_queue_start: int = 15                  # SwAV queue used from this epoch on, once full (filled from step 0)
    vicreg_sim: float = 25.0                    # VICReg invariance weight
    vicreg_std: float = 25.0                    # VICReg variance weight
    vicreg_cov: float = 1.0                     # VICReg covariance weight
    cls_train: Literal["auto", "always", "never"] = "auto"  # add `cls` train patches (auto: SupCon only, with labels)
    max_steps_per_epoch: int = 0                # cap on steps per epoch; 0 = every patch once
    compile: CompileMode = "off"                # torch.compile mode of the encoder (reduce-overhead, max-autotune: + CUDA graphs)
    channels_last: bool = True                  # on CUDA (bf16): NHWC tensors; false keeps NCHW (cuDNN's BatchNorm)

    def validate(self) -> None:
        """Raise BenchError naming the first bad option (before any stage runs)."""
        checks = [
            (self.epochs >= 0, "ssl.epochs must be >= 0 (0: the randomly initialised encoder, a control)"),
            (self.batch_size >= 2, "ssl.batch_size must be >= 2 (the losses compare samples of a batch)"),
            (self.lr > 0 and self.weight_decay >= 0, "ssl.lr must be > 0 and ssl.weight_decay >= 0"),
            (self.warmup_epochs >= 0 and self.swav_freeze_epochs >= 0,
             "ssl.warmup_epochs and ssl.swav_freeze_epochs must be >= 0"),
            (self.epochs == 0 or self.warmup_epochs <= self.epochs,
             f"ssl.warmup_epochs = {self.warmup_epochs} must be <= ssl.epochs = {self.epochs} (the warm-up is "
             "part of the schedule): lower ssl.warmup_epochs or raise ssl.epochs"),
            (self.temperature > 0, "ssl.temperature must be > 0"),
            (self.swav_epsilon > 0 and self.swav_iterations >= 1,
             "ssl.swav_epsilon must be > 0 and ssl.swav_iterations >= 1"),
            (self.swav_queue >= 0 and self.swav_queue % max(self.batch_size, 1) == 0,
             f"ssl.swav_queue = {self.swav_queue} must be >= 0 and a multiple of ssl.batch_size = {self.batch_size} "
             "(as the official SwAV queue; 0: off)"),
            (self.swav_queue_start >= 0, f"ssl.swav_queue_start = {self.swav_queue_start} must be >= 0"),
            (min(self.vicreg_sim, self.vicreg_std, self.vicreg_cov) >= 0,
             "ssl.vicreg_sim, vicreg_std and vicreg_cov must be >= 0"),
            (self.max_steps_per_epoch >= 0, "ssl.max_steps_per_epoch must be >= 0 (0: every patch once)"),
        ]
        for ok, message in checks:
            if not ok:
                raise BenchError(f"invalid ssl configuration: {message}")
        check_encoder_name(self.encoder, "ssl.encoder")

    @property
    def uses_cls_train(self) -> bool:
        """Whether pretraining adds the labelled `cls` train patches (``cls_train``; auto: SupCon only)."""
        return self.cls_train == "always" or (self.cls_train == "auto" and self.method == "supcon")


register_section("ssl", SSLConfig, {
    "smoke": {"encoder": "resnet18", "epochs": 2, "batch_size": 32, "warmup_epochs": 0, "lr": 0.05,
              "max_steps_per_epoch": 6},
    "quick": {"epochs": 30, "warmup_epochs": 3},
    "paper": {"epochs": 100},
})
register_section("multicrop", MultiCropConfig, {
    "smoke": {"global_size": 64, "local_size": 32},
    "quick": {"global_size": 160, "local_size": 64},
})
register_section("augment", AugmentConfig)
register_section("heads", HeadConfig, {p: dict(v) for p, v in HEAD_PROFILES.items()})
