"""Encoding in several processes, one per device, as sentence-transformers' multi-process pool does it:
`start_multi_process_pool(devices)`, `encode(..., pool=pool)`, `stop_multi_process_pool(pool)`, or
`encode(..., device=["cuda:0", "cuda:1"])`, which starts and stops a pool around one call. A worker that stops
(killed, out of memory, crashed) while it holds a chunk is an error that names it, not a wait without end."""

import math
import os
import queue

import torch
import torch.multiprocessing as mp


def start_pool(model, target_devices: list[str] | None = None) -> dict:
    """One process per device (default: each GPU, else 4 on the CPU), each with the model in shared memory."""
    if target_devices is None:
        target_devices = ([f"cuda:{i}" for i in range(torch.cuda.device_count())] if torch.cuda.is_available()
                          else ["cpu"] * 4)
    if not target_devices:
        raise ValueError("start_multi_process_pool: no target devices")
    model.to("cpu")
    model.share_memory()
    context = mp.get_context("spawn")
    inputs, outputs = context.Queue(), context.Queue()
    processes = [context.Process(target=_worker, args=(str(device), model, inputs, outputs), daemon=True)
                 for device in target_devices]
    for process in processes:
        process.start()
    return {"input": inputs, "output": outputs, "processes": processes, "devices": [str(d) for d in target_devices]}


def stop_pool(pool: dict) -> None:
    for process in pool["processes"]:
        process.terminate()
    for process in pool["processes"]:
        process.join()
        process.close()
    pool["input"].close()
    pool["output"].close()


def _worker(device: str, model, inputs, outputs) -> None:
    while True:
        chunk, sentences, options = inputs.get()
        outputs.put(("taken", chunk, os.getpid()))  # so that the caller knows whose end loses which chunk
        try:
            result = model.encode(sentences, device=device, convert_to_tensor=True, precision="float32", **options)
            result = result.cpu() if isinstance(result, torch.Tensor) else [_to_cpu(item) for item in result]
            outputs.put(("done", chunk, result, None))
        except Exception as error:  # sent back, raised by the caller
            outputs.put(("done", chunk, None, error))


def collect(pool: dict, count: int, wait: float = 1.0) -> list[tuple]:
    """The (chunk, result, error) of chunks 0..count-1, in order. Between messages, every `wait` seconds, checks the
    workers: one that stopped while it held a chunk, or all of them stopped, is a RuntimeError."""
    results, holders = {}, {}  # chunk -> (chunk, result, error); chunk -> pid of the worker that took it
    while len(results) < count:
        try:
            message = pool["output"].get(timeout=wait)
        except queue.Empty:
            _check_workers(pool, {chunk: pid for chunk, pid in holders.items() if chunk not in results})
            continue
        if message[0] == "taken":
            holders[message[1]] = message[2]
        else:
            results[message[1]] = message[1:]
    return [results[chunk] for chunk in range(count)]


def _check_workers(pool: dict, held: dict[int, int]) -> None:
    devices = pool.get("devices") or [f"process {i}" for i in range(len(pool["processes"]))]
    stopped = [(process, device) for process, device in zip(pool["processes"], devices) if not process.is_alive()]
    for process, device in stopped:
        lost = sorted(chunk for chunk, pid in held.items() if pid == process.pid)
        if lost:
            raise RuntimeError(f"the worker process on {device} stopped (exit code {process.exitcode}) while it "
                               f"encoded chunk {lost[0]} of the texts; stop the pool and start a new one")
    if stopped and len(stopped) == len(pool["processes"]):
        codes = ", ".join(f"{device}: {process.exitcode}" for process, device in stopped)
        raise RuntimeError(f"every worker process of the pool has stopped (exit codes {codes}); start a new pool")


def _to_cpu(item):
    return {k: v.cpu() for k, v in item.items()} if isinstance(item, dict) else item.cpu()


def encode_in_processes(model, sentences: list[str], single: bool, pool: dict | None, devices, chunk_size: int | None,
                        precision, convert_to_numpy, convert_to_tensor, **options):
    """encode() over a pool (or over a pool started for `devices` and stopped after), in chunks of `chunk_size`."""
    from .model import _convert  # the same conversion as encode() in one process

    own_pool = pool is None
    if own_pool:
        pool = start_pool(model, list(devices))
    try:
        if chunk_size is None:
            chunk_size = max(1, min(math.ceil(len(sentences) / len(pool["processes"]) / 10), 5000))
        chunks = [sentences[start:start + chunk_size] for start in range(0, len(sentences), chunk_size)]
        for i, chunk in enumerate(chunks):
            pool["input"].put((i, chunk, options))
        results = collect(pool, len(chunks))
    finally:
        if own_pool:
            stop_pool(pool)
    for _, _, error in results:
        if error is not None:
            raise error
    if options.get("output_value", "sentence_embedding") != "sentence_embedding":
        combined = [item for _, result, _ in results for item in result]
    elif results:
        combined = _convert(torch.cat([result for _, result, _ in results]), precision, convert_to_numpy,
                            convert_to_tensor)
    else:
        combined = _convert(torch.empty(0, model.get_sentence_embedding_dimension()), precision, convert_to_numpy,
                            convert_to_tensor)
    return combined[0] if single else combined
