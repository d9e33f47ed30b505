"""Configuration of the segmentation stage (config section ``segmentation``).

Defaults follow the MoSE reference (segmentation.md §6) where it applies: K = 4 experts, S = 4
samples per expert, binary-code prior means, gamma0 = 1/2 switched to 1 on a loss plateau
(patience 10), lambda = 1 with the reference mean-over-(B·N) KL normalisation, Adam lr 1e-3,
weight decay 1e-5, ReduceLROnPlateau(0.5, patience 10, min 1e-5), batch 16, 200 epochs, model
selection by validation GED in the compact weighted form.

Choices of our own (documented at the fields): a pixel cross-entropy term in the OT cost,
``ce_weight = 0.1`` in every profile. The paper's cost is the soft 1 - IoU alone (the reference's
binary LIDC setting); the reference's own multi-class setting (Cityscapes) uses pixel CE as the
cost. With eight classes the soft IoU alone let a bone's softmax saturate to background, after
which its gradient vanishes and the bone is never learnt: smoke seeds 1 and 2 on CPU, and a
smoke-size model with the quick schedule under bf16 autocast (as on a GPU) lost M1 and M2 (val GED
0.68 against 0.19 with the CE term, every bone learnt); the quick MoSE on an H100 trailed the
single decoder by 2x in GED, as one lost bone would make it. ``--set segmentation.ce_weight=0``
restores the paper's cost. Latent size L = 2 (the reference uses L = 1 for
K = 4; with L = 2 the binary-code initialisation gives each of the four experts its own corner
{00, 01, 10, 11}, so no prior mean is random), the U-Net widths as ``base_width`` doubled per
level up to ``max_width`` (32 and 192 with 7 levels reproduce the reference's
[32, 64, 128, 192, 192, 192, 192]), a working canvas of ``working_size`` rows whose width
follows the training images' median aspect ratio.

Latent prior (``prior``): the paper's isotropic N(mu_k, sigma_k^2 I), one sigma per expert; the
reference learns a diagonal one (``prior = diagonal``). Three smoke seeds of each on 100 held-out
images: GED 0.170 vs 0.175, Dice 0.936 vs 0.934, not significantly apart (docs/measurements.md).

Laterality (``canonical_laterality``, ours; the paper is silent and the reference's LIDC has no sides):
left hands (manifest laterality L) are mirrored to right hands for training, validation and
prediction, and the outputs mirrored back; random horizontal flips (``flip_p``) touch only images of
unknown side, and at prediction such an image is segmented both ways and the surer orientation kept
(methods.segmentation.predict). The landmark baseline and bone-age models do the same. With both
hands in the data and flips for all, the U-Net must find the thumb's side, the whole hand's context,
to tell the ulna from the radius: on the smoke phantom at a 256-row canvas (S = 4, 60 epochs, CPU)
the MoSE of seed 1 never did; it labelled every right-looking image as if it were a left hand
(ulna Dice 0 on all 29 right hands, 0.94-0.98 on the 11 left ones; M2 and M4 partly swapped) and
ended at val GED 0.556. With canonical laterality the same seed reached val GED 0.139 (epoch 35).
``--set segmentation.canonical_laterality=false`` restores the reference's flips of every image.

Appearance (ours; the paper and the reference are silent): the input's z-score takes its statistics
from the unclipped pixels only (``standardize_over = "unclipped"``: not the canvas padding, an
electronic shutter's black or a CR plate's saturated collimation border; the reference: the whole
canvas), and training batches get random white or black collimation frames and nnU-Net's intensity
gamma (``frame_p``, ``intensity_gamma_p``; methods.segmentation.appearance). With the reference
z-score a wide white frame pushed the bones' z-values below anything seen in training: on 100
held-out smoke images (256-row canvas, S = 4, 60 epochs, CPU, 2026-11-27) MoSEs of seeds 0 and 1
reached Dice 0.918 and 0.914 on the 31 images with a bright border (0.961-0.980 on the others) and
lost pub-00089-1 (Dice 0.13 and 0.12; 0.90 with its frame painted black). With both changes, seeds
0-2: mean Dice 0.964, 0.961, 0.966 (was 0.961, 0.950, 0.956), GED 0.138, 0.149, 0.139 (0.148, 0.172,
0.162), pub-00089-1 0.91, 0.80, 0.95, 100, 99, 100 sides found; the augmentation alone gave 0.961 and
0.965 (GED 0.149 and 0.139), the z-score alone (seed 0) 0.963 (0.144); the single decoder (seed 0)
0.972 (was 0.957), GED 0.150 (0.182). Every MoSE seed gained, yet three against three are not
significantly apart (`bench compare-seg`: Dice +0.009, 95 % CI -0.003 to +0.027; GED -0.019, CI
-0.047 to +0.002). ``standardize_over=canvas frame_p=0 intensity_gamma_p=0`` restores the reference.
A model saved before the option keeps the canvas z-score.

Occlusion (``occlude_p``, ours, off by default): with probability p a training image gets one bone
under an opaque bar along its axis, and that bone's label is removed (methods.segmentation.occlusion).
The MoSEs above labelled the visible metacarpals of pub-00092-1 (M3 under an opaque bar, absent from
the truth) one place off: Dice 0.38 and 0.33 for seeds 0 and 1. With p = 0.2 (same protocol,
2026-11-27) they reached 0.71 and 0.75 there, but the mean over the 100 images moved by +0.002 and
-0.003 (0.9655 vs 0.9635, 0.958 vs 0.961) and GED by -0.003 and +0.009 (seed 0 against seed 0,
`bench compare-seg`: Dice +0.0019, 95 % CI -0.0025 to +0.0094): no gain that would justify a default.

Prediction (label maps, uncertainty, confidence; ``predict_draws``): the mixture mean is estimated
from D = 16 latent draws per expert (weights pi_k / D), not the training S = 4. A trained MoSE's
samples differ with their latent draw, and one draw serves every image (methods.segmentation.predict),
so with S draws the label maps of a whole dataset hang on one small draw: on the smoke phantom, MoSEs
trained with S = 4 gave label maps whose mean bone Dice against the truth moved by sd 0.02 between
draws at 4 per expert (0.84-0.91 for one model), 0.01 at 16 (on a 128-row canvas; on a 256-row
canvas sd 0.002-0.007 at 4 draws, 0.000-0.006 at 16). The validation GED (model selection)
and the GED, Hungarian IoU and ECE of eval.json stay in the reference's compact form (K x S). The
smoke profile keeps D = S (0): its S = 1 model's label maps do not move with the draw (sd 0.001) and
16 draws would make the tests' predictions 7x slower (61 -> 408 ms an image on one core).
"""
from __future__ import annotations

from dataclasses import dataclass

from bench.config import register_section
from bench.data.format import SPLITS
from bench.errors import BenchError
from methods.compiling import SegCompileMode
from methods.segmentation.model import STANDARDIZE_OVER

MODELS = ("mose", "single")
HEADS = ("shared", "per_expert")
PRIORS = ("isotropic", "diagonal")
GAMMA_SCHEDULES = ("plateau", "linear", "cosine", "constant")
SOLVERS = ("exact", "greedy")


@dataclass
class SegmentationConfig:
    """Bone segmentation: MoSE U-Net (paper "Uncertainty-aware segmentation with modularity") or the single-decoder ablation."""

    model: str = "mose"                 # mose (K stochastic experts, OT loss) | single (one deterministic head, CE + Dice)
    experts: int = 4                    # K decoder modules (experts)
    samples: int = 4                    # S latent samples per expert during training (N = K*S)
    latent: int = 2                     # L, latent size of each expert's Gaussian (reference 1; 2 gives K=4 distinct binary codes)
    base_width: int = 32                # channels of the first U-Net level (also of the decoded feature u_d)
    max_width: int = 192                # channel cap; level i has min(base_width * 2**i, max_width)
    levels: int = 7                     # U-Net levels (encoder blocks, the last is the bottleneck)
    convs: int = 3                      # [conv3x3, BN, ReLU] per U-Net block (reference 3)
    standardize: bool = True            # z-score each input image (reference)
    standardize_over: str = "unclipped" # statistics over: canvas (reference) | unclipped (ours: not padding, shutter or saturation; model.standardize_images)
    head: str = "shared"                # shared (reference: one fusion head, experts differ by prior) | per_expert (K heads)
    prior: str = "isotropic"            # each expert's latent N(mu_k, sigma_k^2 I): isotropic (paper) | diagonal (reference: diag sigma_k^2)
    bn_momentum: float = 0.01           # BatchNorm momentum (reference 0.01; short schedules need a larger one)
    gamma0: float = 0.5                 # initial cap gamma on each sample's transported mass (paper eq. 9)
    gamma_schedule: str = "plateau"     # plateau (reference: one switch to 1) | linear | cosine | constant
    gamma_anneal_epochs: int = 50       # linear/cosine: epochs to go from gamma0 to 1
    gamma_patience: int = 10            # plateau: epochs without improvement of the mean train loss before gamma = 1
    lam: float = 1.0                    # lambda, weight of the routing KL (reference normalisation: mean over B*N)
    ce_weight: float = 0.1              # w in C = (1 - soft IoU) + w * pixel CE (the paper and reference LIDC: 0; module docstring)
    ot_solver: str = "exact"            # exact (LP with POT) | greedy (the reference heuristic)
    epochs: int = 200                   # training epochs
    batch_size: int = 16                # training batch size (images)
    micro_batch: int = 0                # images per pass, gradients accumulated over the batch (0: one pass); BatchNorm sees the micro-batch
    compile: SegCompileMode = "auto"    # torch.compile of the U-Net's backbone and head: auto (MoSE on CUDA: default, else off) | off | a mode of methods.compiling
    lr: float = 1e-3                    # Adam learning rate
    weight_decay: float = 1e-5          # Adam weight decay
    lr_patience: int = 10               # ReduceLROnPlateau patience (epochs) on the plateau signal
    plateau_signal: str = "cumulative"  # what LR and gamma plateaus watch: cumulative (reference: mean loss since epoch 0) | epoch
    lr_factor: float = 0.5              # ReduceLROnPlateau factor
    min_lr: float = 1e-5                # ReduceLROnPlateau floor
    val_every: int = 1                  # validate (GED, compact form) every this many epochs for model selection
    working_size: int = 512             # rows of the working canvas (images keep their aspect, padded)
    canvas_aspect: float = 0.0          # canvas width / height; 0: the training images' median aspect
    augment: bool = True                # on-device augmentation of training batches
    canonical_laterality: bool = True   # mirror left hands (manifest laterality L) to right hands; flip only unknown sides (docstring)
    flip_p: float = 0.5                 # probability of a horizontal flip (left <-> right hand; canonical: unknown sides only)
    vflip_p: float = 0.0                # probability of a vertical flip (reference LIDC: 0.5; hands are shot fingers up); like flip_p, only images of unknown side under canonical laterality
    rotate_deg: float = 10.0            # rotation drawn uniformly in +- this (reference 10)
    scale_range: float = 0.1            # isotropic scale drawn uniformly in 1 +- this
    frame_p: float = 0.3                # probability of a random white or black collimation frame (methods.segmentation.appearance; with augment only)
    intensity_gamma_p: float = 0.3      # probability of an intensity gamma x**g (nnU-Net: 0.3; with augment only)
    intensity_gamma_min: float = 0.7    # lower end of the gamma g, half the draws below 1 (nnU-Net: 0.7-1.5)
    intensity_gamma_max: float = 1.5    # upper end of the gamma g
    occlude_p: float = 0.0              # probability that one bone is hidden under an opaque bar and unannotated (methods.segmentation.occlusion; with augment only)
    annotators: str = ""                # comma-separated annotator names used for training; empty: all
    eval_samples: int = 0               # evaluation samples: 0 = compact form (K*S weighted); n > 0 = n drawn from pi
    eval_splits: str = "val,test"       # seg splits evaluated (Dice, GED, Hungarian IoU, ECE)
    predict_batch: int = 8              # images per forward pass when predicting
    predict_draws: int = 16             # latent draws per expert behind the predicted mean (labels, uncertainty); 0: the training S (module docstring)
    figures: int = 4                    # example figures (image, overlay, entropy) written to figures/

    def validate(self) -> None:
        """Raise BenchError naming the first bad option."""
        checks = [
            (self.model in MODELS, f"segmentation.model must be one of {', '.join(MODELS)}"),
            (self.lr >= 0 and self.weight_decay >= 0 and self.min_lr >= 0 and (self.lr == 0 or self.min_lr <= self.lr)
             and 0 < self.lr_factor < 1,
             "segmentation.lr must be >= 0 (0 freezes the weights), weight_decay >= 0, min_lr in [0, lr] and "
             "lr_factor in (0, 1)"),
            (self.head in HEADS, f"segmentation.head must be one of {', '.join(HEADS)}"),
            (self.prior in PRIORS, f"segmentation.prior must be one of {', '.join(PRIORS)}"),
            (self.gamma_schedule in GAMMA_SCHEDULES,
             f"segmentation.gamma_schedule must be one of {', '.join(GAMMA_SCHEDULES)}"),
            (self.standardize_over in STANDARDIZE_OVER,
             f"segmentation.standardize_over must be one of {', '.join(STANDARDIZE_OVER)}"),
            (self.ot_solver in SOLVERS, f"segmentation.ot_solver must be one of {', '.join(SOLVERS)}"),
            (self.plateau_signal in ("cumulative", "epoch"),
             "segmentation.plateau_signal must be cumulative or epoch"),
            (self.experts >= 1 and self.samples >= 1 and self.latent >= 1,
             "segmentation.experts, samples and latent must be >= 1"),
            (0.0 < self.gamma0 <= 1.0, "segmentation.gamma0 must lie in (0, 1]"),
            (self.ce_weight >= 0.0, "segmentation.ce_weight must be >= 0"),
            (self.model == "single" or self.gamma0 * self.experts * self.samples >= 1.0 - 1e-9,
             "segmentation.gamma0 * experts * samples must be >= 1 (else no coupling exists); "
             "raise gamma0 or the number of samples"),
            (self.levels >= 2 and self.base_width >= 1 and self.max_width >= self.base_width,
             "segmentation.levels must be >= 2 and max_width >= base_width >= 1"),
            (self.working_size >= 2 ** (self.levels - 1),
             f"segmentation.working_size must be at least 2**(levels-1) = {2 ** (self.levels - 1)}"),
            (self.epochs >= 1 and self.batch_size >= 1, "segmentation.epochs and batch_size must be >= 1"),
            (self.micro_batch >= 0, "segmentation.micro_batch must be >= 0 (0: the whole batch in one pass)"),
            (self.canvas_aspect >= 0.0, "segmentation.canvas_aspect must be >= 0 (0: automatic)"),
            (self.eval_samples >= 0, "segmentation.eval_samples must be >= 0 (0: compact form)"),
            (self.val_every >= 1, "segmentation.val_every must be >= 1"),
            (self.predict_batch >= 1 and self.figures >= 0,
             "segmentation.predict_batch must be >= 1 and figures >= 0"),
            (self.predict_draws >= 0, "segmentation.predict_draws must be >= 0 (0: the training samples S)"),
            (set(self.split_list) <= set(SPLITS),
             f"segmentation.eval_splits must be a comma-separated subset of {', '.join(SPLITS)}"),
            (0.0 <= self.flip_p <= 1.0 and 0.0 <= self.vflip_p <= 1.0 and 0.0 <= self.scale_range < 1.0,
             "segmentation.flip_p and vflip_p must lie in [0, 1] and scale_range in [0, 1)"),
            (0.0 <= self.frame_p <= 1.0 and 0.0 <= self.intensity_gamma_p <= 1.0 and 0.0 <= self.occlude_p <= 1.0,
             "segmentation.frame_p, intensity_gamma_p and occlude_p must lie in [0, 1]"),
            (0.0 < self.intensity_gamma_min <= self.intensity_gamma_max,
             "segmentation.intensity_gamma_min must be > 0 and <= intensity_gamma_max"),
        ]
        for ok, message in checks:
            if not ok:
                raise BenchError(f"invalid segmentation configuration: {message}")

    @property
    def widths(self) -> tuple[int, ...]:
        """Channels per U-Net level."""
        return tuple(min(self.base_width * 2 ** i, self.max_width) for i in range(self.levels))

    @property
    def annotator_list(self) -> tuple[str, ...]:
        return tuple(a.strip() for a in self.annotators.split(",") if a.strip())

    @property
    def split_list(self) -> tuple[str, ...]:
        return tuple(s.strip() for s in self.eval_splits.split(",") if s.strip())


PROFILES = {
    # CPU, a couple of minutes (about 1 s per epoch on two idle cores): 16..64 channels, 5 levels of
    # 2 convs, a 128-row canvas, S = 1 (N = K = 4 samples), batch 2 for many steps, gamma annealed
    # linearly over 20 epochs and the LR plateau watched on the epoch loss with patience 8. (With
    # the plateau switch and patience 3, the loss jump at the switch cut the LR to its floor within
    # a few epochs for some seeds and bones were never learnt.) The pixel-CE term (ce_weight 0.1)
    # in the OT cost: with the soft-IoU cost alone, seeds 1 and 2 let a bone's softmax saturate
    # (a bone class took over the background, or the background a bone: M2 Dice 0.02 and 0.24,
    # M1 0.23) and never recovered; with it, every bone of seeds 0-3 reaches Dice >= 0.82 (1 thread).
    "smoke": dict(base_width=16, max_width=64, levels=5, convs=2, working_size=128, samples=1,
                  epochs=60, batch_size=2, lr=2e-3, bn_momentum=0.1, plateau_signal="epoch",
                  gamma_schedule="linear", gamma_anneal_epochs=20, lr_patience=8,
                  predict_batch=8, predict_draws=0, figures=2),
    # one GPU, minutes: a 320-row canvas, the reference widths and blocks with 6 levels. Eager: its
    # 1,200 MoSE steps save about 53 s compiled (H200: 111 -> 67 ms a step), less than the compilation
    # (67 s for the training graph, more for the eval graphs); the paper profile's 11,400 steps on a
    # 2.5x larger canvas save 8 min or more.
    "quick": dict(base_width=32, max_width=192, levels=6, working_size=320, epochs=60,
                  batch_size=16, bn_momentum=0.05, plateau_signal="epoch", gamma_patience=6,
                  lr_patience=6, compile="off"),
    # the paper: a 512-row canvas, the reference widths, blocks and schedule.
    "paper": dict(base_width=32, max_width=192, levels=7, working_size=512, epochs=200,
                  batch_size=16),
}

register_section("segmentation", SegmentationConfig, profiles=PROFILES)
