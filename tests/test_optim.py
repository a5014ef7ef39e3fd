"""The hand-written AdamW and schedule against torch.optim.AdamW with LambdaLR, step for step."""

import copy

import pytest
import torch
from torch import nn
from transformers import get_linear_schedule_with_warmup

from minisbert.encoder import Encoder, EncoderConfig
from minisbert.optim import AdamW, parameter_groups, warmup_then_linear_decay


def small_model() -> nn.Module:
    torch.manual_seed(0)
    config = EncoderConfig(model_type="bert", vocab_size=50, hidden_size=16, num_hidden_layers=2,
                           num_attention_heads=2, intermediate_size=32, hidden_dropout_prob=0.0,
                           attention_probs_dropout_prob=0.0)
    encoder = Encoder(config)
    encoder.init_weights()
    return nn.ModuleDict({"encoder": encoder, "head": nn.Linear(16, 3)})


def loss_of(model, step: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(step)
    ids = torch.randint(0, 50, (4, 7), generator=generator)
    mask = torch.ones_like(ids)
    labels = torch.randint(0, 3, (4,), generator=generator)
    logits = model["head"](model["encoder"](ids, mask).mean(dim=1))
    return nn.functional.cross_entropy(logits, labels)


def test_adamw_with_warmup_equals_torch_adamw_for_120_steps():
    ours_model = small_model()
    torch_model = copy.deepcopy(ours_model)
    total, warmup, lr = 120, 12, 1e-3
    ours = AdamW(parameter_groups(ours_model, weight_decay=0.01), lr=lr)
    reference = torch.optim.AdamW(parameter_groups(torch_model, weight_decay=0.01), lr=lr, eps=1e-8,
                                  betas=(0.9, 0.999))
    schedule = get_linear_schedule_with_warmup(reference, warmup, total)  # transformers', not ours
    for step in range(total):
        for group in ours.param_groups:
            group["lr"] = lr * warmup_then_linear_decay(step, warmup, total)
        for model, optimizer in ((ours_model, ours), (torch_model, reference)):
            optimizer.zero_grad()
            loss_of(model, step).backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
        schedule.step()
        for (name, a), b in zip(ours_model.named_parameters(), torch_model.parameters()):
            assert torch.allclose(a, b, atol=1e-6, rtol=0), f"step {step}: {name} differs by {(a - b).abs().max()}"
    assert not torch.equal(ours_model["head"].weight, small_model()["head"].weight)  # it did train


def test_no_weight_decay_on_biases_and_layernorm():
    model = small_model()
    decay, no_decay = parameter_groups(model)
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(names[id(p)].endswith(("bias", "norm.weight")) for p in no_decay["params"])
    assert all(not names[id(p)].endswith(("bias", "norm.weight")) for p in decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_schedule_is_linear_warmup_then_linear_decay():
    # 10 steps of warmup out of 100: 0, 0.5 at step 5, 1 at step 10, then down to 0 at step 100
    assert [warmup_then_linear_decay(s, 10, 100) for s in (0, 5, 10, 55, 100, 120)] == [0.0, 0.5, 1.0, 0.5, 0.0, 0.0]


@pytest.mark.parametrize("warmup,total", [(0, 50), (1, 1), (7, 93), (30, 300)])
def test_schedule_equals_transformers_linear_schedule_with_warmup(warmup, total):
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    schedule = get_linear_schedule_with_warmup(optimizer, warmup, total)
    for step in range(total + 5):
        assert warmup_then_linear_decay(step, warmup, total) == pytest.approx(schedule.get_last_lr()[0], abs=1e-12), step
        optimizer.step()
        schedule.step()


def test_train_step_clips_the_gradient_norm_at_1_and_skips_a_non_finite_loss():
    from minisbert.training import train_step

    model, reference = small_model(), small_model()
    optimizer = AdamW(parameter_groups(model), lr=1e-3)
    reference_optimizer = torch.optim.AdamW(parameter_groups(reference), lr=1e-3, eps=1e-8)
    batch = {"input_ids": torch.zeros(1, 1, dtype=torch.long)}  # only its device is read; the loss ignores it
    for step in range(3):
        # a loss scaled up so that the gradient norm is far above 1 and clipping decides the update
        train_step(lambda _: 1000 * loss_of(model, step), optimizer, batch, lr=1e-3)
        (1000 * loss_of(reference, step)).backward()
        assert nn.utils.clip_grad_norm_(reference.parameters(), 1.0) > 10
        reference_optimizer.step()
        reference_optimizer.zero_grad()
    for (name, a), b in zip(model.named_parameters(), reference.parameters()):
        assert torch.allclose(a, b, atol=1e-6, rtol=0), name
    before = [p.clone() for p in model.parameters()]
    assert train_step(lambda _: loss_of(model, 0) * float("nan"), optimizer, batch, lr=1e-3) is None
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    # a finite loss whose gradient is not: d sqrt(x)/dx at 0 is infinite
    finite_loss = lambda _: loss_of(model, 0) + torch.sqrt(model["head"].weight.abs().sum() * 0)  # noqa: E731
    assert torch.isfinite(finite_loss(None))
    assert train_step(finite_loss, optimizer, batch, lr=1e-3) is None
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


@pytest.mark.parametrize("fused", [True, False])
def test_with_a_watch_the_first_non_finite_step_is_kept_on_the_device_and_no_weight_changes_after_it(fused):
    from minisbert.training import NonFiniteWatch, train_step

    model, reference = small_model(), small_model()
    optimizer, reference_optimizer = (AdamW(parameter_groups(m), lr=1e-3, fused=fused) for m in (model, reference))
    batch = {"input_ids": torch.zeros(1, 1, dtype=torch.long)}  # only its device is read; the loss ignores it
    watch = NonFiniteWatch("cpu", steps_done=10)
    for step in range(2):  # finite steps: the same update as without a watch
        losses = [train_step(lambda _: loss_of(m, step), o, batch, lr=1e-3, watch=w)
                  for m, o, w in ((model, optimizer, watch), (reference, reference_optimizer, None))]
        assert torch.equal(losses[0], losses[1])
    assert watch.first_failure() is None
    before = [p.clone() for p in model.parameters()]
    # step 13: a finite loss whose gradient is not (d sqrt(x)/dx at 0); step 14: a NaN loss; step 15: finite again
    infinite_gradient = lambda _: loss_of(model, 0) + torch.sqrt(model["head"].weight.abs().sum() * 0)  # noqa: E731
    assert torch.isfinite(train_step(infinite_gradient, optimizer, batch, lr=1e-3, watch=watch))
    assert torch.isnan(train_step(lambda _: loss_of(model, 1) * float("nan"), optimizer, batch, lr=1e-3, watch=watch))
    assert torch.isfinite(train_step(lambda _: loss_of(model, 2), optimizer, batch, lr=1e-3, watch=watch))
    assert watch.first_failure() == 13
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert all(p.grad is None for p in model.parameters())


def test_fused_kernel_equals_the_written_out_update_with_uneven_step_counts():
    # tensors without a gradient in some steps have taken fewer steps: their bias corrections differ
    torch.manual_seed(0)
    fused = [nn.Parameter(torch.randn(40, 24)) for _ in range(3)]
    written = [nn.Parameter(p.detach().clone()) for p in fused]
    initial = [p.detach().clone() for p in fused]
    optimizers = [AdamW([{"params": fused, "weight_decay": 0.01}], lr=1e-2, fused=True),
                  AdamW([{"params": written, "weight_decay": 0.01}], lr=1e-2, fused=False)]
    for step in range(60):
        gradients = [torch.randn(40, 24) for _ in range(3)]
        for params in (fused, written):
            for p, g in zip(params, gradients):
                p.grad = None if (p is params[1] and step % 5 == 2) else g.clone()
        for optimizer in optimizers:
            optimizer.step()
    assert optimizers[0].state[fused[1]]["step"] == 48 and optimizers[0].state[fused[0]]["step"] == 60
    for a, b, start in zip(fused, written, initial):
        assert (a - start).abs().max() > 0.1  # they moved, and moved alike
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def test_the_fused_kernel_gets_one_step_tensor_per_distinct_step_count_not_one_per_parameter():
    # on a GPU each tensor made is a kernel launch: with 199 parameters (bert-base), 199 launches a step
    from torch.utils._python_dispatch import TorchDispatchMode

    class CountTensorsMade(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.made = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.made += func.overloadpacket in (torch.ops.aten.full, torch.ops.aten.scalar_tensor)
            return func(*args, **(kwargs or {}))

    params = [nn.Parameter(torch.randn(3)) for _ in range(8)]
    optimizer = AdamW([{"params": params[:6]}, {"params": params[6:], "weight_decay": 0.0}], fused=True)
    for step in range(3):
        for p in params:
            p.grad = None if (p is params[0] and step == 1) else torch.randn(3)
        with CountTensorsMade() as counter:
            optimizer.step()
    # the last step: params[0] has taken 2 steps, the rest of its group 3; the second group 3
    assert optimizer.state[params[0]]["step"] == 2 and optimizer.state[params[1]]["step"] == 3
    assert counter.made == 3
