"""Calls baton.v1.Inference/Generate with Python's grpcio and prints the stream.

Usage: python_client.py HOST:PORT   (stubs from the public proto on PYTHONPATH)
It sends the golden tiny-a prompt (tests/data/golden/tiny-a) greedily.
"""
import json
import struct
import sys
from pathlib import Path

import grpc
from baton.v1 import inference_pb2, inference_pb2_grpc


def golden_prompt():
    path = Path(__file__).resolve().parent.parent / "data/golden/tiny-a/golden.safetensors"
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    entry = header["input_ids"]
    begin, end = entry["data_offsets"]
    raw = data[8 + n + begin : 8 + n + end]
    return list(struct.unpack(f"<{len(raw) // 8}q", raw))


def main():
    channel = grpc.insecure_channel(sys.argv[1])
    stub = inference_pb2_grpc.InferenceStub(channel)
    request = inference_pb2.GenerateRequest(
        token_ids=inference_pb2.TokenIds(ids=golden_prompt()),
        sampling=inference_pb2.SamplingParams(max_tokens=9, logprobs=2),
    )
    tokens, finish = [], None
    for chunk in stub.Generate(request, timeout=30):
        tokens += [t.id for t in chunk.tokens]
        if chunk.finish_reason:
            finish = inference_pb2.FinishReason.Name(chunk.finish_reason)
    print("tokens:", " ".join(map(str, tokens)), "")
    print("finish:", finish)


if __name__ == "__main__":
    main()
