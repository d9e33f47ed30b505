"""Self-supervised pretraining (paper "Contrastive self-supervised pretraining", Tables 3–7).

SimCLR, SupCon, SwAV and VICReg losses (``methods.ssl.losses``), their projection heads
(``methods.ssl.heads``), the LARS/LARC optimiser and warm-up + cosine schedule
(``methods.ssl.lars``). Views come from ``methods.multicrop`` and ``methods.augment``.
"""
