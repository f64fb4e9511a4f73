#include "engine/deepseek_model.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <numeric>

#include "absl/strings/str_cat.h"
#include "engine/cpu_backend.h"
#include "engine/kernels.h"
#include "engine/status_macros.h"

namespace baton {
namespace {

inline float Sigmoid(float x) { return 1.0f / (1.0f + std::exp(-x)); }

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

DeepseekModel::DeepseekModel(ModelConfig config, ModelWeights weights,
                             std::unique_ptr<Backend> backend)
    : config_(std::move(config)), weights_(std::move(weights)), backend_(std::move(backend)) {}

absl::StatusOr<std::unique_ptr<DeepseekModel>> DeepseekModel::Load(
    const std::string& dir, const ModelLoadOptions& options) {
  return Load(dir, options, nullptr);
}

absl::StatusOr<std::unique_ptr<DeepseekModel>> DeepseekModel::Load(
    const std::string& dir, const ModelLoadOptions& options, std::unique_ptr<Backend> backend) {
  BATON_ASSIGN_OR_RETURN(ModelConfig config, LoadModelConfig(dir + "/config.json"));
  BATON_ASSIGN_OR_RETURN(auto checkpoint, Checkpoint::Open(dir));
  WeightLoadOptions load;
  load.force_f32 = options.force_f32_weights;
  if (options.show_progress && isatty(STDERR_FILENO)) load.progress = ProgressBar;
  BATON_ASSIGN_OR_RETURN(ModelWeights weights, LoadWeights(config, *checkpoint, load));
  if (backend == nullptr) {
    backend = std::make_unique<CpuBackend>(
        CpuBackendOptions{options.precision, options.attention_piece_rows});
  }
  return FromWeights(std::move(config), std::move(weights), std::move(backend));
}

absl::StatusOr<std::unique_ptr<DeepseekModel>> DeepseekModel::FromWeights(
    ModelConfig config, ModelWeights weights, kernels::Precision precision) {
  return FromWeights(std::move(config), std::move(weights),
                     std::make_unique<CpuBackend>(CpuBackendOptions{precision}));
}

absl::StatusOr<std::unique_ptr<DeepseekModel>> DeepseekModel::FromWeights(
    ModelConfig config, ModelWeights weights, std::unique_ptr<Backend> backend) {
  if (static_cast<int>(weights.layers.size()) != config.num_hidden_layers) {
    return absl::InvalidArgumentError("weights do not match the config's layer count");
  }
  if (backend == nullptr) return absl::InvalidArgumentError("no backend");
  auto model = std::unique_ptr<DeepseekModel>(
      new DeepseekModel(std::move(config), std::move(weights), std::move(backend)));
  BATON_RETURN_IF_ERROR(model->backend_->Prepare(model->config_, model->weights_));
  return model;
}

absl::StatusOr<std::unique_ptr<KvCache>> DeepseekModel::NewKvCache(int block_size,
                                                                   int64_t num_blocks) const {
  const ModelConfig& c = config_;
  const size_t bytes =
      KvCache::Bytes(c.num_hidden_layers, c.kv_cache_width(), block_size, num_blocks, kv_dtype());
  BATON_ASSIGN_OR_RETURN(std::unique_ptr<KvMemory> memory, backend_->AllocateKv(bytes));
  return std::make_unique<KvCache>(c.num_hidden_layers, c.kv_cache_width(), block_size, num_blocks,
                                   kv_dtype(), std::move(memory));
}

absl::Status DeepseekModel::Forward(const std::vector<ForwardChunk>& batch, KvCache& cache,
                                    ThreadPool& pool, std::vector<float>* logits,
                                    const LayerKvHook* on_layer_kv) {
  const ModelConfig& c = config_;
  const int64_t hidden = c.hidden_size;
  if (cache.dtype() != kv_dtype() && cache.memory().host_data() == nullptr) {
    return absl::InvalidArgumentError("the KV cache's element type is not the backend's");
  }
  tokens_.ids.clear();
  tokens_.positions.clear();
  tokens_.tables.clear();
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
      tokens_.ids.push_back(chunk.tokens[i]);
      tokens_.positions.push_back(chunk.start_pos + i);
      tokens_.tables.push_back(chunk.block_table);
    }
  }
  const int64_t total = tokens_.count();
  stats_ = ForwardStats();
  stats_.tokens = total;

  BATON_RETURN_IF_ERROR(backend_->Begin(tokens_, pool));
  for (int layer = 0; layer < c.num_hidden_layers; ++layer) {
    const LayerWeights& lw = weights_.layers[layer];
    BATON_RETURN_IF_ERROR(backend_->Norm(lw.input_norm));
    BATON_RETURN_IF_ERROR(backend_->Attention(layer, lw.attn, cache, on_layer_kv));
    const AttentionWeights& a = lw.attn;
    for (const Matrix* m : {&a.q_a, &a.q_b, &a.kv_a, &a.k_up_t, &a.v_up, &a.o}) {
      if (!m->empty()) Account(*m, total);
    }
    const int64_t width = c.kv_cache_width();
    for (int64_t i = 0; i < total; ++i) {
      const int64_t len = tokens_.positions[i] + 1;
      stats_.kv_bytes += len * cache.row_bytes();
      stats_.flops += 2 * c.num_attention_heads * len * (width + c.kv_lora_rank);
    }
    BATON_RETURN_IF_ERROR(backend_->AddOut());

    BATON_RETURN_IF_ERROR(backend_->Norm(lw.post_attention_norm));
    if (lw.is_moe) {
      BATON_RETURN_IF_ERROR(Moe(lw.moe));
    } else {
      BATON_RETURN_IF_ERROR(backend_->Mlp(lw.dense));
      Account(lw.dense.gate_up, total);
      Account(lw.dense.down, total);
    }
    BATON_RETURN_IF_ERROR(backend_->AddOut());
  }

  // Final norm and head on the rows whose logits were asked for.
  std::vector<int64_t> rows;
  int64_t t = 0;
  for (const ForwardChunk& chunk : batch) {
    if (chunk.logits == LogitsMode::kAll) {
      for (int64_t i = 0; i < chunk.num_tokens; ++i) rows.push_back(t + i);
    } else if (chunk.logits == LogitsMode::kLast) {
      rows.push_back(t + chunk.num_tokens - 1);
    }
    t += chunk.num_tokens;
  }
  BATON_RETURN_IF_ERROR(backend_->Logits(rows, weights_.final_norm, weights_.head(), logits));
  if (!rows.empty()) Account(weights_.head(), static_cast<int64_t>(rows.size()));
  stats_.weight_bytes += total * hidden * DTypeSize(weights_.embed.dtype);  // Embedding rows.
  return absl::OkStatus();
}

void DeepseekModel::Account(const Matrix& m, int64_t rows_of_x) {
  stats_.weight_bytes += static_cast<int64_t>(m.bytes());
  stats_.flops += 2 * m.rows * m.cols * rows_of_x;
}

void DeepseekModel::Route(const MoeWeights& moe, const float* logits, std::vector<int>* experts,
                          std::vector<float>* weights) const {
  const ModelConfig& c = config_;
  const int n = c.n_routed_experts, k = c.num_experts_per_tok;
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

absl::Status DeepseekModel::Moe(const MoeWeights& moe) {
  const int64_t T = tokens_.count(), n = config_.n_routed_experts;
  BATON_RETURN_IF_ERROR(backend_->RouterLogits(moe.router, &router_logits_));
  Account(moe.router, T);

  // Each token's experts, then the tokens grouped by expert (in token order
  // within one) so that each expert's weights are read once.
  std::vector<int> chosen;
  std::vector<float> chosen_weight, weights;
  std::vector<int> experts;
  for (int64_t t = 0; t < T; ++t) {
    Route(moe, &router_logits_[t * n], &experts, &weights);
    chosen.insert(chosen.end(), experts.begin(), experts.end());
    chosen_weight.insert(chosen_weight.end(), weights.begin(), weights.end());
  }
  const int64_t per_token = config_.num_experts_per_tok;  // Route's count, always.
  ExpertRouting& r = routing_;
  r.first.assign(n + 1, 0);
  for (int e : chosen) ++r.first[e + 1];
  for (int64_t e = 0; e < n; ++e) r.first[e + 1] += r.first[e];
  r.token.resize(chosen.size());
  r.weight.resize(chosen.size());
  std::vector<int64_t> next(r.first.begin(), r.first.end() - 1);
  for (size_t i = 0; i < chosen.size(); ++i) {
    const int64_t at = next[chosen[i]]++;
    r.token[at] = static_cast<int64_t>(i) / per_token;
    r.weight[at] = chosen_weight[i];
  }
  for (int64_t e = 0; e < n; ++e) {
    if (const int64_t rows = r.first[e + 1] - r.first[e]; rows > 0) {
      Account(moe.experts[e].gate_up, rows);
      Account(moe.experts[e].down, rows);
    }
  }
  if (moe.shared.inter > 0) {
    Account(moe.shared.gate_up, T);
    Account(moe.shared.down, T);
  }
  return backend_->Experts(moe, r);
}

}  // namespace baton
