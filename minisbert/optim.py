"""AdamW with decoupled weight decay (Loshchilov & Hutter, 2019) and the warmup-then-linear-decay schedule.

SBERT trains with AdamW, learning rate 2e-5, a linear warmup over the first 10% of the steps, then a linear
decay to zero; weight decay 0.01, but none on biases and LayerNorm weights (as sentence-transformers' fit() tells
them: by name, see parameter_groups); gradients clipped at norm 1.
"""

import math

import torch
from torch import nn

from .architectures import checkpoint_names
from .encoder import Encoder

# sentence-transformers' fit() leaves a parameter out of the decay where its name holds one of these
NO_DECAY_NAMES = ("bias", "LayerNorm.bias", "LayerNorm.weight")


def parameter_groups(model: nn.Module, weight_decay: float = 0.01) -> list[dict]:
    """Two groups: the weights that decay, and those that don't, told apart as sentence-transformers' fit() does, by
    the name an encoder's parameter has in its checkpoint (NO_DECAY_NAMES): so biases and LayerNorms named LayerNorm
    (BERT's, RoBERTa's, MPNet's), and also MPNet's and T5's relative position bias; but DistilBERT's, ALBERT's last
    and T5's norms, named layer_norm, decay, as do ModernBERT's and Qwen3's."""
    checkpoint_name = {}  # parameter -> its name in the encoder's checkpoint
    for module in model.modules():
        if isinstance(module, Encoder):
            parameters = dict(module.named_parameters())
            checkpoint_name.update({parameters[ours]: theirs for ours, theirs in checkpoint_names(module.config).items()
                                    if ours in parameters})
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            plain = any(part in checkpoint_name.get(parameter, name) for part in NO_DECAY_NAMES)
            (no_decay if plain else decay).append(parameter)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def warmup_then_linear_decay(step: int, warmup_steps: int, total_steps: int) -> float:
    """The learning-rate factor at `step` (counted from 0): 0 -> 1 over the warmup, then 1 -> 0 at total_steps."""
    if step < warmup_steps:
        return step / max(1, warmup_steps)
    return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))


class AdamW(torch.optim.Optimizer):
    """Adam with bias correction and decoupled weight decay, written out.

    The update, per parameter p with gradient g, at step t:
        p <- p * (1 - lr * weight_decay)                        (decay the weights, not the gradient)
        m <- beta1 * m + (1 - beta1) * g,  v <- beta2 * v + (1 - beta2) * g^2
        p <- p - lr / (1 - beta1^t) * m / (sqrt(v / (1 - beta2^t)) + eps)
    Subclassing torch.optim.Optimizer gives param_groups, state_dict() and load_state_dict() (for --resume).

    Written out below (`fused=False`), each line is one foreach op over all tensors of a group, a pass over memory
    each. `fused=True` runs the same lines as PyTorch's fused kernel (torch._fused_adamw_), one pass per tensor:
    training all-MiniLM-L6-v2 on a 2-core CPU ran up to 1.18x faster (benchmarks/train_speed.py), and on a GPU the
    update is a kernel launch instead of eight. The default, None, is fused where PyTorch has the kernel (CUDA; the
    CPU from PyTorch 2.4). Both keep the same state, so a run can resume either way.
    """

    def __init__(self, params, lr: float = 2e-5, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.01, fused: bool | None = None):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))
        self.fused = fused

    def uses_fused_kernel(self, device: torch.device) -> bool:
        if self.fused is not None:
            return self.fused
        return device.type == "cuda" or (device.type == "cpu" and torch.__version__ >= "2.4")

    def add_state(self, params: list[torch.Tensor]) -> None:
        """Create the state of each of `params` that has none yet (no step taken): zero moments, step 0."""
        for p in params:
            if not self.state[p]:
                self.state[p].update(step=0, exp_avg=torch.zeros_like(p), exp_avg_sq=torch.zeros_like(p))

    @torch.no_grad()
    def step_on_device(self, params: list[torch.Tensor], lr: torch.Tensor, step: torch.Tensor,
                       found_inf: torch.Tensor) -> None:
        """The fused update of `params` (each with a gradient and a state, see add_state), with the learning rate
        `lr` and the step number `step` (this step included) read from tensors on the device when the kernel runs:
        the form a CUDA graph can record once and replay every step (cuda_graphs.GraphedStep), with the tensors
        filled anew before each replay. All of `params` must have taken the same number of steps. The host's step
        counts (state["step"]) and the groups' "lr" are left to the caller."""
        chosen = {id(p) for p in params}
        for group in self.param_groups:
            group_params = [p for p in group["params"] if id(p) in chosen]
            if group_params:
                self._fused_update(group, group_params, [step] * len(group_params), lr, found_inf)

    def _fused_update(self, group: dict, params: list[torch.Tensor], steps: list[torch.Tensor], lr,
                      found_inf: torch.Tensor | None) -> None:
        """PyTorch's fused kernel on `params` of `group`, each with its step number (this step included) in a
        tensor on its device, and the learning rate as a number or such a tensor."""
        states = [self.state[p] for p in params]
        (beta1, beta2), eps = group["betas"], group["eps"]
        torch._fused_adamw_(params, [p.grad for p in params], [s["exp_avg"] for s in states],
                            [s["exp_avg_sq"] for s in states], [], steps, lr=lr, beta1=beta1, beta2=beta2,
                            weight_decay=group["weight_decay"], eps=eps, amsgrad=False, maximize=False,
                            found_inf=found_inf)

    @torch.no_grad()
    def step(self, found_inf: torch.Tensor | None = None):
        """One update of every parameter with a gradient. `found_inf`, a 0-dim float tensor on the parameters'
        device, skips the update where it is not 0: on the device, without a host sync, in the fused kernel (the
        steps are still counted: train.py stops the run before it keeps such a state)."""
        if found_inf is not None and not self.uses_fused_kernel(found_inf.device) and found_inf.item():
            return
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            self.add_state(params)
            states = [self.state[p] for p in params]
            exp_avg = [s["exp_avg"] for s in states]
            exp_avg_sq = [s["exp_avg_sq"] for s in states]
            for s in states:
                s["step"] += 1
            lr, (beta1, beta2), eps = group["lr"], group["betas"], group["eps"]
            # bias corrections per tensor: one that had no gradient in some step has taken fewer steps
            steps = [s["step"] for s in states]

            if self.uses_fused_kernel(params[0].device):
                # the kernel reads each tensor's step from a tensor on its device; torch.full makes one per
                # distinct step without a copy from the host (which would wait for the GPU)
                step_tensors = {}
                for t, p in zip(steps, params):
                    if (t, p.device) not in step_tensors:  # (setdefault would make a tensor for every parameter)
                        step_tensors[t, p.device] = torch.full((), float(t), device=p.device)
                self._fused_update(group, params, [step_tensors[t, p.device] for t, p in zip(steps, params)], lr,
                                   found_inf)
                continue
            if group["weight_decay"]:
                torch._foreach_mul_(params, 1 - lr * group["weight_decay"])
            torch._foreach_lerp_(exp_avg, grads, 1 - beta1)
            torch._foreach_mul_(exp_avg_sq, beta2)
            torch._foreach_addcmul_(exp_avg_sq, grads, grads, value=1 - beta2)
            denominator = torch._foreach_sqrt(exp_avg_sq)
            torch._foreach_div_(denominator, [math.sqrt(1 - beta2 ** t) for t in steps])
            torch._foreach_add_(denominator, eps)
            torch._foreach_addcdiv_(params, exp_avg, denominator, [-lr / (1 - beta1 ** t) for t in steps])
