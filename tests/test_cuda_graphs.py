"""Training with CUDA graphs (minisbert/cuda_graphs.py), on the CPU: padding to a bucket keeps the loss, and
GraphedLoss and GraphedStep record one graph per batch shape and train as train_step does eagerly. The recording
itself needs a GPU: here a stand-in returns the module (GraphedLoss) or the step's body (GraphedStep) to run as it
is; tests/test_cuda.py replays real graphs against eager steps."""

import math

import pytest
import torch

from minisbert import SentenceTransformer
from minisbert.cuda_graphs import GraphedLoss, GraphedStep, pad_to_bucket
from minisbert.losses import CosineSimilarityLoss, MultipleNegativesRankingLoss, SoftmaxLoss, tokenize_batch
from minisbert.optim import AdamW, parameter_groups
from minisbert.training import NonFiniteWatch, train_step
from test_train_cli import train

PAIRS = [("A man plays a guitar.", "A man plays an instrument.", 0), ("A dog runs.", "A cat sleeps on the sofa.", 2),
         ("Two kids play in the park.", "Children are playing.", 0), ("It rains.", "The sun shines.", 1)]
LONGER = [("A woman in a red coat walks her small dog along the busy street at night.", "A person walks.", 0),
          ("Nobody is here.", "A crowd of people gathers in front of the old town hall for the festival.", 2)]


def columns_and_labels(pairs):
    return [[a for a, _, _ in pairs], [b for _, b, _ in pairs]], [label for _, _, label in pairs]


@pytest.mark.parametrize("model_name", ["tiny_bert", "tiny_roberta", "tiny_mpnet", "tiny_albert", "tiny_t5",
                                        "tiny_modernbert"])
@pytest.mark.parametrize("packing", [True, False])
def test_padding_to_a_bucket_keeps_the_loss(request, model_name, packing):
    model = SentenceTransformer(request.getfixturevalue(model_name))
    model.encoder.packing = packing
    model.eval()
    loss_fn = SoftmaxLoss(model, num_labels=3)
    batch = tokenize_batch(model, *columns_and_labels(PAIRS))
    config = model.encoder.config
    padded = pad_to_bucket(batch, 16, config.pad_token_id, config.max_tokens)
    length = batch["input_ids"].shape[1]
    assert padded["input_ids"].shape == (len(batch["input_ids"]), -(-length // 16) * 16) != batch["input_ids"].shape
    assert (padded["input_ids"][:, length:] == config.pad_token_id).all()
    assert (padded["attention_mask"][:, length:] == 0).all()
    with torch.no_grad():
        torch.testing.assert_close(loss_fn(padded), loss_fn(batch), atol=1e-6, rtol=0)


def test_a_bucket_stops_at_the_longest_input_the_model_takes():
    batch = {"input_ids": torch.ones(2, 100, dtype=torch.long), "attention_mask": torch.ones(2, 100, dtype=torch.long)}
    assert pad_to_bucket(batch, 64, 0, 110)["input_ids"].shape == (2, 110)  # 128 would pass the positions' table
    assert pad_to_bucket(batch, 64, 0, 90)["input_ids"].shape == (2, 100)  # never cut
    assert pad_to_bucket(batch, 1, 0, 512)["input_ids"].shape == (2, 100)


class StandIn:
    """Records what a CUDA graph recording would see, and returns the module unchanged (the CPU has no graphs)."""

    def __init__(self):
        self.calls = []

    def __call__(self, module, tensors):
        encoder = module.loss_fn.model.encoder
        self.calls.append({"shapes": [tuple(t.shape) for t in tensors], "packing": encoder.packing,
                           "capturable": encoder.capturable, "autocast_cache": torch.is_autocast_cache_enabled()})
        torch.rand(3)  # the recording's warm-up runs draw random numbers (dropout)
        return module


def trained_model(folder, graphed: bool, batches, loss_class=SoftmaxLoss):
    torch.manual_seed(0)
    model = SentenceTransformer(folder)
    model.train()
    loss_fn = loss_class(model, num_labels=3) if loss_class is SoftmaxLoss else loss_class(model)
    optimizer = AdamW(parameter_groups(loss_fn), lr=1e-3)
    stand_in = StandIn()
    step_loss = GraphedLoss(loss_fn, record=stand_in) if graphed else loss_fn
    losses = []
    for columns, labels in batches:
        batch = tokenize_batch(model, columns, labels)
        losses.append(train_step(step_loss, optimizer, batch, 1e-3).item())
    return model, losses, stand_in, step_loss


def test_graphed_steps_train_as_eager_steps_with_one_recording_per_shape(dropout_free_minilm):
    short, longer = columns_and_labels(PAIRS), columns_and_labels(LONGER)
    batches = [short, longer, short, short, longer, columns_and_labels(PAIRS[:3])]
    _, eager_losses, _, _ = trained_model(dropout_free_minilm, False, batches)
    graphed, graphed_losses, stand_in, step_loss = trained_model(dropout_free_minilm, True, batches)
    # equal losses over six steps: the weights moved alike (AdamW's first steps turn rounding noise in
    # near-zero gradients into updates of up to lr, so the weights themselves are compared through the gradients)
    assert graphed_losses == pytest.approx(eager_losses, abs=1e-5)
    # three shapes: 8 rows of the short pairs' length, 4 rows of the longer's, 6 rows; lengths in multiples of 16
    assert [call["shapes"][0] for call in stand_in.calls] == [(8, 16), (4, 32), (6, 16)]
    assert len(step_loss.graphs) == 3
    assert all(not call["packing"] and call["capturable"] and not call["autocast_cache"] for call in stand_in.calls)
    assert graphed.encoder.packing and not graphed.encoder.capturable  # put back after each recording


def test_graphed_gradients_equal_eager_gradients(dropout_free_minilm):
    gradients = []
    for graphed in (False, True):
        torch.manual_seed(0)
        model = SentenceTransformer(dropout_free_minilm)
        loss_fn = SoftmaxLoss(model, num_labels=3)
        step_loss = GraphedLoss(loss_fn, record=StandIn()) if graphed else loss_fn
        step_loss(tokenize_batch(model, *columns_and_labels(LONGER))).backward()
        gradients.append({name: p.grad for name, p in loss_fn.named_parameters()})
    eager, graphed = gradients
    for name in eager:
        torch.testing.assert_close(graphed[name], eager[name], atol=1e-6, rtol=1e-4, msg=name)


@pytest.mark.parametrize("model_name", ["tiny_bert", "tiny_roberta", "tiny_mpnet"])
def test_capturable_embeddings_give_the_gradients_of_nn_embedding(request, model_name):
    # while graphs record, embedding gradients are summed by index_add_ (no sort, no host sync): the same sums
    gradients = []
    for capturable in (False, True):
        model = SentenceTransformer(request.getfixturevalue(model_name))
        model.eval()  # no dropout: the two runs see the same numbers
        model.encoder.capturable = capturable
        batch = tokenize_batch(model, *columns_and_labels(PAIRS + LONGER))  # padding and repeated tokens
        torch.manual_seed(0)  # the same classifier for both
        SoftmaxLoss(model, num_labels=3)(batch).backward()
        gradients.append({name: p.grad.clone() for name, p in model.encoder.named_parameters() if p.grad is not None})
    plain, capturable = gradients
    assert plain.keys() == capturable.keys() and any("embeddings" in name or "bias" in name for name in plain)
    for name in plain:
        torch.testing.assert_close(capturable[name], plain[name], atol=1e-6, rtol=1e-5, msg=name)
    padding = model.encoder.word_embeddings.padding_idx
    assert capturable["word_embeddings.weight"][padding].abs().max() == 0


def test_recording_leaves_the_random_numbers_as_they_were(dropout_free_minilm):
    model = SentenceTransformer(dropout_free_minilm)
    step_loss = GraphedLoss(SoftmaxLoss(model, num_labels=3), record=StandIn())
    torch.manual_seed(5)
    expected = torch.rand(4)
    torch.manual_seed(5)
    step_loss(tokenize_batch(model, *columns_and_labels(PAIRS)))
    torch.testing.assert_close(torch.rand(4), expected, atol=0, rtol=0)


@pytest.mark.parametrize("loss_class", [CosineSimilarityLoss, MultipleNegativesRankingLoss])
def test_graphed_steps_of_other_losses_train_as_eager_steps(dropout_free_minilm, loss_class):
    labels = [0.2, 0.9, 0.5, 0.1] if loss_class is CosineSimilarityLoss else None
    batches = [([c[0], c[1]], labels) for c, _ in [columns_and_labels(PAIRS)] * 2]
    _, eager_losses, _, _ = trained_model(dropout_free_minilm, False, batches, loss_class)
    _, graphed_losses, stand_in, _ = trained_model(dropout_free_minilm, True, batches, loss_class)
    assert graphed_losses == pytest.approx(eager_losses, abs=1e-5)
    assert len(stand_in.calls) == 1


def test_shapes_beyond_max_graphs_run_eagerly(dropout_free_minilm):
    model = SentenceTransformer(dropout_free_minilm)
    loss_fn = SoftmaxLoss(model, num_labels=3)
    stand_in = StandIn()
    step_loss = GraphedLoss(loss_fn, record=stand_in, max_graphs=1)
    with torch.no_grad():
        step_loss(tokenize_batch(model, *columns_and_labels(PAIRS)))
        loss = step_loss(tokenize_batch(model, *columns_and_labels(LONGER)))
        expected = loss_fn(tokenize_batch(model, *columns_and_labels(LONGER)))
    assert len(stand_in.calls) == 1
    torch.testing.assert_close(loss, expected, atol=1e-6, rtol=0)


def test_a_recording_that_fails_warns_once_and_the_steps_run_eagerly(dropout_free_minilm):
    model = SentenceTransformer(dropout_free_minilm)
    loss_fn = SoftmaxLoss(model, num_labels=3)
    stand_in = StandIn()

    def failing(module, tensors):
        if stand_in.calls:  # the second shape: as an operation a graph cannot hold would fail
            raise RuntimeError("operation not permitted when stream is capturing")
        return stand_in(module, tensors)

    step_loss = GraphedLoss(loss_fn, record=failing)
    batches = [tokenize_batch(model, *columns_and_labels(pairs)) for pairs in (PAIRS, LONGER, LONGER[:1])]
    with torch.no_grad():
        step_loss(batches[0])
        with pytest.warns(UserWarning, match=r"could not record the training step of shape \(4, \d+\) \(RuntimeError: "
                                             "operation not permitted") as warned:
            losses = [step_loss(batch) for batch in batches[1:]]
        expected = [loss_fn(batch) for batch in batches[1:]]
    assert len(warned) == 1 and len(stand_in.calls) == 1 and len(step_loss.graphs) == 1
    assert not model.encoder.capturable and model.encoder.packing  # put back after the failed recording
    for loss, want in zip(losses, expected):
        torch.testing.assert_close(loss, want, atol=1e-6, rtol=0)


def test_cuda_graphs_off_the_gpu_are_refused_with_the_device_named(dropout_free_minilm):
    model = SentenceTransformer(dropout_free_minilm)
    with pytest.raises(ValueError, match="CUDA graphs need the model on a GPU; it is on cpu"):
        GraphedLoss(SoftmaxLoss(model, num_labels=3))


def test_train_py_refuses_cuda_graphs_on_the_cpu_before_writing_anything(tmp_path):
    run = train("--data", "stsb", "--device", "cpu", "--cuda-graphs", "--output", tmp_path / "out")
    assert run.returncode == 1
    assert "--cuda-graphs needs one GPU and one process; this run has 1 process on cpu" in run.stderr
    assert not (tmp_path / "out").exists()


class StepStandIn:
    """GraphedStep's recording on the CPU: runs the warm-up (which must change no weight and leave no gradient), then
    returns the step's body to be run as it is at each step."""

    def __init__(self, model):
        self.model, self.calls = model, []

    def __call__(self, body, warm_up, tensors):
        before = [p.detach().clone() for p in self.model.parameters()]
        warm_up(*tensors)
        assert all(torch.equal(a, b) for a, b in zip(before, self.model.parameters()))
        assert all(p.grad is None for p in self.model.parameters())
        self.calls.append([tuple(t.shape) for t in tensors])
        return body


def whole_steps(folder, graphed: bool, batches, lr=1e-3, poison_after=None, loss_class=SoftmaxLoss, **options):
    """(loss, optimizer, watch, losses, step) after training on `batches` eagerly or with GraphedStep; with
    `poison_after`, the classifier's bias turns NaN after that many steps."""
    torch.manual_seed(0)
    model = SentenceTransformer(folder)
    model.train()
    loss_fn = loss_class(model, num_labels=3) if loss_class is SoftmaxLoss else loss_class(model)
    optimizer = AdamW(parameter_groups(loss_fn), lr=lr)
    watch = NonFiniteWatch("cpu")
    stepper = GraphedStep(loss_fn, optimizer, watch, record=StepStandIn(model), **options) if graphed else None
    losses = []
    for number, (columns, labels) in enumerate(batches):
        if number == poison_after:
            with torch.no_grad():
                loss_fn.classifier.bias[0] = float("nan")
        batch = tokenize_batch(model, columns, labels)
        loss = stepper.step(batch, lr) if graphed else train_step(loss_fn, optimizer, batch, lr, watch=watch)
        losses.append(loss.item())
    return loss_fn, optimizer, watch, losses, stepper


def test_whole_step_graphs_train_as_eager_steps_with_one_recording_per_shape(dropout_free_minilm):
    short, longer = columns_and_labels(PAIRS), columns_and_labels(LONGER)
    batches = [short, longer, short, short, longer, columns_and_labels(PAIRS[:3])]
    eager, eager_optimizer, eager_watch, eager_losses, _ = whole_steps(dropout_free_minilm, False, batches)
    graphed, optimizer, watch, losses, stepper = whole_steps(dropout_free_minilm, True, batches)
    assert losses == pytest.approx(eager_losses, abs=1e-5)
    # input ids and attention mask, lengths in multiples of 16, and the labels
    assert stepper.record.calls == [[(8, 16)] * 2 + [(4,)], [(4, 32)] * 2 + [(2,)], [(6, 16)] * 2 + [(3,)]]
    # what the host keeps: every parameter's step count, the groups' learning rate, the watch's step
    assert ([optimizer.state[p]["step"] for p in graphed.parameters()]
            == [eager_optimizer.state[p]["step"] for p in eager.parameters()] == [6] * len(stepper.params))
    assert watch.step == eager_watch.step == 6 and watch.first_failure() is None
    assert all(group["lr"] == 1e-3 for group in optimizer.param_groups)
    assert all(p.grad is None for p in graphed.parameters())
    # the weights moved alike: AdamW's first steps amplify rounding noise in near-zero gradients (1.6e-4 apart when
    # written), so the bound is loose, but well below the moves themselves (up to 6 * lr = 6e-3)
    for (name, a), b in zip(graphed.named_parameters(), eager.parameters()):
        torch.testing.assert_close(a, b, atol=1e-3, rtol=0, msg=name)


@pytest.mark.parametrize("loss_class", [CosineSimilarityLoss, MultipleNegativesRankingLoss])
def test_whole_step_graphs_of_other_losses_train_as_eager_steps(dropout_free_minilm, loss_class):
    labels = [0.2, 0.9, 0.5, 0.1] if loss_class is CosineSimilarityLoss else None  # MNRL: no labels, no head
    batches = [([c[0], c[1]], labels) for c, _ in [columns_and_labels(PAIRS)] * 3]
    eager, _, _, eager_losses, _ = whole_steps(dropout_free_minilm, False, batches, loss_class=loss_class)
    graphed, optimizer, _, losses, stepper = whole_steps(dropout_free_minilm, True, batches, loss_class=loss_class)
    assert losses == pytest.approx(eager_losses, abs=1e-5)
    assert len(stepper.record.calls) == 1 and {state["step"] for state in optimizer.state.values()} == {3}
    for (name, a), b in zip(graphed.named_parameters(), eager.parameters()):
        torch.testing.assert_close(a, b, atol=5e-4, rtol=0, msg=name)


def test_whole_step_graphs_stop_updating_at_the_first_non_finite_step_as_eager_steps_do(dropout_free_minilm):
    batches = [columns_and_labels(PAIRS)] * 5
    runs = [whole_steps(dropout_free_minilm, graphed, batches, poison_after=2) for graphed in (False, True)]
    for loss_fn, optimizer, watch, losses, _ in runs:
        assert watch.first_failure() == 3 and watch.step == 5
        assert all(math.isfinite(x) for x in losses[:2]) and not any(math.isfinite(x) for x in losses[2:])
    (eager, *_), (graphed, *_) = runs  # two steps moved the weights up to 2e-3; 1.2e-4 apart when written
    for (name, a), b in zip(graphed.named_parameters(), eager.parameters()):
        torch.testing.assert_close(a, b, atol=5e-4, rtol=0, msg=name, equal_nan=True)


def test_whole_step_graphs_beyond_max_graphs_and_after_a_failed_recording_run_eagerly(dropout_free_minilm):
    short, longer = columns_and_labels(PAIRS), columns_and_labels(LONGER)
    batches = [short, longer, short, longer]
    _, _, _, eager_losses, _ = whole_steps(dropout_free_minilm, False, batches)
    _, optimizer, watch, losses, stepper = whole_steps(dropout_free_minilm, True, batches, max_graphs=1)
    assert losses == pytest.approx(eager_losses, abs=1e-5)
    assert len(stepper.record.calls) == 1 and watch.step == 4
    assert {state["step"] for state in optimizer.state.values()} == {4}


def test_whole_step_graphs_with_uneven_step_counts_warn_and_run_eagerly(dropout_free_minilm):
    model = SentenceTransformer(dropout_free_minilm)
    loss_fn = SoftmaxLoss(model, num_labels=3)
    optimizer = AdamW(parameter_groups(loss_fn), lr=1e-3)
    stepper = GraphedStep(loss_fn, optimizer, NonFiniteWatch("cpu"), record=StepStandIn(model))
    batch = tokenize_batch(model, *columns_and_labels(PAIRS))
    stepper.step(batch, 1e-3)
    optimizer.state[loss_fn.classifier.bias]["step"] = 7  # as after steps in which it had no gradient
    with pytest.warns(UserWarning, match=r"different numbers of steps \(\[1, 7\]\)"):
        stepper.step(batch, 1e-3)
    stepper.step(batch, 1e-3)  # warned once
    assert optimizer.state[loss_fn.classifier.bias]["step"] == 9 and optimizer.state[loss_fn.classifier.weight]["step"] == 3


def test_whole_step_graphs_refuse_fp16_and_steps_without_a_watch(dropout_free_minilm):
    model = SentenceTransformer(dropout_free_minilm)
    loss_fn = SoftmaxLoss(model, num_labels=3)
    optimizer = AdamW(parameter_groups(loss_fn))
    with pytest.raises(ValueError, match="fp16 needs a loss scaler"):
        GraphedStep(loss_fn, optimizer, NonFiniteWatch("cpu"), torch.float16, record=StepStandIn(model))
    with pytest.raises(ValueError, match="needs a NonFiniteWatch"):
        GraphedStep(loss_fn, optimizer, None, record=StepStandIn(model))
    with pytest.raises(ValueError, match="CUDA graphs need the model on a GPU; it is on cpu"):
        GraphedStep(loss_fn, optimizer, NonFiniteWatch("cpu"))


def test_train_py_refuses_whole_step_graphs_without_cuda_graphs_before_writing_anything(tmp_path):
    run = train("--data", "stsb", "--device", "cpu", "--graph-whole-step", "--output", tmp_path / "out")
    assert run.returncode == 1
    assert ("--graph-whole-step needs CUDA graphs (one GPU, one process) and bf16 or fp32; this run has no CUDA "
            "graphs (cpu, 1 process(es))") in run.stderr
    assert not (tmp_path / "out").exists()
