"""A CPU-only check of device placement: which tensors the package creates without naming a device, and how often it
reads tensor values back to the host.

On a machine without an accelerator every tensor is on the CPU, so a tensor created without ``device=`` works here
and breaks (or silently computes on the CPU) where the execution device is a GPU. `DeviceAudit` is a
`TorchFunctionMode` that watches every torch call made while it is active and records, by the line of this package
that made it:

* ``hidden_factories``: tensor factories (``torch.zeros``, ``arange``, ``tensor``, ``eye``, ``rand`` ...: the
  functions `torch.set_default_device` redirects) called without a ``device`` argument;
* ``host_reads``: reads of values to the host (``.item()``, ``.tolist()``, ``.numpy()``, ``.cpu()``, ``float(t)``,
  ``int(t)``, ``bool(t)``); each one waits for the GPU, so none may run once per token, sample or
  column of a hot loop.

A call is attributed to the nearest line outside torch: a factory inside ``nn.Linear(...)`` written in the package
counts against that line (the module's weights are created on the default device), one inside transformers or the
test does not count. Moving a tensor with ``.to(device)`` is not counted: here every device is the CPU, so a
transfer cannot be told from a no-op.
"""

from __future__ import annotations

import os
import sys
from collections import Counter

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._device import _device_constructors

import optimum_prune

PACKAGE = os.path.dirname(os.path.abspath(optimum_prune.__file__))
_TORCH = os.path.dirname(os.path.abspath(torch.__file__))
_HERE = os.path.abspath(__file__)

_HOST_READS = {
    torch.Tensor.item: "item",
    torch.Tensor.tolist: "tolist",
    torch.Tensor.numpy: "numpy",
    torch.Tensor.cpu: "cpu",
    torch.Tensor.__float__: "float",
    torch.Tensor.__int__: "int",
    torch.Tensor.__bool__: "bool",
    torch.Tensor.__index__: "index",
}


class DeviceAudit(TorchFunctionMode):
    """``with DeviceAudit() as audit: ...``; then ``audit.hidden_factories`` and ``audit.host_reads`` (Counters of
    ``"file.py:line function"`` -> calls, for lines of this package)."""

    def __init__(self) -> None:
        super().__init__()
        self.factories = _device_constructors()
        self.hidden_factories: Counter[str] = Counter()
        self.host_reads: Counter[str] = Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in self.factories and kwargs.get("device") is None:
            site = _package_site()
            if site is not None:
                self.hidden_factories[f"{site} torch.{func.__name__}"] += 1
        elif func in _HOST_READS:
            site = _package_site()
            if site is not None:
                self.host_reads[f"{site} {_HOST_READS[func]}"] += 1
        return func(*args, **kwargs)

    def reads_at(self, fragment: str) -> int:
        """Host reads made by package lines whose description contains `fragment` (e.g. a file or function)."""
        return sum(count for site, count in self.host_reads.items() if fragment in site)


def _package_site() -> str | None:
    """``"relative/file.py:line function"`` of the nearest caller outside torch and this file, if it is a line of
    the package; None when the call came from elsewhere (transformers, the test)."""
    frame = sys._getframe(2)
    while frame is not None:
        filename = os.path.abspath(frame.f_code.co_filename)
        if filename != _HERE and not filename.startswith(_TORCH):
            if filename.startswith(PACKAGE):
                return f"{os.path.relpath(filename, PACKAGE)}:{frame.f_lineno} {frame.f_code.co_name}"
            return None
        frame = frame.f_back
    return None
