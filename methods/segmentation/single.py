"""Single-decoder U-Net ablation (paper Table 5, "single decoder").

Same backbone as the MoSE U-Net; one deterministic head (the fusion head's 1x1 stack without the
latent modulation: conv1x1 C -> C, 3 x [conv1x1 + BN + ReLU], conv1x1 C -> classes). It returns the
same :class:`SegOutput` as the MoSE model with N = 1 sample of weight 1, so evaluation and
prediction are shared.

Loss: for each annotation m with weight beta_m, pixel-mean cross-entropy plus soft Dice loss
1 - mean_c (2 I_c + 1) / (|P_c| + |Y_c| + 1) over the seven bone classes (background excluded
and +1 smoothing, as in the MoSE IoU cost); L = mean_b sum_m beta_m (CE_m + Dice_m).
"""
from __future__ import annotations

import torch
from torch import nn

from methods.segmentation.model import ModelSpec, SegOutput, UNetBackbone, head_stack


class SingleUNet(nn.Module):
    """U-Net with one deterministic 1x1 head."""

    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.spec = spec
        self.backbone = UNetBackbone(spec.in_channels, spec.widths, spec.bn_momentum, spec.standardize, spec.convs,
                                     spec.standardize_over)
        self.head = head_stack(spec.widths[0], 0, spec.classes, spec.bn_momentum)

    @property
    def experts(self) -> int:
        return 1

    def forward(self, x: torch.Tensor, samples: int | None = None, generator: torch.Generator | None = None,
                eps: torch.Tensor | None = None) -> SegOutput:
        _, u_d = self.backbone(x)
        logits = self.head(u_d)[:, None]                      # B x 1 x C x H x W
        zeros = torch.zeros(x.shape[0], 1, device=x.device)
        return SegOutput(logits, zeros, zeros)

    def sample_standard(self, x: torch.Tensor, n: int, generator: torch.Generator | None = None) -> SegOutput:
        """A deterministic model has one sample whatever n is."""
        return self.forward(x)


def ce_dice_loss(logits: torch.Tensor, labels: torch.Tensor, beta: torch.Tensor,
                 smooth: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, ce, dice) for logits B x C x H x W, labels B x M x H x W (int), beta B x M.

    Each annotator's CE and soft-Dice term is weighted by its beta (a beta of 0 pads images that
    have fewer annotators). Returns scalars averaged over the batch.
    """
    logp = torch.log_softmax(logits.float(), dim=1)                           # B x C x H x W
    lab = labels.long()
    b, m = lab.shape[:2]
    ce = -logp[:, None].expand(b, m, *logp.shape[1:]).gather(2, lab[:, :, None]).squeeze(2)
    ce = ce.mean(dim=(2, 3))                                                  # B x M
    p = logp.exp()[:, 1:]                                                     # bones only
    onehot = torch.stack([(lab == c) for c in range(1, logits.shape[1])], dim=2).float()  # B x M x C-1 x H x W
    inter = torch.einsum("bchw,bmchw->bmc", p, onehot)
    denom = p.sum(dim=(2, 3))[:, None] + onehot.sum(dim=(3, 4))
    dice = 1.0 - ((2.0 * inter + smooth) / (denom + smooth)).mean(dim=2)      # B x M
    w = beta.float()
    ce_b, dice_b = (w * ce).sum(1), (w * dice).sum(1)
    return (ce_b + dice_b).mean(), ce_b.mean(), dice_b.mean()
