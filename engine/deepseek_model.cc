#include "engine/deepseek_model.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <numeric>

#include "absl/strings/str_cat.h"
#include "engine/kernels.h"
#include "engine/rope.h"
#include "engine/status_macros.h"

namespace baton {
namespace {

inline float Silu(float x) { return x / (1.0f + std::exp(-x)); }
inline float Sigmoid(float x) { return 1.0f / (1.0f + std::exp(-x)); }

template <typename T>
void EnsureSize(std::vector<T>& v, size_t n) {
  if (v.size() < n) v.resize(n);
}

// Indices of the k largest values, largest first; ties go to the lower index
// (as torch.topk does on CPU in practice).
void TopK(const float* values, int n, int k, std::vector<int>* out) {
  out->resize(n);
  std::iota(out->begin(), out->end(), 0);
  std::partial_sort(out->begin(), out->begin() + k, out->end(), [&](int a, int b) {
    return values[a] > values[b] || (values[a] == values[b] && a < b);
  });
  out->resize(k);
}

void ProgressBar(int done, int total) {
  const int width = 30;
  const int filled = total == 0 ? width : done * width / total;
  std::fprintf(stderr, "\rloading weights [%s%s] %d/%d layers", std::string(filled, '#').c_str(),
               std::string(width - filled, ' ').c_str(), done, total);
  if (done == total) std::fprintf(stderr, "\n");
}

}  // namespace

DeepseekModel::DeepseekModel(ModelConfig config, ModelWeights weights)
    : config_(std::move(config)),
      weights_(std::move(weights)),
      inv_freq_(RopeInvFreq(config_)),
      cos_sin_scale_(RopeCosSinScale(config_)),
      softmax_scale_(static_cast<float>(config_.softmax_scale())) {}

absl::StatusOr<std::unique_ptr<DeepseekModel>> DeepseekModel::Load(
    const std::string& dir, const ModelLoadOptions& options) {
  BATON_ASSIGN_OR_RETURN(ModelConfig config, LoadModelConfig(dir + "/config.json"));
  BATON_ASSIGN_OR_RETURN(auto checkpoint, Checkpoint::Open(dir));
  WeightLoadOptions load;
  load.force_f32 = options.force_f32_weights;
  if (options.show_progress && isatty(STDERR_FILENO)) load.progress = ProgressBar;
  BATON_ASSIGN_OR_RETURN(ModelWeights weights, LoadWeights(config, *checkpoint, load));
  auto model = FromWeights(std::move(config), std::move(weights), options.precision);
  if (model.ok())
    (*model)->attention_piece_rows_ = std::max<int64_t>(1, options.attention_piece_rows);
  return model;
}

absl::StatusOr<std::unique_ptr<DeepseekModel>> DeepseekModel::FromWeights(
    ModelConfig config, ModelWeights weights, kernels::Precision precision) {
  if (static_cast<int>(weights.layers.size()) != config.num_hidden_layers) {
    return absl::InvalidArgumentError("weights do not match the config's layer count");
  }
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
  auto model =
      std::unique_ptr<DeepseekModel>(new DeepseekModel(std::move(config), std::move(weights)));
  // BF16 only where it runs as BF16: the effective precision is part of a
  // worker's identity in disaggregated serving.
  if (precision == kernels::Precision::kBf16 && kernels::HasBf16DotProducts()) {
    model->precision_ = precision;
  }
  return model;
}

absl::Status DeepseekModel::Forward(const std::vector<ForwardChunk>& batch, KvCache& cache,
                                    ThreadPool& pool, std::vector<float>* logits,
                                    const LayerKvHook* on_layer_kv) {
  on_layer_kv_ = on_layer_kv;
  const ModelConfig& c = config_;
  const int64_t hidden = c.hidden_size;
  int64_t total = 0;
  for (const ForwardChunk& chunk : batch) {
    if (chunk.num_tokens <= 0 || chunk.tokens == nullptr || chunk.block_table == nullptr) {
      return absl::InvalidArgumentError("forward chunk without tokens or block table");
    }
    if (chunk.start_pos < 0 || chunk.start_pos + chunk.num_tokens > c.max_position_embeddings) {
      return absl::OutOfRangeError(
          absl::StrCat("positions up to ", chunk.start_pos + chunk.num_tokens,
                       " exceed the context length ", c.max_position_embeddings));
    }
    if (static_cast<int64_t>(chunk.block_table->size()) * cache.block_size() <
        chunk.start_pos + chunk.num_tokens) {
      return absl::InvalidArgumentError("block table too short for the chunk");
    }
    for (int64_t i = 0; i < chunk.num_tokens; ++i) {
      if (chunk.tokens[i] < 0 || chunk.tokens[i] >= c.vocab_size) {
        return absl::InvalidArgumentError(absl::StrCat(
            "token id ", chunk.tokens[i], " outside the vocabulary of ", c.vocab_size));
      }
    }
    total += chunk.num_tokens;
  }
  Workspace& ws = ws_;
  ws.tokens = total;
  stats_ = ForwardStats();
  stats_.tokens = total;
  EnsureSize(ws.positions, total);
  EnsureSize(ws.chunk_of_token, total);
  EnsureSize(ws.x, total * hidden);
  EnsureSize(ws.xn, total * hidden);
  EnsureSize(ws.out, total * hidden);

  // Embed.
  int64_t t = 0;
  for (size_t b = 0; b < batch.size(); ++b) {
    for (int64_t i = 0; i < batch[b].num_tokens; ++i, ++t) {
      ws.positions[t] = batch[b].start_pos + i;
      ws.chunk_of_token[t] = static_cast<int>(b);
      const int64_t id = batch[b].tokens[i];
      for (int64_t d = 0; d < hidden; ++d) ws.x[t * hidden + d] = weights_.embed.At(id, d);
    }
  }

  for (int layer = 0; layer < c.num_hidden_layers; ++layer) {
    const LayerWeights& lw = weights_.layers[layer];
    for (int64_t i = 0; i < total; ++i) {
      kernels::RmsNorm(&ws.x[i * hidden], lw.input_norm.data(), hidden, c.rms_norm_eps,
                       &ws.xn[i * hidden]);
    }
    Attention(layer, batch, cache, pool);
    for (int64_t i = 0; i < total * hidden; ++i) ws.x[i] += ws.out[i];

    for (int64_t i = 0; i < total; ++i) {
      kernels::RmsNorm(&ws.x[i * hidden], lw.post_attention_norm.data(), hidden, c.rms_norm_eps,
                       &ws.xn[i * hidden]);
    }
    if (lw.is_moe) {
      Moe(lw.moe, pool);
    } else {
      Mlp(lw.dense, ws.xn.data(), total, ws.out.data(), pool);
    }
    for (int64_t i = 0; i < total * hidden; ++i) ws.x[i] += ws.out[i];
  }

  // Final norm and head on the rows whose logits were asked for.
  std::vector<int64_t> rows;
  t = 0;
  for (const ForwardChunk& chunk : batch) {
    if (chunk.logits == LogitsMode::kAll) {
      for (int64_t i = 0; i < chunk.num_tokens; ++i) rows.push_back(t + i);
    } else if (chunk.logits == LogitsMode::kLast) {
      rows.push_back(t + chunk.num_tokens - 1);
    }
    t += chunk.num_tokens;
  }
  const int64_t n = static_cast<int64_t>(rows.size());
  for (int64_t r = 0; r < n; ++r) {
    kernels::RmsNorm(&ws.x[rows[r] * hidden], weights_.final_norm.data(), hidden, c.rms_norm_eps,
                     &ws.xn[r * hidden]);
  }
  logits->resize(n * c.vocab_size);
  kernels::MatMul(ws.xn.data(), hidden, n, weights_.head(), logits->data(), c.vocab_size, pool,
                  precision_);
  if (n > 0) Account(weights_.head(), n);
  stats_.weight_bytes += total * hidden * DTypeSize(weights_.embed.dtype);  // Embedding rows.
  return absl::OkStatus();
}

void DeepseekModel::Account(const Matrix& m, int64_t rows_of_x) {
  stats_.weight_bytes += static_cast<int64_t>(m.bytes());
  stats_.flops += 2 * m.rows * m.cols * rows_of_x;
}

void DeepseekModel::Attention(int layer, const std::vector<ForwardChunk>& batch, KvCache& cache,
                              ThreadPool& pool) {
  const ModelConfig& c = config_;
  const AttentionWeights& a = weights_.layers[layer].attn;
  Workspace& ws = ws_;
  const int64_t T = ws.tokens, hidden = c.hidden_size, heads = c.num_attention_heads;
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
    const float pos = static_cast<float>(ws.positions[i]);
    for (int64_t f = 0; f < rope / 2; ++f) {
      const float angle = pos * inv_freq_[f];
      cos[f] = std::cos(angle) * cos_sin_scale_;
      sin[f] = std::sin(angle) * cos_sin_scale_;
    }
    const ForwardChunk& chunk = batch[ws.chunk_of_token[i]];
    float* kv = &ws.kv[i * width];
    kernels::RmsNorm(kv, a.kv_a_norm.data(), lora, c.rms_norm_eps, kv);
    kernels::RopeInterleaved(kv + lora, rope, cos.data(), sin.data());
    if (cache.dtype() == DType::kBF16) {
      uint16_t* row = cache.Row<uint16_t>(layer, *chunk.block_table, ws.positions[i]);
      for (int64_t d = 0; d < width; ++d) row[d] = FloatToBf16(kv[d]);
    } else {
      std::copy(kv, kv + width, cache.Row<float>(layer, *chunk.block_table, ws.positions[i]));
    }
    for (int64_t h = 0; h < heads; ++h) {
      float* q_pe = &ws.q_full[(i * heads + h) * width + lora];
      const float* src = &ws.q[(i * heads + h) * qk + nope];
      std::copy(src, src + rope, q_pe);
      kernels::RopeInterleaved(q_pe, rope, cos.data(), sin.data());
    }
  }
  if (on_layer_kv_ != nullptr) (*on_layer_kv_)(layer);
  // Absorb W_uk into the queries: q_latent[h] = q_nope[h] W_uk[h].
  pool.ParallelFor(heads, 1, [&](int64_t h0, int64_t h1) {
    for (int64_t h = h0; h < h1; ++h) {
      kernels::MatMulRows(&ws.q[h * qk], heads * qk, T, a.k_up_t, h * lora, (h + 1) * lora,
                          &ws.q_full[h * width], heads * width, precision_);
    }
  });

  AttentionCore(layer, batch, cache, pool);
  for (const Matrix* m : {&a.q_a, &a.q_b, &a.kv_a, &a.k_up_t, &a.v_up, &a.o}) {
    if (!m->empty()) Account(*m, T);
  }
  for (int64_t i = 0; i < T; ++i) {
    const int64_t len = ws.positions[i] + 1;
    stats_.kv_bytes += len * cache.row_bytes();
    stats_.flops += 2 * heads * len * (width + lora);
  }

  // Back from latents to values per head, then the output projection.
  EnsureSize(ws.attn_v, T * heads * vdim);
  pool.ParallelFor(heads, 1, [&](int64_t h0, int64_t h1) {
    for (int64_t h = h0; h < h1; ++h) {
      kernels::MatMulRows(&ws.o_latent[h * lora], heads * lora, T, a.v_up, h * vdim, (h + 1) * vdim,
                          &ws.attn_v[h * vdim], heads * vdim, precision_);
    }
  });
  kernels::MatMul(ws.attn_v.data(), heads * vdim, T, a.o, ws.out.data(), hidden, pool, precision_);
}

// Attention over the latent cache, per token: scores of every head against
// every cached row, a scaled softmax per head, and the probability-weighted
// sum of the latents. Each (row, head) score, each softmax and each output
// element is computed by the same arithmetic however the work is split, so a
// token's result never depends on the batch around it.
void DeepseekModel::AttentionCore(int layer, const std::vector<ForwardChunk>& batch, KvCache& cache,
                                  ThreadPool& pool) {
  if (cache.dtype() == DType::kBF16) {
    AttentionCoreTyped<uint16_t>(layer, batch, cache, pool);
  } else {
    AttentionCoreTyped<float>(layer, batch, cache, pool);
  }
}

template <typename E>
void DeepseekModel::AttentionCoreTyped(int layer, const std::vector<ForwardChunk>& batch,
                                       KvCache& cache, ThreadPool& pool) {
  const ModelConfig& c = config_;
  Workspace& ws = ws_;
  const int64_t T = ws.tokens, heads = c.num_attention_heads, lora = c.kv_lora_rank;
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
    first_piece[i + 1] = first_piece[i] + (ws.positions[i] + piece_rows) / piece_rows;
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
    const std::vector<int32_t>& table = *batch[ws.chunk_of_token[i]].block_table;
    const int64_t j0 = k * piece_rows, j1 = std::min(ws.positions[i] + 1, j0 + piece_rows);
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

void DeepseekModel::Mlp(const MlpWeights& mlp, const float* x, int64_t rows, float* out,
                        ThreadPool& pool) {
  const int64_t hidden = config_.hidden_size, inter = mlp.inter;
  Workspace& ws = ws_;
  EnsureSize(ws.mlp_hidden, rows * 2 * inter);
  kernels::MatMul(x, hidden, rows, mlp.gate_up, ws.mlp_hidden.data(), 2 * inter, pool, precision_);
  for (int64_t r = 0; r < rows; ++r) {
    float* h = &ws.mlp_hidden[r * 2 * inter];
    for (int64_t d = 0; d < inter; ++d) h[d] = Silu(h[d]) * h[inter + d];
  }
  kernels::MatMul(ws.mlp_hidden.data(), 2 * inter, rows, mlp.down, out, hidden, pool, precision_);
  Account(mlp.gate_up, rows);
  Account(mlp.down, rows);
}

void DeepseekModel::Route(const MoeWeights& moe, int64_t t, std::vector<int>* experts,
                          std::vector<float>* weights) const {
  const ModelConfig& c = config_;
  const int n = c.n_routed_experts, k = c.num_experts_per_tok;
  const float* logits = &ws_.router_logits[t * n];
  std::vector<float> scores(logits, logits + n);
  if (c.scoring_func == ScoringFunc::kSigmoid) {
    for (float& s : scores) s = Sigmoid(s);
  } else {
    kernels::Softmax(scores.data(), n);
  }
  // Selection may use biased scores; the weights never do.
  std::vector<float> choice = scores;
  if (moe.score_bias.size > 0) {
    for (int e = 0; e < n; ++e) choice[e] += moe.score_bias.data()[e];
  }
  if (c.topk_method != TopkMethod::kGreedy && c.n_group > 1) {
    const int per_group = n / c.n_group;
    std::vector<float> group_score(c.n_group);
    for (int g = 0; g < c.n_group; ++g) {
      const float* s = &choice[g * per_group];
      if (c.topk_method == TopkMethod::kNoauxTc) {
        std::vector<int> top2;
        TopK(s, per_group, 2, &top2);
        group_score[g] = s[top2[0]] + s[top2[1]];
      } else {
        group_score[g] = *std::max_element(s, s + per_group);
      }
    }
    std::vector<int> kept;
    TopK(group_score.data(), c.n_group, c.topk_group, &kept);
    std::vector<bool> keep(c.n_group, false);
    for (int g : kept) keep[g] = true;
    for (int e = 0; e < n; ++e) {
      if (!keep[e / per_group]) choice[e] = -INFINITY;
    }
  }
  TopK(choice.data(), n, k, experts);
  weights->resize(k);
  float sum = 0.f;
  for (int i = 0; i < k; ++i) sum += (*weights)[i] = scores[(*experts)[i]];
  const bool normalize = c.norm_topk_prob && k > 1;
  const float scale = static_cast<float>(c.routed_scaling_factor);
  for (float& w : *weights) {
    if (normalize) w /= sum + 1e-20f;
    // DeepSeek-V2 scales only unnormalized weights; V3 scales always.
    if (c.architecture == Architecture::kDeepseekV3 || !normalize) w *= scale;
  }
}

void DeepseekModel::Moe(const MoeWeights& moe, ThreadPool& pool) {
  const ModelConfig& c = config_;
  Workspace& ws = ws_;
  const int64_t T = ws.tokens, hidden = c.hidden_size, n = c.n_routed_experts;
  EnsureSize(ws.router_logits, T * n);
  kernels::MatMul(ws.xn.data(), hidden, T, moe.router, ws.router_logits.data(), n, pool,
                  precision_);
  Account(moe.router, T);

  // Group the tokens by expert so that each expert's weights are read once.
  std::vector<std::vector<std::pair<int64_t, float>>> assigned(n);
  std::vector<int> experts;
  std::vector<float> weights;
  for (int64_t t = 0; t < T; ++t) {
    Route(moe, t, &experts, &weights);
    for (size_t i = 0; i < experts.size(); ++i) assigned[experts[i]].push_back({t, weights[i]});
  }

  // Every active expert (and the shared one) in two fork-joins, one for the
  // gate/up products and one for the down products, instead of two each: a
  // decode step's experts are each too small to be worth waking the threads.
  // Each expert's rows of tokens are stacked in expert_in; `first` is where.
  std::vector<int64_t> first(n + 1, 0);
  for (int64_t e = 0; e < n; ++e) first[e + 1] = first[e] + assigned[e].size();
  const int64_t rows = first[n];
  EnsureSize(ws.expert_in, rows * hidden);
  EnsureSize(ws.expert_out, rows * hidden);
  for (int64_t e = 0; e < n; ++e) {
    for (size_t r = 0; r < assigned[e].size(); ++r) {
      std::copy_n(&ws.xn[assigned[e][r].first * hidden], hidden,
                  &ws.expert_in[(first[e] + r) * hidden]);
    }
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
  kernels::MatMulMany(products, pool, precision_);
  products.clear();
  for (const Part& p : parts) {
    const int64_t inter = p.mlp->inter;
    for (int64_t r = 0; r < p.rows; ++r) {
      float* h = &ws.mlp_hidden[p.hidden_at + r * 2 * inter];
      for (int64_t d = 0; d < inter; ++d) h[d] = Silu(h[d]) * h[inter + d];
    }
    products.push_back(
        {&ws.mlp_hidden[p.hidden_at], 2 * inter, p.rows, &p.mlp->down, p.out, hidden});
    Account(p.mlp->gate_up, p.rows);
    Account(p.mlp->down, p.rows);
  }
  kernels::MatMulMany(products, pool, precision_);
  if (moe.shared.inter == 0) std::fill_n(ws.out.begin(), T * hidden, 0.0f);
  // In expert order, so that a token's sum never depends on the batch.
  for (int64_t e = 0; e < n; ++e) {
    for (size_t r = 0; r < assigned[e].size(); ++r) {
      kernels::Axpy(assigned[e][r].second, &ws.expert_out[(first[e] + r) * hidden],
                    &ws.out[assigned[e][r].first * hidden], hidden);
    }
  }
}

}  // namespace baton
