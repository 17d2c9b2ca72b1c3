"""torch.fx support: the public ops are leaf functions of an FX trace, like torchvision's.

``torch.fx.wrap`` (applied where each op is defined) makes calls that go through the defining
module a leaf: the modules' forwards and ``roiops.roi_align(...)``. Code that imported the function
by name (``from roiops import roi_align``) is not patched by it, so the ops also record themselves
when they receive a Proxy; either way the graph holds one call_function node per op call.
"""

import inspect
from typing import Any, Callable, Tuple

import torch.fx


def has_proxy(*args: Any) -> bool:
    return next(_proxies(args), None) is not None


def record_call(fn: Callable, args: Tuple[Any, ...]) -> torch.fx.Proxy:
    """Adds ``fn(*args)`` to the graph being traced, as a leaf call, and returns its Proxy."""
    tracer = next(p for p in _proxies(args)).tracer
    # While torch.fx traces, the op's global name is patched to torch.fx's wrapper: record the op itself.
    return tracer.create_proxy("call_function", inspect.unwrap(fn), args, {})


def _proxies(args):
    for a in args:
        if isinstance(a, torch.fx.Proxy):
            yield a
        elif isinstance(a, (list, tuple)):
            yield from (b for b in a if isinstance(b, torch.fx.Proxy))
