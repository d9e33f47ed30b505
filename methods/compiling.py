"""``torch.compile`` of training modules: ``ssl.compile`` (the encoder) and ``segmentation.compile``
(the U-Net's backbone and head), issue 9.

Modes: ``off`` (eager), ``default`` (inductor: fused BatchNorm/ReLU and element-wise kernels,
forward and backward), ``max-autotune-no-cudagraphs``, and the CUDA-graph modes
``reduce-overhead`` / ``max-autotune``. ``nn.Module.compile`` compiles in place, so state dicts
keep their keys and checkpoints stay interchangeable with eager runs. Shapes are static
(``dynamic=False``): one graph per input shape and train/eval mode. The first step pays the
compilation (``bench perf`` reports it). :func:`uncompile_module` returns a module to eager calls,
for work whose shapes vary (predictions in batches of every size), where each new shape would
compile again.
"""
from __future__ import annotations

from typing import Literal, get_args

import torch
from torch import nn

CompileMode = Literal["off", "default", "max-autotune-no-cudagraphs", "reduce-overhead", "max-autotune"]
COMPILE_MODES: tuple[str, ...] = get_args(CompileMode)
#: ``segmentation.compile`` also takes ``auto`` (:func:`segmentation_compile_mode`)
SegCompileMode = Literal["auto", "off", "default", "max-autotune-no-cudagraphs", "reduce-overhead", "max-autotune"]


def triton_available() -> bool:
    """Whether inductor can generate GPU kernels here (Triton importable and a CUDA device it supports)."""
    try:
        from torch.utils._triton import has_triton
    except ImportError:          # the private helper moved: look for the package itself
        import importlib.util

        return importlib.util.find_spec("triton") is not None
    return has_triton()


def segmentation_compile_mode(mode: str, model_kind: str, device: "torch.device | str") -> str:
    """The mode ``segmentation.compile`` stands for: ``auto`` is ``default`` for the MoSE U-Net on CUDA
    where Triton is available, and ``off`` otherwise (a CUDA host without Triton trains eager instead
    of failing at its first step); any other value is itself.

    Measured with ``bench perf seg --profile quick`` (batch 16, 320x208 canvas), NVIDIA H200,
    2026-11-27: MoSE 111.4 -> 67.0 ms a step compiled (its K x S fusion head is element-wise and
    memory bound, which inductor fuses), the first step 67 s; the single decoder 32.0 -> 36.0 ms
    (slower). On 2 CPU cores (smoke) MoSE 1043 -> 559 ms but the compilation (31 s, and again for the
    eval graphs) outweighs what a smoke training saves, so ``auto`` leaves the CPU eager.
    """
    if mode != "auto":
        return mode
    if model_kind != "mose" or torch.device(device).type != "cuda":
        return "off"
    return "default" if triton_available() else "off"


def compile_module(module: nn.Module, mode: str) -> None:
    """Compile `module` in place with `mode` (module docstring); ``off`` leaves it eager."""
    if mode == "off":
        return
    module.compile(mode=None if mode == "default" else mode, dynamic=False)


def uncompile_module(module: nn.Module) -> None:
    """Undo :func:`compile_module`: ``nn.Module.compile`` keeps the compiled call in
    ``_compiled_call_impl`` (PyTorch has no public inverse), and without it the module calls its eager
    ``forward``. The weights are shared, so nothing else changes."""
    if getattr(module, "_compiled_call_impl", None) is not None:
        module._compiled_call_impl = None


__all__ = ["COMPILE_MODES", "CompileMode", "SegCompileMode", "compile_module", "segmentation_compile_mode",
           "triton_available", "uncompile_module"]
