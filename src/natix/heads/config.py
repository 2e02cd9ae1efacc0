"""What a head is, how it is fitted, and what a fit returns; torch-free.

Two engines fit heads from cached features:

- **view-linear** heads (a linear head on the global view, the view mean, the max or the top-k
  mean of per-view logits, softmax policy) are fitted in numpy (`natix.heads.linear`) by
  full-batch L-BFGS, every seed, regularisation value and cross-fitting fold of an arm at once,
  the regularisation chosen on ``val_select``. torch is never imported.
- every other head (MLP heads, attention aggregators, the gate policy, view embedding or view
  dropout) is trained in torch (`natix.heads.train`) with mini-batch AdamW, all seeds of an arm
  sharing each batch, each seed stopping early on its own.

Both return :class:`FittedHead` objects whose ``state`` is the `ViewModel` state dict, so a run,
a bundle and the Gatekeeper read one format.
"""

from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass, field

import numpy as np

from natix.errors import ConfigError
from natix.heads.registry import AGGREGATORS, BUILTIN_AGGREGATORS, BUILTIN_HEADS, HEADS, ensure_builtins

POLICIES = ("softmax", "gate")
STOP_METRICS = ("nll", "mcc")
OPTIMIZERS = ("auto", "lbfgs", "adamw")
VIEW_LINEAR_AGGS = ("global", "mean", "max", "topk")
DEFAULT_L2 = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)
PRECISIONS = ("auto", "fp32", "bf16")
# HeadConfig fields that are constructor arguments: each head or aggregator gets those it names.
HEAD_OPTIONS = ("hidden", "depth", "dropout", "norm")
AGG_OPTIONS = ("k", "attn_hidden")


def _known(name: str, builtin: tuple[str, ...], registry) -> bool:
    """Built-in names are checked without importing torch; plugins after loading the registry."""
    if name in builtin:
        return True
    ensure_builtins()
    return name in registry


@dataclass(frozen=True)
class HeadConfig:
    """What the model is: head, aggregator, policy and their hyperparameters."""

    head: str = "linear"
    agg: str = "mean"
    policy: str = "softmax"
    hidden: int = 256  # mlp width
    depth: int = 1  # mlp hidden layers
    dropout: float = 0.1
    norm: str = "layer"
    k: int = 2  # topk
    attn_hidden: int = 128
    view_embedding: bool = False
    view_dropout: float = 0.0  # training-time probability of hiding a view (the global view always stays)
    coverage: float = 0.8  # gate: target coverage c
    gate_lambda: float = 32.0  # gate: coverage penalty λ
    gate_alpha: float = 0.5  # gate: weight of the selective loss against the auxiliary CE

    def __post_init__(self):
        if not _known(self.head, BUILTIN_HEADS, HEADS):
            raise ConfigError(f"unknown head '{self.head}': pass one of {', '.join(HEADS.names())}")
        if not _known(self.agg, BUILTIN_AGGREGATORS, AGGREGATORS):
            raise ConfigError(f"unknown aggregator '{self.agg}': pass one of {', '.join(AGGREGATORS.names())}")
        if self.policy not in POLICIES:
            raise ConfigError(f"unknown policy '{self.policy}': pass one of {', '.join(POLICIES)}")
        if not 0 <= self.view_dropout < 1:
            raise ConfigError(f"view dropout must be in [0, 1), got {self.view_dropout}")
        if not 0 < self.coverage <= 1:
            raise ConfigError(f"gate coverage must be in (0, 1], got {self.coverage}")
        if self.norm not in ("layer", "none"):
            raise ConfigError(f"unknown norm '{self.norm}': pass layer or none")
        if self.hidden < 1 or self.depth < 0 or self.attn_hidden < 1 or self.k < 1:
            raise ConfigError(f"hidden, attn hidden and k must be >= 1 and depth >= 0, got hidden={self.hidden}, "
                              f"attn_hidden={self.attn_hidden}, k={self.k}, depth={self.depth}")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        if not 0 <= self.gate_alpha <= 1:
            raise ConfigError(f"gate alpha must be in [0, 1], got {self.gate_alpha}")
        if not (np.isfinite(self.gate_lambda) and self.gate_lambda >= 0):
            raise ConfigError(f"gate lambda must be a finite number >= 0, got {self.gate_lambda}")

    def check_views(self, n_views: int) -> None:
        """Refuse an aggregator that pools more views than the features have (topk with k > V)."""
        if self.k > n_views and self.agg_takes_k:
            raise ConfigError(f"--k {self.k} is more than the {n_views} views of the features: pass --k <= {n_views}")

    @property
    def agg_takes_k(self) -> bool:
        """Whether the aggregator reads `k` (built-in topk without importing torch; a plugin by its constructor)."""
        if self.agg in BUILTIN_AGGREGATORS:
            return self.agg == "topk"
        return "k" in self.agg_kwargs()

    def build(self, dim: int, n_views: int):
        """The torch `ViewModel` of this config."""
        from natix.heads.modules import ViewModel

        return ViewModel(dim=dim, n_views=n_views, head=self.head, agg=self.agg, policy=self.policy,
                         view_embedding=self.view_embedding,
                         head_kwargs=self.head_kwargs(), agg_kwargs=self.agg_kwargs())

    def head_kwargs(self) -> dict:
        """The hyperparameters of this config that the head's constructor takes (a linear head: none)."""
        ensure_builtins()
        return HEADS.supported(self.head, {k: getattr(self, k) for k in HEAD_OPTIONS})

    def agg_kwargs(self) -> dict:
        """The hyperparameters of this config that the aggregator's constructor takes."""
        ensure_builtins()
        return AGGREGATORS.supported(self.agg, {k: getattr(self, k) for k in AGG_OPTIONS})

    @property
    def name(self) -> str:
        return f"{self.head}-{self.agg}-{self.policy}"

    @property
    def view_linear(self) -> bool:
        """A linear head whose image logit is a fixed pooling of per-view logits: fitted in numpy."""
        return (self.head == "linear" and self.policy == "softmax" and self.agg in VIEW_LINEAR_AGGS
                and not self.view_embedding and self.view_dropout == 0)

    @property
    def pooled(self) -> bool:
        """Trainable on pooled rows ``[N, 1, D]``: global or mean pooling, nothing per view."""
        return self.agg in ("global", "mean") and not self.view_embedding and self.view_dropout == 0


@dataclass(frozen=True)
class TrainConfig:
    """How the model is fitted. `threads` and `device` change speed only."""

    optimizer: str = "auto"  # auto: lbfgs for view-linear heads, adamw otherwise
    l2: tuple[float, ...] = DEFAULT_L2  # lbfgs: L2 penalties tried, the best on val_select kept
    max_iter: int = 300  # lbfgs iterations
    lr: float | None = None  # adamw; None: 1e-2 for linear heads, 1e-3 for the others
    weight_decay: float = 1e-4  # adamw
    batch_size: int = 256  # adamw; 0 = full batch
    max_epochs: int = 100  # adamw
    patience: int | None = None  # without improvement on val_select; None: 2 epochs (adamw), 8 iterations (lbfgs)
    eval_every: int = 2  # lbfgs: iterations between checks on val_select
    stop_metric: str = "nll"
    class_weights: bool = False  # weight the classes to equal total weight
    seed: int = 0  # initialisation (and, for adamw, batch order)
    device: str = "cpu"
    threads: int = 0  # torch/BLAS threads; 0 = every core this process may use
    precision: str = "auto"  # adamw training forward: bf16 autocast where matmuls are native bf16, else fp32

    def __post_init__(self):
        if self.stop_metric not in STOP_METRICS:
            raise ConfigError(f"unknown stop metric '{self.stop_metric}': pass one of {', '.join(STOP_METRICS)}")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"unknown optimizer '{self.optimizer}': pass one of {', '.join(OPTIMIZERS)}")
        check_device(self.device)
        if self.batch_size < 0 or self.max_epochs < 1 or self.max_iter < 1 or self.eval_every < 1:
            raise ConfigError("batch size must be >= 0, and max epochs, max iter and eval every >= 1")
        if self.lr is not None and not (np.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"lr must be a finite number > 0, got {self.lr}")
        if self.patience is not None and self.patience < 1:
            raise ConfigError(f"patience must be >= 1, got {self.patience}")
        if not (np.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ConfigError(f"weight decay must be a finite number >= 0, got {self.weight_decay}")
        l2 = tuple(float(v) for v in self.l2)
        if not l2 or any(not np.isfinite(v) or v < 0 for v in l2):
            raise ConfigError(f"l2 must be one or more finite values >= 0, got {self.l2}")
        object.__setattr__(self, "l2", l2)
        if self.precision not in PRECISIONS:
            raise ConfigError(f"unknown precision '{self.precision}': pass one of {', '.join(PRECISIONS)}")
        if self.threads < 0:
            raise ConfigError(f"threads must be >= 0 (0 = all cores), got {self.threads}")

    def engine(self, head: HeadConfig) -> str:
        """``"lbfgs"`` (numpy, view-linear heads) or ``"adamw"`` (torch)."""
        if self.optimizer == "lbfgs" and not head.view_linear:
            raise ConfigError(f"--optimizer lbfgs fits linear heads with a global, mean, max or topk aggregator and "
                              f"the softmax policy (no view embedding or dropout); {head.name} needs --optimizer "
                              "adamw or auto")
        if self.optimizer == "auto":
            return "lbfgs" if head.view_linear else "adamw"
        return self.optimizer

    @property
    def n_threads(self) -> int:
        """The thread count a fit uses: `threads`, or every core this process may use."""
        return self.threads or available_cores()

    def adamw_lr(self, head: HeadConfig) -> float:
        """The AdamW learning rate: `lr`, or by head (a linear head needs larger steps to move in few epochs)."""
        if self.lr is not None:
            return self.lr
        return 1e-2 if head.head == "linear" else 1e-3

    def patience_for(self, engine: str) -> int:
        """Epochs (adamw) or iterations (lbfgs) without improvement before a member stops."""
        if self.patience is not None:
            return self.patience
        return 8 if engine == "lbfgs" else 2

    def autocast_dtype(self):
        """The torch dtype the AdamW engine trains under (None: fp32). Predictions are always fp32."""
        import torch

        if self.precision == "fp32":
            return None
        if self.precision == "bf16":
            return torch.bfloat16
        if torch.device(self.device).type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
        return torch.bfloat16 if cpu_has_native_bf16() else None


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices natively (AVX512-BF16 or AMX), per /proc/cpuinfo.

    Elsewhere bf16 matmuls are emulated and slower than fp32, so "auto" stays at fp32.
    """
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False


def check_device(device: str) -> None:
    """A one-line ConfigError unless `device` is cpu or a visible CUDA device (torch only for non-cpu)."""
    if device == "cpu":
        return
    import torch

    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ConfigError(f"unknown device '{device}': pass cpu or cuda[:N]") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {device} was asked for but no CUDA GPU is visible: pass --device cpu")


def available_cores() -> int:
    """Cores this process may run on."""
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except AttributeError:  # macOS
        return max(os.cpu_count() or 1, 1)


@contextlib.contextmanager
def limit_threads(threads: int = 0):
    """Cap BLAS (numpy) and, if loaded, torch intra-op threads at `threads` (0 = every available core).

    Tier 2 runs many small operations: on a shared machine an unset count spins threads against
    each other's load. Callers running J processes pass ``cores // J``.
    """
    from threadpoolctl import threadpool_limits

    n = threads or available_cores()
    torch = sys.modules.get("torch")
    old = torch.get_num_threads() if torch is not None else None
    if torch is not None:
        torch.set_num_threads(n)
    try:
        with threadpool_limits(limits=n):
            yield n
    finally:
        if torch is not None:
            torch.set_num_threads(old)


@dataclass
class FittedHead:
    """A fitted head: its `ViewModel` state dict (numpy), its configs and its training history."""

    head: HeadConfig
    train: TrainConfig
    state: dict[str, np.ndarray]
    history: dict = field(default_factory=dict)

    @property
    def dim(self) -> int:
        return int(self.state["mu"].shape[0])

    def predict(self, X: np.ndarray, *, view_logits: bool = True) -> dict[str, np.ndarray]:
        """Outputs for ``X [N, V, D]`` (any float dtype): logit, prob, view_logits (+ attention, gate, aux_logit).

        `view_logits=False` lets torch heads whose aggregator does not need per-view logits skip
        them (scoring only); view-linear heads compute them anyway.
        """
        if self.head.view_linear:
            from natix.heads.linear import predict_view_linear

            return predict_view_linear(self.state, X, agg=self.head.agg, k=self.head.k,
                                       threads=self.train.n_threads)
        from natix.heads.train import predict

        return predict(self.module(X.shape[1]), X, device=self.train.device, view_logits=view_logits)

    def module(self, n_views: int):
        """The torch `ViewModel` with this state (imports torch)."""
        import torch

        model = self.head.build(self.dim, n_views)
        model.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in self.state.items()})
        return model.eval()
