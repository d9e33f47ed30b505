"""Uncertainty-aware bone segmentation (paper "Uncertainty-aware segmentation with modularity"; MoSE)."""
