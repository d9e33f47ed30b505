"""``torch.compile`` of training modules: ``ssl.compile`` (the encoder) and ``segmentation.compile``
(the U-Net's backbone and head), issue 9.

Modes: ``off`` (eager), ``default`` (inductor: fused BatchNorm/ReLU and element-wise kernels,
forward and backward), ``max-autotune-no-cudagraphs``, and the CUDA-graph modes
``reduce-overhead`` / ``max-autotune``. ``nn.Module.compile`` compiles in place, so state dicts
keep their keys and checkpoints stay interchangeable with eager runs. Shapes are static
(``dynamic=False``): one graph per input shape and train/eval mode. The first step pays the
compilation (``bench perf`` reports it).
"""
from __future__ import annotations

from typing import Literal, get_args

from torch import nn

CompileMode = Literal["off", "default", "max-autotune-no-cudagraphs", "reduce-overhead", "max-autotune"]
COMPILE_MODES: tuple[str, ...] = get_args(CompileMode)


def compile_module(module: nn.Module, mode: str) -> None:
    """Compile `module` in place with `mode` (module docstring); ``off`` leaves it eager."""
    if mode == "off":
        return
    module.compile(mode=None if mode == "default" else mode, dynamic=False)


__all__ = ["COMPILE_MODES", "CompileMode", "compile_module"]
