#!/usr/bin/python3
"""Trains baton's embedded default model: a small DeepSeek-V3 on Shakespeare.

    scripts/setup --train && nice -n 10 /usr/bin/python3 scripts/train_tiny_model.py \
        --out models/tiny-shakespeare

Needs only Debian's python3-torch (1.13, CPU) and python3-numpy; no PyPI. Use
/usr/bin/python3 (a pyenv python on PATH does not see Debian's packages). With
Debian's reference BLAS torch's matmuls run at ~4 GFLOP/s; with OpenBLAS
(`apt-get install libopenblas0-pthread`, which Debian makes the default
libblas.so.3) at ~50-70 GFLOP/s on 2 cores. The committed model took 68
minutes of wall-clock time (54 minutes of CPU time) on baton's 2-core machine
while other builds kept it loaded (load average ~8); on 2 idle cores a step
takes ~2.3 s, about 16 minutes in all. The model card records the times.

What it does, deterministically (fixed seed, fixed data order, 2 threads):

1. Reads ../shared/data/tinyshakespeare.txt (1115394 bytes, ASCII). The first
   floor(0.9 * n) = 1003854 bytes train, the remaining 111540 validate.
2. Learns a byte-level BPE (GPT-2 byte alphabet, --vocab-size tokens incl.
   two special tokens) on the training split and writes it as a Hugging Face
   tokenizer.json (+ tokenizer_config.json) that engine/tokenizer.h reads.
3. Trains a DeepSeek-V3 (MLA with q_lora_rank, a dense first layer, then MoE
   layers with a shared expert, sigmoid routing with a selection bias updated
   the aux-loss-free way, group-limited top-k) with AdamW.
4. Writes config.json, model.safetensors (with the engine's tensor names),
   then reloads the written file and measures bits per byte on the validation
   split (and on tests/data/shakespeare_valid_slice.txt) with the protocol in
   `evaluate` below, which `baton perplexity` reproduces; writes README.md.

Evaluation protocol (see also the model card): ids = Encode(text) without BOS,
as one stream; cut into consecutive chunks of C = max_position_embeddings - 1
ids (the last one shorter); run each chunk as [BOS] + chunk at positions
0..len, a fresh context per chunk; sum -log softmax(logits[j])[chunk[j]] over
every j (the logits at BOS predict chunk[0], ...); bits per byte = total
nats / ln 2 / UTF-8 bytes of the text. Every text token is predicted exactly
once and BOS never is.

Aux-loss-free balancing (DeepSeek-V3, sec. 2.1.2): after every optimizer
step, each MoE layer's e_score_correction_bias[e] += gamma * sign(mean_load -
load[e]), where load[e] counts the tokens of that step's batch routed to
expert e and mean_load = tokens * top_k / n_experts. There is no auxiliary
loss; the bias only changes which experts are chosen, not their weights.

Checkpoints go to --work-dir every --ckpt-every steps; rerun with --resume to
continue a crashed run (the data order is a function of the step, so a resumed
run sees the same batches), or, after the last step, to export and evaluate
again without training. Progress is logged to --work-dir/train.log.
"""

import argparse
import collections
import heapq
import json
import math
import os
import re
import struct
import sys
import time

# OpenBLAS runs its own thread pool; size it before torch loads it.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "2")

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_DATA = os.path.join(ROOT, "..", "shared", "data", "tinyshakespeare.txt")
DEFAULT_SLICE = os.path.join(ROOT, "tests", "data", "shakespeare_valid_slice.txt")

BOS = "<|begin_of_text|>"
EOS = "<|end_of_text|>"

# The pre-tokenizer: GPT-2's split (contractions, words with an optional
# leading space, numbers, punctuation runs, whitespace) written so that
# Python's `re` and PCRE2 (UTF + UCP, as the engine runs it) agree: letters
# are [^\W\d_] instead of \p{L}. On ASCII text, which the whole corpus is,
# the two engines split identically.
SPLIT_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?[^\W\d_]+| ?\d+| ?(?:[^\s\w]|_)+|\s+(?!\S)|\s+"""

# --------------------------------------------------------------------------
# Tokenizer: byte-level BPE
# --------------------------------------------------------------------------


def bytes_to_unicode():
    """GPT-2's map from each byte to a printable character."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


BYTE_TO_CHAR = bytes_to_unicode()
CHAR_TO_BYTE = {c: b for b, c in BYTE_TO_CHAR.items()}
SPLIT_RE = re.compile(SPLIT_PATTERN)


def pretokenize(text):
    """Pieces of `text` as HF's Split(behavior=Isolated) makes them: every
    match and every gap between matches, in order."""
    pieces = []
    last = 0
    for m in SPLIT_RE.finditer(text):
        if m.start() > last:
            pieces.append(text[last:m.start()])
        pieces.append(m.group())
        last = m.end()
    if last < len(text):
        pieces.append(text[last:])
    return pieces


def to_byte_level(piece):
    return "".join(BYTE_TO_CHAR[b] for b in piece.encode("utf-8"))


def train_bpe(text, vocab_size, log):
    """Learns merges on `text` until the vocabulary (256 bytes + merged
    tokens + 2 special tokens) has `vocab_size` entries. Each step merges the
    most frequent adjacent pair (ties: the smallest pair of strings); pair
    counts are updated incrementally for the words that contain the pair."""
    t0 = time.time()
    word_counts = collections.Counter(to_byte_level(p) for p in pretokenize(text))
    words = [list(w) for w in sorted(word_counts)]
    counts = [word_counts["".join(w)] for w in words]
    pair_counts = collections.defaultdict(int)
    where = collections.defaultdict(set)
    for i, w in enumerate(words):
        for a, b in zip(w, w[1:]):
            pair_counts[(a, b)] += counts[i]
            where[(a, b)].add(i)
    heap = [(-c, p) for p, c in pair_counts.items()]
    heapq.heapify(heap)

    vocab = {BYTE_TO_CHAR[b]: b for b in range(256)}
    merges = []
    n_target = vocab_size - 2  # two special tokens at the end
    while len(vocab) < n_target:
        while heap:
            neg, pair = heap[0]
            if pair_counts.get(pair, 0) == -neg and -neg > 0:
                break
            heapq.heappop(heap)
        if not heap:
            break
        neg, pair = heapq.heappop(heap)
        a, b = pair
        merged = a + b
        merges.append(pair)
        if merged not in vocab:  # a string made by an earlier merge keeps its id
            vocab[merged] = len(vocab)
        changed = set()
        for i in sorted(where.pop(pair, ())):
            w = words[i]
            c = counts[i]
            if len(w) < 2:
                continue
            for x, y in zip(w, w[1:]):
                pair_counts[(x, y)] -= c
                changed.add((x, y))
            out = []
            j = 0
            while j < len(w):
                if j + 1 < len(w) and w[j] == a and w[j + 1] == b:
                    out.append(merged)
                    j += 2
                else:
                    out.append(w[j])
                    j += 1
            words[i] = out
            for x, y in zip(out, out[1:]):
                pair_counts[(x, y)] += c
                where[(x, y)].add(i)
                changed.add((x, y))
        pair_counts.pop(pair, None)
        changed.discard(pair)
        for p in changed:
            if pair_counts[p] > 0:
                heapq.heappush(heap, (-pair_counts[p], p))
            else:
                pair_counts.pop(p, None)
    vocab[BOS] = len(vocab)
    vocab[EOS] = len(vocab)
    log(f"bpe: {len(merges)} merges, vocab {len(vocab)}, {len(word_counts)} distinct words, "
        f"{time.time() - t0:.1f}s")
    return vocab, merges


class Tokenizer:
    """Encodes as engine/tokenizer.cc does: pre-tokenize, then per piece apply
    merges by (rank, position) from a heap, as the Hugging Face library."""

    def __init__(self, vocab, merges):
        self.vocab = vocab
        self.merges = merges
        self.id_to_token = {i: t for t, i in vocab.items()}
        self.merge_rank = {}
        for rank, (a, b) in enumerate(merges):
            # A later duplicate replaces an earlier one (as in the engine).
            self.merge_rank[(vocab[a], vocab[b])] = (rank, vocab[a + b])
        self.bos_id = vocab[BOS]
        self.eos_id = vocab[EOS]
        self.cache = {}

    def _bpe(self, piece):
        ids = self.cache.get(piece)
        if ids is not None:
            return ids
        sym_id = [self.vocab[c] for c in to_byte_level(piece)]
        n = len(sym_id)
        prev = list(range(-1, n - 1))
        nxt = list(range(1, n)) + [-1]
        alive = [True] * n
        heap = []

        def push(pos):
            q = nxt[pos]
            if q < 0:
                return
            m = self.merge_rank.get((sym_id[pos], sym_id[q]))
            if m is not None:
                heapq.heappush(heap, (m[0], pos, m[1]))

        for i in range(n - 1):
            push(i)
        while heap:
            rank, pos, new_id = heapq.heappop(heap)
            if not alive[pos] or nxt[pos] < 0:
                continue
            q = nxt[pos]
            m = self.merge_rank.get((sym_id[pos], sym_id[q]))
            if m is None or m[1] != new_id:
                continue
            sym_id[pos] = new_id
            alive[q] = False
            nxt[pos] = nxt[q]
            if nxt[pos] >= 0:
                prev[nxt[pos]] = pos
            if prev[pos] >= 0:
                push(prev[pos])
            push(pos)
        ids = []
        i = 0
        while i >= 0:
            ids.append(sym_id[i])
            i = nxt[i]
        self.cache[piece] = ids
        return ids

    def encode(self, text, add_bos=False):
        ids = [self.bos_id] if add_bos else []
        for piece in pretokenize(text):
            ids.extend(self._bpe(piece))
        return ids

    def decode(self, ids):
        out = bytearray()
        for i in ids:
            t = self.id_to_token[i]
            if t in (BOS, EOS):
                out += t.encode("utf-8")
            else:
                out += bytes(CHAR_TO_BYTE[c] for c in t)
        return out.decode("utf-8", errors="replace")

    def save(self, out_dir):
        added = [{"id": self.vocab[t], "content": t, "single_word": False, "lstrip": False,
                  "rstrip": False, "normalized": False, "special": True} for t in (BOS, EOS)]
        tok = {
            "version": "1.0",
            "truncation": None,
            "padding": None,
            "added_tokens": added,
            "normalizer": None,
            "pre_tokenizer": {
                "type": "Sequence",
                "pretokenizers": [
                    {"type": "Split", "pattern": {"Regex": SPLIT_PATTERN},
                     "behavior": "Isolated", "invert": False},
                    {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False,
                     "use_regex": False},
                ],
            },
            "post_processor": None,
            "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                        "use_regex": True},
            "model": {
                "type": "BPE", "dropout": None, "unk_token": None,
                "continuing_subword_prefix": None, "end_of_word_suffix": None,
                "fuse_unk": False, "byte_fallback": False,
                "vocab": dict(sorted(self.vocab.items(), key=lambda kv: kv[1])),
                "merges": [f"{a} {b}" for a, b in self.merges],
            },
        }
        with open(os.path.join(out_dir, "tokenizer.json"), "w", encoding="utf-8") as f:
            json.dump(tok, f, ensure_ascii=False, indent=1)
            f.write("\n")
        cfg = {
            "add_bos_token": True,
            "add_eos_token": False,
            "bos_token": BOS,
            "eos_token": EOS,
            "clean_up_tokenization_spaces": False,
            "tokenizer_class": "PreTrainedTokenizerFast",
        }
        with open(os.path.join(out_dir, "tokenizer_config.json"), "w", encoding="utf-8") as f:
            json.dump(cfg, f, indent=2)
            f.write("\n")


# --------------------------------------------------------------------------
# Model: DeepSeek-V3 with the engine's (Hugging Face) tensor names
# --------------------------------------------------------------------------


class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rope_tables(cfg, n_pos):
    d = cfg["qk_rope_head_dim"]
    inv_freq = 1.0 / (cfg["rope_theta"] ** (torch.arange(0, d, 2, dtype=torch.float32) / d))
    freqs = torch.outer(torch.arange(n_pos, dtype=torch.float32), inv_freq)
    return torch.cos(freqs), torch.sin(freqs)


def apply_rope(x, cos, sin):
    """Rotates the interleaved pairs (x[2i], x[2i+1]) by pos * inv_freq[i]."""
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2)


def linear(n_in, n_out):
    return nn.Linear(n_in, n_out, bias=False)


class MLA(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        d = cfg["hidden_size"]
        self.h = cfg["num_attention_heads"]
        self.nope = cfg["qk_nope_head_dim"]
        self.rope = cfg["qk_rope_head_dim"]
        self.v = cfg["v_head_dim"]
        self.kv_rank = cfg["kv_lora_rank"]
        eps = cfg["rms_norm_eps"]
        self.q_a_proj = linear(d, cfg["q_lora_rank"])
        self.q_a_layernorm = RMSNorm(cfg["q_lora_rank"], eps)
        self.q_b_proj = linear(cfg["q_lora_rank"], self.h * (self.nope + self.rope))
        self.kv_a_proj_with_mqa = linear(d, self.kv_rank + self.rope)
        self.kv_a_layernorm = RMSNorm(self.kv_rank, eps)
        self.kv_b_proj = linear(self.kv_rank, self.h * (self.nope + self.v))
        self.o_proj = linear(self.h * self.v, d)
        self.scale = (self.nope + self.rope) ** -0.5

    def forward(self, x, cos, sin, mask):
        b, t, _ = x.shape
        q = self.q_b_proj(self.q_a_layernorm(self.q_a_proj(x)))
        q = q.view(b, t, self.h, self.nope + self.rope).transpose(1, 2)
        q_nope, q_pe = q.split([self.nope, self.rope], dim=-1)
        kv = self.kv_a_proj_with_mqa(x)
        latent, k_pe = kv.split([self.kv_rank, self.rope], dim=-1)
        kv = self.kv_b_proj(self.kv_a_layernorm(latent))
        kv = kv.view(b, t, self.h, self.nope + self.v).transpose(1, 2)
        k_nope, v = kv.split([self.nope, self.v], dim=-1)
        q_pe = apply_rope(q_pe, cos, sin)
        k_pe = apply_rope(k_pe.unsqueeze(1), cos, sin)  # one for all heads
        # score = (q_nope . k_nope + q_pe . k_pe) * scale, as one matmul.
        q = torch.cat([q_nope, q_pe], dim=-1) * self.scale
        k = torch.cat([k_nope, k_pe.expand(b, self.h, t, self.rope)], dim=-1)
        dq = self.nope + self.rope
        scores = torch.baddbmm(mask, q.reshape(b * self.h, t, dq),
                               k.reshape(b * self.h, t, dq).transpose(1, 2))
        p = torch.softmax(scores, dim=-1)
        out = torch.bmm(p, v.reshape(b * self.h, t, self.v))
        out = out.view(b, self.h, t, self.v).transpose(1, 2).reshape(b, t, self.h * self.v)
        return self.o_proj(out)


class MLP(nn.Module):
    def __init__(self, d, inner):
        super().__init__()
        self.gate_proj = linear(d, inner)
        self.up_proj = linear(d, inner)
        self.down_proj = linear(inner, d)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Gate(nn.Module):
    """DeepSeek-V3 routing (noaux_tc): sigmoid scores; choice = score + bias;
    keep the topk_group groups with the largest sum of their two best choice
    scores; take the top_k choice scores among them; weights are the unbiased
    scores of those, normalised to 1, times routed_scaling_factor."""

    def __init__(self, cfg):
        super().__init__()
        self.e = cfg["n_routed_experts"]
        self.k = cfg["num_experts_per_tok"]
        self.groups = cfg["n_group"]
        self.topk_group = cfg["topk_group"]
        self.scale = cfg["routed_scaling_factor"]
        self.weight = nn.Parameter(torch.empty(self.e, cfg["hidden_size"]))
        self.register_buffer("e_score_correction_bias", torch.zeros(self.e))

    def forward(self, x):
        s = torch.sigmoid(F.linear(x, self.weight))
        with torch.no_grad():
            choice = s + self.e_score_correction_bias
            n = x.shape[0]
            g = choice.view(n, self.groups, -1)
            group_score = g.topk(2, dim=-1).values.sum(-1)
            keep = group_score.topk(self.topk_group, dim=-1).indices
            drop = torch.ones(n, self.groups, dtype=torch.bool).scatter_(1, keep, False)
            choice = g.masked_fill(drop.unsqueeze(-1), float("-inf")).view(n, self.e)
            idx = choice.topk(self.k, dim=-1).indices
        w = s.gather(1, idx)
        w = w / w.sum(-1, keepdim=True) * self.scale
        return idx, w


class MoE(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        d = cfg["hidden_size"]
        inner = cfg["moe_intermediate_size"]
        self.gate = Gate(cfg)
        self.experts = nn.ModuleList(MLP(d, inner) for _ in range(cfg["n_routed_experts"]))
        self.shared_experts = MLP(d, inner * cfg["n_shared_experts"])
        self.load = None  # tokens per expert of the last forward pass

    def forward(self, x):
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        idx, w = self.gate(x)
        out = self.shared_experts(x)
        flat_idx = idx.reshape(-1)
        order = torch.argsort(flat_idx, stable=True)
        counts = torch.bincount(flat_idx, minlength=len(self.experts))
        self.load = counts
        token_of = order // idx.shape[1]
        w_sorted = w.reshape(-1)[order]
        start = 0
        for e, c in enumerate(counts.tolist()):
            if c == 0:
                continue
            tok = token_of[start:start + c]
            y = self.experts[e](x[tok]) * w_sorted[start:start + c, None]
            out = out.index_add(0, tok, y)
            start += c
        return out.view(shape)


class Block(nn.Module):
    def __init__(self, cfg, layer):
        super().__init__()
        d = cfg["hidden_size"]
        self.input_layernorm = RMSNorm(d, cfg["rms_norm_eps"])
        self.self_attn = MLA(cfg)
        self.post_attention_layernorm = RMSNorm(d, cfg["rms_norm_eps"])
        if layer < cfg["first_k_dense_replace"]:
            self.mlp = MLP(d, cfg["intermediate_size"])
        else:
            self.mlp = MoE(cfg)

    def forward(self, h, cos, sin, mask):
        h = h + self.self_attn(self.input_layernorm(h), cos, sin, mask)
        return h + self.mlp(self.post_attention_layernorm(h))


class Inner(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg["vocab_size"], cfg["hidden_size"])
        self.layers = nn.ModuleList(Block(cfg, i) for i in range(cfg["num_hidden_layers"]))
        self.norm = RMSNorm(cfg["hidden_size"], cfg["rms_norm_eps"])


class DeepseekV3(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.model = Inner(cfg)
        self.lm_head = linear(cfg["hidden_size"], cfg["vocab_size"])
        cos, sin = rope_tables(cfg, cfg["max_position_embeddings"])
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        n = cfg["max_position_embeddings"]
        self.register_buffer("causal_mask", torch.full((n, n), float("-inf")).triu(1),
                             persistent=False)

    def init_weights(self, seed):
        g = torch.Generator().manual_seed(seed)
        n_layers = self.cfg["num_hidden_layers"]
        for name, p in sorted(self.named_parameters()):
            if p.dim() == 1:
                continue  # RMSNorm weights stay 1
            std = 0.02
            if name.endswith("o_proj.weight") or name.endswith("down_proj.weight"):
                std = 0.02 / math.sqrt(2 * n_layers)
            with torch.no_grad():
                p.copy_(torch.randn(p.shape, generator=g) * std)

    def forward(self, ids):
        t = ids.shape[1]
        h = self.model.embed_tokens(ids)
        cos, sin = self.rope_cos[:t], self.rope_sin[:t]
        mask = self.causal_mask[:t, :t]
        for layer in self.model.layers:
            h = layer(h, cos, sin, mask)
        return self.lm_head(self.model.norm(h))

    def moe_layers(self):
        return [layer.mlp for layer in self.model.layers if isinstance(layer.mlp, MoE)]

    def hf_tensors(self):
        """name -> tensor with the engine's names; everything but the gate
        bias in the model dtype (the bias is F32 as in DeepSeek-V3)."""
        return dict(self.state_dict())  # the RoPE tables and mask are not persistent


# --------------------------------------------------------------------------
# safetensors (no package: 8-byte header length, JSON header, raw data)
# --------------------------------------------------------------------------

ST_DTYPES = {torch.float32: "F32", torch.bfloat16: "BF16"}


def write_safetensors(path, tensors):
    header = {"__metadata__": {"format": "pt"}}
    blobs = []
    offset = 0
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        if t.dtype == torch.bfloat16:
            raw = t.view(torch.int16).numpy().tobytes()
        else:
            raw = t.numpy().astype("<f4").tobytes()
        header[name] = {"dtype": ST_DTYPES[t.dtype], "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    hj = json.dumps(header, separators=(",", ":")).encode()
    hj += b" " * ((8 - len(hj) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hj)))
        f.write(hj)
        for raw in blobs:
            f.write(raw)


def read_safetensors(path):
    import numpy as np
    with open(path, "rb") as f:
        data = f.read()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    base = 8 + n
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        a, b = info["data_offsets"]
        raw = data[base + a:base + b]
        if info["dtype"] == "BF16":
            i16 = np.frombuffer(raw, dtype="<i2").astype(np.int32) << 16
            arr = i16.astype("<i4").view("<f4")
        elif info["dtype"] == "F32":
            arr = np.frombuffer(raw, dtype="<f4")
        else:
            raise ValueError(f"{name}: unexpected dtype {info['dtype']}")
        out[name] = torch.from_numpy(arr.copy()).view(info["shape"])
    return out


# --------------------------------------------------------------------------
# Evaluation (the protocol `baton perplexity` reproduces)
# --------------------------------------------------------------------------


@torch.no_grad()
def evaluate(model, tok, text, batch=8, max_chunks=None):
    """Returns (total nats, predicted tokens, UTF-8 bytes). ids =
    encode(text) without BOS, one stream; chunks of ctx-1 ids, each run as
    [BOS] + chunk from position 0; every id of every chunk is predicted."""
    model.eval()
    ctx = model.cfg["max_position_embeddings"]
    ids = tok.encode(text)
    step = ctx - 1
    chunks = [ids[i:i + step] for i in range(0, len(ids), step)]
    if max_chunks is not None:
        chunks = chunks[:max_chunks]
    # Full chunks run in batches; the shorter last chunk runs alone.
    full = [c for c in chunks if len(c) == step]
    batches = [full[i:i + batch] for i in range(0, len(full), batch)]
    batches += [[c] for c in chunks if len(c) != step]
    total = 0.0
    n_tok = 0
    for group in batches:
        x = torch.tensor([[tok.bos_id] + c[:-1] for c in group])
        y = torch.tensor(group)
        logits = model(x).double()
        total += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1),
                                 reduction="sum").item()
        n_tok += y.numel()
    model.train()
    return total, n_tok, len(text.encode("utf-8"))


def bits_per_byte(total_nats, n_bytes):
    return total_nats / math.log(2) / n_bytes


@torch.no_grad()
def sample(model, tok, prompt, n_new, seed, temperature=0.8, top_k=None):
    model.eval()
    g = torch.Generator().manual_seed(seed)
    ids = tok.encode(prompt, add_bos=True)
    ctx = model.cfg["max_position_embeddings"]
    for _ in range(n_new):
        if len(ids) >= ctx:
            break
        logits = model(torch.tensor([ids]))[0, -1].double() / temperature
        if top_k:
            v, _ = logits.topk(top_k)
            logits[logits < v[-1]] = float("-inf")
        ids.append(int(torch.multinomial(torch.softmax(logits, -1), 1, generator=g)))
    model.train()
    return tok.decode(ids[1:])


# --------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------


def model_config(args, vocab_size, bos, eos):
    return {
        "architectures": ["DeepseekV3ForCausalLM"],
        "model_type": "deepseek_v3",
        "vocab_size": vocab_size,
        "hidden_size": args.hidden,
        "intermediate_size": args.dense_inner,
        "moe_intermediate_size": args.moe_inner,
        "num_hidden_layers": args.layers,
        "num_attention_heads": args.heads,
        "num_key_value_heads": args.heads,
        "q_lora_rank": args.q_lora_rank,
        "kv_lora_rank": args.kv_lora_rank,
        "qk_nope_head_dim": args.qk_nope,
        "qk_rope_head_dim": args.qk_rope,
        "v_head_dim": args.v_head,
        "n_routed_experts": args.experts,
        "n_shared_experts": 1,
        "num_experts_per_tok": args.top_k,
        "n_group": args.groups,
        "topk_group": args.topk_group,
        "topk_method": "noaux_tc",
        "scoring_func": "sigmoid",
        "norm_topk_prob": True,
        "routed_scaling_factor": args.routed_scale,
        "first_k_dense_replace": args.dense_layers,
        "moe_layer_freq": 1,
        "num_nextn_predict_layers": 0,
        "hidden_act": "silu",
        "rope_theta": 10000.0,
        "rope_scaling": None,
        "rms_norm_eps": 1e-6,
        "max_position_embeddings": args.ctx,
        "bos_token_id": bos,
        "eos_token_id": eos,
        "tie_word_embeddings": False,
        "attention_bias": False,
        "torch_dtype": "bfloat16" if args.dtype == "bf16" else "float32",
        "use_cache": True,
    }


def lr_at(step, args):
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    frac = (step - args.warmup) / max(1, args.steps - args.warmup)
    return args.min_lr + 0.5 * (args.lr - args.min_lr) * (1 + math.cos(math.pi * min(1.0, frac)))


def batch_offsets(step, args, n_train):
    """The window starts of step `step`: a function of (seed, step) only."""
    g = torch.Generator().manual_seed(args.seed * 1_000_003 + step)
    return torch.randint(0, n_train - args.ctx + 1, (args.batch,), generator=g)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="model directory to write")
    ap.add_argument("--data", default=DEFAULT_DATA)
    ap.add_argument("--slice-out", default=DEFAULT_SLICE,
                    help="where to write the ~20 KB validation slice ('' to skip)")
    ap.add_argument("--work-dir", default="/tmp/tiny-shakespeare-train",
                    help="checkpoints and train.log")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--vocab-size", type=int, default=1024)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--dense-layers", type=int, default=1)
    ap.add_argument("--dense-inner", type=int, default=640)
    ap.add_argument("--moe-inner", type=int, default=128)
    ap.add_argument("--experts", type=int, default=8)
    ap.add_argument("--groups", type=int, default=4)
    ap.add_argument("--topk-group", type=int, default=2)
    ap.add_argument("--top-k", type=int, default=2)
    ap.add_argument("--routed-scale", type=float, default=2.5)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--q-lora-rank", type=int, default=128)
    ap.add_argument("--kv-lora-rank", type=int, default=64)
    ap.add_argument("--qk-nope", type=int, default=32)
    ap.add_argument("--qk-rope", type=int, default=16)
    ap.add_argument("--v-head", type=int, default=32)
    ap.add_argument("--ctx", type=int, default=512, help="max_position_embeddings")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--min-lr", type=float, default=1e-4)
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--bias-gamma", type=float, default=1e-2,
                    help="aux-loss-free bias update speed")
    ap.add_argument("--dtype", choices=["bf16", "f32"], default="bf16",
                    help="weights in model.safetensors (the gate bias is always F32)")
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--ckpt-every", type=int, default=100)
    ap.add_argument("--max-minutes", type=float, default=0,
                    help="stop early after this long (smoke runs; 0 = no limit)")
    args = ap.parse_args()

    os.makedirs(args.work_dir, exist_ok=True)
    os.makedirs(args.out, exist_ok=True)
    log_path = os.path.join(args.work_dir, "train.log")

    def log(msg):
        line = f"[{time.strftime('%H:%M:%S')}] {msg}"
        print(line, flush=True)
        with open(log_path, "a") as f:
            f.write(line + "\n")

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    log(f"args: {vars(args)}")

    with open(args.data, "rb") as f:
        raw = f.read()
    split = len(raw) * 9 // 10
    train_text = raw[:split].decode("utf-8")
    valid_text = raw[split:].decode("utf-8")
    log(f"data: {len(raw)} bytes; train {split}, valid {len(raw) - split}")

    # The test slice: the start of the validation split, cut after the last
    # newline within its first 20000 bytes.
    valid_bytes = raw[split:]
    slice_text = valid_bytes[:valid_bytes.rindex(b"\n", 0, 20000) + 1].decode("utf-8")
    if args.slice_out:
        os.makedirs(os.path.dirname(args.slice_out), exist_ok=True)
        with open(args.slice_out, "w", encoding="utf-8", newline="") as f:
            f.write(slice_text)

    vocab, merges = train_bpe(train_text, args.vocab_size, log)
    tok = Tokenizer(vocab, merges)
    t0 = time.time()
    train_ids = tok.encode(train_text)
    valid_ids = tok.encode(valid_text)
    for name, text, ids in (("train", train_text, train_ids), ("valid", valid_text, valid_ids)):
        assert tok.decode(ids) == text, f"{name}: decode(encode(text)) != text"
        log(f"tokens {name}: {len(ids)} ({len(text.encode()) / len(ids):.3f} bytes/token)")
    log(f"encode + round trip: {time.time() - t0:.1f}s")
    tok.save(args.out)

    cfg = model_config(args, len(vocab), tok.bos_id, tok.eos_id)
    model = DeepseekV3(cfg)
    model.init_weights(args.seed)
    n_params = sum(p.numel() for p in model.parameters())
    n_expert = sum(p.numel() for m in model.moe_layers() for p in m.experts.parameters())
    n_active = n_params - n_expert + n_expert * args.top_k // args.experts
    log(f"model: {n_params} parameters, {n_active} active per token")

    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "embed" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and "embed" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95), eps=1e-8)

    ckpt_path = os.path.join(args.work_dir, "ckpt.pt")
    loss_avg = None
    start_step = 0
    train_seconds = 0.0
    cpu_seconds = 0.0  # CPU time of all threads: what the run costs on a shared machine
    if args.resume and os.path.exists(ckpt_path):
        ck = torch.load(ckpt_path)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        start_step = ck["step"]
        train_seconds = ck["train_seconds"]
        cpu_seconds = ck.get("cpu_seconds", float("nan"))
        loss_avg = ck["loss_avg"]
        for moe, bias in zip(model.moe_layers(), ck["gate_bias"]):
            moe.gate.e_score_correction_bias.copy_(bias)
        log(f"resumed at step {start_step}")

    data = torch.tensor(train_ids, dtype=torch.long)
    bos_col = torch.full((args.batch, 1), tok.bos_id, dtype=torch.long)
    t_start = time.time()
    cpu_start = time.process_time()
    t_last = t_start
    done = start_step
    for step in range(start_step, args.steps):
        off = batch_offsets(step, args, len(data))
        windows = torch.stack([data[o:o + args.ctx] for o in off.tolist()])
        x = torch.cat([bos_col, windows[:, :-1]], dim=1)
        y = windows
        for group in opt.param_groups:
            group["lr"] = lr_at(step, args)
        logits = model(x)
        loss = F.cross_entropy(logits.view(-1, logits.shape[-1]), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        # Aux-loss-free load balancing.
        with torch.no_grad():
            for moe in model.moe_layers():
                load = moe.load.float()
                moe.gate.e_score_correction_bias += args.bias_gamma * torch.sign(load.mean() - load)
        loss_avg = loss.item() if loss_avg is None else 0.95 * loss_avg + 0.05 * loss.item()
        now = time.time()
        if step % 10 == 0 or step == args.steps - 1:
            loads = [m.load.tolist() for m in model.moe_layers()]
            log(f"step {step} loss {loss.item():.4f} avg {loss_avg:.4f} lr {lr_at(step, args):.2e} "
                f"gnorm {gnorm:.2f} {(now - t_last) / (10 if step else 1):.2f}s/step "
                f"load[-1] {loads[-1]}")
            t_last = now
        done = step + 1
        elapsed = train_seconds + (now - t_start)
        if done % args.eval_every == 0:
            nats, n, nb = evaluate(model, tok, valid_text, max_chunks=48)
            log(f"step {done}: valid (first 48 chunks) {nats / n:.4f} nats/token, "
                f"{bits_per_byte(nats, nb * n / len(valid_ids)):.4f} bits/byte approx; "
                f"{elapsed / 60:.1f} min")
        if done % args.ckpt_every == 0 or done == args.steps:
            torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": done,
                        "train_seconds": elapsed, "loss_avg": loss_avg,
                        "cpu_seconds": cpu_seconds + time.process_time() - cpu_start,
                        "gate_bias": [m.gate.e_score_correction_bias for m in model.moe_layers()]},
                       ckpt_path + ".tmp")
            os.replace(ckpt_path + ".tmp", ckpt_path)
        if args.max_minutes and (now - t_start) > args.max_minutes * 60:
            log(f"stopping after {done} steps (--max-minutes)")
            break
    train_seconds += time.time() - t_start
    cpu_seconds += time.process_time() - cpu_start
    log(f"training: {train_seconds / 60:.1f} min wall clock, {cpu_seconds / 60:.1f} min CPU time")

    # Export, then evaluate what was written.
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    tensors = {}
    for name, t in model.hf_tensors().items():
        tensors[name] = t.float() if name.endswith("e_score_correction_bias") else t.to(dtype)
    st_path = os.path.join(args.out, "model.safetensors")
    write_safetensors(st_path, tensors)
    with open(os.path.join(args.out, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)
        f.write("\n")

    loaded = DeepseekV3(cfg)
    loaded.load_state_dict(read_safetensors(st_path), strict=True)
    nats, n, nb = evaluate(loaded, tok, valid_text)
    bpb = bits_per_byte(nats, nb)
    s_nats, s_n, s_nb = evaluate(loaded, tok, slice_text)
    s_bpb = bits_per_byte(s_nats, s_nb)
    log(f"valid: {nats / n:.4f} nats/token over {n} tokens, {nb} bytes: {bpb:.4f} bits/byte")
    log(f"slice: {s_nats / s_n:.4f} nats/token over {s_n} tokens, {s_nb} bytes: "
        f"{s_bpb:.4f} bits/byte")
    samples = [sample(loaded, tok, p, 120, seed=args.seed + i)
               for i, p in enumerate(("ROMEO:\n", "First Citizen:\n"))]
    for s in samples:
        log("sample:\n" + s)
    results = {
        "valid": {"nats": nats, "tokens": n, "bytes": nb, "bits_per_byte": bpb,
                  "nats_per_token": nats / n},
        "slice": {"nats": s_nats, "tokens": s_n, "bytes": s_nb, "bits_per_byte": s_bpb,
                  "nats_per_token": s_nats / s_n},
        "train_minutes": train_seconds / 60, "cpu_minutes": cpu_seconds / 60, "steps": done, "params": n_params,
        "active_params": n_active, "file_bytes": os.path.getsize(st_path),
        "train_tokens": len(train_ids), "valid_tokens": len(valid_ids),
        "samples": samples, "merges": [f"{a} {b}" for a, b in merges],
        "train_bytes_per_token": len(train_text.encode()) / len(train_ids),
        "final_train_loss": loss_avg,
    }
    with open(os.path.join(args.work_dir, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    write_model_card(args, cfg, results, {"bytes": len(raw), "split": split})
    log(f"wrote {args.out}")


def write_model_card(args, cfg, r, data_info):
    v, sl = r["valid"], r["slice"]
    c = cfg
    lines = f"""# tiny-shakespeare

baton's embedded default model: a {r["params"] / 1e6:.2f}M-parameter model with the DeepSeek-V3
architecture (MLA + DeepSeekMoE), trained from scratch on Shakespeare's plays. `baton serve` loads it
when no `--model` is given. It writes plausible-looking Shakespeare pastiche, nothing more; it
exists so that the engine's whole path (tokenizer, MLA, routing, KV cache, sampling, streaming)
runs on a real trained checkpoint that fits in the repository.

Written by `scripts/train_tiny_model.py` (regenerate everything in this directory with
`scripts/setup --train && nice -n 10 /usr/bin/python3 scripts/train_tiny_model.py --out models/tiny-shakespeare`).

## Data

- `tinyshakespeare.txt` ({data_info["bytes"]} bytes, ASCII; in baton's shared data as
  `../shared/data/tinyshakespeare.txt`): about 40,000 lines from Shakespeare's plays, the corpus of
  Andrej Karpathy's char-rnn.
- Public domain: William Shakespeare's plays were written before his death in 1616 and are in
  the public domain worldwide; the file is a plain-text excerpt of them.
- Split by bytes: the first floor(0.9 * {data_info["bytes"]}) = {data_info["split"]} bytes train (the
  tokenizer and the model); the last {data_info["bytes"] - data_info["split"]} bytes (from byte offset
  {data_info["split"]}) validate.
- `tests/data/shakespeare_valid_slice.txt`: the first {sl["bytes"]} bytes of the validation split
  (corpus bytes [{data_info["split"]}, {data_info["split"] + sl["bytes"]}): the validation split up to and
  including its last newline within its first 20000 bytes), for tests.

## Tokenizer

Byte-level BPE learned on the training split: {c["vocab_size"]} tokens = 256 byte tokens (GPT-2's
byte-to-character alphabet, ids 0..255 in byte order) + {c["vocab_size"] - 258} merged tokens (ids in
merge order; {len(r["merges"])} merges) + `<|begin_of_text|>` (BOS, id {c["bos_token_id"]}) and
`<|end_of_text|>` (EOS, id {c["eos_token_id"]}), both special added tokens. Training: the most frequent
adjacent pair over the pre-tokenized words of the training split is merged (ties: the smallest
pair of strings), until the vocabulary is full.

Pre-tokenizer: `Split` (Isolated) with the regex below, then `ByteLevel` without its own regex
and without a prefix space. The regex is GPT-2's with letters written `[^\\W\\d_]` so that Python's
`re` (the trainer) and PCRE2 (the engine) split identically on ASCII text:

```
{SPLIT_PATTERN}
```

`tokenizer_config.json` sets `add_bos_token: true` (prompts start with BOS, as in training).
Bytes per token: {r["train_bytes_per_token"]:.3f} on the training split, {v["bytes"] / v["tokens"]:.3f}
on the validation split.

## Model

| field | value |
| --- | --- |
| parameters | {r["params"]} ({r["active_params"]} active per token) |
| `model.safetensors` | {r["file_bytes"]} bytes; {"BF16" if args.dtype == "bf16" else "F32"} weights, F32 `e_score_correction_bias` |
| layers | {c["num_hidden_layers"]}: {c["first_k_dense_replace"]} dense (intermediate {c["intermediate_size"]}), then {c["num_hidden_layers"] - c["first_k_dense_replace"]} MoE |
| hidden | {c["hidden_size"]} |
| MLA | {c["num_attention_heads"]} heads, q_lora_rank {c["q_lora_rank"]}, kv_lora_rank {c["kv_lora_rank"]}, qk_nope_head_dim {c["qk_nope_head_dim"]}, qk_rope_head_dim {c["qk_rope_head_dim"]}, v_head_dim {c["v_head_dim"]} |
| MoE | {c["n_routed_experts"]} routed experts in {c["n_group"]} groups (topk_group {c["topk_group"]}), {c["num_experts_per_tok"]} per token, {c["n_shared_experts"]} shared expert, moe_intermediate_size {c["moe_intermediate_size"]} |
| routing | sigmoid scores, `noaux_tc` (bias-corrected choice, group-limited), norm_topk_prob, routed_scaling_factor {c["routed_scaling_factor"]} |
| RoPE | theta {c["rope_theta"]:g}, interleaved pairs, no rope_scaling |
| context | max_position_embeddings {c["max_position_embeddings"]} (training windows are exactly this long) |
| other | RMSNorm eps {c["rms_norm_eps"]:g}, untied lm_head, no MTP layer |

## Training

- {r["steps"]} AdamW steps (betas 0.9/0.95, weight decay {args.weight_decay} on matrices other than the
  embedding), batch {args.batch} windows x {args.ctx} tokens, peak learning rate {args.lr:g} with
  {args.warmup} warm-up steps and cosine decay to {args.min_lr:g}, gradient clipping at 1.0; fp32; seed
  {args.seed}; {args.threads} threads. {r["steps"] * args.batch * args.ctx / r["train_tokens"]:.1f} epochs over the
  {r["train_tokens"]} training tokens.
- Each window is `[BOS]` + {args.ctx - 1} consecutive training tokens starting at a uniformly random
  offset (a function of seed and step), and every position predicts the next token, so the
  model always sees BOS at position 0, as in serving and in the evaluation below.
- Load balancing without an auxiliary loss (DeepSeek-V3 section 2.1.2): after every step, each MoE
  layer's `e_score_correction_bias[e] += {args.bias_gamma:g} * sign(mean_load - load[e])`, where
  `load[e]` is the number of the step's tokens routed to expert e. The bias only changes which
  experts are selected; the routing weights use the unbiased sigmoid scores.
- Training took {r["train_minutes"]:.1f} minutes of wall-clock time and {r["cpu_minutes"]:.1f} minutes of CPU time (both
  threads together), under `nice -n 10` on baton's 2-core development machine while other builds
  ran, with Debian's torch {torch.__version__} on OpenBLAS (`libopenblas0-pthread`; Debian's reference
  BLAS is ~15x slower). Final training loss (moving average) {r["final_train_loss"]:.3f} nats/token.
  Training is deterministic for a given BLAS and thread count; another BLAS gives a slightly
  different model.

## Results

Measured by the training script on the weights as written to `model.safetensors` (upcast to
fp32), with the protocol below:

| text | tokens | bytes | nats/token | bits per byte |
| --- | --- | --- | --- | --- |
| validation split | {v["tokens"]} | {v["bytes"]} | {v["nats_per_token"]:.4f} | **{v["bits_per_byte"]:.4f}** |
| `tests/data/shakespeare_valid_slice.txt` | {sl["tokens"]} | {sl["bytes"]} | {sl["nats_per_token"]:.4f} | **{sl["bits_per_byte"]:.4f}** |

## Evaluation protocol (what `baton perplexity` reproduces)

1. `ids = Encode(text)` with this tokenizer, **without** BOS, the whole file as one string (one
   stream).
2. Cut `ids` into consecutive chunks of `C = max_position_embeddings - 1 = {c["max_position_embeddings"] - 1}` ids; the last
   chunk holds the remaining `len(ids) mod C` ids (when that is not 0).
3. Each chunk is a fresh sequence (empty KV cache): input `[BOS] + chunk[0 .. n-2]` at positions
   `0 .. n-1` (n = the chunk's length). The logits at position j predict `chunk[j]`, so every id of
   every chunk is predicted exactly once (the first id of a chunk from BOS alone) and BOS itself
   is never predicted. `NLL += -log_softmax(logits[j])[chunk[j]]` in nats (logits in fp32, the
   sum in fp64).
4. `bits_per_byte = NLL / ln(2) / bytes`, where bytes is the UTF-8 byte count of the whole text;
   `tokens` is `len(ids)` (the number of predicted tokens; BOS not counted).

## Samples

Temperature 0.8, seeds {args.seed} and {args.seed + 1}, 120 tokens, from the prompts `ROMEO:\\n` and `First Citizen:\\n` (BOS prepended):

"""
    for s in r["samples"]:
        lines += "```\n" + s.rstrip("\n") + "\n```\n\n"
    with open(os.path.join(args.out, "README.md"), "w") as f:
        f.write(lines.rstrip("\n") + "\n")


if __name__ == "__main__":
    sys.exit(main())
