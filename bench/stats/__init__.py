"""Paired significance tests for one test set (issue 7; reference: statistics.md).

* :func:`delong`, :func:`delong_ci`: DeLong's test of two correlated AUCs (Sun & Xu's algorithm).
* :func:`paired_bootstrap`, :func:`hierarchical_bootstrap`: stratified paired bootstrap of
  metric differences (``delta = a - b``), the latter over subjects and seeds together.
* :func:`mcnemar`, :func:`holm`: paired accuracy and the family-wise correction (statsmodels).
* :func:`compare_entries`, :func:`compare_all`: two entries' results side by side (`bench compare`).
"""
from bench.stats.bootstrap import (BOOT_METRICS, DEFAULT_METRICS, BootstrapResult, hierarchical_bootstrap,
                                   paired_bootstrap)
from bench.stats.compare import COMPARE_COLUMNS, compare_all, compare_entries, find_suite
from bench.stats.delong import DeLongResult, auc_ci, auc_covariance, delong, delong_ci, placement_values
from bench.stats.mcnemar import McNemarResult, contingency, holm, mcnemar

__all__ = ["BOOT_METRICS", "COMPARE_COLUMNS", "DEFAULT_METRICS", "BootstrapResult", "DeLongResult",
           "McNemarResult", "auc_covariance", "compare_all", "compare_entries", "contingency", "delong",
           "delong_ci", "auc_ci", "find_suite", "hierarchical_bootstrap", "holm", "mcnemar", "paired_bootstrap",
           "placement_values"]
