#include <algorithm>
#include <cstdio>
#include <string>
#include <unordered_map>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "engine/cuda/cublas.h"
#include "engine/cuda/cuda_backend.h"
#include "engine/cuda/cuda_ops.h"
#include "engine/cuda/device_ops.h"
#include "engine/rope.h"
#include "engine/status_macros.h"

namespace baton::cuda {
namespace {

// A KV cache's rows in device memory. Copies to and from the host (the
// disaggregated handoff) run on the memory's own stream, one at a time, and
// are complete when they return.
class CudaKvMemory : public KvMemory {
 public:
  CudaKvMemory(int device, size_t bytes) : device_(device) { status_.Update(Init(bytes)); }
  const absl::Status& status() const { return status_; }
  int device() const { return device_; }
  uint8_t* host_data() override { return nullptr; }
  uint8_t* device_data() { return data_.get<uint8_t>(); }

  absl::Status ReadRows(const std::vector<int64_t>& offsets, int64_t row_bytes,
                        void* out) const override {
    absl::MutexLock lock(&mu_);
    BATON_RETURN_IF_ERROR(Check(cudaSetDevice(device_), "cudaSetDevice"));
    const int64_t rows = static_cast<int64_t>(offsets.size());
    BATON_RETURN_IF_ERROR(Upload(offsets.data(), offsets.size(), offsets_, stream_->get()));
    BATON_RETURN_IF_ERROR(staging_.Resize(rows * row_bytes));
    BATON_RETURN_IF_ERROR(LaunchGatherBytes(data_.get<uint8_t>(), offsets_.get<int64_t>(), rows,
                                            row_bytes, staging_.get<uint8_t>(), stream_->get()));
    return Download(staging_.get<void>(), rows * row_bytes, out, stream_->get());
  }

  absl::Status WriteRows(const std::vector<int64_t>& offsets, int64_t row_bytes,
                         const void* in) override {
    absl::MutexLock lock(&mu_);
    BATON_RETURN_IF_ERROR(Check(cudaSetDevice(device_), "cudaSetDevice"));
    const int64_t rows = static_cast<int64_t>(offsets.size());
    BATON_RETURN_IF_ERROR(Upload(offsets.data(), offsets.size(), offsets_, stream_->get()));
    BATON_RETURN_IF_ERROR(
        Upload(static_cast<const uint8_t*>(in), rows * row_bytes, staging_, stream_->get()));
    BATON_RETURN_IF_ERROR(LaunchScatterBytes(staging_.get<uint8_t>(), offsets_.get<int64_t>(), rows,
                                             row_bytes, data_.get<uint8_t>(), stream_->get()));
    return Check(cudaStreamSynchronize(stream_->get()), "synchronize");
  }

 private:
  absl::Status Init(size_t bytes) {
    BATON_RETURN_IF_ERROR(Check(cudaSetDevice(device_), "cudaSetDevice"));
    BATON_RETURN_IF_ERROR(data_.Resize(bytes));
    stream_ = std::make_unique<Stream>();  // On this device.
    BATON_RETURN_IF_ERROR(stream_->status());
    // On this stream and waited for: a memset on the default stream would
    // not be ordered before the non-blocking streams' first writes.
    BATON_RETURN_IF_ERROR(
        Check(cudaMemsetAsync(data_.get<void>(), 0, bytes, stream_->get()), "cudaMemsetAsync"));
    return Check(cudaStreamSynchronize(stream_->get()), "synchronize");
  }

  const int device_;
  DeviceBuffer data_;
  absl::Status status_;
  mutable absl::Mutex mu_;
  // Guarded by mu_.
  std::unique_ptr<Stream> stream_;
  mutable DeviceBuffer offsets_, staging_;
};

class CudaBackend : public Backend {
 public:
  explicit CudaBackend(int device) : device_(device) {}

  absl::Status Init() {
    BATON_RETURN_IF_ERROR(Check(cudaSetDevice(device_), "cudaSetDevice"));
    stream_ = std::make_unique<Stream>();
    BATON_RETURN_IF_ERROR(stream_->status());
    auto cublas = Cublas::Open();
    if (cublas.ok()) {
      cublas_ = std::move(*cublas);
    } else {
      std::fprintf(stderr, "%s: %s; every product runs on baton's GEMV kernel\n", name().c_str(),
                   std::string(cublas.status().message()).c_str());
    }
    return absl::OkStatus();
  }

  std::string name() const override { return absl::StrCat("cuda:", device_); }
  // fp32 activations against BF16 (or F32) weights, fp32 accumulation.
  kernels::Precision precision() const override { return kernels::Precision::kF32; }
  DType kv_dtype() const override { return DType::kBF16; }

  absl::Status Prepare(const ModelConfig& config, ModelWeights& weights) override {
    BATON_RETURN_IF_ERROR(SetDevice());
    config_ = config;
    cos_sin_scale_ = RopeCosSinScale(config_);
    softmax_scale_ = static_cast<float>(config_.softmax_scale());
    const std::vector<float> inv_freq = RopeInvFreq(config_);
    BATON_RETURN_IF_ERROR(Upload(inv_freq.data(), inv_freq.size(), inv_freq_, s()));
    BATON_RETURN_IF_ERROR(Put(weights.embed));
    embed_host_ = &weights.embed;
    for (DeviceBuffer* table : {&up_table_, &down_table_}) {
      BATON_RETURN_IF_ERROR(table->Resize(GroupedTableBytes(std::max(1, config.n_routed_experts))));
    }
    max_inter_ = std::max<int64_t>(
        {config.intermediate_size, config.moe_intermediate_size,
         int64_t{config.moe_intermediate_size} * std::max(1, config.n_shared_experts)});
    BATON_RETURN_IF_ERROR(Put(weights.final_norm));
    if (!weights.lm_head.empty()) BATON_RETURN_IF_ERROR(Put(weights.lm_head));
    for (LayerWeights& layer : weights.layers) {
      BATON_RETURN_IF_ERROR(Put(layer.input_norm));
      BATON_RETURN_IF_ERROR(Put(layer.post_attention_norm));
      AttentionWeights& a = layer.attn;
      for (Matrix* m : {&a.q_a, &a.q_b, &a.kv_a, &a.k_up_t, &a.v_up, &a.o}) {
        if (!m->empty()) BATON_RETURN_IF_ERROR(Put(*m));
      }
      if (!a.q_a.empty()) BATON_RETURN_IF_ERROR(Put(a.q_a_norm));
      BATON_RETURN_IF_ERROR(Put(a.kv_a_norm));
      auto put_mlp = [&](MlpWeights& mlp) -> absl::Status {
        if (mlp.inter == 0) return absl::OkStatus();
        BATON_RETURN_IF_ERROR(Put(mlp.gate_up));
        return Put(mlp.down);
      };
      if (layer.is_moe) {
        BATON_RETURN_IF_ERROR(Put(layer.moe.router));
        BATON_RETURN_IF_ERROR(put_mlp(layer.moe.shared));
        for (MlpWeights& e : layer.moe.experts) BATON_RETURN_IF_ERROR(put_mlp(e));
      } else {
        BATON_RETURN_IF_ERROR(put_mlp(layer.dense));
      }
    }
    BATON_RETURN_IF_ERROR(Check(cudaStreamSynchronize(s()), "weights upload"));
    // The matrices now live on the device; their host copies would double
    // the host memory a GPU worker needs (shapes and dtypes stay: the
    // model's accounting reads them).
    for (Matrix* m : uploaded_) m->storage = AlignedBuffer();
    uploaded_.clear();
    return absl::OkStatus();
  }

  absl::StatusOr<std::unique_ptr<KvMemory>> AllocateKv(size_t bytes) override {
    auto memory = std::make_unique<CudaKvMemory>(device_, bytes);
    if (!memory->status().ok()) {
      return absl::ResourceExhaustedError(absl::StrCat("KV cache of ", bytes, " bytes on ", name(),
                                                       ": ", memory->status().message()));
    }
    return memory;
  }

  absl::Status Begin(const ForwardTokens& tokens, ThreadPool&) override {
    BATON_RETURN_IF_ERROR(SetDevice());
    tokens_ = &tokens;
    attention_ready_ = false;
    const int64_t T = tokens.count(), hidden = config_.hidden_size;
    for (DeviceBuffer* b : {&x_, &xn_, &out_}) BATON_RETURN_IF_ERROR(b->Resize(4 * T * hidden));
    // Sized for the pass's largest MLP here: growing a buffer mid-pass
    // (cudaFree) would wait for every queued kernel.
    BATON_RETURN_IF_ERROR(mlp_hidden_.Resize(4 * T * 2 * max_inter_));
    BATON_RETURN_IF_ERROR(expert_hidden_.Resize(4 * T * std::max(1, config_.num_experts_per_tok) *
                                                2 * config_.moe_intermediate_size));
    if (cublas_ != nullptr && T >= kTensorCoreMinRows) {
      // The widest product input, or all heads' inputs of a per-head one.
      const int64_t per_heads = int64_t{config_.num_attention_heads} *
                                std::max(config_.qk_nope_head_dim, config_.kv_lora_rank);
      BATON_RETURN_IF_ERROR(
          split_.Resize(TensorCoreSplitBytes(T, std::max(max_product_cols_, per_heads))));
    }
    BATON_RETURN_IF_ERROR(Upload(tokens.ids.data(), T, ids_, s()));
    BATON_RETURN_IF_ERROR(Upload(tokens.positions.data(), T, positions_, s()));
    return LaunchEmbed(M(*embed_host_), ids_.get<int32_t>(), T, x_.get<float>(), s());
  }

  absl::Status Norm(const Vector& weight) override {
    const int64_t hidden = config_.hidden_size;
    return LaunchRmsNorm(x_.get<float>(), hidden, V(weight), tokens_->count(), hidden,
                         config_.rms_norm_eps, xn_.get<float>(), hidden, s());
  }

  absl::Status Attention(int layer, const AttentionWeights& a, KvCache& cache,
                         const LayerKvHook* on_layer_kv) override {
    auto* memory = dynamic_cast<CudaKvMemory*>(&cache.memory());
    if (memory == nullptr || memory->device() != device_ || cache.dtype() != DType::kBF16) {
      return absl::InvalidArgumentError(
          absl::StrCat(name(), " attends over a BF16 KV cache in its own device memory"));
    }
    const ModelConfig& c = config_;
    const int64_t T = tokens_->count(), hidden = c.hidden_size, heads = c.num_attention_heads;
    const int64_t nope = c.qk_nope_head_dim, rope = c.qk_rope_head_dim, lora = c.kv_lora_rank;
    const int64_t qk = nope + rope, width = lora + rope, vdim = c.v_head_dim, qr = c.q_lora_rank;
    if (!attention_ready_) BATON_RETURN_IF_ERROR(PrepareAttention(cache));
    BATON_RETURN_IF_ERROR(q_.Resize(4 * T * heads * qk));
    BATON_RETURN_IF_ERROR(kv_.Resize(4 * T * width));
    BATON_RETURN_IF_ERROR(q_full_.Resize(4 * T * heads * width));
    BATON_RETURN_IF_ERROR(o_latent_.Resize(4 * T * heads * lora));
    BATON_RETURN_IF_ERROR(attn_v_.Resize(4 * T * heads * vdim));
    float* q = q_.get<float>();
    float* kv = kv_.get<float>();
    float* q_full = q_full_.get<float>();

    // Queries (through the compressed q when q_lora_rank is set) and the
    // compressed KV.
    if (qr > 0) {
      BATON_RETURN_IF_ERROR(q_a_.Resize(4 * T * qr));
      float* q_a = q_a_.get<float>();
      BATON_RETURN_IF_ERROR(Product(xn_.get<float>(), hidden, T, M(a.q_a), q_a, qr));
      BATON_RETURN_IF_ERROR(
          LaunchRmsNorm(q_a, qr, V(a.q_a_norm), T, qr, c.rms_norm_eps, q_a, qr, s()));
      BATON_RETURN_IF_ERROR(Product(q_a, qr, T, M(a.q_b), q, heads * qk));
    } else {
      BATON_RETURN_IF_ERROR(Product(xn_.get<float>(), hidden, T, M(a.q_b), q, heads * qk));
    }
    BATON_RETURN_IF_ERROR(Product(xn_.get<float>(), hidden, T, M(a.kv_a), kv, width));

    // The normalized latent and the roped key, into the cache.
    BATON_RETURN_IF_ERROR(
        LaunchRmsNorm(kv, width, V(a.kv_a_norm), T, lora, c.rms_norm_eps, kv, width, s()));
    BATON_RETURN_IF_ERROR(LaunchRope(kv + lora, T, width, 1, 0, rope, positions_.get<int64_t>(),
                                     inv_freq_.get<float>(), cos_sin_scale_, s()));
    const int64_t layer_elements =
        static_cast<int64_t>(layer) * cache.num_blocks() * cache.block_size() * width;
    uint16_t* cache_layer = reinterpret_cast<uint16_t*>(memory->device_data()) + layer_elements;
    BATON_RETURN_IF_ERROR(
        LaunchWriteCache(kv, T, width, row_at_.get<int64_t>(), true, cache_layer, s()));
    if (on_layer_kv != nullptr) {
      BATON_RETURN_IF_ERROR(Check(cudaStreamSynchronize(s()), "synchronize"));
      BATON_RETURN_IF_ERROR((*on_layer_kv)(layer));
    }

    // Absorbed queries: the roped part, and q_nope through W_uk per head.
    BATON_RETURN_IF_ERROR(LaunchCopyRows(q + nope, qk, T * heads, rope, q_full + lora, width, s()));
    BATON_RETURN_IF_ERROR(LaunchRope(q_full + lora, T, heads * width, heads, width, rope,
                                     positions_.get<int64_t>(), inv_freq_.get<float>(),
                                     cos_sin_scale_, s()));
    DeviceMatrix k_up = M(a.k_up_t);
    k_up.rows = lora;  // One head's slice; the batch steps through the heads.
    BATON_RETURN_IF_ERROR(
        Product(q, heads * qk, T, k_up, q_full, heads * width, heads, qk, lora * nope, width));

    // Attention over the cache, in slices of tokens whose scores and partial
    // sums fit the scratch budget.
    const int64_t per_token =
        heads * max_len_ * 4 + static_cast<int64_t>(MlaPartialsBytes(1, heads, max_len_, lora));
    const int64_t slice = std::max<int64_t>(1, kScoresBudget / per_token);
    BATON_RETURN_IF_ERROR(scores_.Resize(std::min(slice, T) * heads * max_len_ * 4));
    BATON_RETURN_IF_ERROR(
        mla_partials_.Resize(MlaPartialsBytes(std::min(slice, T), heads, max_len_, lora)));
    for (int64_t t0 = 0; t0 < T; t0 += slice) {
      const int64_t n = std::min(slice, T - t0);
      const MlaProblem problem{q_full + t0 * heads * width,
                               n,
                               heads,
                               width,
                               lora,
                               cache_layer,
                               cache.block_size(),
                               tables_.get<int32_t>() + t0 * max_blocks_,
                               max_blocks_,
                               lengths_.get<int32_t>() + t0,
                               max_len_,
                               softmax_scale_,
                               scores_.get<float>(),
                               mla_partials_.get<float>(),
                               o_latent_.get<float>() + t0 * heads * lora};
      BATON_RETURN_IF_ERROR(LaunchMlaDecodeAttention(problem, s()));
    }

    // Back to values per head, then the output projection.
    DeviceMatrix v_up = M(a.v_up);
    v_up.rows = vdim;
    BATON_RETURN_IF_ERROR(Product(o_latent_.get<float>(), heads * lora, T, v_up,
                                  attn_v_.get<float>(), heads * vdim, heads, lora, vdim * lora,
                                  vdim));
    return Product(attn_v_.get<float>(), heads * vdim, T, M(a.o), out_.get<float>(), hidden);
  }

  absl::Status Mlp(const MlpWeights& mlp) override {
    return RunMlp(mlp, xn_.get<float>(), tokens_->count(), out_.get<float>());
  }

  absl::Status RouterLogits(const Matrix& router, std::vector<float>* logits) override {
    const int64_t T = tokens_->count();
    BATON_RETURN_IF_ERROR(router_.Resize(4 * T * router.rows));
    BATON_RETURN_IF_ERROR(Product(xn_.get<float>(), config_.hidden_size, T, M(router),
                                  router_.get<float>(), router.rows));
    logits->resize(T * router.rows);
    return Download(router_.get<void>(), 4 * T * router.rows, logits->data(), s());
  }

  absl::Status Experts(const MoeWeights& moe, const ExpertRouting& routing) override {
    const int64_t T = tokens_->count(), hidden = config_.hidden_size;
    const int64_t experts = static_cast<int64_t>(routing.first.size()) - 1;
    const int64_t rows = routing.first[experts];
    // Each token's routed rows, in expert order: the order of its sum.
    std::vector<int64_t> token_first(T + 1, 0), token_rows(rows);
    std::vector<float> token_weight(rows);
    for (int64_t r = 0; r < rows; ++r) ++token_first[routing.token[r] + 1];
    for (int64_t t = 0; t < T; ++t) token_first[t + 1] += token_first[t];
    std::vector<int64_t> next(token_first.begin(), token_first.end() - 1);
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t at = next[routing.token[r]]++;
      token_rows[at] = r;
      token_weight[at] = routing.weight[r];
    }
    BATON_RETURN_IF_ERROR(Upload(routing.token.data(), rows, expert_token_, s()));
    BATON_RETURN_IF_ERROR(Upload(token_first.data(), T + 1, token_first_, s()));
    BATON_RETURN_IF_ERROR(Upload(token_rows.data(), rows, token_rows_, s()));
    BATON_RETURN_IF_ERROR(Upload(token_weight.data(), rows, token_weight_, s()));
    BATON_RETURN_IF_ERROR(expert_in_.Resize(4 * std::max<int64_t>(rows, 1) * hidden));
    BATON_RETURN_IF_ERROR(expert_out_.Resize(4 * std::max<int64_t>(rows, 1) * hidden));
    BATON_RETURN_IF_ERROR(LaunchGatherRows(xn_.get<float>(), expert_token_.get<int64_t>(), rows,
                                           hidden, expert_in_.get<float>(), s()));
    float* out = out_.get<float>();
    if (moe.shared.inter > 0) {
      BATON_RETURN_IF_ERROR(RunMlp(moe.shared, xn_.get<float>(), T, out));
    } else {
      BATON_RETURN_IF_ERROR(Check(cudaMemsetAsync(out, 0, 4 * T * hidden, s()), "memset"));
    }
    // The routed experts: every gate/up product in one launch, one SiLU over
    // all their rows, every down product in one launch (a decode step's
    // experts are each too small to be worth a launch of their own).
    const int64_t inter = config_.moe_intermediate_size;
    float* h = expert_hidden_.get<float>();  // Sized in Begin: rows <= T * experts per token.
    std::vector<GroupedProduct> up, down;
    for (int64_t e = 0; e < experts; ++e) {
      const int64_t first = routing.first[e], count = routing.first[e + 1] - first;
      if (count == 0) continue;
      const MlpWeights& mlp = moe.experts[e];
      if (mlp.inter != inter) return absl::InternalError("experts of different sizes");
      up.push_back({expert_in_.get<float>() + first * hidden, hidden, count, M(mlp.gate_up),
                    h + first * 2 * inter, 2 * inter});
      down.push_back({h + first * 2 * inter, 2 * inter, count, M(mlp.down),
                      expert_out_.get<float>() + first * hidden, hidden});
    }
    // Experts with enough rows (prefill) each go to the tensor cores.
    auto run = [&](std::vector<GroupedProduct>& products, DeviceBuffer& table) -> absl::Status {
      std::vector<GroupedProduct> small;
      for (const GroupedProduct& p : products) {
        if (OnTensorCores(p.w, p.m)) {
          BATON_RETURN_IF_ERROR(Product(p.x, p.ldx, p.m, p.w, p.y, p.ldy));
        } else {
          small.push_back(p);
        }
      }
      return LaunchGroupedMatMul(small, table, s());
    };
    BATON_RETURN_IF_ERROR(run(up, up_table_));
    BATON_RETURN_IF_ERROR(LaunchSiluMul(h, rows, inter, s()));
    BATON_RETURN_IF_ERROR(run(down, down_table_));
    return LaunchCombineRows(expert_out_.get<float>(), token_first_.get<int64_t>(),
                             token_rows_.get<int64_t>(), token_weight_.get<float>(), T, hidden, out,
                             s());
  }

  absl::Status AddOut() override {
    return LaunchAdd(x_.get<float>(), out_.get<float>(), tokens_->count() * config_.hidden_size,
                     s());
  }

  absl::Status Logits(const std::vector<int64_t>& rows, const Vector& final_norm,
                      const Matrix& head, std::vector<float>* logits) override {
    const int64_t n = static_cast<int64_t>(rows.size()), hidden = config_.hidden_size;
    logits->resize(n * head.rows);
    if (n == 0) return Check(cudaStreamSynchronize(s()), "synchronize");
    BATON_RETURN_IF_ERROR(Upload(rows.data(), n, logit_rows_, s()));
    BATON_RETURN_IF_ERROR(head_in_.Resize(4 * n * hidden));
    BATON_RETURN_IF_ERROR(head_out_.Resize(4 * n * head.rows));
    float* in = head_in_.get<float>();
    BATON_RETURN_IF_ERROR(
        LaunchGatherRows(x_.get<float>(), logit_rows_.get<int64_t>(), n, hidden, in, s()));
    BATON_RETURN_IF_ERROR(
        LaunchRmsNorm(in, hidden, V(final_norm), n, hidden, config_.rms_norm_eps, in, hidden, s()));
    BATON_RETURN_IF_ERROR(Product(in, hidden, n, M(head), head_out_.get<float>(), head.rows));
    return Download(head_out_.get<void>(), 4 * n * head.rows, logits->data(), s());
  }

 private:
  // Scratch for attention scores and partial sums: tokens are attended in
  // slices within it.
  static constexpr int64_t kScoresBudget = int64_t{256} << 20;

  cudaStream_t s() const { return stream_->get(); }

  // y = x w^T (LaunchMatMul's arguments): on tensor cores for BF16 products
  // of kTensorCoreMinRows rows or more where cuBLAS is there (prefill
  // chunks, large decode batches), else on baton's GEMV, which reads the
  // weights once per 8 rows and keeps pace with the memory in a decode step.
  bool OnTensorCores(const DeviceMatrix& w, int64_t m) const {
    return cublas_ != nullptr && w.bf16 && m >= kTensorCoreMinRows;
  }
  absl::Status Product(const float* x, int64_t ldx, int64_t m, const DeviceMatrix& w, float* y,
                       int64_t ldy, int64_t batch = 1, int64_t stride_x = 0, int64_t stride_w = 0,
                       int64_t stride_y = 0) {
    if (OnTensorCores(w, m)) {
      const absl::Status tensor = LaunchTensorCoreMatMul(*cublas_, x, ldx, m, w, y, ldy, split_,
                                                         s(), batch, stride_x, stride_w, stride_y);
      if (!absl::IsUnimplemented(tensor)) return tensor;
      // A cuBLAS without the BF16 products this GPU needs must not fail
      // requests: the GEMV computes every product from now on, this one
      // included. (Any other error is one; CudaOpsTest checks cuBLAS
      // strictly.)
      std::fprintf(stderr, "%s: %s; every product runs on baton's GEMV kernel from now on\n",
                   name().c_str(), std::string(tensor.message()).c_str());
      cublas_.reset();  // Waits for the queued work: nothing uses it after.
    }
    return LaunchMatMul(x, ldx, m, w, y, ldy, s(), batch, stride_x, stride_w, stride_y);
  }
  absl::Status SetDevice() const { return Check(cudaSetDevice(device_), "cudaSetDevice"); }

  // Uploads a matrix (row-major) or a vector, remembered by its address.
  absl::Status Put(Matrix& m) {
    if (m.panels) return absl::InternalError("the CUDA backend needs row-major weights");
    auto buffer = std::make_unique<DeviceBuffer>();
    BATON_RETURN_IF_ERROR(Upload(m.storage.data(), m.bytes(), *buffer, s()));
    matrices_[&m] = DeviceMatrix{buffer->get<void>(), m.dtype == DType::kBF16, m.rows, m.cols};
    max_product_cols_ = std::max(max_product_cols_, m.cols);
    uploaded_.push_back(&m);
    weights_.push_back(std::move(buffer));
    return absl::OkStatus();
  }
  absl::Status Put(const Vector& v) {
    auto buffer = std::make_unique<DeviceBuffer>();
    BATON_RETURN_IF_ERROR(Upload(v.data(), v.size, *buffer, s()));
    vectors_[&v] = buffer->get<float>();
    weights_.push_back(std::move(buffer));
    return absl::OkStatus();
  }
  const DeviceMatrix& M(const Matrix& m) const { return matrices_.at(&m); }
  const float* V(const Vector& v) const { return vectors_.at(&v); }

  // Per pass, from the tokens and the cache's block tables: where each
  // token's row goes in a layer, and each token's context for attention.
  absl::Status PrepareAttention(const KvCache& cache) {
    const ForwardTokens& tokens = *tokens_;
    const int64_t T = tokens.count(), block = cache.block_size();
    std::vector<int64_t> row_at(T);
    std::vector<int32_t> lengths(T);
    max_len_ = 1;
    max_blocks_ = 1;
    for (int64_t t = 0; t < T; ++t) {
      const int64_t pos = tokens.positions[t];
      row_at[t] = (*tokens.tables[t])[pos / block] * block + pos % block;
      lengths[t] = static_cast<int32_t>(pos + 1);
      max_len_ = std::max<int64_t>(max_len_, pos + 1);
      max_blocks_ = std::max<int64_t>(max_blocks_, (pos + block) / block);
    }
    std::vector<int32_t> tables(T * max_blocks_, 0);
    for (int64_t t = 0; t < T; ++t) {
      const std::vector<int32_t>& table = *tokens.tables[t];
      const int64_t used = std::min<int64_t>(static_cast<int64_t>(table.size()), max_blocks_);
      std::copy_n(table.begin(), used, tables.begin() + t * max_blocks_);
    }
    BATON_RETURN_IF_ERROR(Upload(row_at.data(), T, row_at_, s()));
    BATON_RETURN_IF_ERROR(Upload(lengths.data(), T, lengths_, s()));
    BATON_RETURN_IF_ERROR(Upload(tables.data(), tables.size(), tables_, s()));
    attention_ready_ = true;
    return absl::OkStatus();
  }

  // out[rows] = SwiGLU MLP of x[rows].
  absl::Status RunMlp(const MlpWeights& mlp, const float* x, int64_t rows, float* out) {
    const int64_t hidden = config_.hidden_size, inter = mlp.inter;
    BATON_RETURN_IF_ERROR(mlp_hidden_.Resize(4 * rows * 2 * inter));
    float* h = mlp_hidden_.get<float>();
    BATON_RETURN_IF_ERROR(Product(x, hidden, rows, M(mlp.gate_up), h, 2 * inter));
    BATON_RETURN_IF_ERROR(LaunchSiluMul(h, rows, inter, s()));
    return Product(h, 2 * inter, rows, M(mlp.down), out, hidden);
  }

  const int device_;
  std::unique_ptr<Stream> stream_;
  ModelConfig config_;
  float cos_sin_scale_ = 1.f, softmax_scale_ = 1.f;
  DeviceBuffer inv_freq_;
  std::vector<std::unique_ptr<DeviceBuffer>> weights_;
  std::unordered_map<const Matrix*, DeviceMatrix> matrices_;
  std::unordered_map<const Vector*, const float*> vectors_;
  const Matrix* embed_host_ = nullptr;
  std::vector<Matrix*> uploaded_;   // Host copies to release once uploaded.
  int64_t max_inter_ = 0;           // The widest MLP's intermediate size.
  int64_t max_product_cols_ = 1;    // The widest product input (the split's size).
  std::unique_ptr<Cublas> cublas_;  // Null where cuBLAS is missing.
  DeviceBuffer split_;              // A tensor-core product's BF16 halves.

  // The running pass.
  const ForwardTokens* tokens_ = nullptr;
  bool attention_ready_ = false;
  int64_t max_len_ = 1, max_blocks_ = 1;
  DeviceBuffer ids_, positions_, row_at_, lengths_, tables_;
  DeviceBuffer x_, xn_, out_;
  DeviceBuffer q_a_, q_, kv_, q_full_, o_latent_, attn_v_, scores_, mla_partials_;
  DeviceBuffer mlp_hidden_, router_, expert_in_, expert_out_, expert_hidden_;
  DeviceBuffer up_table_, down_table_;  // The grouped products' tables.
  DeviceBuffer expert_token_, token_first_, token_rows_, token_weight_;
  DeviceBuffer logit_rows_, head_in_, head_out_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Backend>> NewCudaBackend(int ordinal) {
  std::string why;
  const int count = DeviceCount(&why);
  if (ordinal >= count) {
    return absl::FailedPreconditionError(
        absl::StrCat("--device cuda:", ordinal, ": ",
                     count == 0 ? absl::StrCat("no usable CUDA device (", why, ")")
                                : absl::StrCat("this machine has ", count, " CUDA device(s)")));
  }
  auto backend = std::make_unique<CudaBackend>(ordinal);
  BATON_RETURN_IF_ERROR(backend->Init());
  return backend;
}

}  // namespace baton::cuda
