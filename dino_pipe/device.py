"""The device a piece of work runs on, in one vocabulary.

Users type ``--device auto|cpu|cuda`` (``gpu``, which ``verify`` and ``bench loader`` took before, still
means ``cuda``). :func:`resolve_device` turns that once into a :data:`Device`, ``"cpu"`` or ``"cuda"``;
everything below the command line speaks only that, and each library's own spelling is derived from it
in one place: :func:`dali_backend` (where DALI's operators run), :func:`dali_decoder` (DALI's image
decoder: ``"mixed"`` is nvJPEG), :func:`torch_device`.

Imports nothing heavy: torch is imported only by :func:`torch_device` and :func:`cuda_available`.
"""

from __future__ import annotations

from typing import Callable, Literal, get_args

from dino_pipe.errors import UserError

Device = Literal["cpu", "cuda"]
"""Where work runs, once decided."""

DeviceChoice = Literal["auto", "cpu", "cuda"]
"""What a user may ask for: ``auto`` is ``cuda`` when a CUDA device is visible, else ``cpu``."""

DEVICE_CHOICES: tuple[str, ...] = get_args(DeviceChoice)
DEVICE_METAVAR = "[" + "|".join(DEVICE_CHOICES) + "]"
_ALIASES = {"gpu": "cuda"}  # the older spelling of verify / bench loader


def cuda_available() -> bool:
    """A CUDA device is visible to torch."""
    import torch

    return torch.cuda.is_available()


def device_choice(name: str, flag: str = "--device") -> DeviceChoice:
    """``name`` as a user's choice (``gpu`` read as ``cuda``), checked without looking for CUDA; else one
    :class:`UserError` line naming ``flag``."""
    wanted = _ALIASES.get(name, name)
    if wanted not in DEVICE_CHOICES:
        raise UserError(f"{flag} {name}: use auto, cpu or cuda")
    return wanted  # type: ignore[return-value]


def resolve_device(name: str, flag: str = "--device", *, has_cuda: Callable[[], bool] = cuda_available) -> Device:
    """``auto|cpu|cuda`` (or ``gpu``) -> ``"cpu"`` or ``"cuda"``; an unknown name, or ``cuda`` where no CUDA
    device is visible, is one :class:`UserError` line naming ``flag``.

    ``has_cuda`` asks whether a CUDA device is visible (torch by default; ``verify`` asks DALI, so that it
    never imports torch)."""
    wanted = device_choice(name, flag)
    if wanted == "auto":
        return "cuda" if has_cuda() else "cpu"
    if wanted == "cuda" and not has_cuda():
        raise UserError(f"{flag} {name}: no CUDA device is visible here; use {flag} cpu")
    return wanted


def check_device(device: str) -> Device:
    """``device`` as code below the command line passes it: ``"cpu"`` or ``"cuda"``, else a UserError."""
    if device not in get_args(Device):
        raise UserError(f"device {device!r} is not one of cpu, cuda")
    return device  # type: ignore[return-value]


def dali_backend(device: Device) -> Literal["cpu", "gpu"]:
    """Where DALI runs its operators for ``device`` (DALI's ``device=`` of an operator)."""
    return "gpu" if check_device(device) == "cuda" else "cpu"


def dali_decoder(device: Device) -> Literal["cpu", "mixed"]:
    """DALI's image decoder backend for ``device``: ``"mixed"`` (nvJPEG, output on the GPU) or ``"cpu"``."""
    return "mixed" if check_device(device) == "cuda" else "cpu"


def torch_device(device: Device, index: int = 0):
    """The ``torch.device`` for ``device``: ``cuda:index``, or the CPU."""
    import torch

    return torch.device("cuda", index) if check_device(device) == "cuda" else torch.device("cpu")
