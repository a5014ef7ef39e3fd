"""The CUDA paths, on a GPU: the fused search kernel, encoding and a training step against the CPU. They skip on a
machine without one; `bash benchmarks/gpu_check.sh` runs them where a GPU is lent.

Tolerances: fp32 on the GPU runs as three TF32 products (the kernel: fp32's precision to about 1e-7) or with
PyTorch's defaults (matrix products in fp32), so it equals the CPU to 1e-4; bf16 and fp16 round every product, so
their embeddings are compared by cosine."""

import dataclasses
import warnings

import numpy as np
import pytest
import torch
from kernel_cases import GPU_CASES, check
from tokenizers import Tokenizer as FastTokenizer

from minisbert import SentenceTransformer
from minisbert.encoder import Encoder, EncoderConfig
from minisbert.losses import SoftmaxLoss, tokenize_batch
from minisbert.optim import AdamW, parameter_groups
from minisbert.pooling import Pooling
from minisbert.tokenize import Tokenizer
from minisbert.training import train_step

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine")

TEXTS = ["A man is playing guitar.", "Someone plays an instrument.", "", "Ça va très bien 🙂", "word " * 200,
         "The new movie is awesome", "A cat sleeps on the sofa.", "x"]
PAIRS = [("A man plays guitar.", "A man plays an instrument.", 1), ("A dog runs.", "A cat sleeps.", 0),
         ("Two kids play.", "Children are playing.", 1), ("It rains.", "The sun shines brightly today.", 0)] * 4


@pytest.mark.parametrize("case", GPU_CASES, ids=str)
def test_fused_kernel_equals_pytorch_path_and_brute_force_on_the_gpu(case):
    check(case, device="cuda")


FLATTEN = {"FLATTEN": True}
# 192 KB of shared memory in fp16 and bf16 (benchmarks/kernel_registers.py), within an H100's 227
HELD = {"HOLD_QUERIES": True, "BLOCK_Q": 128, "BLOCK_C": 64, "BLOCK_D": 128, "num_stages": 2}
MANY_TILES = {(case[5], case[3]): case for case in GPU_CASES if case[1] == 20_000}  # (dtype, k): case


# each a compilation of its own (a few seconds): every dtype, k = 10 and k = 128 with self-exclusion among them
@pytest.mark.parametrize("case,config", [
    (MANY_TILES[torch.float16, 10], FLATTEN), (MANY_TILES[torch.bfloat16, 128], FLATTEN),
    (MANY_TILES[torch.float32, 10], FLATTEN), (MANY_TILES[torch.float16, 128], HELD),
    (MANY_TILES[torch.bfloat16, 10], HELD)], ids=str)
def test_fused_kernel_with_other_loops_gives_the_same_results(case, config):
    # FLATTEN and HOLD_QUERIES (off in launch_config until timed) change how Triton schedules the loops and where
    # the queries live, which the interpreter does not model: only a GPU can check them, on many tiles per slice
    from minisbert.topk_kernel import FLATTEN_COMPILES, SteppedDown

    if config.get("FLATTEN") and not FLATTEN_COMPILES:
        pytest.skip("FLATTEN needs Triton 3.9 (refused before: tests/test_search.py)")
    with warnings.catch_warnings():  # the setting itself, not a smaller one stepped down to
        warnings.simplefilter("error", SteppedDown)
        check(case, device="cuda", config=config)


@pytest.mark.parametrize("k", [10, 100])
def test_fused_fp32_kernel_keeps_fp32_precision_on_random_vectors(k):
    # kernel_cases' rows are exact in TF32 too; here the products round, and the kernel's three TF32 products
    # must give plain fp32's hits and its scores within 1e-6 (ids may differ only between scores that close)
    from minisbert.search import _block_top_k, _merge_lowest_id_first
    from minisbert.topk_kernel import cosine_top_k

    generator = torch.Generator(device="cuda").manual_seed(0)
    corpus = torch.randn(50_000, 384, device="cuda", generator=generator)
    queries = torch.randn(2_000, 384, device="cuda", generator=generator)
    assert not torch.backends.cuda.matmul.allow_tf32  # PyTorch's default: the reference is plain fp32
    scores, ids = _block_top_k(queries, corpus, k, None, 256)
    got_scores, got_ids = _merge_lowest_id_first(*cosine_top_k(queries, corpus, k), k)
    gaps = (got_scores - scores).abs()
    assert gaps.max().item() < 1e-6
    assert not ((got_ids != ids) & (gaps > 1e-6)).any()


def test_semantic_search_on_the_gpu_in_overlapped_chunks_equals_the_cpu():
    # 5,000 queries: three chunks of OVERLAP_QUERIES, each copied to the host while the next is searched
    from kernel_cases import exact_rows

    from minisbert import semantic_search
    from minisbert.search import OVERLAP_QUERIES

    corpus = exact_rows(20_000, 384, torch.Generator().manual_seed(1))
    queries = exact_rows(5_000, 384, torch.Generator().manual_seed(2))
    assert len(queries) > 2 * OVERLAP_QUERIES
    for dtype in (torch.float32, torch.float16):
        expected = semantic_search(queries.to(dtype), corpus.to(dtype), top_k=10)
        assert semantic_search(queries.to("cuda", dtype), corpus.to("cuda", dtype), top_k=10) == expected, dtype


@pytest.fixture(scope="module")
def random_minilm(gpu_tokenizer) -> SentenceTransformer:
    """all-MiniLM-L6-v2's shape with random weights (speed and agreement depend on shapes, not values)."""
    torch.manual_seed(0)
    config = EncoderConfig(model_type="bert", vocab_size=30522, hidden_size=384, num_hidden_layers=6,
                           num_attention_heads=12, intermediate_size=1536, hidden_dropout_prob=0.0,
                           attention_probs_dropout_prob=0.0)
    return SentenceTransformer(encoder=Encoder(config), tokenizer=gpu_tokenizer)


@pytest.fixture(scope="module")
def gpu_tokenizer(minilm_tokenizer_file) -> Tokenizer:
    return Tokenizer(FastTokenizer.from_file(str(minilm_tokenizer_file)), max_seq_length=256, pad_token_id=0)


def test_a_model_goes_to_the_gpu_when_no_device_is_named(gpu_tokenizer):
    config = EncoderConfig(model_type="bert", vocab_size=30522, hidden_size=64, num_hidden_layers=1,
                           num_attention_heads=4, intermediate_size=128)
    assert SentenceTransformer(encoder=Encoder(config), tokenizer=gpu_tokenizer).device.type == "cuda"


def assert_cuda_encoding_equals_the_cpu(model: SentenceTransformer, dtype: str) -> None:
    """The model's embeddings of TEXTS on the GPU in `dtype` against its fp32 ones on the CPU; it is left on the CPU."""
    expected = torch.as_tensor(model.to("cpu").encode(TEXTS))
    got = torch.as_tensor(model.to("cuda").encode(TEXTS, dtype=dtype, batch_size=3))
    model.to("cpu")
    assert got.isfinite().all()
    if dtype == "fp32":
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)
    else:
        assert torch.nn.functional.cosine_similarity(got, expected).min() > 0.999


@pytest.mark.parametrize("dtype", ["fp32", "bf16", "fp16"])
def test_cuda_encoding_equals_the_cpu(random_minilm, dtype):
    assert_cuda_encoding_equals_the_cpu(random_minilm, dtype)


@pytest.mark.parametrize("dtype", ["fp32", "bf16", "fp16"])
def test_cuda_encoding_of_a_modernbert_equals_the_cpu(gpu_tokenizer, dtype):
    # rotary positions, and sliding layers (a window of 16 tokens over rows up to 202) beside global ones: on the GPU
    # every layer runs flash attention on the packed tokens, the sliding ones with a window (where this PyTorch's
    # varlen_attn takes window_size; else attention with a mask)
    torch.manual_seed(0)
    config = EncoderConfig.from_dict({"model_type": "modernbert", "vocab_size": 30522, "hidden_size": 256,
                                      "num_hidden_layers": 3, "num_attention_heads": 4, "intermediate_size": 384,
                                      "local_attention": 16, "pad_token_id": 0}, "test")
    assert_cuda_encoding_equals_the_cpu(SentenceTransformer(encoder=Encoder(config), tokenizer=gpu_tokenizer), dtype)


@pytest.mark.parametrize("dtype", ["fp32", "bf16", "fp16"])
def test_cuda_encoding_of_a_qwen3_equals_the_cpu(gpu_tokenizer, dtype):
    # causal attention and grouped key and value heads (flash attention on the packed tokens where this PyTorch's
    # varlen_attn takes window_size and enable_gqa, else attention with a mask), heads wider than the layer's share,
    # last-token pooling
    torch.manual_seed(0)
    config = EncoderConfig.from_dict({"model_type": "qwen3", "vocab_size": 30522, "hidden_size": 256,
                                      "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 2,
                                      "head_dim": 128, "intermediate_size": 384, "max_position_embeddings": 512},
                                     "test")
    model = SentenceTransformer(encoder=Encoder(config), tokenizer=gpu_tokenizer,
                                pooling=Pooling(config.hidden_size, "lasttoken"))
    assert_cuda_encoding_equals_the_cpu(model, dtype)


def random_t5(tokenizer: Tokenizer, output_scale: float = 1.0) -> SentenceTransformer:
    """A random gated T5 encoder (relative position bias); its feed-forward output weights times `output_scale`."""
    torch.manual_seed(0)
    config = EncoderConfig.from_dict({"model_type": "t5", "vocab_size": 30522, "d_model": 256, "d_kv": 64,
                                      "d_ff": 512, "num_layers": 3, "num_heads": 4,
                                      "feed_forward_proj": "gated-gelu", "pad_token_id": 0}, "test")
    encoder = Encoder(config)
    encoder.init_weights()
    with torch.no_grad():
        for layer in encoder.layers:
            layer.output.weight.mul_(output_scale)
    return SentenceTransformer(encoder=encoder, tokenizer=tokenizer)


@pytest.mark.parametrize("dtype,output_scale", [("fp32", 1.0), ("bf16", 1.0), ("fp16", 1.0), ("fp16", 1e7)])
def test_cuda_encoding_of_a_t5_equals_the_cpu(gpu_tokenizer, dtype, output_scale):
    # in fp16 the feed-forward output products keep fp32 weights (Encoder.in_dtype): scaled up 1e7, the weights and
    # their sums would overflow fp16 (an all-fp16 copy gives infinities on the CPU), and do not
    assert_cuda_encoding_equals_the_cpu(random_t5(gpu_tokenizer, output_scale), dtype)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_flash_attention_on_packed_tokens_equals_padded_attention(random_minilm, dtype):
    from minisbert import encoder as encoder_module
    if encoder_module.varlen_attention() is None:
        pytest.skip(f"torch {torch.__version__} has no torch.nn.attention.varlen")
    encoder = Encoder(random_minilm.encoder.config).cuda().to(dtype).eval()
    encoder.load_state_dict(random_minilm.encoder.state_dict())
    batch = random_minilm.tokenize(TEXTS)
    lengths = batch["attention_mask"].sum(1)
    ids, mask = batch["input_ids"].cuda(), batch["attention_mask"].cuda()
    packing = encoder_module.Packing(mask.bool(), True, lengths)
    assert encoder.layers[0].attends_packed(packing, mask.bool(), dtype, 0.0)
    with torch.inference_mode():
        packed = encoder(ids, mask, lengths=lengths).float()
        padded = encoder(ids, mask).float()
    real = mask.bool()
    assert torch.nn.functional.cosine_similarity(packed[real], padded[real]).min() > 0.999
    assert packed[~real].abs().max() == 0


@pytest.mark.parametrize("dtype", [None, torch.bfloat16, torch.float16])
def test_a_cuda_training_step_equals_the_cpu(random_minilm, dtype):
    losses = {}
    for device in ("cpu", "cuda"):
        torch.manual_seed(0)
        model = SentenceTransformer(encoder=Encoder(random_minilm.encoder.config), tokenizer=random_minilm.tokenizer)
        model.encoder.load_state_dict(random_minilm.encoder.state_dict())
        model.to("cpu").train()
        loss_fn = SoftmaxLoss(model, num_labels=3)
        torch.manual_seed(1)
        loss_fn.classifier.reset_parameters()  # on the CPU for both: CUDA's generator draws other numbers
        loss_fn.to(device)
        optimizer = AdamW(parameter_groups(loss_fn), lr=1e-4)
        on_gpu = device == "cuda"
        scaler = torch.amp.GradScaler("cuda") if on_gpu and dtype == torch.float16 else None
        losses[device] = []
        for step in range(3):
            batch = tokenize_batch(model, [[a for a, _, _ in PAIRS], [b for _, b, _ in PAIRS]], [y for _, _, y in PAIRS])
            loss = train_step(loss_fn, optimizer, batch, 1e-4, autocast_dtype=dtype if on_gpu else None, scaler=scaler)
            assert loss is not None, (device, dtype, step)
            losses[device].append(loss.item())
    tolerance = 1e-4 if dtype is None else 2e-2
    assert losses["cuda"] == pytest.approx(losses["cpu"], rel=tolerance, abs=tolerance)


def test_cached_in_batch_negatives_replay_the_gpus_dropout(random_minilm):
    """CachedMultipleNegativesRankingLoss on the GPU, dropout on: its second pass draws the masks of its first (the
    CUDA generator's state restored), so the gradients are those of the pieces embedded once with gradients."""
    from minisbert.losses import CachedMultipleNegativesRankingLoss, split_features
    config = dataclasses.replace(random_minilm.encoder.config, hidden_dropout_prob=0.1,
                                 attention_probs_dropout_prob=0.1)
    model = SentenceTransformer(encoder=Encoder(config), tokenizer=random_minilm.tokenizer)
    model.encoder.load_state_dict(random_minilm.encoder.state_dict())
    model.to("cuda").train()
    columns = [{key: value.to("cuda") for key, value in model.preprocess(list(texts)).items()}
               for texts in zip(*[(a, b) for a, b, _ in PAIRS])]
    cached = CachedMultipleNegativesRankingLoss(model, mini_batch_size=5)
    torch.manual_seed(0)
    cached(columns).backward()
    got = {name: parameter.grad.clone() for name, parameter in model.named_parameters()}
    model.zero_grad()
    torch.manual_seed(0)
    embeddings = [torch.cat([model(dict(piece))["sentence_embedding"] for piece in split_features(features, 5)])
                  for features in columns]
    cached.loss_from_embeddings(embeddings[0], embeddings[1:]).backward()
    for name, parameter in model.named_parameters():
        torch.testing.assert_close(got[name], parameter.grad, atol=1e-5, rtol=1e-4, msg=name)


# batches of three shapes for the graphed steps; the longer: 32 rows of up to 112 tokens, 3,584 token ids, beyond the
# 3,072 from which PyTorch's embedding backward syncs
GRAPH_BATCHES = (PAIRS, PAIRS[:6], [(" ".join([a, b] * 10), b, label) for a, b, label in PAIRS])


def training_for_graphs(random_minilm, dropout: float, graphed: bool):
    """(model, loss, AdamW) on the GPU, the same for a graphed run and an eager one. Packing stays on for the graphed
    run, whose recordings turn it off; the eager run takes the padded batches (graph_batch) with packing off, the
    graphs' layout, so that dropout draws the same random numbers in both."""
    config = dataclasses.replace(random_minilm.encoder.config, hidden_dropout_prob=dropout,
                                 attention_probs_dropout_prob=dropout)
    torch.manual_seed(0)
    model = SentenceTransformer(encoder=Encoder(config), tokenizer=random_minilm.tokenizer)
    model.encoder.load_state_dict(random_minilm.encoder.state_dict())
    model.to("cuda").train()
    model.encoder.packing = graphed
    loss_fn = SoftmaxLoss(model, num_labels=3)
    return model, loss_fn, AdamW(parameter_groups(loss_fn), lr=1e-4)


def graph_batch(model, pairs, graphed: bool) -> dict:
    """The pairs as tensors; for the eager run padded as the graphs pad them."""
    from minisbert.cuda_graphs import pad_to_bucket
    batch = tokenize_batch(model, [[a for a, _, _ in pairs], [b for _, b, _ in pairs]], [y for _, _, y in pairs])
    config = model.encoder.config
    return batch if graphed else pad_to_bucket(batch, 16, config.pad_token_id, config.max_tokens)


@pytest.mark.parametrize("dtype,dropout", [(None, 0.0), (None, 0.1), (torch.bfloat16, 0.1), (torch.float16, 0.1)])
def test_cuda_graph_training_steps_equal_eager_steps(random_minilm, dtype, dropout):
    """GraphedLoss (train.py --cuda-graphs) replays recorded graphs; eager train_step runs the same padded batches."""
    from minisbert.cuda_graphs import GraphedLoss
    runs = {}
    for graphed in (False, True):
        model, loss_fn, optimizer = training_for_graphs(random_minilm, dropout, graphed)
        scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
        step_loss = GraphedLoss(loss_fn, dtype) if graphed else loss_fn
        losses = []
        for pairs in GRAPH_BATCHES * 2:
            loss = train_step(step_loss, optimizer, graph_batch(model, pairs, graphed), 1e-4, autocast_dtype=dtype,
                              scaler=scaler)
            assert loss is not None, (graphed, dtype, len(losses))
            losses.append(loss.item())
        runs[graphed] = losses
    assert len(step_loss.graphs) == 3
    tolerance = 1e-4 if dtype is None else 2e-2
    assert runs[True] == pytest.approx(runs[False], rel=tolerance, abs=tolerance)


@pytest.mark.parametrize("dtype,dropout", [(None, 0.0), (None, 0.1), (torch.bfloat16, 0.1)])
def test_whole_step_cuda_graphs_equal_eager_steps(random_minilm, dtype, dropout):
    """GraphedStep (train.py --graph-whole-step) replays forward, backward, clipping, the finite test and AdamW as one
    graph; eager train_step with a NonFiniteWatch runs the same padded batches. Then a NaN in the classifier: both
    must count it at the same step and update nothing from then on."""
    from minisbert.cuda_graphs import GraphedStep
    from minisbert.training import NonFiniteWatch
    runs, weights = {}, {}
    for graphed in (False, True):
        model, loss_fn, optimizer = training_for_graphs(random_minilm, dropout, graphed)
        watch = NonFiniteWatch("cuda")
        stepper = GraphedStep(loss_fn, optimizer, watch, dtype) if graphed else None
        losses = []
        for number, pairs in enumerate(GRAPH_BATCHES * 2 + GRAPH_BATCHES[:2]):
            if number == 6:
                with torch.no_grad():
                    loss_fn.classifier.bias[0] = float("nan")
                kept = [p.detach().clone() for p in model.parameters()]
            batch = graph_batch(model, pairs, graphed)
            loss = stepper.step(batch, 1e-4) if graphed else train_step(loss_fn, optimizer, batch, 1e-4,
                                                                        autocast_dtype=dtype, watch=watch)
            losses.append(loss.item())
        assert watch.first_failure() == 7 and watch.step == 8, (graphed, watch.first_failure())
        for a, b in zip(kept, model.parameters()):  # nothing moved after the NaN
            torch.testing.assert_close(b, a, atol=0, rtol=0, equal_nan=True)
        assert {state["step"] for state in optimizer.state.values()} == {8}
        runs[graphed], weights[graphed] = losses[:6], kept
    assert len(stepper.graphs) == 3
    tolerance = 1e-4 if dtype is None else 2e-2
    assert runs[True] == pytest.approx(runs[False], rel=tolerance, abs=tolerance)
    if dtype is None:  # fp32: the weights too (up to 6e-4 moved; 7e-7 apart on the CPU with a stand-in recording);
        # bf16's rounding noise, turned by AdamW's first steps into updates of up to lr, leaves them as far apart
        for a, b in zip(weights[True], weights[False]):
            torch.testing.assert_close(a, b, atol=1e-4, rtol=0, equal_nan=True)


@pytest.mark.parametrize("model_type", ["bert", "roberta", "mpnet"])
def test_train_py_on_one_gpu_records_every_shape_and_trains(tmp_path, gpu_tokenizer, model_type):
    """train.py's defaults on one GPU: CUDA graphs (each architecture's step must record, or a warning says it ran
    eagerly) and the finite test on the device; for BERT also a NaN, which must stop the run and name the step."""
    import json

    from test_train_cli import metrics, train

    torch.manual_seed(0)
    config = EncoderConfig(model_type=model_type, vocab_size=30522, hidden_size=64, num_hidden_layers=2,
                           num_attention_heads=4, intermediate_size=128, max_position_embeddings=514,
                           type_vocab_size=2 if model_type == "bert" else 1)
    SentenceTransformer(encoder=Encoder(config), tokenizer=gpu_tokenizer).save(tmp_path / "model")
    labels = ["contradiction", "entailment", "neutral"]
    pairs = [(" ".join([a] * repeat), b, y) for repeat in (1, 3, 6) for a, b, y in PAIRS]  # three lengths, shapes
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps({"sentence1": a, "sentence2": b, "gold_label": labels[y]})
                                                  + "\n" for a, b, y in pairs))
    options = ["--data", tmp_path / "pairs.jsonl", "--model", tmp_path / "model", "--device", "cuda", "--precision",
               "bf16", "--batch-size", 8, "--epochs", 2, "--log-steps", 3, "--eval-steps", 0]
    run = train(*options, "--lr", "1e-3", "--output", tmp_path / "out")
    assert run.returncode == 0, run.stderr[-3000:]
    assert "could not record" not in run.stderr, run.stderr[-3000:]
    losses = [record["loss"] for record in metrics(tmp_path / "out") if "loss" in record]
    assert len(losses) == 4 and all(np.isfinite(losses)), losses
    if model_type == "bert":
        run = train(*options, "--lr", "1e20", "--warmup", 0, "--checkpoint-steps", 1, "--output", tmp_path / "nan")
        assert run.returncode == 1, run.stderr[-3000:]
        assert "the loss or its gradient is not finite at step" in run.stderr, run.stderr[-3000:]
        # the same with the whole step as one graph: it trains, resumes from a checkpoint (the newest removed, as if
        # the run had been killed before its last step) to the same weights, and stops on a NaN
        import shutil

        from safetensors.torch import load_file
        whole = [*options, "--graph-whole-step", "--lr", "1e-3", "--checkpoint-steps", 1, "--output", tmp_path / "whole"]
        run = train(*whole)
        assert run.returncode == 0 and "could not record" not in run.stderr, run.stderr[-3000:]
        uninterrupted = load_file(tmp_path / "whole" / "model.safetensors")
        shutil.rmtree(tmp_path / "whole" / "checkpoints" / "step-00000012")
        run = train(*whole, "--resume")
        assert run.returncode == 0 and "resuming from" in run.stderr, run.stderr[-3000:]
        assert [record["step"] for record in metrics(tmp_path / "whole") if "loss" in record] == [3, 6, 9, 12]
        resumed = load_file(tmp_path / "whole" / "model.safetensors")
        for name, tensor in uninterrupted.items():  # the embedding sums' order may differ in the last bits
            torch.testing.assert_close(resumed[name], tensor, atol=1e-4, rtol=0, msg=name)
        run = train(*options, "--graph-whole-step", "--lr", "1e20", "--warmup", 0, "--output", tmp_path / "whole-nan")
        assert run.returncode == 1, run.stderr[-3000:]
        assert "the loss or its gradient is not finite at step" in run.stderr, run.stderr[-3000:]

