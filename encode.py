"""Embed sentences and compare them.

With no arguments, runs the example of the Sentence-BERT documentation: two lists of sentences,
each pair printed with its cosine similarity. With --input, writes the embeddings of a file's lines.
"""

import argparse
import sys

import numpy as np

from minisbert import SentenceTransformer, cos_sim
from minisbert.checkpoint import DEFAULT_MODEL

SENTENCES1 = ["The cat sits outside", "A man is playing guitar", "The new movie is awesome"]
SENTENCES2 = ["The dog plays in the garden", "A woman watches TV", "The new movie is so great"]


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help="a model folder, a folder under weights/, or a Hugging Face hub id (default: %(default)s)")
    parser.add_argument("--input", help="a UTF-8 text file with one text per line, or - for standard input")
    parser.add_argument("--output", help="where --input's embeddings go, as a float32 .npy array (N, dim)")
    parser.add_argument("--batch-size", type=int, default=32, help="texts per forward pass (default: %(default)s)")
    parser.add_argument("--normalize", action="store_true", help="scale each embedding to unit length")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: %(default)s)")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"],
                        help="arithmetic of the encoder: fp32, bf16 (CPU or GPU) or fp16 (GPU) (default: %(default)s)")
    args = parser.parse_args()
    if args.output and not args.input:
        parser.error("--output needs --input")
    if args.input and not args.output:
        parser.error("--input needs --output FILE.npy")
    return args


def read_lines(path: str) -> list[str]:
    if path == "-":
        return sys.stdin.read().splitlines()
    with open(path, encoding="utf-8") as f:
        return f.read().splitlines()


def main():
    args = parse_args()
    model = SentenceTransformer(args.model, device=args.device)
    options = dict(batch_size=args.batch_size, normalize_embeddings=args.normalize, precision=args.precision)
    if args.input:
        texts = read_lines(args.input)
        embeddings = model.encode(texts, show_progress_bar=len(texts) > 10 * args.batch_size, **options)
        np.save(args.output, embeddings)
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
    try:
        main()
    except (FileNotFoundError, ValueError, TypeError) as error:
        sys.exit(f"encode.py: {error}")
