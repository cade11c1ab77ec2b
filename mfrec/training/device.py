"""Pick the torch device a run trains on."""

from __future__ import annotations

import functools

import torch

from mfrec.errors import ConfigError


def resolve_device(spec: str = "auto", needs_sparse: bool = False) -> torch.device:
    """Turn a user's device string into an available ``torch.device``.

    ``auto`` prefers CUDA, then Apple's MPS, then the CPU. ``cpu``, ``cuda``, ``cuda:N``
    and ``mps`` are honoured exactly; asking for one that is not there is an error rather
    than a silent fallback, so a run never reports GPU numbers it did not produce.
    ``needs_sparse`` (the ALS solver: sparse CSR products) passes over MPS under ``auto``
    and refuses it when asked for, while torch's MPS backend cannot multiply CSR matrices.
    """
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available() and (not needs_sparse or sparse_products_work(torch.device("mps"))):
            return torch.device("mps")
        return torch.device("cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "mps":
        if not _mps_available():
            raise ConfigError("device 'mps' was requested but Apple MPS is not available here; use device=auto or cpu")
        if needs_sparse and not sparse_products_work(torch.device("mps")):
            raise ConfigError(f"solver 'als' needs sparse CSR matrix products, which torch {torch.__version__} "
                              f"does not support on MPS; use device=cpu (or auto), or solver=adam on MPS")
        return torch.device("mps")
    if spec == "cuda" or spec.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ConfigError(
                f"device {spec!r} was requested but CUDA is not available "
                f"(torch {torch.__version__}); use device=auto or cpu"
            )
        if spec == "cuda":
            return torch.device("cuda")
        index = spec.split(":", 1)[1]
        if not index.isdigit():
            raise ConfigError(f"device {spec!r} is malformed; expected cuda:N with N a GPU index")
        count = torch.cuda.device_count()
        if int(index) >= count:
            raise ConfigError(f"device {spec!r} was requested but only {count} CUDA device(s) exist")
        return torch.device(spec)
    raise ConfigError(f"unknown device {spec!r}; expected auto, cpu, cuda, cuda:N or mps")


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend and backend.is_available())


@functools.lru_cache(maxsize=None)
def sparse_products_work(device: torch.device) -> bool:
    """Whether a CSR matrix can be built on ``device`` and multiplied by a dense one there
    (tried once per device: support differs by backend and torch version)."""
    try:  # built and multiplied the way mfrec.training.csr.Csr does: int32 indices, a product into out=
        index = torch.tensor([0, 1], dtype=torch.int32, device=device)
        matrix = torch.sparse_csr_tensor(index, index[:1], torch.ones(1, device=device), (1, 1),
                                         check_invariants=True)
        out = torch.zeros(1, 2, device=device)
        torch.mm(matrix, torch.ones(1, 2, device=device), out=out)
        return bool((out == 1.0).all().item())
    except (NotImplementedError, RuntimeError, TypeError):
        return False
