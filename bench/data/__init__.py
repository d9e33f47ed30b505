"""Datasets: the folder contract (DESIGN.md "Data contracts"), phantom generator, importers, splits.

Class ids are fixed everywhere: 0 background, 1 ulna, 2 radius, 3-7 metacarpals M1-M5.
"""
from bench.data.format import (
    BONES,
    BONE_IDS,
    CLASS_NAMES,
    MANIFEST_COLUMNS,
    NUM_CLASSES,
    Dataset,
)

__all__ = ["BONES", "BONE_IDS", "CLASS_NAMES", "MANIFEST_COLUMNS", "NUM_CLASSES", "Dataset"]
