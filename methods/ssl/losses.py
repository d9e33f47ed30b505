"""Public SSL losses (paper "Contrastive self-supervised pretraining"; conventions in ssl.md).

Each function takes a list of per-view embeddings (B×D, global views first) where it applies:

* :func:`nt_xent` (SimCLR) and :func:`supcon` (SupCon L_out): ``methods.ssl.loss_contrastive``;
* :func:`sinkhorn`, :func:`swav`, :class:`SwAVPrototypes`, :class:`SwAVQueue`: ``methods.ssl.loss_swav``;
* :func:`vicreg`, :func:`vicreg_multicrop`, :class:`VICRegLoss`: ``methods.ssl.loss_vicreg``.

The exact normalisations chosen are documented in those modules.
"""
from __future__ import annotations

from methods.ssl.loss_contrastive import contrastive_loss, nt_xent, supcon
from methods.ssl.loss_swav import SwAVPrototypes, SwAVQueue, sinkhorn, swav
from methods.ssl.loss_vicreg import VICRegLoss, covariance_term, variance_term, vicreg, vicreg_multicrop

__all__ = ["nt_xent", "supcon", "contrastive_loss", "sinkhorn", "swav", "SwAVPrototypes", "SwAVQueue",
           "vicreg", "vicreg_multicrop", "VICRegLoss", "variance_term", "covariance_term"]
