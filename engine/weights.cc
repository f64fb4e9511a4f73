#include "engine/weights.h"

#include <cstring>
#include <set>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "engine/status_macros.h"

namespace baton {
namespace {

constexpr int64_t kFp8Block = 128;

float ElementToFloat(const TensorView& v, int64_t i) {
  switch (v.dtype) {
    case DType::kF32: {
      float f;
      std::memcpy(&f, v.data + i * 4, 4);
      return f;
    }
    case DType::kBF16: {
      uint16_t h;
      std::memcpy(&h, v.data + i * 2, 2);
      return Bf16ToFloat(h);
    }
    case DType::kF16: {
      uint16_t h;
      std::memcpy(&h, v.data + i * 2, 2);
      return F16ToFloat(h);
    }
    case DType::kF8E4M3:
      return Fp8E4M3ToFloat(v.data[i]);
    case DType::kF64: {
      double d;
      std::memcpy(&d, v.data + i * 8, 8);
      return static_cast<float>(d);
    }
    default:
      return 0.f;
  }
}

absl::Status CheckShape(const TensorView& v, std::vector<int64_t> expected) {
  if (v.shape != expected) {
    TensorView want;
    want.shape = expected;
    return absl::InvalidArgumentError(absl::StrCat(v.file, ": tensor \"", v.name, "\" has shape ",
                                                   v.ShapeString(), ", expected ",
                                                   want.ShapeString()));
  }
  return absl::OkStatus();
}

absl::Status CheckFloat(const TensorView& v) {
  if (v.dtype == DType::kI64 || v.dtype == DType::kI32) {
    return absl::InvalidArgumentError(absl::StrCat(v.file, ": tensor \"", v.name, "\" has dtype ",
                                                   DTypeName(v.dtype),
                                                   ", expected a floating-point type"));
  }
  return absl::OkStatus();
}

// Reads tensors by name and remembers which were used, so that leftovers can
// be reported as unexpected.
class Loader {
 public:
  Loader(const ModelConfig& config, const Checkpoint& checkpoint, bool force_f32)
      : config_(config), checkpoint_(checkpoint), force_f32_(force_f32) {}

  absl::StatusOr<Matrix> Linear(const std::string& name, int64_t rows, int64_t cols,
                                bool force_f32 = false) {
    BATON_ASSIGN_OR_RETURN(const TensorView* view, Take(name));
    const TensorView* scale = nullptr;
    if (view->dtype == DType::kF8E4M3) {
      BATON_ASSIGN_OR_RETURN(scale, Take(name + "_scale_inv"));
    }
    return ToMatrix(*view, rows, cols, scale, force_f32 || force_f32_);
  }

  absl::StatusOr<Vector> Vec(const std::string& name, int64_t n) {
    BATON_ASSIGN_OR_RETURN(const TensorView* view, Take(name));
    BATON_RETURN_IF_ERROR(CheckFloat(*view));
    BATON_RETURN_IF_ERROR(CheckShape(*view, {n}));
    Vector out(n);
    for (int64_t i = 0; i < n; ++i) out.data()[i] = ElementToFloat(*view, i);
    return out;
  }

  absl::StatusOr<MlpWeights> Mlp(const std::string& prefix, int64_t inter) {
    const int64_t hidden = config_.hidden_size;
    BATON_ASSIGN_OR_RETURN(Matrix gate, Linear(prefix + ".gate_proj.weight", inter, hidden));
    BATON_ASSIGN_OR_RETURN(Matrix up, Linear(prefix + ".up_proj.weight", inter, hidden));
    MlpWeights mlp;
    mlp.inter = inter;
    BATON_ASSIGN_OR_RETURN(mlp.down, Linear(prefix + ".down_proj.weight", hidden, inter));
    mlp.gate_up = Matrix(gate.dtype == up.dtype ? gate.dtype : DType::kF32, 2 * inter, hidden);
    for (int64_t r = 0; r < inter; ++r) CopyRow(gate, r, &mlp.gate_up, r);
    for (int64_t r = 0; r < inter; ++r) CopyRow(up, r, &mlp.gate_up, inter + r);
    return mlp;
  }

  bool Has(const std::string& name) const { return checkpoint_.Find(name) != nullptr; }

  // Tensors the model does not read: an error unless they are known extras.
  absl::Status CheckNothingUnexpected() const {
    for (const std::string& name : checkpoint_.Names()) {
      if (used_.count(name) || IsIgnored(name)) continue;
      return absl::InvalidArgumentError(
          absl::StrCat(checkpoint_.Find(name)->file, ": unexpected tensor \"", name,
                       "\" (not part of a ", config_.model_type, " model with this config.json)"));
    }
    return absl::OkStatus();
  }

  static void CopyRow(const Matrix& from, int64_t from_row, Matrix* to, int64_t to_row) {
    for (int64_t c = 0; c < from.cols; ++c) {
      if (to->dtype == DType::kF32) {
        to->f32()[to_row * to->cols + c] = from.At(from_row, c);
      } else {
        to->bf16()[to_row * to->cols + c] = from.bf16()[from_row * from.cols + c];
      }
    }
  }

 private:
  absl::StatusOr<const TensorView*> Take(const std::string& name) {
    BATON_ASSIGN_OR_RETURN(const TensorView* view, checkpoint_.Get(name));
    used_.insert(name);
    return view;
  }

  // The multi-token-prediction layers (numbered >= num_hidden_layers) and
  // rotary caches some exporters write.
  bool IsIgnored(const std::string& name) const {
    if (absl::EndsWith(name, "rotary_emb.inv_freq")) return true;
    constexpr absl::string_view kLayers = "model.layers.";
    if (!absl::StartsWith(name, kLayers)) return false;
    const std::string rest = name.substr(kLayers.size());
    int layer = 0;
    return absl::SimpleAtoi(rest.substr(0, rest.find('.')), &layer) &&
           layer >= config_.num_hidden_layers;
  }

  const ModelConfig& config_;
  const Checkpoint& checkpoint_;
  bool force_f32_;
  std::set<std::string> used_;
};

absl::StatusOr<AttentionWeights> LoadAttention(const ModelConfig& c, Loader& loader,
                                               const std::string& p) {
  const int64_t hidden = c.hidden_size, heads = c.num_attention_heads;
  const int64_t nope = c.qk_nope_head_dim, rope = c.qk_rope_head_dim, v = c.v_head_dim;
  const int64_t lora = c.kv_lora_rank;
  AttentionWeights a;
  if (c.q_lora_rank > 0) {
    BATON_ASSIGN_OR_RETURN(a.q_a, loader.Linear(p + "q_a_proj.weight", c.q_lora_rank, hidden));
    BATON_ASSIGN_OR_RETURN(a.q_a_norm, loader.Vec(p + "q_a_layernorm.weight", c.q_lora_rank));
    BATON_ASSIGN_OR_RETURN(
        a.q_b, loader.Linear(p + "q_b_proj.weight", heads * (nope + rope), c.q_lora_rank));
  } else {
    BATON_ASSIGN_OR_RETURN(a.q_b,
                           loader.Linear(p + "q_proj.weight", heads * (nope + rope), hidden));
  }
  BATON_ASSIGN_OR_RETURN(a.kv_a,
                         loader.Linear(p + "kv_a_proj_with_mqa.weight", lora + rope, hidden));
  BATON_ASSIGN_OR_RETURN(a.kv_a_norm, loader.Vec(p + "kv_a_layernorm.weight", lora));
  BATON_ASSIGN_OR_RETURN(Matrix kv_b,
                         loader.Linear(p + "kv_b_proj.weight", heads * (nope + v), lora));
  BATON_ASSIGN_OR_RETURN(a.o, loader.Linear(p + "o_proj.weight", hidden, heads * v));

  // Absorption: q_nope . k_nope = (q_nope W_uk) . latent, so k_up_t holds
  // W_uk transposed per head; the attention output over latents is mapped
  // back per head through v_up.
  a.k_up_t = Matrix(kv_b.dtype, heads * lora, nope);
  a.v_up = Matrix(kv_b.dtype, heads * v, lora);
  for (int64_t h = 0; h < heads; ++h) {
    for (int64_t d = 0; d < nope; ++d) {
      const int64_t src_row = h * (nope + v) + d;
      for (int64_t l = 0; l < lora; ++l) {
        const int64_t dst = (h * lora + l) * nope + d;
        if (kv_b.dtype == DType::kF32) {
          a.k_up_t.f32()[dst] = kv_b.f32()[src_row * lora + l];
        } else {
          a.k_up_t.bf16()[dst] = kv_b.bf16()[src_row * lora + l];
        }
      }
    }
    for (int64_t d = 0; d < v; ++d)
      Loader::CopyRow(kv_b, h * (nope + v) + nope + d, &a.v_up, h * v + d);
  }
  return a;
}

}  // namespace

absl::StatusOr<Matrix> ToMatrix(const TensorView& view, int64_t rows, int64_t cols,
                                const TensorView* scale_inv, bool force_f32) {
  BATON_RETURN_IF_ERROR(CheckFloat(view));
  BATON_RETURN_IF_ERROR(CheckShape(view, {rows, cols}));
  if (view.dtype == DType::kBF16 && !force_f32) {
    Matrix m(DType::kBF16, rows, cols);
    std::memcpy(m.storage.data(), view.data, view.num_bytes);
    return m;
  }
  Matrix m(DType::kF32, rows, cols);
  float* out = m.f32();
  if (view.dtype == DType::kF8E4M3) {
    if (scale_inv == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat(view.file, ": FP8 tensor \"", view.name, "\" has no _scale_inv"));
    }
    const int64_t block_rows = (rows + kFp8Block - 1) / kFp8Block;
    const int64_t block_cols = (cols + kFp8Block - 1) / kFp8Block;
    if (scale_inv->dtype != DType::kF32 && scale_inv->dtype != DType::kBF16) {
      return absl::InvalidArgumentError(
          absl::StrCat(scale_inv->file, ": tensor \"", scale_inv->name, "\" must be F32"));
    }
    BATON_RETURN_IF_ERROR(CheckShape(*scale_inv, {block_rows, block_cols}));
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t c = 0; c < cols; ++c) {
        const float scale =
            ElementToFloat(*scale_inv, (r / kFp8Block) * block_cols + c / kFp8Block);
        out[r * cols + c] = Fp8E4M3ToFloat(view.data[r * cols + c]) * scale;
      }
    }
    return m;
  }
  for (int64_t i = 0; i < rows * cols; ++i) out[i] = ElementToFloat(view, i);
  return m;
}

absl::StatusOr<ModelWeights> LoadWeights(const ModelConfig& c, const Checkpoint& checkpoint,
                                         const WeightLoadOptions& options) {
  Loader loader(c, checkpoint, options.force_f32);
  ModelWeights w;
  const int64_t hidden = c.hidden_size;
  BATON_ASSIGN_OR_RETURN(w.embed, loader.Linear("model.embed_tokens.weight", c.vocab_size, hidden));
  for (int layer = 0; layer < c.num_hidden_layers; ++layer) {
    const std::string p = absl::StrCat("model.layers.", layer, ".");
    LayerWeights lw;
    BATON_ASSIGN_OR_RETURN(lw.input_norm, loader.Vec(p + "input_layernorm.weight", hidden));
    BATON_ASSIGN_OR_RETURN(lw.attn, LoadAttention(c, loader, p + "self_attn."));
    BATON_ASSIGN_OR_RETURN(lw.post_attention_norm,
                           loader.Vec(p + "post_attention_layernorm.weight", hidden));
    lw.is_moe = c.is_moe_layer(layer);
    if (!lw.is_moe) {
      BATON_ASSIGN_OR_RETURN(lw.dense, loader.Mlp(p + "mlp", c.intermediate_size));
    } else {
      MoeWeights& moe = lw.moe;
      BATON_ASSIGN_OR_RETURN(moe.router, loader.Linear(p + "mlp.gate.weight", c.n_routed_experts,
                                                       hidden, /*force_f32=*/true));
      const std::string bias = p + "mlp.gate.e_score_correction_bias";
      if (c.topk_method == TopkMethod::kNoauxTc) {
        BATON_ASSIGN_OR_RETURN(moe.score_bias, loader.Vec(bias, c.n_routed_experts));
      }
      for (int e = 0; e < c.n_routed_experts; ++e) {
        BATON_ASSIGN_OR_RETURN(MlpWeights expert, loader.Mlp(absl::StrCat(p, "mlp.experts.", e),
                                                             c.moe_intermediate_size));
        moe.experts.push_back(std::move(expert));
      }
      if (c.n_shared_experts > 0) {
        BATON_ASSIGN_OR_RETURN(moe.shared,
                               loader.Mlp(p + "mlp.shared_experts",
                                          int64_t{c.moe_intermediate_size} * c.n_shared_experts));
      }
    }
    w.layers.push_back(std::move(lw));
    if (options.progress) options.progress(layer + 1, c.num_hidden_layers);
  }
  BATON_ASSIGN_OR_RETURN(w.final_norm, loader.Vec("model.norm.weight", hidden));
  if (!c.tie_word_embeddings || loader.Has("lm_head.weight")) {
    BATON_ASSIGN_OR_RETURN(w.lm_head, loader.Linear("lm_head.weight", c.vocab_size, hidden));
  }
  BATON_RETURN_IF_ERROR(loader.CheckNothingUnexpected());
  auto add = [&](const Matrix& m) { w.bytes += m.bytes(); };
  add(w.embed);
  add(w.lm_head);
  for (const LayerWeights& lw : w.layers) {
    for (const Matrix* m : {&lw.attn.q_a, &lw.attn.q_b, &lw.attn.kv_a, &lw.attn.k_up_t,
                            &lw.attn.v_up, &lw.attn.o, &lw.dense.gate_up, &lw.dense.down,
                            &lw.moe.router, &lw.moe.shared.gate_up, &lw.moe.shared.down}) {
      add(*m);
    }
    for (const MlpWeights& e : lw.moe.experts) {
      add(e.gate_up);
      add(e.down);
    }
  }
  return w;
}

}  // namespace baton
