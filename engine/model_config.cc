#include "engine/model_config.h"

#include <cmath>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "engine/status_macros.h"
#include "nlohmann/json.hpp"

namespace baton {
namespace {

using Json = nlohmann::json;

// Reads typed fields from a JSON object, remembering the first error so that
// parsing reads as a flat list of fields.
class FieldReader {
 public:
  FieldReader(const Json& object, std::string source)
      : object_(object), source_(std::move(source)) {}

  void Int(const char* name, int* out, bool required) {
    const Json* v = Find(name, required);
    if (v == nullptr) return;
    if (!v->is_number_integer() || v->get<int64_t>() < 0 ||
        v->get<int64_t>() > (int64_t{1} << 31) - 1) {
      Fail(name, "a non-negative integer");
      return;
    }
    *out = v->get<int>();
  }
  void Double(const char* name, double* out, bool required) {
    const Json* v = Find(name, required);
    if (v == nullptr) return;
    if (!v->is_number()) {
      Fail(name, "a number");
      return;
    }
    *out = v->get<double>();
  }
  void Bool(const char* name, bool* out) {
    const Json* v = Find(name, false);
    if (v == nullptr) return;
    if (!v->is_boolean()) {
      Fail(name, "true or false");
      return;
    }
    *out = v->get<bool>();
  }
  void String(const char* name, std::string* out) {
    const Json* v = Find(name, false);
    if (v == nullptr) return;
    if (!v->is_string()) {
      Fail(name, "a string");
      return;
    }
    *out = v->get<std::string>();
  }
  // Token ids may be a single integer or a list (the first is used).
  void TokenId(const char* name, int* out) {
    const Json* v = Find(name, false);
    if (v == nullptr) return;
    if (v->is_array() && !v->empty()) v = &v->front();
    if (!v->is_number_integer()) {
      Fail(name, "an integer token id");
      return;
    }
    *out = v->get<int>();
  }

  absl::Status status() const { return status_; }

 private:
  const Json* Find(const char* name, bool required) {
    auto it = object_.find(name);
    if (it == object_.end() || it->is_null()) {
      if (required && status_.ok()) {
        status_ = absl::InvalidArgumentError(
            absl::StrCat(source_, ": missing required field \"", name, "\""));
      }
      return nullptr;
    }
    return &*it;
  }
  void Fail(const char* name, const char* expected) {
    if (!status_.ok()) return;
    status_ = absl::InvalidArgumentError(absl::StrCat(source_, ": field \"", name, "\" must be ",
                                                      expected, ", got ", object_.at(name).dump()));
  }

  const Json& object_;
  std::string source_;
  absl::Status status_;
};

double YarnMscale(double scale, double mscale) {
  if (scale <= 1.0) return 1.0;
  return 0.1 * mscale * std::log(scale) + 1.0;
}

absl::Status Invalid(const std::string& source, const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat(source, ": ", what));
}

absl::Status Validate(const ModelConfig& c, const std::string& source) {
  auto positive = [&](int v, const char* name) -> absl::Status {
    if (v <= 0) return Invalid(source, absl::StrCat("\"", name, "\" must be > 0"));
    return absl::OkStatus();
  };
  BATON_RETURN_IF_ERROR(positive(c.vocab_size, "vocab_size"));
  BATON_RETURN_IF_ERROR(positive(c.hidden_size, "hidden_size"));
  BATON_RETURN_IF_ERROR(positive(c.num_hidden_layers, "num_hidden_layers"));
  BATON_RETURN_IF_ERROR(positive(c.num_attention_heads, "num_attention_heads"));
  BATON_RETURN_IF_ERROR(positive(c.kv_lora_rank, "kv_lora_rank"));
  BATON_RETURN_IF_ERROR(positive(c.qk_nope_head_dim, "qk_nope_head_dim"));
  BATON_RETURN_IF_ERROR(positive(c.v_head_dim, "v_head_dim"));
  BATON_RETURN_IF_ERROR(positive(c.max_position_embeddings, "max_position_embeddings"));
  if (c.qk_rope_head_dim <= 0 || c.qk_rope_head_dim % 2 != 0) {
    return Invalid(source, "\"qk_rope_head_dim\" must be a positive even number");
  }
  if (c.first_k_dense_replace < c.num_hidden_layers) {
    BATON_RETURN_IF_ERROR(positive(c.intermediate_size, "intermediate_size"));
  }
  if (c.first_k_dense_replace > 0 || c.n_routed_experts == 0) {
    BATON_RETURN_IF_ERROR(positive(c.intermediate_size, "intermediate_size"));
  }
  if (c.n_routed_experts > 0) {
    BATON_RETURN_IF_ERROR(positive(c.moe_intermediate_size, "moe_intermediate_size"));
    BATON_RETURN_IF_ERROR(positive(c.num_experts_per_tok, "num_experts_per_tok"));
    BATON_RETURN_IF_ERROR(positive(c.moe_layer_freq, "moe_layer_freq"));
    if (c.num_experts_per_tok > c.n_routed_experts) {
      return Invalid(source, "\"num_experts_per_tok\" exceeds \"n_routed_experts\"");
    }
    if (c.n_group <= 0 || c.n_routed_experts % c.n_group != 0) {
      return Invalid(source, "\"n_routed_experts\" must be a multiple of \"n_group\"");
    }
    if (c.topk_group <= 0 || c.topk_group > c.n_group) {
      return Invalid(source, "\"topk_group\" must be in [1, n_group]");
    }
    const int per_group = c.n_routed_experts / c.n_group;
    if (c.topk_method == TopkMethod::kNoauxTc && per_group < 2) {
      return Invalid(source, "noaux_tc routing needs at least 2 experts per group");
    }
    if (c.topk_method != TopkMethod::kGreedy && c.num_experts_per_tok > c.topk_group * per_group) {
      return Invalid(source,
                     "\"num_experts_per_tok\" exceeds the experts in \"topk_group\" groups");
    }
  }
  if (c.bos_token_id >= c.vocab_size || c.eos_token_id >= c.vocab_size) {
    return Invalid(source, "bos/eos token id outside the vocabulary");
  }
  if (c.yarn.enabled && (c.yarn.factor <= 0 || c.yarn.original_max_position_embeddings <= 0)) {
    return Invalid(source,
                   "rope_scaling yarn needs factor > 0 and original_max_position_embeddings > 0");
  }
  return absl::OkStatus();
}

}  // namespace

double ModelConfig::softmax_scale() const {
  double scale = 1.0 / std::sqrt(static_cast<double>(qk_head_dim()));
  if (yarn.enabled && yarn.mscale_all_dim != 0.0) {
    const double m = YarnMscale(yarn.factor, yarn.mscale_all_dim);
    scale *= m * m;
  }
  return scale;
}

absl::StatusOr<ModelConfig> ParseModelConfig(const std::string& json_text,
                                             const std::string& source) {
  Json root = Json::parse(json_text, nullptr, /*allow_exceptions=*/false);
  if (root.is_discarded()) return Invalid(source, "not valid JSON");
  if (!root.is_object()) return Invalid(source, "expected a JSON object");

  ModelConfig c;
  FieldReader r(root, source);
  r.String("model_type", &c.model_type);
  if (c.model_type == "deepseek_v3") {
    c.architecture = Architecture::kDeepseekV3;
  } else if (c.model_type == "deepseek_v2") {
    c.architecture = Architecture::kDeepseekV2;
  } else {
    return Invalid(source, absl::StrCat("unsupported model_type \"", c.model_type,
                                        "\" (expected deepseek_v3 or deepseek_v2)"));
  }
  r.Int("vocab_size", &c.vocab_size, true);
  r.Int("hidden_size", &c.hidden_size, true);
  r.Int("intermediate_size", &c.intermediate_size, false);
  r.Int("moe_intermediate_size", &c.moe_intermediate_size, false);
  r.Int("num_hidden_layers", &c.num_hidden_layers, true);
  r.Int("num_attention_heads", &c.num_attention_heads, true);
  r.Int("q_lora_rank", &c.q_lora_rank, false);
  r.Int("kv_lora_rank", &c.kv_lora_rank, true);
  r.Int("qk_nope_head_dim", &c.qk_nope_head_dim, true);
  r.Int("qk_rope_head_dim", &c.qk_rope_head_dim, true);
  r.Int("v_head_dim", &c.v_head_dim, true);
  r.Int("n_routed_experts", &c.n_routed_experts, false);
  r.Int("n_shared_experts", &c.n_shared_experts, false);
  r.Int("num_experts_per_tok", &c.num_experts_per_tok, false);
  r.Int("n_group", &c.n_group, false);
  r.Int("topk_group", &c.topk_group, false);
  r.Bool("norm_topk_prob", &c.norm_topk_prob);
  r.Double("routed_scaling_factor", &c.routed_scaling_factor, false);
  r.Int("first_k_dense_replace", &c.first_k_dense_replace, false);
  r.Int("moe_layer_freq", &c.moe_layer_freq, false);
  r.Double("rope_theta", &c.rope_theta, false);
  r.Double("rms_norm_eps", &c.rms_norm_eps, false);
  r.Bool("tie_word_embeddings", &c.tie_word_embeddings);
  r.TokenId("bos_token_id", &c.bos_token_id);
  r.TokenId("eos_token_id", &c.eos_token_id);
  r.Int("max_position_embeddings", &c.max_position_embeddings, true);

  std::string scoring = c.architecture == Architecture::kDeepseekV3 ? "sigmoid" : "softmax";
  r.String("scoring_func", &scoring);
  std::string topk_method = c.architecture == Architecture::kDeepseekV3 ? "noaux_tc" : "greedy";
  r.String("topk_method", &topk_method);
  BATON_RETURN_IF_ERROR(r.status());

  if (scoring == "sigmoid") {
    c.scoring_func = ScoringFunc::kSigmoid;
  } else if (scoring == "softmax") {
    c.scoring_func = ScoringFunc::kSoftmax;
  } else {
    return Invalid(source, absl::StrCat("unsupported scoring_func \"", scoring, "\""));
  }
  if (topk_method == "noaux_tc") {
    c.topk_method = TopkMethod::kNoauxTc;
  } else if (topk_method == "group_limited_greedy") {
    c.topk_method = TopkMethod::kGroupLimitedGreedy;
  } else if (topk_method == "greedy") {
    c.topk_method = TopkMethod::kGreedy;
  } else {
    return Invalid(source, absl::StrCat("unsupported topk_method \"", topk_method, "\""));
  }

  auto scaling = root.find("rope_scaling");
  if (scaling != root.end() && !scaling->is_null()) {
    if (!scaling->is_object()) return Invalid(source, "\"rope_scaling\" must be an object");
    FieldReader s(*scaling, absl::StrCat(source, ": rope_scaling"));
    std::string type;
    s.String("type", &type);
    if (type.empty()) s.String("rope_type", &type);
    BATON_RETURN_IF_ERROR(s.status());
    if (type == "yarn") {
      c.yarn.enabled = true;
      s.Double("factor", &c.yarn.factor, true);
      s.Int("original_max_position_embeddings", &c.yarn.original_max_position_embeddings, true);
      s.Double("beta_fast", &c.yarn.beta_fast, false);
      s.Double("beta_slow", &c.yarn.beta_slow, false);
      s.Double("mscale", &c.yarn.mscale, false);
      s.Double("mscale_all_dim", &c.yarn.mscale_all_dim, false);
      BATON_RETURN_IF_ERROR(s.status());
    } else if (!type.empty() && type != "default") {
      return Invalid(source, absl::StrCat("unsupported rope_scaling type \"", type, "\""));
    }
  }
  BATON_RETURN_IF_ERROR(Validate(c, source));
  return c;
}

absl::StatusOr<ModelConfig> LoadModelConfig(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat(path, ": cannot open"));
  std::stringstream text;
  text << in.rdbuf();
  return ParseModelConfig(text.str(), path);
}

}  // namespace baton
