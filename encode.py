"""Embed sentences and compare them.

With no arguments, runs the example of the Sentence-BERT documentation: two lists of sentences,
each pair printed with its cosine similarity. With --input, writes the embeddings of a file's lines.
With --search QUERY... --corpus FILE, prints each query's --top-k most similar lines of FILE: the queries
embedded with the model's "query" prompt and the lines with its "document" prompt, where it has them (as
sentence-transformers' encode_query and encode_document; EmbeddingGemma, Qwen3-Embedding and others are trained so).
With --mine FILE, prints the --top-k most similar pairs of lines in FILE (paraphrase mining).
--prompt-name or --prompt puts a prompt in front of the texts (of --search: the queries').
"""

import argparse
import sys
from pathlib import Path

import numpy as np

from minisbert import SentenceTransformer, cos_sim, paraphrase_mining_embeddings, semantic_search
from minisbert.checkpoint import DEFAULT_MODEL
from minisbert.cli import HelpFormatter, run

SENTENCES1 = ["The cat sits outside", "A man is playing guitar", "The new movie is awesome"]
SENTENCES2 = ["The dog plays in the garden", "A woman watches TV", "The new movie is so great"]


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help="a model folder, a folder under weights/, or a Hugging Face hub id")
    parser.add_argument("--input", help="a UTF-8 text file with one text per line, or - for standard input")
    parser.add_argument("--output", help="where --input's embeddings go, as a float32 .npy array (N, dim)")
    parser.add_argument("--search", nargs="+", metavar="QUERY", help="queries to look up in --corpus")
    parser.add_argument("--corpus", help="with --search: a UTF-8 text file, one text per line, or - for standard input")
    parser.add_argument("--mine", metavar="FILE", help="find the most similar pairs of lines in FILE (or - for stdin)")
    parser.add_argument("--top-k", type=int, default=10, help="hits per query for --search, pairs for --mine")
    prompts = parser.add_mutually_exclusive_group()
    prompts.add_argument("--prompt-name", help="a prompt of the model's config_sentence_transformers.json, put in front "
                                               "of each text (of --search: each query)")
    prompts.add_argument("--prompt", help="a text put in front of each text (of --search: each query)")
    parser.add_argument("--batch-size", type=int, default=32, help="texts per forward pass")
    parser.add_argument("--normalize", action="store_true", help="scale each embedding to unit length")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16", "int8", "auto"],
                        help="arithmetic of the encoder: fp32, bf16 (CPU or GPU; fast only on CPUs with AMX, or AVX-512 "
                             "bf16 on AMD's), fp16 (GPU; on the CPU no faster than fp32), int8 (the linear layers, x86 "
                             "CPUs; costs some accuracy, see the README), or auto: bf16 where it is fast, else fp32")
    parser.add_argument("--precision", default="float32", choices=["float32", "int8", "uint8", "binary", "ubinary"],
                        help="--input's output, as sentence-transformers' precision: float32, or quantized to int8 / "
                             "uint8 (ranges from the file's own embeddings) or to bits packed in bytes (binary, "
                             "ubinary)")
    args = parser.parse_args()
    if args.output and not args.input:
        parser.error("--output needs --input")
    if args.precision != "float32" and not args.input:
        parser.error("--precision quantizes --input's embeddings; search and mining use float32")
    if args.input and not args.output:
        parser.error("--input needs --output FILE.npy")
    if bool(args.search) != bool(args.corpus):
        parser.error("--search and --corpus go together")
    if sum(map(bool, (args.input, args.search, args.mine))) > 1:
        parser.error("choose one of --input, --search and --mine")
    for name in ("top_k", "batch_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, not {getattr(args, name)}")
    if args.output:
        output = Path(args.output)
        if output.is_dir():
            parser.error(f"--output {args.output} is a folder; name the .npy file to write")
        if not output.parent.is_dir():
            parser.error(f"--output {args.output}: the folder {output.parent} does not exist")
    return args


def read_lines(path: str) -> list[str]:
    """One text per line. Lines end at \\n (or \\r\\n) only: other characters that str.splitlines() breaks at
    (form feed, U+2028, ...) stay inside a text, so row i of the output is line i + 1 of the file."""
    if path == "-":
        name, data = "standard input", sys.stdin.buffer.read()
    elif Path(path).is_dir():
        raise ValueError(f"{path} is a folder, not a text file")
    else:
        name, data = path, Path(path).read_bytes()
    try:
        text = data.decode("utf-8-sig")  # a byte-order mark is dropped
    except UnicodeDecodeError as error:
        raise ValueError(f"{name}: not UTF-8 text (byte {error.start} is {data[error.start:error.start + 1]!r})") from None
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return [line.removesuffix("\r") for line in lines]


def search(model, queries: list[str], corpus_path: str, top_k: int, options: dict, prompts: dict):
    corpus = read_lines(corpus_path)
    corpus_embeddings = model.encode_document(corpus, show_progress_bar=len(corpus) > 1000, convert_to_tensor=True,
                                              **options)
    query_embeddings = model.encode_query(queries, convert_to_tensor=True, **options, **prompts)
    for query, hits in zip(queries, semantic_search(query_embeddings, corpus_embeddings, top_k=top_k)):
        print(f"Query: {query}")
        for hit in hits:
            print(f"  {hit['score']:.4f}\t[{hit['corpus_id']}] {corpus[hit['corpus_id']]}")


def mine(model, path: str, top_k: int, options: dict):
    sentences = read_lines(path)
    large = len(sentences) > 1000
    embeddings = model.encode(sentences, show_progress_bar=large, convert_to_tensor=True, **options)
    # a pair among the top_k overall is among the top_k neighbours of both its sentences
    for score, i, j in paraphrase_mining_embeddings(embeddings, top_k=top_k, max_pairs=top_k, show_progress_bar=large):
        print(f"{score:.4f}\t[{i}] {sentences[i]}\t[{j}] {sentences[j]}")


def main():
    args = parse_args()
    model = SentenceTransformer(args.model, device=args.device)
    options = dict(batch_size=args.batch_size, normalize_embeddings=args.normalize, dtype=args.dtype)
    prompts = dict(prompt_name=args.prompt_name, prompt=args.prompt)
    if args.search:
        return search(model, args.search, args.corpus, args.top_k, options, prompts)
    options.update(prompts)
    if args.mine:
        return mine(model, args.mine, args.top_k, options)
    if args.input:
        texts = read_lines(args.input)
        embeddings = model.encode(texts, show_progress_bar=len(texts) > 10 * args.batch_size, precision=args.precision,
                                  **options)
        with open(args.output, "wb") as f:  # np.save(name) would add ".npy" to a name without it
            np.save(f, embeddings)
        truncated = sum(n > model.max_seq_length for n in model.count_tokens(texts))
        if truncated:
            print(f"note: {truncated} of {len(texts)} texts were longer than max_seq_length "
                  f"({model.max_seq_length} tokens) and were truncated", file=sys.stderr)
        print(f"wrote {embeddings.shape[0]} embeddings of dimension {embeddings.shape[1]} to {args.output}")
        return
    embeddings1 = model.encode(SENTENCES1, **options)
    embeddings2 = model.encode(SENTENCES2, **options)
    scores = cos_sim(embeddings1, embeddings2)
    for i, (sentence1, sentence2) in enumerate(zip(SENTENCES1, SENTENCES2)):
        print(f"{sentence1} \t\t {sentence2} \t\t Score: {scores[i][i]:.4f}")


if __name__ == "__main__":
    run(main, "encode.py")
