// DeepSeek-V2 paths the golden case (V3) does not reach: q_proj without a
// low-rank q, softmax routing, greedy and group-limited-greedy expert
// choice, unnormalized routing weights, YaRN with mscale != 1. The engine
// (absorbed MLA over the paged cache, fp32) is compared with a naive double-
// precision forward written here from the Hugging Face DeepseekV2 semantics.
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>

#include "engine/deepseek_model.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace baton {
namespace {

using Json = nlohmann::json;
using Tensor = std::vector<double>;

struct TinyV2 {
  Json config;
  std::map<std::string, std::pair<std::vector<int64_t>, Tensor>> tensors;
};

TinyV2 MakeModel(const std::string& topk_method, int seed) {
  TinyV2 m;
  m.config = {{"model_type", "deepseek_v2"},
              {"vocab_size", 48},
              {"hidden_size", 32},
              {"intermediate_size", 40},
              {"moe_intermediate_size", 12},
              {"num_hidden_layers", 2},
              {"num_attention_heads", 2},
              {"q_lora_rank", nullptr},
              {"kv_lora_rank", 16},
              {"qk_nope_head_dim", 8},
              {"qk_rope_head_dim", 4},
              {"v_head_dim", 8},
              {"n_routed_experts", 8},
              {"n_shared_experts", 1},
              {"num_experts_per_tok", 3},
              {"n_group", 4},
              {"topk_group", 2},
              {"topk_method", topk_method},
              {"scoring_func", "softmax"},
              {"norm_topk_prob", false},
              {"routed_scaling_factor", 1.5},
              {"first_k_dense_replace", 1},
              {"moe_layer_freq", 1},
              {"rope_theta", 10000.0},
              {"rms_norm_eps", 1e-6},
              {"max_position_embeddings", 128},
              {"bos_token_id", 0},
              {"eos_token_id", 1},
              {"tie_word_embeddings", false},
              {"rope_scaling",
               {{"type", "yarn"},
                {"factor", 4.0},
                {"original_max_position_embeddings", 32},
                {"beta_fast", 32},
                {"beta_slow", 1},
                {"mscale", 0.707},
                {"mscale_all_dim", 0.707}}}};
  std::mt19937 rng(seed);
  std::normal_distribution<double> dist(0.0, 0.25);
  auto add = [&](const std::string& name, std::vector<int64_t> shape, bool ones = false) {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    Tensor t(n);
    for (double& v : t) v = ones ? 1.0 + 0.1 * dist(rng) : dist(rng);
    // Round to f32 so that both sides start from the same numbers.
    for (double& v : t) v = static_cast<float>(v);
    m.tensors[name] = {shape, t};
  };
  const int64_t h = 32, heads = 2, nope = 8, rope = 4, v = 8, lora = 16;
  add("model.embed_tokens.weight", {48, h});
  for (int l = 0; l < 2; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    add(p + "input_layernorm.weight", {h}, true);
    add(p + "post_attention_layernorm.weight", {h}, true);
    add(p + "self_attn.q_proj.weight", {heads * (nope + rope), h});
    add(p + "self_attn.kv_a_proj_with_mqa.weight", {lora + rope, h});
    add(p + "self_attn.kv_a_layernorm.weight", {lora}, true);
    add(p + "self_attn.kv_b_proj.weight", {heads * (nope + v), lora});
    add(p + "self_attn.o_proj.weight", {h, heads * v});
    auto mlp = [&](const std::string& q, int64_t inter) {
      add(q + ".gate_proj.weight", {inter, h});
      add(q + ".up_proj.weight", {inter, h});
      add(q + ".down_proj.weight", {h, inter});
    };
    if (l == 0) {
      mlp(p + "mlp", 40);
    } else {
      add(p + "mlp.gate.weight", {8, h});
      for (int e = 0; e < 8; ++e) mlp(p + "mlp.experts." + std::to_string(e), 12);
      mlp(p + "mlp.shared_experts", 12);
    }
  }
  add("model.norm.weight", {h}, true);
  add("lm_head.weight", {48, h});
  return m;
}

void Write(const TinyV2& m, const std::string& dir) {
  std::filesystem::create_directories(dir);
  std::ofstream(dir + "/config.json") << m.config.dump();
  Json header = Json::object();
  std::string data;
  for (const auto& [name, t] : m.tensors) {
    const size_t begin = data.size();
    for (double v : t.second) {
      float f = static_cast<float>(v);
      data.append(reinterpret_cast<const char*>(&f), 4);
    }
    header[name] = {{"dtype", "F32"}, {"shape", t.first}, {"data_offsets", {begin, data.size()}}};
  }
  std::string text = header.dump();
  uint64_t len = text.size();
  std::ofstream out(dir + "/model.safetensors", std::ios::binary);
  out.write(reinterpret_cast<const char*>(&len), 8);
  out << text << data;
}

// ---- the naive reference (HF DeepseekV2 semantics, doubles) ----

struct Ref {
  const TinyV2& m;
  const Tensor& W(const std::string& n) const { return m.tensors.at(n).second; }
  // y = W x, W [out][in]
  Tensor Lin(const std::string& n, const Tensor& x) const {
    const auto& shape = m.tensors.at(n).first;
    const Tensor& w = W(n);
    Tensor y(shape[0], 0.0);
    for (int64_t o = 0; o < shape[0]; ++o)
      for (int64_t i = 0; i < shape[1]; ++i) y[o] += w[o * shape[1] + i] * x[i];
    return y;
  }
  Tensor Norm(const std::string& n, const Tensor& x) const {
    double ms = 0;
    for (double v : x) ms += v * v;
    const double s = 1.0 / std::sqrt(ms / x.size() + 1e-6);
    Tensor y(x.size());
    for (size_t i = 0; i < x.size(); ++i) y[i] = x[i] * s * W(n)[i];
    return y;
  }
  Tensor Mlp(const std::string& p, const Tensor& x) const {
    Tensor g = Lin(p + ".gate_proj.weight", x), u = Lin(p + ".up_proj.weight", x);
    for (size_t i = 0; i < g.size(); ++i) g[i] = g[i] / (1 + std::exp(-g[i])) * u[i];
    return Lin(p + ".down_proj.weight", g);
  }
  static double Mscale(double scale, double m) {
    return scale <= 1 ? 1 : 0.1 * m * std::log(scale) + 1;
  }
  std::vector<double> InvFreq() const {
    const int dim = 4;
    const double base = 10000, factor = 4, orig = 32;
    auto corr = [&](double rot) {
      return dim * std::log(orig / (rot * 2 * M_PI)) / (2 * std::log(base));
    };
    double low = std::max(std::floor(corr(32)), 0.0),
           high = std::min(std::ceil(corr(1)), dim - 1.0);
    if (low == high) high += 0.001;
    std::vector<double> f(dim / 2);
    for (int i = 0; i < dim / 2; ++i) {
      const double b = std::pow(base, -2.0 * i / dim);
      const double ramp = std::clamp((i - low) / (high - low), 0.0, 1.0);
      f[i] = b / factor * ramp + b * (1 - ramp);
    }
    return f;
  }
  void Rope(double* x, int pos) const {
    const auto f = InvFreq();
    for (int i = 0; i < 2; ++i) {
      const double a = x[2 * i], b = x[2 * i + 1], c = std::cos(pos * f[i]),
                   s = std::sin(pos * f[i]);
      x[2 * i] = a * c - b * s;
      x[2 * i + 1] = a * s + b * c;
    }
  }
  // Logits of every position.
  std::vector<Tensor> Forward(const std::vector<int32_t>& ids,
                              const std::string& topk_method) const {
    const int T = static_cast<int>(ids.size()), H = 32, heads = 2, nope = 8, rope = 4, vd = 8,
              lora = 16;
    std::vector<Tensor> h(T);
    for (int t = 0; t < T; ++t)
      h[t].assign(W("model.embed_tokens.weight").begin() + ids[t] * H,
                  W("model.embed_tokens.weight").begin() + (ids[t] + 1) * H);
    const double scale = 1.0 / std::sqrt(12.0) * Mscale(4, 0.707) * Mscale(4, 0.707);
    for (int l = 0; l < 2; ++l) {
      const std::string p = "model.layers." + std::to_string(l) + ".";
      std::vector<Tensor> q(T), k(T), v(T);
      for (int t = 0; t < T; ++t) {
        Tensor x = Norm(p + "input_layernorm.weight", h[t]);
        q[t] = Lin(p + "self_attn.q_proj.weight", x);
        Tensor kv = Lin(p + "self_attn.kv_a_proj_with_mqa.weight", x);
        Tensor latent(kv.begin(), kv.begin() + lora);
        Tensor kpe(kv.begin() + lora, kv.end());
        Rope(kpe.data(), t);
        Tensor up = Lin(p + "self_attn.kv_b_proj.weight",
                        Norm(p + "self_attn.kv_a_layernorm.weight", latent));
        k[t].assign(heads * (nope + rope), 0);
        v[t].assign(heads * vd, 0);
        for (int hd = 0; hd < heads; ++hd) {
          Rope(&q[t][hd * (nope + rope) + nope], t);
          for (int d = 0; d < nope; ++d) k[t][hd * (nope + rope) + d] = up[hd * (nope + vd) + d];
          for (int d = 0; d < rope; ++d) k[t][hd * (nope + rope) + nope + d] = kpe[d];
          for (int d = 0; d < vd; ++d) v[t][hd * vd + d] = up[hd * (nope + vd) + nope + d];
        }
      }
      std::vector<Tensor> attn(T, Tensor(heads * vd, 0));
      for (int t = 0; t < T; ++t) {
        for (int hd = 0; hd < heads; ++hd) {
          std::vector<double> s(t + 1);
          double mx = -1e300;
          for (int j = 0; j <= t; ++j) {
            double dot = 0;
            for (int d = 0; d < nope + rope; ++d) dot += q[t][hd * 12 + d] * k[j][hd * 12 + d];
            s[j] = dot * scale;
            mx = std::max(mx, s[j]);
          }
          double z = 0;
          for (double& x : s) z += (x = std::exp(x - mx));
          for (int j = 0; j <= t; ++j)
            for (int d = 0; d < vd; ++d) attn[t][hd * vd + d] += s[j] / z * v[j][hd * vd + d];
        }
      }
      for (int t = 0; t < T; ++t) {
        Tensor o = Lin(p + "self_attn.o_proj.weight", attn[t]);
        for (int i = 0; i < H; ++i) h[t][i] += o[i];
        Tensor x = Norm(p + "post_attention_layernorm.weight", h[t]);
        Tensor out;
        if (l == 0) {
          out = Mlp(p + "mlp", x);
        } else {
          Tensor logits = Lin(p + "mlp.gate.weight", x);
          double mx = *std::max_element(logits.begin(), logits.end()), z = 0;
          for (double& s : logits) z += (s = std::exp(s - mx));
          for (double& s : logits) s /= z;
          std::vector<double> choice = logits;
          if (topk_method == "group_limited_greedy") {
            std::vector<std::pair<double, int>> groups;
            for (int g = 0; g < 4; ++g)
              groups.push_back({std::max(logits[2 * g], logits[2 * g + 1]), g});
            std::sort(groups.rbegin(), groups.rend());
            for (int g = 2; g < 4; ++g)
              choice[2 * groups[g].second] = choice[2 * groups[g].second + 1] = -1;
          }
          std::vector<int> order(8);
          for (int e = 0; e < 8; ++e) order[e] = e;
          std::sort(order.begin(), order.end(),
                    [&](int a, int b) { return choice[a] > choice[b]; });
          out = Mlp(p + "mlp.shared_experts", x);
          for (int i = 0; i < 3; ++i) {
            Tensor y = Mlp(p + "mlp.experts." + std::to_string(order[i]), x);
            for (int d = 0; d < H; ++d) out[d] += logits[order[i]] * 1.5 * y[d];
          }
        }
        for (int i = 0; i < H; ++i) h[t][i] += out[i];
      }
    }
    std::vector<Tensor> result;
    for (int t = 0; t < T; ++t)
      result.push_back(Lin("lm_head.weight", Norm("model.norm.weight", h[t])));
    return result;
  }
};

class DeepseekV2Test : public ::testing::TestWithParam<std::string> {};

TEST_P(DeepseekV2Test, EngineMatchesANaiveReference) {
  const TinyV2 m = MakeModel(GetParam(), 11);
  const std::string dir = ::testing::TempDir() + "/baton_v2_" + GetParam();
  Write(m, dir);
  auto model = DeepseekModel::Load(dir, {});
  ASSERT_TRUE(model.ok()) << model.status();
  const std::vector<int32_t> ids = {0, 5, 17, 33, 2, 9, 47, 21, 12, 40, 3, 28};
  KvCache cache(2, 20, 4, 8);
  KvBlocks blocks(&cache);
  ASSERT_TRUE(blocks.Reserve(ids.size()));
  ThreadPool pool(2);
  std::vector<float> logits;
  ForwardChunk chunk{ids.data(), static_cast<int64_t>(ids.size()), 0, &blocks.table(),
                     LogitsMode::kAll};
  ASSERT_TRUE((*model)->Forward({chunk}, cache, pool, &logits).ok());
  const std::vector<Tensor> want = Ref{m}.Forward(ids, GetParam());
  double max_diff = 0;
  for (size_t t = 0; t < ids.size(); ++t)
    for (int v = 0; v < 48; ++v)
      max_diff = std::max(max_diff, std::fabs(logits[t * 48 + v] - want[t][v]));
  EXPECT_LT(max_diff, 1e-4) << GetParam();
  std::filesystem::remove_all(dir);
}

INSTANTIATE_TEST_SUITE_P(TopkMethods, DeepseekV2Test,
                         ::testing::Values("greedy", "group_limited_greedy"));

}  // namespace
}  // namespace baton
