// `baton generate`: streams one completion from a running server to stdout.
#include <cstdio>

#include "absl/strings/numbers.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "baton/v1/inference.grpc.pb.h"
#include "grpcpp/grpcpp.h"
#include "service/cli/commands.h"
#include "service/cli/flag_set.h"

namespace baton::cli {

int RunGenerate(const Args& args) {
  std::string addr = "localhost:50051";
  std::string token_ids;
  std::string stop;
  int64_t max_tokens = 128, top_k = 0, logprobs = 0, seed = -1;
  double temperature = 0, top_p = 1, timeout_s = 300;
  bool ignore_eos = false, show_tokens = false;
  FlagSet flags("baton generate [flags] \"PROMPT\"",
                "Sends one Generate call and streams the text to stdout as it arrives.");
  flags.String("addr", &addr, "server address host:port (baton serve or baton router)");
  flags.String("token-ids", &token_ids, "comma-separated prompt token ids instead of text");
  flags.Int("max-tokens", &max_tokens, "tokens to generate at most");
  flags.Double("temperature", &temperature, "0: greedy");
  flags.Int("top-k", &top_k, "0: off");
  flags.Double("top-p", &top_p, "nucleus sampling; 1: off");
  flags.Int("seed", &seed, "sampling seed (-1: none)");
  flags.String("stop", &stop, "a stop string");
  flags.Int("logprobs", &logprobs,
            "report this many top alternatives per token (with --show-tokens)");
  flags.Bool("ignore-eos", &ignore_eos, "keep generating past end-of-sequence");
  flags.Bool("show-tokens", &show_tokens, "print token ids and logprobs to stderr");
  flags.Double("timeout", &timeout_s, "deadline of the call in seconds");
  if (absl::Status s = flags.Parse(args); !s.ok()) {
    std::fprintf(stderr, "baton generate: %s\n", std::string(s.message()).c_str());
    return 2;
  }
  if (flags.help_requested()) {
    std::fputs(flags.HelpText().c_str(), stdout);
    return 0;
  }
  v1::GenerateRequest request;
  if (!token_ids.empty()) {
    for (absl::string_view piece : absl::StrSplit(token_ids, ',', absl::SkipWhitespace())) {
      uint32_t id;
      if (!absl::SimpleAtoi(piece, &id)) {
        std::fprintf(stderr, "baton generate: --token-ids: \"%s\" is not a token id\n",
                     std::string(piece).c_str());
        return 2;
      }
      request.mutable_token_ids()->add_ids(id);
    }
  } else if (flags.positional().size() == 1) {
    request.set_text(flags.positional()[0]);
  } else {
    std::fprintf(stderr, "baton generate: give one PROMPT argument or --token-ids\n");
    return 2;
  }
  v1::SamplingParams* p = request.mutable_sampling();
  p->set_max_tokens(static_cast<uint32_t>(max_tokens));
  p->set_temperature(static_cast<float>(temperature));
  p->set_top_k(static_cast<uint32_t>(top_k));
  p->set_top_p(static_cast<float>(top_p));
  if (seed >= 0) p->set_seed(static_cast<uint64_t>(seed));
  if (!stop.empty()) p->add_stop(stop);
  p->set_logprobs(static_cast<uint32_t>(logprobs));
  p->set_ignore_eos(ignore_eos);

  auto channel = grpc::CreateChannel(addr, grpc::InsecureChannelCredentials());
  auto stub = v1::Inference::NewStub(channel);
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() +
                       std::chrono::milliseconds(static_cast<int64_t>(timeout_s * 1000)));
  auto reader = stub->Generate(&context, request);
  v1::GenerateResponse chunk;
  v1::FinishReason finish = v1::FINISH_REASON_UNSPECIFIED;
  v1::Usage usage;
  while (reader->Read(&chunk)) {
    if (!chunk.text().empty()) {
      std::fwrite(chunk.text().data(), 1, chunk.text().size(), stdout);
    } else if (request.has_token_ids() && !show_tokens) {
      for (const auto& t : chunk.tokens()) std::printf("%u ", t.id());
    }
    std::fflush(stdout);
    if (show_tokens) {
      for (const auto& t : chunk.tokens()) {
        std::vector<std::string> alts;
        for (const auto& a : t.top_logprobs())
          alts.push_back(absl::StrCat(a.id(), ":", a.logprob()));
        std::fprintf(stderr, "[token %u logprob %.4f%s%s]\n", t.id(), t.logprob(),
                     alts.empty() ? "" : " top ", absl::StrJoin(alts, " ").c_str());
      }
    }
    if (chunk.finish_reason() != v1::FINISH_REASON_UNSPECIFIED) {
      finish = chunk.finish_reason();
      usage = chunk.usage();
    }
  }
  grpc::Status status = reader->Finish();
  std::printf("\n");
  if (!status.ok()) {
    std::fprintf(stderr, "baton generate: %s: %s\n",
                 status.error_code() == grpc::UNAVAILABLE ? "UNAVAILABLE" : "error",
                 status.error_message().c_str());
    return 1;
  }
  std::fprintf(stderr, "[%s: %u prompt tokens, %u generated]\n",
               v1::FinishReason_Name(finish).c_str(), usage.prompt_tokens(),
               usage.completion_tokens());
  return 0;
}

}  // namespace baton::cli
