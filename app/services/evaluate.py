"""Evaluating a stored loss on request: arrays in, loss (and d loss / d pred) out.

Arrays arrive as JSON lists or, for large batches, as base64 little-endian float32 strings
(JSON parsing of millions of numbers costs more than the loss itself). Points are evaluated
in chunks so a large batch never holds one huge activation tensor.
"""

from __future__ import annotations

import array
import base64
import binascii
import json
import math
import re
import threading
import time
import weakref
from collections import OrderedDict

import torch
from pydantic_core import from_json

from app.core.errors import Problem, invalid
from app.services.limits import exceeded
from ml3core.portable import LearnedLoss, mlp_loss

CHUNK = 65536
F32_MAX = float(torch.finfo(torch.float32).max)
_local = threading.local()
_params: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # module -> its weights dict


def params_of(module: LearnedLoss) -> dict:
    """``module.params``, built once per loaded module: the property builds a new dict on every
    call, a few microseconds of a small request's forward pass."""
    p = _params.get(module)
    if p is None:
        p = _params[module] = module.params
    return p


def torch_threads(n: int) -> None:
    """torch's thread count holds per OS thread: a request thread left at the default (all cores,
    spinning) makes a tiny forward pass 30x slower on a busy machine. Set it once per thread."""
    if getattr(_local, "threads", None) != n:
        torch.set_num_threads(n)
        _local.threads = n


class LossCache:
    """LRU of loaded losses keyed by (version id, sha256): a new version never hits a stale entry.

    An entry is served for ``max_age`` seconds, then loaded again: ``load`` re-reads the stored bundle
    and checks it against the row's sha256, so a version whose stored weights or spec were damaged
    after it was cached stops being served (a failed load leaves no entry)."""

    def __init__(self, size: int, max_age: float = 10.0):
        self.size, self.max_age, self.hits, self.misses = size, max_age, 0, 0
        self._items: OrderedDict = OrderedDict()  # key -> (module, loaded at)
        self._lock = threading.Lock()

    def get(self, key: tuple, load) -> LearnedLoss:
        now = time.monotonic()
        with self._lock:
            item = self._items.get(key)
            if item is not None and now - item[1] < self.max_age:
                self.hits += 1
                self._items.move_to_end(key)
                return item[0]
            self._items.pop(key, None)
        module = load()
        with self._lock:
            self.misses += 1
            self._items[key] = (module, now)
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return module


def to_tensor(value, loc: str, limit: int, shape: list[int] | None = None,
              limit_name: str = "max_eval_values") -> torch.Tensor:
    """A finite float32 tensor from a (nested) list, a number or a base64 float32 string; more
    than ``limit`` values is a 413 naming the setting ``limit_name``."""
    if isinstance(value, str):
        try:
            raw = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError) as e:
            raise invalid(loc, f"not base64: {e}") from None
        if len(raw) % 4:
            raise invalid(loc, "base64 data must hold float32 values (a multiple of 4 bytes)")
        if len(raw) // 4 > limit:
            raise exceeded(limit_name, 413, f"{loc}: {len(raw) // 4} values", limit, loc=loc)
        t = torch.frombuffer(bytearray(raw), dtype=torch.float32) if raw else torch.zeros(0)
        if shape is not None:
            if any(not isinstance(n, int) or n < 0 for n in shape) or t.numel() != math.prod(shape):
                raise invalid("shape", f"{shape} does not fit {t.numel()} values of {loc}")
            t = t.reshape(shape)
    else:
        if isinstance(value, list) and len(value) > limit:
            raise exceeded(limit_name, 413, f"{loc}: {len(value)} values", limit, loc=loc)
        t = _flat(value) if isinstance(value, list) and value else None
        if t is None:  # a scalar, nested rows, or items _flat would not take
            try:
                if isinstance(value, list) and len(value) > CHUNK:  # in pieces: the GIL is let go between them
                    t = torch.cat([torch.tensor(value[s:s + CHUNK], dtype=torch.float32)
                                   for s in range(0, len(value), CHUNK)])
                else:
                    t = torch.tensor(value, dtype=torch.float32)
            except (TypeError, ValueError, RuntimeError, OverflowError) as e:  # overflow: an int beyond a double
                raise invalid(loc, f"a number or a rectangular array of numbers ({e})") from None
    if t.numel() > limit:
        raise exceeded(limit_name, 413, f"{loc}: {t.numel()} values", limit, loc=loc)
    small = isinstance(value, list) and t.dim() == 1 and len(value) <= 64
    # a few: in Python, where 1e39 is finite but not a float32 (NaN fails the comparison too)
    if not (all(abs(v) <= F32_MAX for v in value) if small else bool(torch.isfinite(t).all())):
        raise invalid(loc, f"NaN, infinite or beyond float32 (|value| > {F32_MAX:.4g}) values")
    return t


def _flat(values: list) -> torch.Tensor | None:
    """A flat list of numbers as float32 through ``array("f")``: the same rounding as ``torch.tensor``
    (a C cast of each double) at 2-4x the speed, since nothing inspects each item's type and nesting.
    None for anything else (nested lists, strings, None), which ``torch.tensor`` parses or refuses
    with its own message. Converted a piece at a time, so the GIL is let go between pieces."""
    try:
        a = array.array("f")
        for s in range(0, len(values), CHUNK):
            a.fromlist(values[s:s + CHUNK])
    except (TypeError, OverflowError):  # an item that is no number, or an int beyond a double
        return None
    return torch.frombuffer(a, dtype=torch.float32)


def _number(text: str) -> float:
    return float(text)  # Python, not C: the parser calling it lets other threads (the event loop) run


def _integer(text: str) -> int:
    return int(text)  # an integer stays one (class indices): as _number, in Python so other threads run


PIECE = 1 << 20  # bytes of a number list parsed at once: milliseconds of holding the GIL
_ARRAY = re.compile(rb'"(pred|target|x|logits|labels)"\s*:\s*\[')


class _NotFlat(ValueError):
    pass


def parse_big_json(raw: bytes):
    """A big JSON body, parsed so that the thread doing it lets go of the GIL every few milliseconds:
    one C parse of the whole body holds it for seconds (millions of numbers), stalling every request.
    Flat number lists of pred, target, x, logits and labels are parsed piece by piece (the fast, usual
    case); any other body by the standard parser calling back into Python for each number (slower).
    Either way a number keeps its JSON type: integer labels are class indices, floats are targets."""
    try:
        return _parse_flat(raw)
    except ValueError:
        pass
    try:
        return json.loads(raw, parse_float=_number, parse_int=_integer)
    except (ValueError, RecursionError) as e:  # malformed, not UTF-8, or nested past the parser
        raise invalid("body", f"not a JSON document: {type(e).__name__}: {str(e)[:200]}") from None


def _parse_flat(raw: bytes) -> dict:
    """The document with each ``"pred": [numbers]`` (target, x) parsed in pieces; _NotFlat (or a
    ValueError) when the body is not that simple, for the general parser to decide."""
    arrays, rest, pos = {}, [], 0
    while (m := _ARRAY.search(raw, pos)) is not None:
        key, end = m.group(1).decode(), raw.find(b"]", m.end())
        if key in arrays or end < 0 or raw.find(b"[", m.end(), end) >= 0:  # repeated or nested
            raise _NotFlat(key)
        values, i = [], m.end()
        while i < end:
            j = end if end - i <= PIECE else raw.find(b",", i + PIECE, end)
            j = end if j < 0 else j
            values += from_json(b"[" + raw[i:j] + b"]")
            i = j + 1
        arrays[key] = values
        rest += [raw[pos:m.start()], b'"' + m.group(1) + b'": null']
        pos = end + 1
    if not arrays:
        raise _NotFlat("no arrays")
    doc = from_json(b"".join([*rest, raw[pos:]]))
    if not isinstance(doc, dict) or any(doc.get(k, ...) is not None for k in arrays):
        raise _NotFlat("keys")  # e.g. a key that only looked like "pred"
    return {**doc, **arrays}


def evaluate(module: LearnedLoss, pred: torch.Tensor, target: torch.Tensor, x: torch.Tensor | None,
             reduction: str = "mean", return_grad: bool = False, threads: int = 1):
    """(loss, grad): loss is a float (mean|sum) or per-point values (none); grad = d loss / d pred."""
    torch_threads(threads)
    arch = module.arch
    dim = arch.get("pred_dim", 1)
    if pred.shape != target.shape:
        raise invalid("target", f"shape {list(target.shape)} differs from pred {list(pred.shape)}")
    flat = pred.dim() == 1
    if pred.dim() == 0 or pred.dim() > 2 or (flat and dim != 1) or (not flat and pred.shape[1] != dim):
        want = "(N,) or (N, 1)" if dim == 1 else f"(N, {dim})"
        raise invalid("pred", f"shape {list(pred.shape)}; this loss takes {want}")
    if pred.shape[0] == 0:
        raise invalid("pred", "no points")
    p2, t2 = (pred.unsqueeze(1), target.unsqueeze(1)) if flat else (pred, target)
    n = p2.shape[0]
    if "x" in arch["inputs"]:
        xd = arch.get("x_dim", 1)
        if x is None:
            raise invalid("x", "required: this loss reads the inputs")
        if x.dim() == 1 and xd == 1:
            x = x[:, None]
        if list(x.shape) != [n, xd]:
            raise invalid("x", f"shape {list(x.shape)}; this loss takes ({n}, {xd})")
    else:
        x = None
    values, grads = [], []
    params = params_of(module)
    chunks = [(p2, t2, x)] if n <= CHUNK else [
        (p2[s:s + CHUNK], t2[s:s + CHUNK], None if x is None else x[s:s + CHUNK]) for s in range(0, n, CHUNK)]
    for p, t, xc in chunks:
        if return_grad:
            p = p.detach().clone().requires_grad_()
            with torch.enable_grad():
                v = mlp_loss(params, arch, p, t, xc, "none")
                (g,) = torch.autograd.grad(v.sum(), p)
            grads.append(g)
            values.append(v.detach())
        else:
            with torch.inference_mode():
                values.append(mlp_loss(params, arch, p, t, xc, "none"))
    v = values[0] if len(values) == 1 else torch.cat(values)
    g = None if not return_grad else grads[0] if len(grads) == 1 else torch.cat(grads)
    if reduction == "mean":
        loss, g = float(v.mean()), None if g is None else g / v.numel()
    elif reduction == "sum":
        loss = float(v.sum())
    else:
        loss = v
    check_finite(loss, g, "pred and target (and x)")
    if g is not None and flat:
        g = g[:, 0]
    return loss, g


def check_finite(loss, g, inputs: str) -> None:
    """A loss or gradient that overflowed float32 is a 422, never NaN or Infinity in the JSON."""
    finite = math.isfinite(loss) if isinstance(loss, float) else bool(torch.isfinite(loss).all())
    if not finite or (g is not None and not bool(torch.isfinite(g).all())):
        what = "its gradient" if finite else "the loss"
        raise Problem(422, "not_finite", f"{what} overflows float32 on these values (NaN or infinity is not "
                      f"JSON): scale {inputs} down")


# -- classification losses (forms ce_classwise, weighted_ce): logits and labels ---------------------
CLASSIFICATION_FORMS = ("ce_classwise", "weighted_ce")


def is_classification(module: LearnedLoss) -> bool:
    return module.arch.get("form") in CLASSIFICATION_FORMS


def labels_tensor(value, logits: torch.Tensor, limit: int) -> torch.Tensor:
    """Labels for (N, C) logits: a list of N class indices in [0, C), or (N, C) one-hot or soft targets
    (non-negative rows summing to 1) as nested lists or base64 float32 (of the logits' shape), as (N, C)
    float32 targets."""
    n, c = logits.shape
    if isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        if len(value) != n:
            raise invalid("labels", f"{len(value)} labels for {n} rows of logits")
        bad = next((v for v in value if not 0 <= v < c), None)
        if bad is not None:
            raise invalid("labels", f"class index {bad} outside [0, {c - 1}] for {c} classes")
        return torch.nn.functional.one_hot(torch.tensor(value, dtype=torch.int64), c).float()
    t = to_tensor(value, "labels", limit, [n, c] if isinstance(value, str) else None)  # base64: the logits' shape
    if list(t.shape) != [n, c]:
        raise invalid("labels", f"{n} class indices or an ({n}, {c}) array of targets, got shape {list(t.shape)}")
    if bool((t < 0).any()) or not torch.allclose(t.sum(-1), torch.ones(n), atol=1e-3):
        raise invalid("labels", "target rows must be non-negative and sum to 1 (one-hot or soft targets)")
    return t


def check_logits(logits: torch.Tensor) -> None:
    if logits.dim() != 2 or logits.shape[1] < 2:
        raise invalid("logits", f"shape {list(logits.shape)}; this loss takes (N, C) logits with C >= 2")
    if logits.shape[0] == 0:
        raise invalid("logits", "no rows")


def evaluate_classification(module: LearnedLoss, logits: torch.Tensor, targets: torch.Tensor,
                            reduction: str = "mean", return_grad: bool = False, threads: int = 1):
    """(loss, grad) of a classification loss: loss per example (none) or reduced; grad = d loss / d logits."""
    torch_threads(threads)
    params, arch = params_of(module), module.arch
    if return_grad:
        p = logits.detach().clone().requires_grad_()
        with torch.enable_grad():
            v = mlp_loss(params, arch, p, targets, None, "none")
            (g,) = torch.autograd.grad(v.sum(), p)
        v = v.detach()
    else:
        with torch.inference_mode():
            v = mlp_loss(params, arch, logits, targets, None, "none")
        g = None
    if reduction == "mean":
        loss, g = float(v.mean()), None if g is None else g / v.numel()
    else:
        loss = float(v.sum()) if reduction == "sum" else v
    check_finite(loss, g, "the logits")
    return loss, g
