"""Training steps whose forward and backward replay as CUDA graphs (train.py's default on one GPU).

On a GPU, a training step of these encoders is mostly kernel launches: a bert-base step of batch 16 holds about
2 ms of arithmetic, and eager PyTorch took about 48 ms a step on an H200, launching its forward and backward
kernels one by one from Python. A CUDA graph records those kernels once and replays them with one launch: on the
H200, 13 ms a step (benchmarks/gpu_check.py, 2026-11-27).

A graph is fixed to the shapes and addresses of its tensors, so:
- each batch is padded on the right to a bucket, its length rounded up to a multiple of `bucket` tokens, and one
  graph is recorded for each (rows, length) the batches take: a handful for NLI's sentences;
- the dense layers run on the padded batch, because packing's token count changes from batch to batch. That costs
  them the padding, which the replay repays many times over;
- each batch is copied into the graph's own input tensors before the replay.

torch.cuda.make_graphed_callables records the forward and the backward, so the loss and the gradients come back
through autograd as usual. train_step runs unchanged: gradient clipping, fp16's loss scaling and the fused AdamW
stay eager, a few launches each.
"""

import contextlib
import math
import warnings

import torch
import torch.nn.functional as F
from torch import nn

GRAPH_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "labels")  # the batch's tensors the loss reads
TOKEN_INPUTS = ("input_ids", "attention_mask", "token_type_ids")  # (rows, length): padded to the bucket


def pad_to_bucket(batch: dict, bucket: int, pad_token_id: int, max_length: int) -> dict:
    """The batch with its token tensors padded on the right to a multiple of `bucket` tokens (and to no more
    than `max_length`, unless it is longer already). Padding is masked, so the loss does not change."""
    length = batch["input_ids"].shape[1]
    target = max(length, min(math.ceil(length / bucket) * bucket, max_length))
    if target == length:
        return batch
    padded = dict(batch)
    for name in TOKEN_INPUTS:
        if batch.get(name) is not None:
            padded[name] = F.pad(batch[name], (0, target - length), value=pad_token_id if name == "input_ids" else 0)
    return padded


class LossOfTensors(nn.Module):
    """`loss_fn` called with its batch's tensors in a fixed order, as make_graphed_callables calls a module."""

    def __init__(self, loss_fn: nn.Module, names: tuple[str, ...], columns: int):
        super().__init__()
        self.loss_fn, self.names, self.columns = loss_fn, names, columns
        self.training = loss_fn.training  # the mode the graph is recorded in (its parts keep their own)

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        return self.loss_fn({**dict(zip(self.names, tensors)), "columns": self.columns})


def record_cuda_graphs(module: nn.Module, sample_tensors: tuple[torch.Tensor, ...]) -> nn.Module:
    # allow_unused_input: a parameter that takes no part in the loss (a frozen head, say) gets no gradient
    return torch.cuda.make_graphed_callables(module, sample_tensors, allow_unused_input=True)


class GraphedLoss:
    """Calls `loss_fn(batch)` as one recorded CUDA graph per batch shape (forward and backward), in place of the
    loss in train_step. `autocast_dtype` must be train_step's: the graph keeps the precision it was recorded in.

    Each graph holds its own activations' memory, so shapes are recorded only up to `max_graphs` of them, and while
    at least `min_free` of the GPU's memory is free; batches of further shapes run eagerly. A recording that fails
    (an operation a graph cannot hold, too little memory) is reported once with a warning, and the steps run
    eagerly from then on. `record` makes a graphed module from a module and sample inputs: CUDA graphs by default,
    which need the model on a GPU (the tests pass a stand-in that returns the module, to run the rest on the CPU).
    """

    def __init__(self, loss_fn: nn.Module, autocast_dtype: torch.dtype | None = None, bucket: int = 16,
                 max_graphs: int = 32, min_free: float = 0.25, record=record_cuda_graphs):
        self.device = next(loss_fn.parameters()).device
        if record is record_cuda_graphs and self.device.type != "cuda":
            raise ValueError(f"CUDA graphs need the model on a GPU; it is on {self.device}")
        if bucket < 1:
            raise ValueError(f"bucket must be at least 1 token, not {bucket}")
        self.loss_fn, self.autocast_dtype, self.bucket = loss_fn, autocast_dtype, bucket
        self.max_graphs, self.min_free, self.record = max_graphs, min_free, record
        self.graphs = {}  # (input names, shapes, dtypes, columns, training) -> graphed module
        self.failure = None  # the error of a recording that failed: no more are tried

    def __call__(self, batch: dict) -> torch.Tensor:
        config = self.loss_fn.model.encoder.config
        batch = pad_to_bucket(batch, self.bucket, config.pad_token_id, config.max_tokens)
        names = tuple(name for name in GRAPH_INPUTS if batch.get(name) is not None)
        tensors = tuple(batch[name] for name in names)
        key = (names, tuple(tuple(t.shape) for t in tensors), tuple(t.dtype for t in tensors), batch["columns"],
               self.loss_fn.training)
        if key not in self.graphs:
            if self.failure is not None or len(self.graphs) >= self.max_graphs or not self._memory_left():
                return self.loss_fn(batch)
            try:
                self.graphs[key] = self._record(LossOfTensors(self.loss_fn, names, batch["columns"]), tensors)
            except Exception as error:  # noqa: BLE001 - eager steps compute the same loss: warned, not fatal
                self.failure = error
                warnings.warn(f"a CUDA graph could not record the training step of shape "
                              f"{tuple(batch['input_ids'].shape)} ({type(error).__name__}: {error}); the steps of "
                              f"shapes not yet recorded run eagerly from now on")
                return self.loss_fn(batch)
        return self.graphs[key](*tensors)

    def _memory_left(self) -> bool:
        if self.device.type != "cuda":
            return True
        free, total = torch.cuda.mem_get_info(self.device)
        return free >= self.min_free * total

    def _record(self, module: nn.Module, tensors: tuple[torch.Tensor, ...]) -> nn.Module:
        encoder = self.loss_fn.model.encoder
        packing, encoder.packing = encoder.packing, False  # static shapes: the padded batch throughout
        encoder.capturable = True  # embedding gradients without a host sync (Encoder.lookup)
        # the recording runs the loss a few times first (dropout draws random numbers): the generators are put back
        devices = [self.device] if self.device.type == "cuda" else []
        # the recording's streams are the current GPU's: the model's, also when it is not cuda:0 (--device cuda:1)
        on_model_gpu = torch.cuda.device(self.device) if devices else contextlib.nullcontext()
        try:
            with on_model_gpu, torch.random.fork_rng(devices=devices), torch.autocast(
                    self.device.type, dtype=self.autocast_dtype or torch.float32,
                    enabled=self.autocast_dtype is not None, cache_enabled=False):
                return self.record(module, tensors)
        finally:
            encoder.packing, encoder.capturable = packing, False
