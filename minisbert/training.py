"""One optimizer step, and the training state that a checkpoint holds so that --resume continues exactly.

A checkpoint is a folder `step-<N>` under `<output>/checkpoints`: the model in the sentence-transformers format
(so encode.py and sentence-transformers load it as it is) and `training_state.pt` (the loss's own parameters,
the optimizer, the gradient scaler, where the run stands, and the random generators). It is written under a
temporary name and renamed when complete: a crash leaves the previous checkpoint as it was.
"""

import json
import os
import pickle
import shutil
from pathlib import Path

import torch
import torch.distributed as dist

STATE_FILE = "training_state.pt"


class NonFiniteWatch:
    """Each step's finite test, run on the device and read by the host only when asked: no wait for the GPU per step.

    `first` holds the number of the first step whose loss or gradient norm was not finite (-1 while none was). From
    that step on, AdamW skips every update on the device (its `found_inf`), so no weight changes after it, as when the
    test stops the run at once. The caller reads it (`first_failure`, which waits for the GPU) before anything that
    keeps or shows the weights: a checkpoint, an evaluation, the saved model; and at each log record.
    """

    def __init__(self, device, steps_done: int = 0):
        self.first = torch.full((), -1, dtype=torch.int64, device=device)
        self.step = steps_done  # the next step is number step + 1

    def update(self, finite: torch.Tensor) -> torch.Tensor:
        """Take this step's test; returns 1.0 on the device if the update must be skipped, else 0.0."""
        self.step += 1
        return self.take(finite, self.step)

    def take(self, finite: torch.Tensor, step: int | torch.Tensor) -> torch.Tensor:
        """update() for step number `step`, which may be a tensor on the device (a CUDA graph reads it when it
        replays: cuda_graphs.GraphedStep); `self.step` is left to the caller."""
        self.first.copy_(torch.where((self.first < 0) & ~finite, step, self.first))
        return (self.first >= 0).float()

    def first_failure(self) -> int | None:
        first = int(self.first)
        return None if first < 0 else first


def train_step(loss_fn, optimizer, batch: dict, lr: float, max_grad_norm: float = 1.0,
               autocast_dtype: torch.dtype | None = None, scaler=None, is_finite=None,
               weight: float = 1.0, watch: NonFiniteWatch | None = None) -> torch.Tensor | None:
    """Forward, backward, clip at `max_grad_norm`, AdamW step at `lr`. Returns the loss, or None if the loss or the
    gradient is not finite (then nothing is updated). `is_finite` may widen that test to every process of a
    distributed run. `weight` scales this process's loss (its share of an uneven global batch). With a `watch`, the
    test runs on the device instead, without a host sync, and the loss is always returned: see NonFiniteWatch."""
    device_type = batch["input_ids"].device.type
    with torch.autocast(device_type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
        loss = loss_fn(batch) * weight
    finite = torch.isfinite(loss.detach())
    if watch is None and not (is_finite(finite) if is_finite else bool(finite)):
        optimizer.zero_grad(set_to_none=True)
        return None
    for group in optimizer.param_groups:
        group["lr"] = lr
    if scaler is not None:  # fp16: scale the loss so that small gradients survive, unscale before clipping
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
    else:
        loss.backward()
    parameters = [p for group in optimizer.param_groups for p in group["params"]]
    norm = torch.nn.utils.clip_grad_norm_(parameters, max_grad_norm)
    # fp16's scaler skips a step with infinite gradients by itself (and lowers the scale); elsewhere they stop the run
    skip = None  # with a watch: 1.0 on the device where AdamW must skip the update
    if watch is not None:
        skip = watch.update(finite if scaler is not None else finite & torch.isfinite(norm))
    elif scaler is None and not (is_finite(torch.isfinite(norm)) if is_finite else bool(torch.isfinite(norm))):
        optimizer.zero_grad(set_to_none=True)
        return None
    skipping = {} if skip is None else {"found_inf": skip}  # (so that any optimizer works without a watch)
    if scaler is not None:
        scaler.step(optimizer, **skipping)
        scaler.update()
    else:
        optimizer.step(**skipping)
    optimizer.zero_grad(set_to_none=True)
    return loss.detach()


def random_states() -> dict:
    states = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_random_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def _rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def save_checkpoint(output: Path, model, loss_fn, optimizer, scaler, progress: dict, arguments: dict,
                    keep: int = 2) -> Path:
    """Write checkpoints/step-<N> atomically, then remove all but the newest `keep`. `arguments` are those that
    define the run, which a resume must repeat. Every process of a distributed run calls it: the first writes
    the model and the training state, and each its own random state (dropout differs between processes)."""
    folder = Path(output) / "checkpoints" / f"step-{progress['step']:08d}"
    partial = folder.with_name(folder.name + ".partial")
    if _rank() == 0:
        shutil.rmtree(partial, ignore_errors=True)
        model.save(partial)
        head = {name: p for name, p in loss_fn.state_dict().items() if not name.startswith("model.")}
        torch.save({"loss": head, "optimizer": optimizer.state_dict(),
                    "scaler": scaler.state_dict() if scaler is not None else None,
                    "progress": progress, "arguments": arguments}, partial / STATE_FILE)
    _barrier()
    torch.save(random_states(), partial / f"random-{_rank()}.pt")
    _barrier()
    if _rank() == 0:
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(partial, folder)
        for old in list_checkpoints(output)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    _barrier()
    return folder


def list_checkpoints(output: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    folder = Path(output) / "checkpoints"
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob("step-*") if not p.name.endswith(".partial") and (p / STATE_FILE).exists())


def read_state(folder: Path, name: str = STATE_FILE) -> dict:
    path = Path(folder) / name
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise ValueError(f"{path}: refusing to unpickle it: it holds more than a training state ({error})") from None
    except (RuntimeError, EOFError) as error:
        raise ValueError(f"{path}: cannot read it ({error}); the file is truncated or corrupted") from None


def read_run_arguments(folder: Path) -> dict:
    """The arguments that defined the run a checkpoint belongs to ({} for checkpoints written before they were kept)."""
    return read_state(folder).get("arguments", {})


def load_training_state(folder: Path, loss_fn, optimizer, scaler) -> dict:
    """Restore what save_checkpoint wrote (the model itself is loaded from the folder by the caller)."""
    state = read_state(folder)
    model_part = {name: p for name, p in loss_fn.state_dict().items() if name.startswith("model.")}
    loss_fn.load_state_dict({**model_part, **state["loss"]})  # strict: the head must match this loss
    optimizer.load_state_dict(state["optimizer"])
    if scaler is not None and state["scaler"] is not None:
        scaler.load_state_dict(state["scaler"])
    own = Path(folder) / f"random-{_rank()}.pt"
    restore_random_states(read_state(folder, own.name) if own.exists() else state["random"])
    return state["progress"]


class MetricsLog:
    """JSON lines beside the model; on resume, the records after the checkpoint's step are dropped."""

    def __init__(self, path: Path, resumed_step: int | None = None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resumed_step is None:
            self.path.write_text("")
        elif self.path.exists():
            kept = [line for line in self.path.read_text().splitlines() if self._step(line) <= resumed_step]
            self.path.write_text("".join(line + "\n" for line in kept))

    @staticmethod
    def _step(line: str) -> float:
        """A record's step; a line torn by a kill counts as after any checkpoint, so it is dropped."""
        try:
            return json.loads(line)["step"]
        except (json.JSONDecodeError, KeyError, TypeError):
            return float("inf")

    def write(self, record: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")


class LossWindow:
    """The mean loss and the speed of the training steps since the last record (evaluation time not counted)."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.loss, self.steps, self.seconds = 0.0, 0, 0.0

    def add(self, loss: float | torch.Tensor, seconds: float) -> None:
        """A step's loss (a tensor is summed where it is, without waiting for the GPU) and its seconds."""
        self.loss, self.steps, self.seconds = self.loss + loss, self.steps + 1, self.seconds + seconds

    def record(self, step: int, epoch: int, lr: float, batch_size: int) -> dict:
        """The metrics record of the window, which then starts afresh."""
        record = {"step": step, "epoch": epoch, "loss": float(self.loss) / self.steps, "lr": lr,
                  "pairs_per_s": self.steps * batch_size / self.seconds}
        self.reset()
        return record
