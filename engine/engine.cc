#include "engine/engine.h"

#include <algorithm>
#include <random>

#include "absl/strings/str_cat.h"
#include "engine/status_macros.h"

namespace baton {

const char* FinishReasonName(FinishReason reason) {
  switch (reason) {
    case FinishReason::kNone:
      return "none";
    case FinishReason::kStop:
      return "stop";
    case FinishReason::kLength:
      return "length";
    case FinishReason::kCancelled:
      return "cancelled";
    case FinishReason::kError:
      return "error";
    case FinishReason::kPrefilled:
      return "prefilled";
  }
  return "?";
}

absl::StatusOr<std::unique_ptr<Engine>> Engine::Create(std::unique_ptr<DeepseekModel> model,
                                                       const EngineOptions& options) {
  if (options.kv_block_size <= 0 || options.step_token_budget <= 0 || options.max_running <= 0) {
    return absl::InvalidArgumentError(
        "kv_block_size, step_token_budget and max_running must be positive");
  }
  const ModelConfig& c = model->config();
  const int64_t bytes_per_token =
      int64_t{c.num_hidden_layers} * c.kv_cache_width() * DTypeSize(model->kv_dtype());
  int64_t bytes = options.kv_cache_bytes;
  if (bytes <= 0) {
    bytes = std::min<int64_t>(
        int64_t{options.max_running} * c.max_position_embeddings * bytes_per_token,
        int64_t{2} << 30);
  }
  const int64_t blocks = bytes / (bytes_per_token * options.kv_block_size);
  if (blocks < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("KV cache of ", bytes, " bytes holds not even one block"));
  }
  auto cache = model->NewKvCache(options.kv_block_size, blocks);
  if (!cache.ok()) return cache.status();
  return std::unique_ptr<Engine>(new Engine(std::move(model), options, *std::move(cache)));
}

Engine::Engine(std::unique_ptr<DeepseekModel> model, const EngineOptions& options,
               std::unique_ptr<KvCache> cache)
    : model_(std::move(model)),
      options_(options),
      pool_(options.threads),
      cache_(std::move(cache)) {}

absl::Status Engine::Validate(const EngineRequest& r) const {
  const ModelConfig& c = config();
  if (r.prompt.empty()) return absl::InvalidArgumentError("input: the prompt is empty");
  for (size_t i = 0; i < r.prompt.size(); ++i) {
    if (r.prompt[i] < 0 || r.prompt[i] >= c.vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat("input.token_ids[", i, "]: id ", r.prompt[i],
                                                     " is outside the vocabulary (size ",
                                                     c.vocab_size, ")"));
    }
  }
  if (r.prefill_only && !r.sampling.seed.has_value()) {
    return absl::InvalidArgumentError("a prefill-only request needs sampling.seed");
  }
  if (r.sampling.max_tokens < 1) {
    return absl::InvalidArgumentError("sampling.max_tokens must be >= 1");
  }
  const int64_t total = static_cast<int64_t>(r.prompt.size()) + r.sampling.max_tokens;
  if (total > c.max_position_embeddings) {
    return absl::InvalidArgumentError(absl::StrCat(
        "prompt (", r.prompt.size(), " tokens) plus sampling.max_tokens (", r.sampling.max_tokens,
        ") exceeds the context length ", c.max_position_embeddings));
  }
  if (cache_->BlocksFor(total) > cache_->num_blocks()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "prompt plus sampling.max_tokens (", total, " tokens) exceeds the KV cache capacity of ",
        cache_->num_blocks() * cache_->block_size(), " tokens"));
  }
  for (int32_t id : r.sampling.stop_token_ids) {
    if (id < 0 || id >= c.vocab_size) {
      return absl::InvalidArgumentError(
          absl::StrCat("sampling.stop_token_ids: id ", id, " is outside the vocabulary"));
    }
  }
  return ValidateSamplingOptions(r.sampling);
}

absl::Status Engine::Add(EngineRequest request) {
  BATON_RETURN_IF_ERROR(Validate(request));
  auto s = std::make_unique<Sequence>();
  s->blocks = KvBlocks(cache_.get());
  s->seed = request.sampling.seed.has_value() ? *request.sampling.seed : seed_source_();
  s->awaiting_import = request.external_prefill;
  s->request = std::move(request);
  waiting_.push_back(std::move(s));
  return absl::OkStatus();
}

bool Engine::HasWork() const {
  if (!waiting_.empty() || !finished_.empty()) return true;
  return std::any_of(running_.begin(), running_.end(),
                     [](const auto& s) { return !s->awaiting_import; });
}

std::optional<TokenEvent> Engine::ImportDone(int64_t id, const SampledToken& first) {
  auto it = std::find_if(running_.begin(), running_.end(),
                         [id](const auto& s) { return s->request.id == id && s->awaiting_import; });
  if (it == running_.end()) return std::nullopt;
  Sequence& s = **it;
  s.awaiting_import = false;
  s.computed = static_cast<int64_t>(s.request.prompt.size());
  TokenEvent e = Emit(s, first);
  if (e.finish != FinishReason::kNone) running_.erase(it);
  return e;
}

TokenEvent Engine::Emit(Sequence& s, const SampledToken& token) {
  const SamplingOptions& o = s.request.sampling;
  TokenEvent e;
  e.request_id = s.request.id;
  e.has_token = true;
  e.token = token;
  s.output.push_back(token.id);
  const int32_t id = token.id;
  if ((!o.ignore_eos && id == config().eos_token_id) ||
      std::find(o.stop_token_ids.begin(), o.stop_token_ids.end(), id) != o.stop_token_ids.end()) {
    e.finish = FinishReason::kStop;
  } else if (static_cast<int64_t>(s.output.size()) >= o.max_tokens ||
             s.total_tokens() >= config().max_position_embeddings) {
    e.finish = FinishReason::kLength;
  }
  e.prompt_tokens = static_cast<int64_t>(s.request.prompt.size());
  e.completion_tokens = static_cast<int64_t>(s.output.size());
  if (e.finish != FinishReason::kNone) s.blocks.Release();
  return e;
}

Engine::Sequence* Engine::PreemptionVictim(const Sequence* keep) const {
  // Blocks being imported into belong to the transfer until it completes.
  for (auto it = running_.rbegin(); it != running_.rend(); ++it) {
    if (it->get() != keep && !(*it)->awaiting_import) return it->get();
  }
  return nullptr;
}

void Engine::Cancel(int64_t id) {
  auto matches = [id](const std::unique_ptr<Sequence>& s) { return s->request.id == id; };
  if (auto it = std::find_if(running_.begin(), running_.end(), matches); it != running_.end()) {
    finished_.push_back(Finish(**it, FinishReason::kCancelled));
    running_.erase(it);
  } else if (auto w = std::find_if(waiting_.begin(), waiting_.end(), matches);
             w != waiting_.end()) {
    finished_.push_back(Finish(**w, FinishReason::kCancelled));
    waiting_.erase(w);
  }
}

TokenEvent Engine::Finish(Sequence& s, FinishReason reason) {
  s.blocks.Release();
  TokenEvent e;
  e.request_id = s.request.id;
  e.finish = reason;
  e.prompt_tokens = static_cast<int64_t>(s.request.prompt.size());
  e.completion_tokens = static_cast<int64_t>(s.output.size());
  return e;
}

void Engine::Preempt(Sequence& victim) {
  // Recompute later: cheaper than swapping for MLA's small KV, and simple.
  victim.blocks.Release();
  victim.computed = 0;
  ++preemptions_;
}

std::vector<TokenEvent> Engine::Step() {
  std::vector<TokenEvent> events = std::move(finished_);
  finished_.clear();

  // 1. Plan: decodes first (one token each), then prefill chunks of running
  //    sequences, then admissions, all under the token budget.
  struct Planned {
    Sequence* seq;
    int64_t begin;
    int64_t count;
  };
  std::vector<Planned> plan;
  int64_t budget = options_.step_token_budget;
  for (int pass = 0; pass < 2; ++pass) {
    for (size_t i = 0; i < running_.size() && budget > 0; ++i) {
      Sequence& s = *running_[i];
      if (s.awaiting_import) continue;
      const int64_t need = s.total_tokens() - s.computed;
      const bool decoding = need == 1;
      if (decoding != (pass == 0)) continue;
      const int64_t n = std::min(need, budget);
      // Grow the KV; preempt the newest other sequences while it does not fit.
      while (!s.blocks.Reserve(s.computed + n)) {
        Sequence* victim = PreemptionVictim(&s);
        if (victim == nullptr) break;
        plan.erase(std::remove_if(plan.begin(), plan.end(),
                                  [&](const Planned& p) { return p.seq == victim; }),
                   plan.end());
        Preempt(*victim);
        auto it = std::find_if(running_.begin(), running_.end(),
                               [&](const auto& r) { return r.get() == victim; });
        if (static_cast<size_t>(it - running_.begin()) < i) --i;
        waiting_.push_front(std::move(*it));
        running_.erase(it);
      }
      if (s.blocks.capacity_tokens() < s.computed + n) {
        Preempt(s);
        waiting_.push_front(std::move(running_[i]));
        running_.erase(running_.begin() + i);
        --i;
        continue;
      }
      plan.push_back({&s, s.computed, n});
      budget -= n;
    }
  }
  // Recompute the budget actually used (preemption may have removed plans).
  budget = options_.step_token_budget;
  for (const Planned& p : plan) budget -= p.count;
  while (!waiting_.empty() && budget > 0 &&
         static_cast<int>(running_.size()) < options_.max_running) {
    Sequence& s = *waiting_.front();
    // Admit only when the whole known sequence fits, so that an admitted
    // prefill never stalls halfway for lack of blocks.
    if (!s.blocks.Reserve(s.total_tokens())) break;
    if (s.awaiting_import) {
      TokenEvent e;
      e.request_id = s.request.id;
      e.kv_reserved = true;
      e.kv_blocks = s.blocks.table();
      events.push_back(std::move(e));
      running_.push_back(std::move(waiting_.front()));
      waiting_.pop_front();
      continue;
    }
    const int64_t n = std::min(s.total_tokens(), budget);
    plan.push_back({&s, 0, n});
    budget -= n;
    running_.push_back(std::move(waiting_.front()));
    waiting_.pop_front();
  }
  if (plan.empty()) return events;

  // 2. One forward pass over every planned chunk.
  std::vector<std::vector<int32_t>> tokens(plan.size());
  std::vector<ForwardChunk> batch;
  batch.reserve(plan.size());
  int64_t step_tokens = 0;
  for (size_t i = 0; i < plan.size(); ++i) {
    const Planned& p = plan[i];
    const std::vector<int32_t>& prompt = p.seq->request.prompt;
    const int64_t prompt_len = static_cast<int64_t>(prompt.size());
    for (int64_t pos = p.begin; pos < p.begin + p.count; ++pos) {
      tokens[i].push_back(pos < prompt_len ? prompt[pos] : p.seq->output[pos - prompt_len]);
    }
    const bool completes = p.begin + p.count == p.seq->total_tokens();
    batch.push_back({tokens[i].data(), p.count, p.begin, &p.seq->blocks.table(),
                     completes ? LogitsMode::kLast : LogitsMode::kNone});
    step_tokens += p.count;
  }
  last_step_tokens_ = step_tokens;
  last_step_sequences_ = static_cast<int64_t>(plan.size());
  // Prefill-only chunks ship each layer's KV as soon as it is computed.
  DeepseekModel::LayerKvHook ship = [&](int layer) -> absl::Status {
    for (const Planned& p : plan) {
      if (!p.seq->request.prefill_only || !p.seq->request.kv_sink) continue;
      std::vector<uint8_t> rows(static_cast<size_t>(p.count * cache_->row_bytes()));
      // Fails only where the cache is a device's; the step then fails.
      BATON_RETURN_IF_ERROR(cache_->ExportLayer(layer, p.seq->blocks.table(), p.begin,
                                                p.begin + p.count, rows.data()));
      p.seq->request.kv_sink(layer, p.begin, p.begin + p.count, std::move(rows));
    }
    return absl::OkStatus();
  };
  const bool any_prefill_only = std::any_of(
      plan.begin(), plan.end(), [](const Planned& p) { return p.seq->request.prefill_only; });
  absl::Status status =
      model_->Forward(batch, *cache_, pool_, &logits_, any_prefill_only ? &ship : nullptr);
  if (!status.ok()) {
    // Fail the planned sequences, never the process.
    for (const Planned& p : plan) {
      TokenEvent e = Finish(*p.seq, FinishReason::kError);
      e.error = std::string(status.message());
      events.push_back(std::move(e));
    }
    running_.erase(std::remove_if(running_.begin(), running_.end(),
                                  [&](const auto& s) {
                                    return std::any_of(
                                        plan.begin(), plan.end(),
                                        [&](const Planned& p) { return p.seq == s.get(); });
                                  }),
                   running_.end());
    return events;
  }

  // 3. Sample where a chunk completed the known sequence: the rows at once
  // on the pool (each depends only on its own logits, seed and step, so the
  // tokens are those of one row at a time), then the events in order.
  const int vocab = config().vocab_size;
  std::vector<Sequence*> sampled;
  for (const Planned& p : plan) {
    Sequence& s = *p.seq;
    s.computed = p.begin + p.count;
    if (s.computed == s.total_tokens()) sampled.push_back(&s);
  }
  std::vector<SampledToken> sampled_tokens(sampled.size());
  pool_.ParallelFor(static_cast<int64_t>(sampled.size()), 1, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const Sequence& s = *sampled[row];
      sampled_tokens[row] = Sample(&logits_[row * vocab], vocab, s.request.sampling,
                                   s.request.prompt, s.output, s.seed, s.output.size());
    }
  });
  std::vector<Sequence*> done;
  std::vector<FinishReason> done_reason;
  for (size_t row = 0; row < sampled.size(); ++row) {
    Sequence& s = *sampled[row];
    const SampledToken& token = sampled_tokens[row];
    if (s.request.prefill_only) {
      // The first token travels with the KV; the decode worker emits it.
      TokenEvent e = Finish(s, FinishReason::kPrefilled);
      e.has_token = true;
      e.token = token;
      events.push_back(std::move(e));
      done.push_back(&s);
      continue;
    }
    TokenEvent e = Emit(s, token);
    if (e.finish != FinishReason::kNone) done.push_back(&s);
    events.push_back(std::move(e));
  }
  if (!done.empty()) {
    running_.erase(std::remove_if(running_.begin(), running_.end(),
                                  [&](const auto& s) {
                                    return std::find(done.begin(), done.end(), s.get()) !=
                                           done.end();
                                  }),
                   running_.end());
  }
  return events;
}

EngineStats Engine::stats() const {
  EngineStats s;
  s.running = static_cast<int64_t>(running_.size());
  s.max_running = options_.max_running;
  s.waiting = static_cast<int64_t>(waiting_.size());
  s.kv_blocks_used = cache_->used_blocks();
  s.kv_blocks_total = cache_->num_blocks();
  s.last_step_tokens = last_step_tokens_;
  s.last_step_sequences = last_step_sequences_;
  s.preemptions = preemptions_;
  for (const auto& q : waiting_) s.queued_prompt_tokens += q->total_tokens() - q->computed;
  for (const auto& r : running_) {
    if (!r->awaiting_import) s.queued_prompt_tokens += r->total_tokens() - 1 - r->computed;
  }
  s.queued_prompt_tokens = std::max<int64_t>(0, s.queued_prompt_tokens);
  return s;
}

}  // namespace baton
