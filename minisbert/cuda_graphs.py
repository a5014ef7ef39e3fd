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

GraphedLoss records the forward and the backward (torch.cuda.make_graphed_callables), so the loss and the
gradients come back through autograd as usual. train_step runs unchanged: gradient clipping, fp16's loss scaling
and the fused AdamW stay eager, a few launches each, with Python bookkeeping for each of the model's tensors (about
200 for bert-base) and the autograd engine's for each gradient. GraphedStep (train.py --graph-whole-step) records
the whole step instead: forward, backward, clipping, the finite test and AdamW, one replay per step, with the
learning rate and the step numbers in tensors filled before each replay. It needs bf16 or fp32 (fp16's loss
scaler decides on the host) and NonFiniteWatch's finite test on the device.
"""

import contextlib
import math
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from .training import train_step

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


class _ShapeGraphs:
    """What GraphedLoss and GraphedStep share: a graph per batch shape (the batch padded to a bucket), up to
    `max_graphs` of them and while at least `min_free` of the GPU's memory is free; a recording that fails (an
    operation a graph cannot hold, too little memory) is reported once with a warning, and from then on the steps
    of shapes not yet recorded run eagerly."""

    def __init__(self, loss_fn: nn.Module, autocast_dtype: torch.dtype | None, bucket: int, max_graphs: int,
                 min_free: float, record, default_record):
        self.device = next(loss_fn.parameters()).device
        if record is default_record and self.device.type != "cuda":
            raise ValueError(f"CUDA graphs need the model on a GPU; it is on {self.device}")
        if bucket < 1:
            raise ValueError(f"bucket must be at least 1 token, not {bucket}")
        self.loss_fn, self.autocast_dtype, self.bucket = loss_fn, autocast_dtype, bucket
        self.max_graphs, self.min_free, self.record = max_graphs, min_free, record
        self.graphs = {}  # (input names, shapes, dtypes, columns, training) -> graph
        self.failure = None  # the error of a recording that failed: no more are tried

    def _shape(self, batch: dict) -> tuple[dict, tuple[str, ...], tuple[torch.Tensor, ...], tuple]:
        """(the batch padded to the bucket, the names and tensors a graph takes, the key of its shape)"""
        model = self.loss_fn.model  # the tokenizer's padding id: Qwen3's config.json may name none
        batch = pad_to_bucket(batch, self.bucket, model.tokenizer.pad_token_id, model.encoder.config.max_tokens)
        names = tuple(name for name in GRAPH_INPUTS if batch.get(name) is not None)
        tensors = tuple(batch[name] for name in names)
        key = (names, tuple(tuple(t.shape) for t in tensors), tuple(t.dtype for t in tensors), batch["columns"],
               self.loss_fn.training)
        return batch, names, tensors, key

    def _may_record(self) -> bool:
        return self.failure is None and len(self.graphs) < self.max_graphs and self._memory_left()

    def _memory_left(self) -> bool:
        if self.device.type != "cuda":
            return True
        free, total = torch.cuda.mem_get_info(self.device)
        return free >= self.min_free * total

    def _failed(self, error: Exception, batch: dict) -> None:
        self.failure = error
        warnings.warn(f"a CUDA graph could not record the training step of shape {tuple(batch['input_ids'].shape)} "
                      f"({type(error).__name__}: {error}); the steps of shapes not yet recorded run eagerly from "
                      "now on")

    @contextlib.contextmanager
    def _recording(self):
        """Padded batches throughout (static shapes), embedding gradients without a host sync (Encoder.lookup), on
        the model's GPU (also when it is not cuda:0), and the random generators put back afterwards: the recording
        runs the step a few times first, and dropout draws random numbers."""
        encoder = self.loss_fn.model.encoder
        packing, encoder.packing = encoder.packing, False
        encoder.capturable = True
        devices = [self.device] if self.device.type == "cuda" else []
        on_model_gpu = torch.cuda.device(self.device) if devices else contextlib.nullcontext()
        try:
            with on_model_gpu, torch.random.fork_rng(devices=devices):
                yield
        finally:
            encoder.packing, encoder.capturable = packing, False

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=self.autocast_dtype or torch.float32,
                              enabled=self.autocast_dtype is not None, cache_enabled=False)


class GraphedLoss(_ShapeGraphs):
    """Calls `loss_fn(batch)` as one recorded CUDA graph per batch shape (forward and backward), in place of the
    loss in train_step. `autocast_dtype` must be train_step's: the graph keeps the precision it was recorded in.
    Shapes past `max_graphs`, first met while less than `min_free` of the GPU's memory is free, or after a failed
    recording run eagerly (see _ShapeGraphs). `record` makes a graphed module from a module and sample inputs: CUDA
    graphs by default, which need the model on a GPU (the tests pass a stand-in that returns the module, to run the
    rest on the CPU).
    """

    def __init__(self, loss_fn: nn.Module, autocast_dtype: torch.dtype | None = None, bucket: int = 16,
                 max_graphs: int = 32, min_free: float = 0.25, record=record_cuda_graphs):
        super().__init__(loss_fn, autocast_dtype, bucket, max_graphs, min_free, record, record_cuda_graphs)

    def __call__(self, batch: dict) -> torch.Tensor:
        batch, names, tensors, key = self._shape(batch)
        if key not in self.graphs:
            if not self._may_record():
                return self.loss_fn(batch)
            try:
                with self._recording(), self._autocast():
                    self.graphs[key] = self.record(LossOfTensors(self.loss_fn, names, batch["columns"]), tensors)
            except Exception as error:  # noqa: BLE001 - eager steps compute the same loss: warned, not fatal
                self._failed(error, batch)
                return self.loss_fn(batch)
        return self.graphs[key](*tensors)


def record_step_graph(body, warm_up, tensors: tuple[torch.Tensor, ...]):
    """A CUDA graph of `body(*tensors)`, recorded after three runs of `warm_up(*tensors)` on a side stream (as
    make_graphed_callables does: libraries set themselves up on first use, which a recording cannot hold). Returns a
    function that copies new tensors of the same shapes into the graph's inputs, replays it and returns the output
    it recorded (overwritten by the next replay)."""
    inputs = tuple(t.clone() for t in tensors)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            warm_up(*inputs)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        output = body(*inputs)

    def replay(*new: torch.Tensor) -> torch.Tensor:
        for into, tensor in zip(inputs, new):
            into.copy_(tensor)
        graph.replay()
        return output
    return replay


class GraphedStep(_ShapeGraphs):
    """train_step(loss_fn, optimizer, batch, lr, max_grad_norm, autocast_dtype, watch=watch) as one recorded CUDA graph
    per batch shape: forward, backward, clipping at `max_grad_norm`, the finite test and the fused AdamW update.
    `step(batch, lr)` returns the loss, as train_step does with a watch.

    What a replay cannot take from Python is held in tensors on the device: the learning rate, AdamW's step number
    and the watch's, filled before each replay, and the gradients, one tensor per parameter, zeroed and summed into by
    every graph. The host then advances the step counts it keeps (optimizer state, watch), so checkpoints and eager
    steps see what train_step would have left. The parameters are those that get a gradient (found by one eager
    forward and backward before the first recording, its random numbers put back); all must have taken the same
    number of steps. Steps that cannot replay (see _ShapeGraphs, or uneven step counts) run train_step eagerly.
    `record(body, warm_up, tensors)` records: CUDA graphs by default; the tests pass a stand-in that returns `body`.
    """

    def __init__(self, loss_fn: nn.Module, optimizer, watch, autocast_dtype: torch.dtype | None = None,
                 max_grad_norm: float = 1.0, bucket: int = 16, max_graphs: int = 32, min_free: float = 0.25,
                 record=record_step_graph):
        if autocast_dtype == torch.float16:
            raise ValueError("GraphedStep: fp16 needs a loss scaler, which decides on the host; use GraphedLoss")
        if watch is None or not hasattr(optimizer, "step_on_device"):
            raise ValueError("GraphedStep needs a NonFiniteWatch and minisbert's AdamW (its step_on_device)")
        super().__init__(loss_fn, autocast_dtype, bucket, max_graphs, min_free, record, record_step_graph)
        self.optimizer, self.watch, self.max_grad_norm = optimizer, watch, max_grad_norm
        self.lr = torch.zeros((), device=self.device)
        self.adam_step = torch.zeros((), device=self.device)  # AdamW's step number, this step included
        self.watch_step = torch.zeros((), dtype=torch.int64, device=self.device)
        self.params, self.grads = None, None  # found before the first recording
        self.uneven = False  # warned once: steps taken unevenly, so every step runs eagerly

    def step(self, batch: dict, lr: float) -> torch.Tensor:
        padded, names, tensors, key = self._shape(batch)
        if key not in self.graphs and self._may_record():
            try:
                self.graphs[key] = self._record(padded, names, tensors)
            except Exception as error:  # noqa: BLE001 - eager steps compute the same: warned, not fatal
                self._failed(error, padded)
        counts = {self.optimizer.state[p]["step"] for p in self.params} if self.params else set()
        if key not in self.graphs or len(counts) != 1:
            if key in self.graphs and not self.uneven:
                self.uneven = True
                warnings.warn(f"CUDA graphs: the parameters have taken different numbers of steps ({sorted(counts)}), "
                              "which one recorded update cannot follow; the steps run eagerly")
            return train_step(self.loss_fn, self.optimizer, batch, lr, self.max_grad_norm, self.autocast_dtype,
                              watch=self.watch)
        self.lr.fill_(lr)
        self.adam_step.fill_(counts.pop() + 1)
        self.watch_step.fill_(self.watch.step + 1)
        loss = self.graphs[key](*tensors).clone()
        for p in self.params:
            self.optimizer.state[p]["step"] += 1
        self.watch.step += 1
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return loss

    def _forward_backward(self, names: tuple[str, ...], tensors: tuple[torch.Tensor, ...], columns: int):
        with self._autocast():
            loss = self.loss_fn({**dict(zip(names, tensors)), "columns": columns})
        loss.backward()
        return loss.detach()

    def _record(self, batch: dict, names: tuple[str, ...], tensors: tuple[torch.Tensor, ...]):
        columns = batch["columns"]
        with self._recording():
            if self.params is None:  # which parameters get a gradient: they are the ones AdamW updates
                self.optimizer.zero_grad(set_to_none=True)
                self._forward_backward(names, tensors, columns)
                self.params = [p for group in self.optimizer.param_groups for p in group["params"]
                               if p.grad is not None]
                self.grads = [torch.zeros_like(p) for p in self.params]
                self.optimizer.add_state(self.params)
                self.optimizer.zero_grad(set_to_none=True)

            def warm_up(*inputs: torch.Tensor) -> None:
                with self._gradients_bound():
                    torch._foreach_zero_(self.grads)
                    self._forward_backward(names, inputs, columns)

            def body(*inputs: torch.Tensor) -> torch.Tensor:
                with self._gradients_bound():
                    torch._foreach_zero_(self.grads)
                    loss = self._forward_backward(names, inputs, columns)
                    norm = torch.nn.utils.clip_grad_norm_(self.params, self.max_grad_norm)
                    skip = self.watch.take(torch.isfinite(loss) & torch.isfinite(norm), self.watch_step)
                    self.optimizer.step_on_device(self.params, self.lr, self.adam_step, skip)
                return loss

            return self.record(body, warm_up, tensors)

    @contextlib.contextmanager
    def _gradients_bound(self):
        """The graphs' gradient tensors as the parameters' .grad while a step records (backward sums into them,
        clipping and AdamW read them), and no .grad afterwards, as train_step leaves the parameters."""
        for p, grad in zip(self.params, self.grads):
            p.grad = grad
        try:
            yield
        finally:
            for p in self.params:
                p.grad = None
