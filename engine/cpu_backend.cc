#include "engine/cpu_backend.h"

#include <algorithm>
#include <cmath>

#include "engine/rope.h"
#include "engine/status_macros.h"

namespace baton {
namespace {

inline float Silu(float x) { return x / (1.0f + std::exp(-x)); }

// SwiGLU between a MLP's two products, in place: h[r][d] = silu(gate) * up
// for `rows` rows of [gate (inter) | up (inter)].
void SwiGlu(float* h, int64_t rows, int64_t inter) {
  for (int64_t r = 0; r < rows; ++r, h += 2 * inter) {
    for (int64_t d = 0; d < inter; ++d) h[d] = Silu(h[d]) * h[inter + d];
  }
}

template <typename T>
void EnsureSize(std::vector<T>& v, size_t n) {
  if (v.size() < n) v.resize(n);
}

}  // namespace

CpuBackend::CpuBackend(const CpuBackendOptions& options)
    : requested_precision_(options.precision),
      attention_piece_rows_(std::max<int64_t>(1, options.attention_piece_rows)) {}

absl::Status CpuBackend::Prepare(const ModelConfig& config, ModelWeights& weights) {
  config_ = config;
  inv_freq_ = RopeInvFreq(config_);
  cos_sin_scale_ = RopeCosSinScale(config_);
  softmax_scale_ = static_cast<float>(config_.softmax_scale());
  // BF16 only where it runs as BF16: the effective precision is part of a
  // worker's identity in disaggregated serving.
  precision_ = requested_precision_ == kernels::Precision::kBf16 && kernels::HasBf16DotProducts()
                   ? kernels::Precision::kBf16
                   : kernels::Precision::kF32;
  // The kernels read weights fastest in panels. The per-head slices of the
  // MLA up-projections are read from row h * dim, which must start a panel.
  auto pack = [](Matrix& m) {
    if (!m.empty() && !m.panels) m = m.ToPanels();
  };
  for (LayerWeights& layer : weights.layers) {
    AttentionWeights& a = layer.attn;
    for (Matrix* m : {&a.q_a, &a.q_b, &a.kv_a, &a.o}) pack(*m);
    if (config.kv_lora_rank % kPanelRows == 0) pack(a.k_up_t);
    if (config.v_head_dim % kPanelRows == 0) pack(a.v_up);
    auto pack_mlp = [&](MlpWeights& mlp) {
      pack(mlp.gate_up);
      pack(mlp.down);
    };
    if (layer.is_moe) {
      pack(layer.moe.router);
      pack_mlp(layer.moe.shared);
      for (MlpWeights& e : layer.moe.experts) pack_mlp(e);
    } else {
      pack_mlp(layer.dense);
    }
  }
  // A tied head is the embedding; At() reads either layout.
  pack(weights.lm_head.empty() ? weights.embed : weights.lm_head);
  embed_ = &weights.embed;
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<KvMemory>> CpuBackend::AllocateKv(size_t bytes) {
  return std::make_unique<HostKvMemory>(bytes);
}

absl::Status CpuBackend::Begin(const ForwardTokens& tokens, ThreadPool& pool) {
  tokens_ = &tokens;
  pool_ = &pool;
  const int64_t T = tokens.count(), hidden = config_.hidden_size;
  EnsureSize(ws_.x, T * hidden);
  EnsureSize(ws_.xn, T * hidden);
  EnsureSize(ws_.out, T * hidden);
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t d = 0; d < hidden; ++d) ws_.x[t * hidden + d] = embed_->At(tokens.ids[t], d);
  }
  return absl::OkStatus();
}

absl::Status CpuBackend::Norm(const Vector& weight) {
  const int64_t hidden = config_.hidden_size;
  for (int64_t i = 0; i < tokens_->count(); ++i) {
    kernels::RmsNorm(&ws_.x[i * hidden], weight.data(), hidden, config_.rms_norm_eps,
                     &ws_.xn[i * hidden]);
  }
  return absl::OkStatus();
}

absl::Status CpuBackend::AddOut() {
  const int64_t n = tokens_->count() * config_.hidden_size;
  for (int64_t i = 0; i < n; ++i) ws_.x[i] += ws_.out[i];
  return absl::OkStatus();
}

absl::Status CpuBackend::Logits(const std::vector<int64_t>& rows, const Vector& final_norm,
                                const Matrix& head, std::vector<float>* logits) {
  const int64_t hidden = config_.hidden_size, n = static_cast<int64_t>(rows.size());
  for (int64_t r = 0; r < n; ++r) {
    kernels::RmsNorm(&ws_.x[rows[r] * hidden], final_norm.data(), hidden, config_.rms_norm_eps,
                     &ws_.xn[r * hidden]);
  }
  logits->resize(n * head.rows);
  kernels::MatMul(ws_.xn.data(), hidden, n, head, logits->data(), head.rows, *pool_, precision_);
  return absl::OkStatus();
}

absl::Status CpuBackend::Attention(int layer, const AttentionWeights& a, KvCache& cache,
                                   const LayerKvHook* on_layer_kv) {
  const ModelConfig& c = config_;
  Workspace& ws = ws_;
  ThreadPool& pool = *pool_;
  const ForwardTokens& tokens = *tokens_;
  if (cache.memory().host_data() == nullptr) {
    return absl::InvalidArgumentError("the CPU backend needs a KV cache in host memory");
  }
  const int64_t T = tokens.count(), hidden = c.hidden_size, heads = c.num_attention_heads;
  const int64_t nope = c.qk_nope_head_dim, rope = c.qk_rope_head_dim, lora = c.kv_lora_rank;
  const int64_t qk = nope + rope, width = lora + rope, vdim = c.v_head_dim;

  // The two products of the normed input, queries' (compressed, or whole
  // without q_lora_rank) and the compressed KV, in one fork-join.
  EnsureSize(ws.q, T * heads * qk);
  EnsureSize(ws.kv, T * width);
  const int64_t qr = c.q_lora_rank;
  if (qr > 0) EnsureSize(ws.q_a, T * qr);
  const kernels::Product query_in =
      qr > 0 ? kernels::Product{ws.xn.data(), hidden, T, &a.q_a, ws.q_a.data(), qr}
             : kernels::Product{ws.xn.data(), hidden, T, &a.q_b, ws.q.data(), heads * qk};
  kernels::MatMulMany({query_in, {ws.xn.data(), hidden, T, &a.kv_a, ws.kv.data(), width}}, pool,
                      precision_);
  if (qr > 0) {
    for (int64_t i = 0; i < T; ++i) {
      kernels::RmsNorm(&ws.q_a[i * qr], a.q_a_norm.data(), qr, c.rms_norm_eps, &ws.q_a[i * qr]);
    }
    kernels::MatMul(ws.q_a.data(), qr, T, a.q_b, ws.q.data(), heads * qk, pool, precision_);
  }

  // The compressed KV: normalized latent and roped key, straight into the cache.
  std::vector<float> cos(rope / 2), sin(rope / 2);
  EnsureSize(ws.q_full, T * heads * width);
  for (int64_t i = 0; i < T; ++i) {
    const float pos = static_cast<float>(tokens.positions[i]);
    for (int64_t f = 0; f < rope / 2; ++f) {
      const float angle = pos * inv_freq_[f];
      cos[f] = std::cos(angle) * cos_sin_scale_;
      sin[f] = std::sin(angle) * cos_sin_scale_;
    }
    float* kv = &ws.kv[i * width];
    kernels::RmsNorm(kv, a.kv_a_norm.data(), lora, c.rms_norm_eps, kv);
    kernels::RopeInterleaved(kv + lora, rope, cos.data(), sin.data());
    if (cache.dtype() == DType::kBF16) {
      uint16_t* row = cache.Row<uint16_t>(layer, *tokens.tables[i], tokens.positions[i]);
      for (int64_t d = 0; d < width; ++d) row[d] = FloatToBf16(kv[d]);
    } else {
      std::copy(kv, kv + width, cache.Row<float>(layer, *tokens.tables[i], tokens.positions[i]));
    }
    for (int64_t h = 0; h < heads; ++h) {
      float* q_pe = &ws.q_full[(i * heads + h) * width + lora];
      const float* src = &ws.q[(i * heads + h) * qk + nope];
      std::copy(src, src + rope, q_pe);
      kernels::RopeInterleaved(q_pe, rope, cos.data(), sin.data());
    }
  }
  if (on_layer_kv != nullptr) BATON_RETURN_IF_ERROR((*on_layer_kv)(layer));
  // Absorb W_uk into the queries: q_latent[h] = q_nope[h] W_uk[h].
  pool.ParallelFor(heads, 1, [&](int64_t h0, int64_t h1) {
    for (int64_t h = h0; h < h1; ++h) {
      kernels::MatMulRows(&ws.q[h * qk], heads * qk, T, a.k_up_t, h * lora, (h + 1) * lora,
                          &ws.q_full[h * width], heads * width, precision_);
    }
  });

  AttentionCore(layer, cache);

  // Back from latents to values per head, then the output projection.
  EnsureSize(ws.attn_v, T * heads * vdim);
  pool.ParallelFor(heads, 1, [&](int64_t h0, int64_t h1) {
    for (int64_t h = h0; h < h1; ++h) {
      kernels::MatMulRows(&ws.o_latent[h * lora], heads * lora, T, a.v_up, h * vdim, (h + 1) * vdim,
                          &ws.attn_v[h * vdim], heads * vdim, precision_);
    }
  });
  kernels::MatMul(ws.attn_v.data(), heads * vdim, T, a.o, ws.out.data(), hidden, pool, precision_);
  return absl::OkStatus();
}

// Attention over the latent cache, per token: scores of every head against
// every cached row, a scaled softmax per head, and the probability-weighted
// sum of the latents. Each (row, head) score, each softmax and each output
// element is computed by the same arithmetic however the work is split, so a
// token's result never depends on the batch around it.
void CpuBackend::AttentionCore(int layer, KvCache& cache) {
  if (cache.dtype() == DType::kBF16) {
    AttentionCoreTyped<uint16_t>(layer, cache);
  } else {
    AttentionCoreTyped<float>(layer, cache);
  }
}

template <typename E>
void CpuBackend::AttentionCoreTyped(int layer, KvCache& cache) {
  const ModelConfig& c = config_;
  Workspace& ws = ws_;
  ThreadPool& pool = *pool_;
  const std::vector<int64_t>& positions = tokens_->positions;
  const int64_t T = tokens_->count(), heads = c.num_attention_heads, lora = c.kv_lora_rank;
  const int64_t width = lora + c.qk_rope_head_dim;
  const int64_t block_size = cache.block_size();
  // A token's context is attended in pieces of whole blocks, about 256 rows
  // (long enough that a piece's partial sums, heads x lora floats, cost less
  // than its rows): each piece's scores, unnormalized softmax and sums are
  // computed while its rows are in the core's cache, and the pieces are
  // combined in order at the end. Pieces never depend on the batch or the
  // threads, so neither does the result.
  const int64_t piece_rows = std::max<int64_t>(1, attention_piece_rows_ / block_size) * block_size;
  EnsureSize(ws.o_latent, T * heads * lora);
  std::vector<int64_t> first_piece(T + 1, 0);
  for (int64_t i = 0; i < T; ++i) {
    first_piece[i + 1] = first_piece[i] + (positions[i] + piece_rows) / piece_rows;
  }
  // Where a piece leaves its results: sums [heads][lora], and per head the
  // maximum score and the sum of exponentials.
  struct PieceOut {
    float* sums;
    float* max;
    float* total;
  };
  // Heads [h0, h0 + hb) of piece k of token i (rows [k * piece_rows, ...)
  // up to the token itself).
  auto attend_piece = [&](int64_t i, int64_t k, int64_t h0, int64_t hb, PieceOut out,
                          std::vector<float>& scores, std::vector<const E*>& blocks) {
    const std::vector<int32_t>& table = *tokens_->tables[i];
    const int64_t j0 = k * piece_rows, j1 = std::min(positions[i] + 1, j0 + piece_rows);
    const int64_t n = j1 - j0;
    EnsureSize(scores, hb * n);
    blocks.clear();
    // The rows come from memory (a step streams the weights between one
    // layer's attention and the next), and blocks need not be adjacent, so
    // the hardware prefetcher cannot follow from one to the next: the first
    // two blocks are requested at once, then each block two ahead.
    auto prefetch_block = [&](int64_t j) {
      if (j >= j1) return;
      const uint8_t* rows = cache.Row<uint8_t>(layer, table, j);
      const int64_t bytes = std::min(block_size, j1 - j) * cache.row_bytes();
      for (int64_t b = 0; b < bytes; b += 64) __builtin_prefetch(rows + b);
    };
    prefetch_block(j0);
    prefetch_block(j0 + block_size);
    for (int64_t j = j0; j < j1; j += block_size) {
      prefetch_block(j + 2 * block_size);
      blocks.push_back(cache.Row<E>(layer, table, j));
      kernels::AttentionScores(&ws.q_full[(i * heads + h0) * width], width, hb, blocks.back(),
                               std::min(block_size, j1 - j), width, &scores[j - j0], n);
    }
    for (int64_t h = 0; h < hb; ++h) {
      float* row = &scores[h * n];
      for (int64_t j = 0; j < n; ++j) row[j] *= softmax_scale_;
      kernels::ExpAndSum(row, n, &out.max[h0 + h], &out.total[h0 + h]);
    }
    kernels::AttentionSums(scores.data(), n, hb, blocks.data(), block_size, width, n, lora,
                           out.sums + h0 * lora, lora);
  };
  // o_latent[i][h] from token i's `count` pieces: each piece's sums weighted
  // by e^(its max - the overall max), over the likewise weighted totals.
  auto combine = [&](int64_t i, int64_t h, int64_t count, const PieceOut* pieces) {
    float top = -INFINITY;
    for (int64_t k = 0; k < count; ++k) top = std::max(top, pieces[k].max[h]);
    float total = 0.f;
    for (int64_t k = 0; k < count; ++k) {
      total += std::exp(pieces[k].max[h] - top) * pieces[k].total[h];
    }
    float* out = &ws.o_latent[(i * heads + h) * lora];
    std::fill(out, out + lora, 0.f);
    for (int64_t k = 0; k < count; ++k) {
      kernels::Axpy(std::exp(pieces[k].max[h] - top) / total, pieces[k].sums + h * lora, out, lora);
    }
  };

  const int64_t threads = pool.num_threads();
  if (T >= threads) {
    // Enough tokens for every thread: a token's pieces one after the other.
    pool.ParallelFor(T, 1, [&](int64_t begin, int64_t end) {
      std::vector<float> scores, sums, max, total;
      std::vector<const E*> blocks;
      std::vector<PieceOut> pieces;
      for (int64_t i = begin; i < end; ++i) {
        const int64_t count = first_piece[i + 1] - first_piece[i];
        EnsureSize(sums, count * heads * lora);
        EnsureSize(max, count * heads);
        EnsureSize(total, count * heads);
        pieces.clear();
        for (int64_t k = 0; k < count; ++k) {
          pieces.push_back({&sums[k * heads * lora], &max[k * heads], &total[k * heads]});
          attend_piece(i, k, 0, heads, pieces.back(), scores, blocks);
        }
        for (int64_t h = 0; h < heads; ++h) combine(i, h, count, pieces.data());
      }
    });
    return;
  }
  // A few tokens (decode): every piece of every token is a work item, so
  // that the threads share a long context and each row is read once; with
  // fewer pieces than threads, each piece's heads are split too (8 at
  // least per item: a head's result never depends on its neighbours).
  const int64_t total_pieces = first_piece[T];
  const int64_t head_items = std::clamp<int64_t>((threads + total_pieces - 1) / total_pieces, 1,
                                                 std::max<int64_t>(1, heads / 8));
  const int64_t heads_per_item = (heads + head_items - 1) / head_items;
  EnsureSize(ws.piece_sums, total_pieces * heads * lora);
  EnsureSize(ws.piece_max, total_pieces * heads);
  EnsureSize(ws.piece_total, total_pieces * heads);
  std::vector<PieceOut> pieces(total_pieces);
  struct Item {
    int64_t token, piece, h0;  // piece: index among the token's pieces
  };
  std::vector<Item> items;
  for (int64_t i = 0; i < T; ++i) {
    for (int64_t k = first_piece[i]; k < first_piece[i + 1]; ++k) {
      pieces[k] = {&ws.piece_sums[k * heads * lora], &ws.piece_max[k * heads],
                   &ws.piece_total[k * heads]};
      for (int64_t h0 = 0; h0 < heads; h0 += heads_per_item) {
        items.push_back({i, k - first_piece[i], h0});
      }
    }
  }
  pool.ParallelFor(static_cast<int64_t>(items.size()), 1, [&](int64_t begin, int64_t end) {
    std::vector<float> scores;
    std::vector<const E*> blocks;
    for (int64_t x = begin; x < end; ++x) {
      const Item& it = items[x];
      attend_piece(it.token, it.piece, it.h0, std::min(heads_per_item, heads - it.h0),
                   pieces[first_piece[it.token] + it.piece], scores, blocks);
    }
  });
  pool.ParallelFor(T * heads, 1, [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) {
      const int64_t i = k / heads;
      combine(i, k % heads, first_piece[i + 1] - first_piece[i], &pieces[first_piece[i]]);
    }
  });
}

absl::Status CpuBackend::Mlp(const MlpWeights& mlp) {
  const int64_t hidden = config_.hidden_size, inter = mlp.inter, rows = tokens_->count();
  Workspace& ws = ws_;
  ThreadPool& pool = *pool_;
  const float* x = ws.xn.data();
  float* out = ws.out.data();
  EnsureSize(ws.mlp_hidden, rows * 2 * inter);
  kernels::MatMul(x, hidden, rows, mlp.gate_up, ws.mlp_hidden.data(), 2 * inter, pool, precision_);
  SwiGlu(ws.mlp_hidden.data(), rows, inter);
  kernels::MatMul(ws.mlp_hidden.data(), 2 * inter, rows, mlp.down, out, hidden, pool, precision_);
  return absl::OkStatus();
}

absl::Status CpuBackend::RouterLogits(const Matrix& router, std::vector<float>* logits) {
  const int64_t T = tokens_->count();
  logits->resize(T * router.rows);
  kernels::MatMul(ws_.xn.data(), config_.hidden_size, T, router, logits->data(), router.rows,
                  *pool_, precision_);
  return absl::OkStatus();
}

absl::Status CpuBackend::Experts(const MoeWeights& moe, const ExpertRouting& routing) {
  Workspace& ws = ws_;
  const int64_t T = tokens_->count(), hidden = config_.hidden_size;
  const int64_t n = static_cast<int64_t>(routing.first.size()) - 1;
  const std::vector<int64_t>& first = routing.first;
  // Every active expert (and the shared one) in two fork-joins, one for the
  // gate/up products and one for the down products, instead of two each: a
  // decode step's experts are each too small to be worth waking the threads.
  // Each expert's rows of tokens are stacked in expert_in as routed.
  const int64_t rows = first[n];
  EnsureSize(ws.expert_in, rows * hidden);
  EnsureSize(ws.expert_out, rows * hidden);
  for (int64_t r = 0; r < rows; ++r) {
    std::copy_n(&ws.xn[routing.token[r] * hidden], hidden, &ws.expert_in[r * hidden]);
  }
  struct Part {
    const MlpWeights* mlp;
    const float* in;
    int64_t rows;
    float* out;
    int64_t hidden_at = 0;  // Offset of its gate/up outputs in mlp_hidden.
  };
  std::vector<Part> parts;
  if (moe.shared.inter > 0) parts.push_back({&moe.shared, ws.xn.data(), T, ws.out.data()});
  for (int64_t e = 0; e < n; ++e) {
    if (first[e + 1] == first[e]) continue;
    parts.push_back({&moe.experts[e], &ws.expert_in[first[e] * hidden], first[e + 1] - first[e],
                     &ws.expert_out[first[e] * hidden]});
  }
  int64_t hidden_floats = 0;
  for (Part& p : parts) {
    p.hidden_at = hidden_floats;
    hidden_floats += p.rows * 2 * p.mlp->inter;
  }
  EnsureSize(ws.mlp_hidden, hidden_floats);
  std::vector<kernels::Product> products;
  for (const Part& p : parts) {
    products.push_back(
        {p.in, hidden, p.rows, &p.mlp->gate_up, &ws.mlp_hidden[p.hidden_at], 2 * p.mlp->inter});
  }
  kernels::MatMulMany(products, *pool_, precision_);
  products.clear();
  for (const Part& p : parts) {
    const int64_t inter = p.mlp->inter;
    SwiGlu(&ws.mlp_hidden[p.hidden_at], p.rows, inter);
    products.push_back(
        {&ws.mlp_hidden[p.hidden_at], 2 * inter, p.rows, &p.mlp->down, p.out, hidden});
  }
  kernels::MatMulMany(products, *pool_, precision_);
  if (moe.shared.inter == 0) std::fill_n(ws.out.begin(), T * hidden, 0.0f);
  // In expert order, so that a token's sum never depends on the batch.
  for (int64_t r = 0; r < rows; ++r) {
    kernels::Axpy(routing.weight[r], &ws.expert_out[r * hidden], &ws.out[routing.token[r] * hidden],
                  hidden);
  }
  return absl::OkStatus();
}

}  // namespace baton
