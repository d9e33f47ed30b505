"""The MoSE U-Net (paper "Uncertainty-aware segmentation with modularity"; segmentation.md §2).

* Backbone: the input is z-scored per image (the reference z-scores each LIDC crop); a U-Net of
  ``len(widths)`` levels; each level is ``convs`` (reference: three) [conv3x3, BN(eps 1e-3), ReLU],
  every level but the first starts with AvgPool2d(2, ceil_mode=True). The decoder upsamples
  bilinearly (align_corners=False) to the skip's size - exactly x2 for even sizes, and robust for
  any canvas - concatenates the skip and applies the same block. Outputs the bottleneck ``u_g``
  and the dense feature ``u_d`` (widths[0] channels, full resolution). Kaiming-normal (fan_in,
  relu) weights, biases N(0, 0.001) truncated at 2 std.
* Gating: global average pool of u_g -> Linear+ReLU -> Linear+ReLU -> Linear(no bias) -> pi(x).
* Experts: learnable N(mu_k, sigma_k^2 I) over z in R^L, ``prior="isotropic"`` (the paper: one
  sigma per expert, "no directional bias in the latent space"), or N(mu_k, diag sigma_k^2)
  (``prior="diagonal"``: the reference, one sigma per latent dimension); mu starts at the binary
  codes (row r < 2^L is r in binary, MSB first; further rows U[0,1)), log sigma at log(1/8).
* Fusion head: (u_d + W_b z + b_b) * (W_s z + b_s + 1e-5), then conv1x1 (C -> C+L, plain),
  3 x [conv1x1 + BN + ReLU] (C+L -> C -> C -> C), conv1x1 (C -> classes). ``head="shared"`` is the
  reference (one head, experts differ only by their prior); ``head="per_expert"`` gives each expert
  its own W_s, W_b and 1x1 stack (the paper's K decoder modules), run as grouped convolutions;
  either way the U-Net decoder that makes u_d is shared (the paper's f_dec^(k) as the reference
  builds it: the modules differ from u_d on).
* Samples are expert-major (n = k*S + s) with weights pi_k / S (paper eq. 2).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from functools import cached_property

import torch
import torch.nn.functional as F
from torch import nn

from bench.data.format import NUM_CLASSES

BN_EPS = 1e-3
SIGMA0 = 1.0 / 8.0


@dataclass
class ModelSpec:
    """Everything needed to rebuild a segmentation network (saved in model.pt)."""

    kind: str = "mose"                               # mose | single
    in_channels: int = 1                             # grayscale radiograph
    classes: int = NUM_CLASSES                       # background + 7 bones
    widths: tuple[int, ...] = (32, 64, 128, 192, 192, 192, 192)  # channels per U-Net level
    experts: int = 4                                 # K
    samples: int = 4                                 # S (default samples per expert)
    latent: int = 2                                  # L
    head: str = "shared"                             # shared | per_expert
    bn_momentum: float = 0.01                        # BatchNorm momentum
    canvas: tuple[int, int] = (512, 384)             # working canvas (rows, cols)
    standardize: bool = True                         # z-score each input image over its canvas (reference)
    standardize_over: str = "canvas"                 # the pixels the z-score's statistics use: canvas | unclipped (UNetBackbone)
    convs: int = 3                                   # [conv3x3, BN, ReLU] per U-Net block (reference 3)
    canonical_laterality: bool = False               # trained on right hands (left ones mirrored): predict mirrors L
    prior: str = "diagonal"                          # isotropic | diagonal latent sigma (this default reads models saved before the option)
    extra: dict = field(default_factory=dict)        # free-form notes (training config, classes)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["widths"], d["canvas"] = list(self.widths), list(self.canvas)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ModelSpec":
        d = dict(d)
        d["widths"], d["canvas"] = tuple(d["widths"]), tuple(d["canvas"])
        return cls(**d)


@dataclass
class SegOutput:
    """Per-sample predictions of one forward pass."""

    logits: torch.Tensor        # B x N x C x H x W class logits
    log_weights: torch.Tensor   # B x N, log(pi_k / S), expert-major (sums to 1 after exp)
    log_pi: torch.Tensor        # B x K, log mixture weights (B x 1 zeros for the single model)

    @cached_property
    def probs(self) -> torch.Tensor:
        """B x N x C x H x W class probabilities in float32."""
        return torch.softmax(self.logits.float(), dim=2)

    @property
    def weights(self) -> torch.Tensor:
        return self.log_weights.exp()

    def mean_probs(self) -> torch.Tensor:
        """B x C x H x W mixture mean, sum_n w_n p_n."""
        return torch.einsum("bn,bnchw->bchw", self.weights.float(), self.probs)


def _init_conv(conv: nn.Conv2d) -> None:
    nn.init.kaiming_normal_(conv.weight, mode="fan_in", nonlinearity="relu")
    if conv.bias is not None:
        nn.init.trunc_normal_(conv.bias, std=0.001, a=-0.002, b=0.002)


def conv_bn_relu(cin: int, cout: int, k: int, momentum: float, groups: int = 1) -> nn.Sequential:
    conv = nn.Conv2d(cin, cout, k, padding=k // 2, groups=groups)
    _init_conv(conv)
    return nn.Sequential(conv, nn.BatchNorm2d(cout, eps=BN_EPS, momentum=momentum), nn.ReLU(inplace=True))


class Block(nn.Sequential):
    """`convs` x [conv3x3, BN, ReLU] (reference: three)."""

    def __init__(self, cin: int, cout: int, momentum: float, convs: int = 3):
        super().__init__(*(conv_bn_relu(cin if i == 0 else cout, cout, 3, momentum) for i in range(convs)))


STANDARDIZE_OVER = ("canvas", "unclipped")
CLIPPED = (0.005, 0.995)       # at or beyond these an input pixel counts as clipped (padding, shutter, saturation)
MIN_UNCLIPPED = 0.05           # below this share of unclipped pixels the whole canvas is used


def standardize_images(x: torch.Tensor, over: str = "canvas") -> torch.Tensor:
    """Per image and channel z-score of B x C x H x W inputs in [0, 1].

    ``canvas``: mean and variance over every pixel (the reference's LIDC loader). ``unclipped`` (ours):
    over the pixels strictly inside ``CLIPPED``, so the canvas padding, an electronic shutter's black,
    and a CR plate's saturated collimation border or an opaque apparatus do not move the bones' z-values
    (methods.segmentation.config); an image with less than ``MIN_UNCLIPPED`` of such pixels uses its
    whole canvas. Every pixel is standardised with these statistics."""
    mean = x.mean(dim=(2, 3), keepdim=True)
    var = x.var(dim=(2, 3), keepdim=True, unbiased=False)
    if over == "unclipped":
        w = ((x > CLIPPED[0]) & (x < CLIPPED[1])).to(x.dtype)
        n = w.sum(dim=(2, 3), keepdim=True)
        m = (x * w).sum(dim=(2, 3), keepdim=True) / n.clamp(min=1.0)
        v = ((x - m).square() * w).sum(dim=(2, 3), keepdim=True) / n.clamp(min=1.0)
        enough = n >= MIN_UNCLIPPED * x.shape[2] * x.shape[3]
        mean, var = torch.where(enough, m, mean), torch.where(enough, v, var)
    return (x - mean) / (var + 1e-6).sqrt()


class UNetBackbone(nn.Module):
    """Encoder-decoder without a final 1x1 conv; returns (bottleneck u_g, dense feature u_d)."""

    def __init__(self, in_channels: int, widths: tuple[int, ...], momentum: float, standardize: bool = True,
                 convs: int = 3, standardize_over: str = "canvas"):
        super().__init__()
        if standardize_over not in STANDARDIZE_OVER:
            raise ValueError(f"standardize_over must be one of {STANDARDIZE_OVER}, got {standardize_over!r}")
        self.standardize = standardize
        self.standardize_over = standardize_over
        self.down = nn.ModuleList()
        cin = in_channels
        for w in widths:
            self.down.append(Block(cin, w, momentum, convs))
            cin = w
        self.up = nn.ModuleList(Block(widths[i + 1] + widths[i], widths[i], momentum, convs)
                                for i in reversed(range(len(widths) - 1)))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.standardize:
            x = standardize_images(x, self.standardize_over)
        skips = []
        for i, block in enumerate(self.down):
            if i > 0:
                x = F.avg_pool2d(x, 2, stride=2, ceil_mode=True)
            x = block(x)
            skips.append(x)
        u_g = x
        for j, block in enumerate(self.up):
            skip = skips[-2 - j]
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = block(torch.cat([x, skip], dim=1))
        return u_g, x


def head_stack(c: int, latent: int, classes: int, momentum: float, groups: int = 1) -> nn.Sequential:
    """conv1x1 (c -> c+L, plain, default init), 3 x [conv1x1 + BN + ReLU], conv1x1 (c -> classes)."""
    g = groups
    return nn.Sequential(
        nn.Conv2d(g * c, g * (c + latent), 1, groups=g),
        conv_bn_relu(g * (c + latent), g * c, 1, momentum, g),
        conv_bn_relu(g * c, g * c, 1, momentum, g),
        conv_bn_relu(g * c, g * c, 1, momentum, g),
        nn.Conv2d(g * c, g * classes, 1, groups=g),
    )


class FusionHead(nn.Module):
    """Latent modulation + 1x1 stack; shared by all experts or one per expert (grouped convs)."""

    def __init__(self, channels: int, latent: int, classes: int, experts: int, per_expert: bool,
                 momentum: float):
        super().__init__()
        self.c, self.latent, self.classes, self.experts = channels, latent, classes, experts
        self.per_expert = per_expert
        g = experts if per_expert else 1
        bound = math.sqrt(6.0 / (latent + channels))  # Xavier-uniform for Linear(L -> C)
        self.w_bias = nn.Parameter(torch.empty(g, channels, latent).uniform_(-bound, bound))
        self.w_scale = nn.Parameter(torch.empty(g, channels, latent).uniform_(-bound, bound))
        self.b_bias = nn.Parameter(torch.zeros(g, channels))
        self.b_scale = nn.Parameter(torch.zeros(g, channels))
        self.stack = head_stack(channels, latent, classes, momentum, groups=g)

    def forward(self, u_d: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """u_d: B x C x H x W; z: B x K x S x L (expert-major grid) -> logits B x K x S x CL x H x W."""
        b, k, s, _ = z.shape
        c, h, w = u_d.shape[1:]
        if self.per_expert:
            r = torch.einsum("bksl,kcl->bksc", z, self.w_bias) + self.b_bias[None, :, None]
            m = torch.einsum("bksl,kcl->bksc", z, self.w_scale) + self.b_scale[None, :, None]
        else:
            r = torch.einsum("bksl,cl->bksc", z, self.w_bias[0]) + self.b_bias[0]
            m = torch.einsum("bksl,cl->bksc", z, self.w_scale[0]) + self.b_scale[0]
        r, m = r.to(u_d.dtype), m.to(u_d.dtype)
        hfeat = (u_d[:, None, None] + r[..., None, None]) * (m[..., None, None] + 1e-5)
        if self.per_expert:  # (B, K, S, C, H, W) -> (B*S, K*C, H, W): expert k owns channel group k
            x = hfeat.permute(0, 2, 1, 3, 4, 5).reshape(b * s, k * c, h, w)
            y = self.stack(x).reshape(b, s, k, self.classes, h, w).permute(0, 2, 1, 3, 4, 5)
        else:
            y = self.stack(hfeat.reshape(b * k * s, c, h, w)).reshape(b, k, s, self.classes, h, w)
        return y


def binary_code_init(experts: int, latent: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """K x L prior means: row r < 2^L is r in binary (MSB in column 0); further rows U[0, 1)."""
    mu = torch.rand(experts, latent, generator=generator)
    for r in range(min(experts, 2 ** latent)):
        mu[r] = torch.tensor([(r >> (latent - 1 - j)) & 1 for j in range(latent)], dtype=torch.float32)
    return mu


class MoSEUNet(nn.Module):
    """U-Net with K stochastic experts and a gating network (paper eq. 1-2)."""

    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.spec = spec
        k, lat, cg = spec.experts, spec.latent, spec.widths[-1]
        self.backbone = UNetBackbone(spec.in_channels, spec.widths, spec.bn_momentum, spec.standardize, spec.convs,
                                     spec.standardize_over)
        self.gate = nn.Sequential(nn.Linear(cg, cg), nn.ReLU(inplace=True), nn.Linear(cg, cg),
                                  nn.ReLU(inplace=True), nn.Linear(cg, k, bias=False))
        self.mu = nn.Parameter(binary_code_init(k, lat))
        self.log_sigma = nn.Parameter(torch.full((k, lat if spec.prior == "diagonal" else 1), math.log(SIGMA0)))
        self.head = FusionHead(spec.widths[0], lat, spec.classes, k, spec.head == "per_expert",
                               spec.bn_momentum)

    @property
    def experts(self) -> int:
        return self.spec.experts

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(u_d, log pi): the dense feature and the log mixture weights (B x K, float32)."""
        u_g, u_d = self.backbone(x)
        log_pi = torch.log_softmax(self.gate(u_g.mean(dim=(2, 3))).float(), dim=1)
        return u_d, log_pi

    def latent_grid(self, batch: int, samples: int, generator: torch.Generator | None = None,
                    eps: torch.Tensor | None = None) -> torch.Tensor:
        """z_{b,k,s} = mu_k + (sigma_k + 1e-8) * eps, eps ~ N(0, I) per image and sample: B x K x S x L.

        A given `eps` (K x S x L, shared by the batch, or B x K x S x L) replaces the draw.
        """
        if eps is None:
            eps = torch.randn(batch, self.spec.experts, samples, self.spec.latent, generator=generator,
                              device=self.mu.device, dtype=self.mu.dtype)
        eps = eps.to(self.mu.device, self.mu.dtype).expand(batch, self.spec.experts, samples, self.spec.latent)
        return self.mu[None, :, None] + (self.log_sigma.exp() + 1e-8)[None, :, None] * eps

    def forward(self, x: torch.Tensor, samples: int | None = None, generator: torch.Generator | None = None,
                eps: torch.Tensor | None = None) -> SegOutput:
        """Compact weighted form: K*S samples, expert-major, weights pi_k / S (S from `eps` if given)."""
        s = eps.shape[-2] if eps is not None else (samples or self.spec.samples)
        u_d, log_pi = self.encode(x)
        z = self.latent_grid(x.shape[0], s, generator, eps)
        logits = self.head(u_d, z)
        b, k = log_pi.shape
        log_w = (log_pi - math.log(s))[:, :, None].expand(b, k, s).reshape(b, k * s)
        return SegOutput(logits.reshape(b, k * s, *logits.shape[3:]), log_w, log_pi)

    def sample_standard(self, x: torch.Tensor, n: int, generator: torch.Generator | None = None) -> SegOutput:
        """Standard form (segmentation.md §2.5): n experts drawn i.i.d. from pi(x), weights 1/n."""
        u_d, log_pi = self.encode(x)
        b, k = log_pi.shape
        ids = torch.multinomial(log_pi.exp(), n, replacement=True, generator=generator)   # B x n
        eps = torch.randn(b, n, self.spec.latent, generator=generator, device=x.device, dtype=self.mu.dtype)
        z = self.mu[ids] + (self.log_sigma.exp()[ids] + 1e-8) * eps                      # B x n x L
        if self.head.per_expert:  # every expert's head on every draw, then keep the drawn expert's
            grid = z[:, None].expand(b, k, n, -1)
            logits = self.head(u_d, grid)                                                # B x K x n x ..
            idx = ids[:, None, :, None, None, None].expand(-1, 1, -1, *logits.shape[3:])
            logits = logits.gather(1, idx)[:, 0]
        else:
            logits = self.head(u_d, z[:, None])[:, 0]                                    # B x n x ..
        log_w = torch.full((b, n), -math.log(n), device=x.device)
        return SegOutput(logits, log_w, log_pi)


def build_model(spec: ModelSpec, seed: int = 0) -> nn.Module:
    """A freshly initialised network of `spec` (initialisation seeded by `seed` only)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if spec.kind == "mose":
            return MoSEUNet(spec)
        if spec.kind == "single":
            from methods.segmentation.single import SingleUNet

            return SingleUNet(spec)
    raise ValueError(f"unknown model kind {spec.kind!r}")


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
