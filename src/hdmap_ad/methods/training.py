"""What every method that *learns* shares: options, the held-out validation fold, a
deterministic training loop with early stopping, progress, and the checkpoint description.

A trained method's options dataclass inherits :class:`TrainOptions` (so ``epochs``, ``lr``
... sit flat in its params block beside its own options). The method subclasses
:class:`TrainedMethod` (its network: :meth:`~TrainedMethod.build`; its loss:
:meth:`~TrainedMethod.loss`) and its fitted model :class:`TrainedModel` (how the network's
output on standardised descriptors becomes scores: :meth:`~TrainedModel.standardised_scores`).
Fitting standardises the channels with the references' statistics, builds the network under
:func:`seeded` and runs :func:`train`; the model's ``state()`` is the network's state dict plus
those statistics (tensors), which :func:`hdmap_ad.methods.base.save_model` writes with
``torch.save`` as ``<sub>.pt`` and loads with ``weights_only=True``.

Validation never sees a test map: a seeded share of the sub-model's *own references*
(``val_fraction``) is held out of training; the epoch with the lowest validation loss is the
one kept, and training stops after ``patience`` epochs without improvement. With a single
reference (or ``val_fraction: 0``) nothing can be held out: every epoch trains and the last
is kept (the JSON says so).

CPU training is deterministic: initialisation and every shuffle come from the experiment
seed, and torch runs with ``use_deterministic_algorithms``; the thread count (which can change
float summation order) is recorded in the fit's model metadata (``threads``) and log, and with
the scores.

torch is imported inside functions: parsing params must not need it.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from abc import abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from hdmap_ad.errors import InputError
from hdmap_ad.methods.base import FitContext, FittedModel, Method, check_descriptors


@dataclass(frozen=True)
class TrainOptions:
    """Options of every trained method (inherited by its options dataclass)."""

    epochs: int = field(default=50, metadata={
        "min": 1, "max": 10_000, "doc": "training epochs at most (early stopping may end sooner)"})
    batch_size: int = field(default=8, metadata={
        "min": 1, "max": 1024, "doc": "maps per optimisation step"})
    lr: float = field(default=1e-3, metadata={"gt": 0.0, "doc": "Adam learning rate"})
    weight_decay: float = field(default=1e-5, metadata={
        "min": 0.0, "doc": "Adam weight decay"})
    val_fraction: float = field(default=0.2, metadata={
        "min": 0.0, "max": 0.5, "doc": "share of the sub-model's references held out for "
                                       "validation / early stopping (never test maps)"})
    patience: int = field(default=10, metadata={
        "min": 1, "max": 10_000,
        "doc": "epochs without a better validation loss before stopping"})


def split_references(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded ``(train, val)`` positions of ``n`` references: ``round(val_fraction * n)``
    held out (at least 1 when ``val_fraction > 0`` and ``n >= 2``; never all)."""
    n_val = 0
    if val_fraction > 0 and n >= 2:
        n_val = min(n - 1, max(1, int(round(val_fraction * n))))
    order = np.random.default_rng([seed, 7001]).permutation(n)
    return np.sort(order[n_val:]), np.sort(order[:n_val])


@contextlib.contextmanager
def seeded(seed: int, device: str = "cpu") -> Iterator[None]:
    """Deterministic torch for the block: ``manual_seed(seed)`` and deterministic algorithms
    (restored afterwards). On CUDA some ops used in training (bilinear upsampling's backward)
    have no deterministic kernel: there the flag only warns, and CUDA training is not
    bit-reproducible (CPU training is)."""
    import os

    import torch

    was = torch.are_deterministic_algorithms_enabled()
    was_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    if device != "cpu":  # cuBLAS needs a fixed workspace for deterministic matmuls
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=device != "cpu")
    torch.manual_seed(seed)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(was, warn_only=was_warn)


def to_tensor(desc: np.ndarray) -> Any:
    """``(N, H, W, D)`` float32 descriptors -> ``(N, D, H, W)`` torch tensor (channels first)."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(np.moveaxis(desc, -1, 1), dtype=np.float32))


@dataclass
class TrainResult:
    """The kept (best) weights and what happened."""

    state: dict[str, Any]
    history: dict[str, Any]


def _mean_loss(module: Any, loss_fn: Callable[[Any, Any], Any], x: Any,
               batch_size: int) -> float:
    import torch

    module.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(x), batch_size):
            batch = x[start : start + batch_size]
            total += float(loss_fn(module, batch)) * len(batch)
            count += len(batch)
    return total / max(count, 1)


def train(module: Any, loss_fn: Callable[[Any, Any], Any], data: Any, options: TrainOptions,
          seed: int, progress: bool = False, desc: str = "train",
          where: str = "method",
          make_optimizer: Callable[[Any], Any] | None = None,
          batch_sum: bool = False) -> TrainResult:
    """Train ``module`` on ``data`` (``(N, ...)`` tensor of one sub-model's references).

    ``loss_fn(module, batch) -> scalar tensor`` (mean over the batch). Adam on
    ``options.lr``/``weight_decay`` unless ``make_optimizer(parameters)`` gives another
    optimiser; each epoch visits the training references in a seeded
    order. ``batch_sum``: each step follows the loss summed over the batch (the mean times
    the batch's own size, so a partial last batch steps by its real size); the history
    still reports mean losses. The module is left holding the kept weights (the best
    validation epoch, or the last without validation).

    Returns:
        the kept state dict (a deep copy) and a JSON-ready history: ``epochs_run``,
        ``best_epoch``, ``best_val_loss``, ``final_val_loss``, ``final_train_loss``,
        ``n_train``, ``n_val``, ``stopped_early``, ``seconds``.
    """
    import torch
    from tqdm import tqdm

    n = len(data)
    tr, va = split_references(n, options.val_fraction, seed)
    x_tr, x_va = data[torch.from_numpy(tr).to(data.device)], data[
        torch.from_numpy(va).to(data.device)]
    opt = (make_optimizer(module.parameters()) if make_optimizer is not None else
           torch.optim.Adam(module.parameters(), lr=options.lr,
                            weight_decay=options.weight_decay))
    best_state = copy.deepcopy(module.state_dict())
    best_val, best_epoch, val_loss, train_loss = math.inf, 0, None, math.nan
    since_best, epoch = 0, 0
    t0 = time.perf_counter()
    bar = tqdm(total=options.epochs, unit="epoch", desc=desc, disable=not progress,
               mininterval=2.0)
    for epoch in range(1, options.epochs + 1):
        module.train()
        order = torch.from_numpy(np.random.default_rng([seed, epoch]).permutation(
            len(x_tr))).to(data.device)
        total = 0.0
        for start in range(0, len(order), options.batch_size):
            batch = x_tr[order[start : start + options.batch_size]]
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(module, batch)
            if not torch.isfinite(loss):
                raise InputError(f"{where}: training diverged (loss {float(loss)} at epoch "
                                 f"{epoch}); lower lr")
            (loss * len(batch) if batch_sum else loss).backward()
            opt.step()
            total += float(loss.detach()) * len(batch)
        train_loss = total / len(x_tr)
        if len(x_va):
            val_loss = _mean_loss(module, loss_fn, x_va, options.batch_size)
            if val_loss < best_val:
                best_val, best_epoch, since_best = val_loss, epoch, 0
                best_state = copy.deepcopy(module.state_dict())
            else:
                since_best += 1
        rate = epoch * len(x_tr) / max(time.perf_counter() - t0, 1e-9)
        bar.set_postfix(loss=f"{train_loss:.4g}",
                        val="-" if val_loss is None else f"{val_loss:.4g}",
                        maps_s=f"{rate:.0f}", refresh=False)
        bar.update(1)
        if len(x_va) and since_best >= options.patience:
            break
    bar.close()
    if not len(x_va):
        best_state, best_epoch = copy.deepcopy(module.state_dict()), epoch
    module.load_state_dict(best_state)
    module.eval()
    return TrainResult(best_state, {
        "epochs_run": epoch,
        "best_epoch": best_epoch,
        "best_val_loss": None if not len(x_va) else best_val,
        "final_val_loss": val_loss,
        "final_train_loss": train_loss,
        "n_train": int(len(x_tr)),
        "n_val": int(len(x_va)),
        "validation": "held-out references" if len(x_va) else
                      "none (one reference or val_fraction 0): the last epoch is kept",
        "stopped_early": bool(len(x_va) and epoch < options.epochs),
        "seconds": round(time.perf_counter() - t0, 3),
    })


def load_state(module: Any, state: dict[str, Any], where: str) -> None:
    """``module.load_state_dict(state)`` strictly; a mismatch is an ``InputError`` naming
    ``where`` (a checkpoint of another architecture or options)."""
    try:
        module.load_state_dict(state, strict=True)
    except (RuntimeError, KeyError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0:3]
        raise InputError(f"{where}: checkpoint does not fit the model "
                         f"({' '.join(first)})") from None
    module.eval()


def score_batches(fn: Callable[[Any], tuple[Any, Any]], desc: np.ndarray,
                  batch: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Run ``fn(tensor (b, D, H, W)) -> (image (b,), patch (b, H', W'))`` under ``no_grad``
    over ``desc`` ``(B, H, W, D)`` in chunks of ``batch`` maps; float32 numpy.

    A trained model scores each map on its own (eval mode: no batch statistics); chunks only
    bound memory."""
    import torch

    images, patches = [], []
    with torch.no_grad():
        for start in range(0, len(desc), batch):
            im, pa = fn(to_tensor(desc[start : start + batch]))
            images.append(im.float().cpu().numpy())
            patches.append(pa.float().cpu().numpy())
    return (np.concatenate(images).astype(np.float32),
            np.concatenate(patches).astype(np.float32))


def channel_stats(x: Any) -> tuple[Any, Any]:
    """Per-channel mean and standard deviation (floored at 1e-6) of ``(N, D, H, W)``, each
    ``(1, D, 1, 1)``: the references' statistics every trained method standardises with."""
    mean = x.mean(dim=(0, 2, 3), keepdim=True)
    std = x.std(dim=(0, 2, 3), keepdim=True, unbiased=False).clamp_min(1e-6)
    return mean, std


class TrainedModel(FittedModel):
    """A trained network (``module``) with the references' channel statistics (``mean``,
    ``std``: ``(1, D, 1, 1)`` tensors), its options and its training history."""

    def __init__(self, module: Any, mean: Any, std: Any, options: Any,
                 history: dict[str, Any], device: str = "cpu") -> None:
        self.module = module.to(device)
        self.mean, self.std = mean.cpu(), std.cpu()  # stored on the CPU, used on device
        self.options = options
        self.history = history
        self.device = device

    @abstractmethod
    def standardised_scores(self, x: Any) -> tuple[Any, Any]:
        """``(image (b,), patch (b, H, W))`` tensors for standardised ``x`` ``(b, D, H, W)``."""

    def score(self, desc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        mean, std = self.mean.to(self.device), self.std.to(self.device)
        return score_batches(
            lambda x: self.standardised_scores((x.to(self.device) - mean) / std),
            np.asarray(desc, dtype=np.float32))

    def state(self) -> tuple[dict[str, Any], dict[str, Any]]:
        state = {f"module.{k}": v.cpu() for k, v in self.module.state_dict().items()}
        state["norm.mean"], state["norm.std"] = self.mean, self.std
        return state, {"channels": int(self.mean.shape[1]), "training": self.history}

    def counts(self) -> dict[str, int]:
        return {"epochs_run": int(self.history.get("epochs_run", 0))}


class TrainedMethod(Method):
    """A method that trains a network per sub-model: subclasses give :meth:`build`,
    :meth:`loss` and ``model_class``; fitting and reloading are shared.

    ``standardise``: the network sees channels standardised with the references' statistics
    (False: the descriptors as they are; the stored statistics are then 0 and 1).
    """

    model_class: ClassVar[type[TrainedModel]]
    standardise: ClassVar[bool] = True
    batch_sum: ClassVar[bool] = False  # steps follow the batch-summed loss (see train)

    def optimizer(self, parameters: Any, options: Any) -> Any:
        """The training optimiser (default: Adam on ``lr`` / ``weight_decay``)."""
        import torch

        return torch.optim.Adam(parameters, lr=options.lr, weight_decay=options.weight_decay)

    @abstractmethod
    def build(self, channels: int, options: Any, ctx: FitContext) -> Any:
        """The untrained network for ``channels`` input channels."""

    @abstractmethod
    def loss(self, options: Any, ctx: FitContext) -> Callable[[Any, Any], Any]:
        """``loss(module, batch) -> scalar`` on standardised batches."""

    def fit(self, desc: np.ndarray, options: Any, ctx: FitContext) -> TrainedModel:
        desc = check_descriptors(desc, ctx.where)
        x = to_tensor(desc)
        if self.standardise:
            mean, std = channel_stats(x)
        else:
            import torch

            mean = torch.zeros((1, x.shape[1], 1, 1))
            std = torch.ones((1, x.shape[1], 1, 1))
        with seeded(ctx.seed, ctx.device):
            # built on the CPU (the same initialisation on every device), then moved
            module = self.build(desc.shape[-1], options, ctx).to(ctx.device)
            result = train(module, self.loss(options, ctx), ((x - mean) / std).to(ctx.device),
                           options, ctx.seed, progress=ctx.progress,
                           desc=f"{self.name} train", where=ctx.where,
                           make_optimizer=lambda params: self.optimizer(params, options),
                           batch_sum=self.batch_sum)
        return self.model_class(module, mean, std, options, result.history, ctx.device)

    def from_state(self, arrays: dict[str, Any], description: dict[str, Any], options: Any,
                   ctx: FitContext) -> TrainedModel:
        module = self.build(int(description["channels"]), options, ctx)
        load_state(module, {k[len("module."):]: v for k, v in arrays.items()
                            if k.startswith("module.")}, ctx.where)
        return self.model_class(module, arrays["norm.mean"], arrays["norm.std"], options,
                                description.get("training", {}), ctx.device)
