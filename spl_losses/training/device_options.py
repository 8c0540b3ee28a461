"""Speed options of the network that leave its parameters and results alone: channels-last memory format
and ``torch.compile`` (timm's ``--channels-last`` and ``--torchcompile``).

Compilation uses ``nn.Module.compile``, which compiles the module's call in place: its state dict
keeps its names (no ``_orig_mod.`` prefix), so checkpoints, the exported model and the hand-off
between phases are the same with and without it. Only calls of the module are compiled (training and
prediction); ``forward_features`` / ``forward_head`` called directly (pooled features) run eagerly.
"""
import torch
from torch import nn

__all__ = ["COMPILE_MODES", "apply_device_options", "contiguous_parameters"]

#: ``torch.compile`` modes.
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def apply_device_options(model: nn.Module, channels_last: bool = False, compile: bool = False,
                         compile_mode: str = "default") -> nn.Module:
    """Put ``model`` in channels-last memory format and/or compile its call, in place.

    Args:
        model: The network (a timm model, or a wrapper around one).
        channels_last: Convert 4-d parameters and buffers to ``torch.channels_last`` (feed it channels-last
            batches too: ``DeviceNormalize(..., channels_last=True)``).
        compile: Compile the module's call with ``torch.compile`` (on first use).
        compile_mode: The ``torch.compile`` mode (:data:`COMPILE_MODES`).

    Returns:
        ``model`` itself.
    """
    if compile_mode not in COMPILE_MODES:
        raise ValueError(f"compile mode must be one of {list(COMPILE_MODES)}, got {compile_mode!r}")
    if channels_last:
        model.to(memory_format=torch.channels_last)
    if compile:
        model.compile(mode=None if compile_mode == "default" else compile_mode)
    return model


def contiguous_parameters(model: nn.Module) -> nn.Module:
    """Back to the default (contiguous) memory format, in place: safetensors files (``timm.models.save_for_hf``)
    take contiguous tensors only.

    Args:
        model: The network.

    Returns:
        ``model`` itself.
    """
    return model.to(memory_format=torch.contiguous_format)
