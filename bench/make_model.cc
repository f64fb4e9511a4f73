// Writes a synthetic DeepSeek-V2-Lite-shaped checkpoint (Hugging Face
// layout: config.json and one model.safetensors of BF16 random weights) for
// benchmarks on machines with no network and no Python, such as a lent GPU
// machine (scripts/gpu-check). The values are random: only the shapes and
// the bytes read per step are real.
//   baton-make-model OUT_DIR [--layers N] [--vocab N]
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "nlohmann/json.hpp"

namespace {

// DeepSeek-V2-Lite's config.json, as Hugging Face ships it.
nlohmann::json V2LiteConfig(int layers, int vocab) {
  return {{"architectures", {"DeepseekV2ForCausalLM"}},
          {"model_type", "deepseek_v2"},
          {"vocab_size", vocab},
          {"hidden_size", 2048},
          {"intermediate_size", 10944},
          {"moe_intermediate_size", 1408},
          {"num_hidden_layers", layers},
          {"num_attention_heads", 16},
          {"num_key_value_heads", 16},
          {"n_shared_experts", 2},
          {"n_routed_experts", 64},
          {"num_experts_per_tok", 6},
          {"routed_scaling_factor", 1.0},
          {"topk_method", "greedy"},
          {"n_group", 1},
          {"topk_group", 1},
          {"scoring_func", "softmax"},
          {"norm_topk_prob", false},
          {"first_k_dense_replace", 1},
          {"moe_layer_freq", 1},
          {"q_lora_rank", nullptr},
          {"kv_lora_rank", 512},
          {"qk_nope_head_dim", 128},
          {"qk_rope_head_dim", 64},
          {"v_head_dim", 128},
          {"max_position_embeddings", 163840},
          {"rope_theta", 10000},
          {"rope_scaling",
           {{"type", "yarn"},
            {"factor", 40},
            {"original_max_position_embeddings", 4096},
            {"beta_fast", 32},
            {"beta_slow", 1},
            {"mscale", 0.707},
            {"mscale_all_dim", 0.707}}},
          {"rms_norm_eps", 1e-6},
          {"tie_word_embeddings", false},
          {"bos_token_id", std::min(100000, vocab - 2)},
          {"eos_token_id", std::min(100001, vocab - 1)}};
}

struct Tensor {
  std::string name;
  bool bf16;  // Else F32.
  int64_t rows, cols;
  float fill;  // F32 tensors: this value everywhere (norm weights).
  int64_t bytes() const { return rows * cols * (bf16 ? 2 : 4); }
};

std::vector<Tensor> V2LiteTensors(int layers, int vocab) {
  const int64_t hidden = 2048, heads = 16, nope = 128, rope = 64, v = 128, lora = 512;
  std::vector<Tensor> t;
  auto linear = [&](const std::string& name, int64_t rows, int64_t cols) {
    t.push_back({name, true, rows, cols, 0.f});
  };
  auto norm = [&](const std::string& name, int64_t n) { t.push_back({name, false, 1, n, 1.f}); };
  auto mlp = [&](const std::string& p, int64_t inter) {
    linear(p + ".gate_proj.weight", inter, hidden);
    linear(p + ".up_proj.weight", inter, hidden);
    linear(p + ".down_proj.weight", hidden, inter);
  };
  linear("model.embed_tokens.weight", vocab, hidden);
  for (int l = 0; l < layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    norm(p + "input_layernorm.weight", hidden);
    norm(p + "post_attention_layernorm.weight", hidden);
    linear(p + "self_attn.q_proj.weight", heads * (nope + rope), hidden);
    linear(p + "self_attn.kv_a_proj_with_mqa.weight", lora + rope, hidden);
    norm(p + "self_attn.kv_a_layernorm.weight", lora);
    linear(p + "self_attn.kv_b_proj.weight", heads * (nope + v), lora);
    linear(p + "self_attn.o_proj.weight", hidden, heads * v);
    if (l == 0) {
      mlp(p + "mlp", 10944);
      continue;
    }
    linear(p + "mlp.gate.weight", 64, hidden);
    for (int e = 0; e < 64; ++e) mlp(p + "mlp.experts." + std::to_string(e), 1408);
    mlp(p + "mlp.shared_experts", 2 * 1408);
  }
  norm("model.norm.weight", hidden);
  linear("lm_head.weight", vocab, hidden);
  return t;
}

int Main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: baton-make-model OUT_DIR [--layers N] [--vocab N]\n");
    return 2;
  }
  const std::string dir = argv[1];
  int layers = 27, vocab = 102400;
  for (int i = 2; i + 1 < argc; i += 2) {
    const std::string arg = argv[i];
    if (arg == "--layers") layers = std::max(2, std::atoi(argv[i + 1]));
    if (arg == "--vocab") vocab = std::max(1024, std::atoi(argv[i + 1]));
  }
  if (std::system(("mkdir -p '" + dir + "'").c_str()) != 0) {
    std::fprintf(stderr, "baton-make-model: cannot create %s\n", dir.c_str());
    return 1;
  }
  const std::vector<Tensor> tensors = V2LiteTensors(layers, vocab);
  nlohmann::json header = nlohmann::json::object();
  int64_t offset = 0;
  for (const Tensor& t : tensors) {
    nlohmann::json shape =
        t.rows == 1 ? nlohmann::json::array({t.cols}) : nlohmann::json::array({t.rows, t.cols});
    header[t.name] = {{"dtype", t.bf16 ? "BF16" : "F32"},
                      {"shape", shape},
                      {"data_offsets", {offset, offset + t.bytes()}}};
    offset += t.bytes();
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');
  FILE* f = std::fopen((dir + "/model.safetensors").c_str(), "wb");
  if (f == nullptr) {
    std::fprintf(stderr, "baton-make-model: cannot write %s/model.safetensors\n", dir.c_str());
    return 1;
  }
  const uint64_t length = text.size();
  bool ok = std::fwrite(&length, 8, 1, f) == 1 && std::fwrite(text.data(), 1, length, f) == length;
  // Uniform values of standard deviation 0.02 (a trained model's scale),
  // from one xorshift stream: the same bytes on every machine.
  uint64_t state = 0x9e3779b97f4a7c15ull;
  const float half_width = 0.02f * std::sqrt(3.0f);
  std::vector<uint8_t> buffer;
  for (const Tensor& t : tensors) {
    buffer.resize(t.bytes());
    const int64_t n = t.rows * t.cols;
    for (int64_t i = 0; i < n; ++i) {
      float value = t.fill;
      if (t.bf16) {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        value = (static_cast<float>(state >> 40) / static_cast<float>(1 << 24) * 2.f - 1.f) *
                half_width;
        uint32_t bits;
        std::memcpy(&bits, &value, 4);
        const uint16_t top = static_cast<uint16_t>(bits >> 16);
        std::memcpy(&buffer[2 * i], &top, 2);
      } else {
        std::memcpy(&buffer[4 * i], &value, 4);
      }
    }
    ok = ok && std::fwrite(buffer.data(), 1, buffer.size(), f) == buffer.size();
  }
  ok = std::fclose(f) == 0 && ok;
  FILE* c = std::fopen((dir + "/config.json").c_str(), "w");
  ok = ok && c != nullptr &&
       std::fprintf(c, "%s\n", V2LiteConfig(layers, vocab).dump(2).c_str()) > 0;
  if (c != nullptr) ok = std::fclose(c) == 0 && ok;
  if (!ok) {
    std::fprintf(stderr, "baton-make-model: writing %s failed\n", dir.c_str());
    return 1;
  }
  std::printf("wrote %s: DeepSeek-V2-Lite shape, %d layers, %.2f GB of weights\n", dir.c_str(),
              layers, static_cast<double>(offset) / 1e9);
  return 0;
}

}  // namespace

int main(int argc, char** argv) { return Main(argc, argv); }
