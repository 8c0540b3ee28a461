"""Cache files of computed tensors (a backbone's features, a teacher's scores): one safetensors file each,
written atomically, with a SHA-256 of the tensor's bytes in its metadata so that a reader can tell a file
altered or truncated after it was written (and rebuild it) from a good one."""
import hashlib
import os
import socket
from typing import Dict

import torch

__all__ = ["tensor_sha256", "save_tensor_file"]


def tensor_sha256(tensor: torch.Tensor) -> str:
    """The SHA-256 of a tensor's bytes (on the CPU, contiguous), as hex.

    Args:
        tensor: Any tensor.
    """
    return hashlib.sha256(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes()).hexdigest()


def save_tensor_file(path: str, name: str, tensor: torch.Tensor, metadata: Dict[str, str]) -> str:
    """Write ``{name: tensor}`` to ``path`` with ``metadata`` and its ``sha256``: beside the target under a name
    unique on a shared disk (host and process), then renamed; the temporary is removed if anything fails.

    Args:
        path: The file.
        name: The tensor's name in the file.
        tensor: The tensor (saved contiguous, on the CPU).
        metadata: String metadata (a ``sha256`` key is added).

    Returns:
        ``path``.
    """
    from safetensors.torch import save_file

    tensor = tensor.detach().contiguous().cpu()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp-{socket.gethostname()}-{os.getpid()}"
    try:
        save_file({name: tensor}, tmp, metadata={**metadata, "sha256": tensor_sha256(tensor)})
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path
