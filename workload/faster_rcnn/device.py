"""The device side: which device and backend, synchronisation, memory statistics, precision.

`cuda` covers NVIDIA and MetaX (whose wheel exposes the torch.cuda API). Other accelerator types
(xpu, npu, musa, mlu, ...) are reached through `torch.<type>` when their wheel registers it.
"""

from __future__ import annotations

import contextlib
import platform
from typing import Any, Callable, ContextManager, Dict, List, Optional

import torch

from .errors import DeviceError
from .half import LossScale, MasterWeights


def _module(device_type: str) -> Any:
    return None if device_type == "cpu" else getattr(torch, device_type, None)


def choose_device(requested: Optional[str], local_rank: int) -> torch.device:
    """`auto`: cuda when available, else cpu. An accelerator type gets index LOCAL_RANK."""
    name = (requested or "auto").strip().lower()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise DeviceError(
            f"--device {requested}: not a device torch knows", "use auto, cpu or cuda"
        ) from None
    if device.type == "cpu":
        return torch.device("cpu")
    module = _module(device.type)
    if module is None or not module.is_available():
        raise DeviceError(
            f"--device {requested}: no {device.type} device is available to this process",
            "check the container's devices and *_VISIBLE_DEVICES, or use --device cpu",
        )
    index = device.index if device.index is not None else local_rank
    count = module.device_count()
    if index >= count:
        raise DeviceError(
            f"LOCAL_RANK {local_rank} needs {device.type} device {index} "
            f"but only {count} are visible",
            f"start at most {count} processes per node (--nproc-per-node)",
        )
    device = torch.device(device.type, index)
    if hasattr(module, "set_device"):
        module.set_device(device)
    return device


def choose_backend(requested: Optional[str], device: torch.device) -> Optional[str]:
    """nccl on cuda, gloo on the CPU; other devices: torch's default for the device (None)."""
    if requested and requested.lower() != "auto":
        return requested.lower()
    return {"cuda": "nccl", "cpu": "gloo"}.get(device.type)


def _cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo), else what platform knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


class DeviceOps:
    """Synchronisation and statistics for one device; no-ops on the CPU."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._module = _module(device.type)

    def synchronize(self) -> None:
        if self._module is not None and hasattr(self._module, "synchronize"):
            self._module.synchronize(self.device)

    def _call(self, name: str, *args: Any) -> Any:
        fn = getattr(self._module, name, None) if self._module is not None else None
        return fn(*args) if fn is not None else None

    def reset_peak_memory(self) -> None:
        self._call("reset_peak_memory_stats", self.device)

    def name(self) -> str:
        if self._module is None:
            return _cpu_model()
        return str(self._call("get_device_name", self.device) or self.device.type)

    def count(self) -> int:
        if self._module is None:
            return 1
        return int(self._call("device_count") or 1)

    def total_memory(self) -> Optional[int]:
        props = self._call("get_device_properties", self.device)
        total = getattr(props, "total_memory", None)
        return int(total) if total is not None else None

    def memory(self) -> Dict[str, Optional[int]]:
        allocated = self._call("max_memory_allocated", self.device)
        reserved = self._call("max_memory_reserved", self.device)
        return {
            "peak_allocated_bytes": int(allocated) if allocated is not None else None,
            "peak_reserved_bytes": int(reserved) if reserved is not None else None,
            "total_bytes": self.total_memory(),
        }


class Precision:
    """fp32: plain. amp: autocast (float16 on accelerators with a GradScaler, bfloat16 on the CPU).
    fp16: model and inputs in float16, fp32 master weights in the optimizer and a dynamic loss
    scale (half.py); accelerators only. Every precision post-processes detections in fp32
    (model.py)."""

    def __init__(self, name: str, device: torch.device, loss_scale: float) -> None:
        self.name = name
        self.device = device
        self.scaler: Any = None
        self.autocast_dtype: Optional[torch.dtype] = None
        self.half = False
        self.loss_scale: Optional[LossScale] = None  # fp16's
        self.masters: Optional[MasterWeights] = None  # fp16's, once the model is prepared
        self._last_scale = 0.0  # the GradScaler's scale after the previous step
        if name == "amp":
            self.autocast_dtype = torch.bfloat16 if device.type == "cpu" else torch.float16
            if device.type != "cpu":
                self.use_scaler(_grad_scaler(device.type))
        elif name == "fp16":
            self.half = True
            self.loss_scale = LossScale(loss_scale)
        elif name != "fp32":
            raise DeviceError(f"unknown precision {name!r}", "use fp32, amp or fp16")

    def check_device(self) -> None:
        """fp16 runs on accelerators only: a CPU's half kernels are slow and incomplete."""
        if self.half and self.device.type == "cpu":
            raise DeviceError(
                "--precision fp16 needs an accelerator, this process runs on the CPU",
                "use --precision amp (bfloat16 autocast) or fp32 on the CPU",
            )

    def use_scaler(self, scaler: Any) -> None:
        """Loss scaling with this GradScaler (amp on an accelerator; tests on the CPU)."""
        self.scaler = scaler
        self._last_scale = float(scaler.get_scale()) if scaler is not None else 0.0

    def current_scale(self) -> Optional[float]:
        """The loss scale the next step uses; None when the loss is not scaled."""
        if self.loss_scale is not None:
            return self.loss_scale.scale
        return float(self.scaler.get_scale()) if self.scaler is not None else None

    def autocast(self) -> ContextManager[Any]:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        """fp16: the model in float16 and the fp32 copies of its trainable weights."""
        if self.half:
            fp32 = [p.detach().clone() for p in model.parameters() if p.requires_grad]
            model = model.half()
            params = [p for p in model.parameters() if p.requires_grad]
            self.masters = MasterWeights(params, fp32)
        return model

    def optimizer_params(self, model: torch.nn.Module) -> List[torch.nn.Parameter]:
        """What the optimizer steps: the prepared model's trainable parameters, or under fp16
        their fp32 master copies."""
        if self.masters is not None:
            return list(self.masters.masters)
        return [p for p in model.parameters() if p.requires_grad]

    def prepare_images(self, images: List[torch.Tensor]) -> List[torch.Tensor]:
        return [im.half() for im in images] if self.half else images

    def backward_and_step(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> bool:
        """Backward and optimizer step; False when the step was skipped because a gradient was
        inf or NaN (fp16's dynamic scale, or amp's GradScaler; both then halve their scale)."""
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(optimizer)  # skips the step when a gradient is inf or NaN ...
            self.scaler.update()  # ... and then lowers the scale: that is how a skip shows
            scale = float(self.scaler.get_scale())
            skipped = scale < self._last_scale
            self._last_scale = scale
            return not skipped
        if self.loss_scale is None:
            loss.backward()
            optimizer.step()
            return True
        if self.masters is None:
            raise RuntimeError("fp16: prepare_model() must run before training")
        (loss.float() * self.loss_scale.scale).backward()
        return self.masters.step(optimizer, self.loss_scale)


def _grad_scaler(device_type: str) -> Any:
    amp_scaler: Optional[Callable[..., Any]] = getattr(
        getattr(torch, "amp", None), "GradScaler", None
    )
    if amp_scaler is not None:
        try:
            return amp_scaler(device_type)
        except TypeError:  # torch 2.0-2.2: torch.amp.GradScaler does not exist or takes no device
            pass
    if device_type == "cuda":
        return torch.cuda.amp.GradScaler()
    return None
