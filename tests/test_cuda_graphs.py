"""Training with CUDA graphs (minisbert/cuda_graphs.py), on the CPU: padding to a bucket keeps the loss, and
GraphedLoss records one graph per batch shape and trains as train_step does eagerly. The recording itself needs a
GPU: here a stand-in returns the module as it is; tests/test_cuda.py replays real graphs against eager steps."""

import pytest
import torch

from minisbert import SentenceTransformer
from minisbert.cuda_graphs import GraphedLoss, pad_to_bucket
from minisbert.losses import CosineSimilarityLoss, MultipleNegativesRankingLoss, SoftmaxLoss, tokenize_batch
from minisbert.optim import AdamW, parameter_groups
from minisbert.training import train_step
from test_train_cli import train

PAIRS = [("A man plays a guitar.", "A man plays an instrument.", 0), ("A dog runs.", "A cat sleeps on the sofa.", 2),
         ("Two kids play in the park.", "Children are playing.", 0), ("It rains.", "The sun shines.", 1)]
LONGER = [("A woman in a red coat walks her small dog along the busy street at night.", "A person walks.", 0),
          ("Nobody is here.", "A crowd of people gathers in front of the old town hall for the festival.", 2)]


def columns_and_labels(pairs):
    return [[a for a, _, _ in pairs], [b for _, b, _ in pairs]], [label for _, _, label in pairs]


@pytest.mark.parametrize("model_name", ["tiny_bert", "tiny_roberta", "tiny_mpnet"])
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
