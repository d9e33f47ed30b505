"""Registers the paper's method (Table 3) and its ablations (Tables 4-7).

Every entry is the same pipeline with one named difference, like nnU-Net's trainer variants:

    segment ─▶ extract ─▶ pretrain (SSL) ─▶ probe          full method: simclr | supcon | swav | vicreg
    extract_raw ─▶ pretrain ─▶ probe(whole image)          noseg-<ssl>            (Table 4)
    segment(single decoder) ─▶ extract ─▶ pretrain ─▶ probe   single-decoder-<ssl>  (Table 5)
    segment ─▶ extract ─▶ supervised                        supervised             (Table 6)
    ... pretrain with conventional multi-crop ...           convcrop-<ssl>         (Table 7)

Stages with the same function, config sections and inputs share one cache entry, so the paper
suite trains one segmentation model per seed (and one per seed for the single-decoder ablation).
The stages are declared in methods.pipeline, by function name: importing this module imports no torch.
"""
from __future__ import annotations

from bench.registry import Entry, register
from methods.pipeline import EXTRACT, EXTRACT_RAW, FULL, PRETRAIN_RAW, PROBE_WHOLE, SEGMENT, SUPERVISED

SSL_METHODS: dict[str, str] = {"simclr": "SimCLR", "supcon": "SupCon", "swav": "SwAV", "vicreg": "VICReg"}
CITATION = "Hwang, Lee & Yoon, Sci. Rep. 2025"

for name, row in SSL_METHODS.items():
    method = {"ssl.method": name}
    register(Entry(name, f"full method: uncertainty-aware segmentation, bone-aware multi-crop, {row} "
                         "pretraining, linear probe, eq. 10 aggregation",
                   stages=FULL, kind="full", table="table3", row=row, overrides=method, citation=CITATION,
                   info={"roi": "Segmentation-based + SSL + enhanced aug", "architecture": "ResNet50"}))
    register(Entry(f"noseg-{name}", f"{row} without segmentation: seven random raw patches per radiograph "
                                    "for pretraining, the whole radiograph for the probe",
                   stages=(EXTRACT_RAW, PRETRAIN_RAW, PROBE_WHOLE), kind="ablation", table="table4", row=row,
                   parent=name, overrides=method, citation=CITATION))
    register(Entry(f"single-decoder-{name}", f"{row} with masks from a single-decoder U-Net "
                                             "(cross-entropy + Dice) instead of the mixture of stochastic experts",
                   stages=FULL, kind="ablation", table="table5", row=row, parent=name,
                   overrides={**method, "segmentation.model": "single"}, citation=CITATION))
    register(Entry(f"convcrop-{name}", f"{row} with conventional multi-crop (no bone-aware rejection sampling)",
                   stages=FULL, kind="ablation", table="table7", row=row, parent=name,
                   overrides={**method, "ssl.crop_policy": "conventional"}, citation=CITATION))

register(Entry("supervised", "segmentation kept, no SSL and no multi-crop: the encoder trained end to end "
                             "on the bone patches", stages=(SEGMENT, EXTRACT, SUPERVISED), kind="ablation",
               table="table6", row="Supervised", parent="simclr", citation=CITATION))
