// Turns a request's generated token ids into the text deltas it streams:
// whole UTF-8 characters only, special tokens left out, and generation
// stopped at the first stop string, which is never sent. Text that might be
// the start of a stop string is held back until it is known not to be.
//
// Not thread-safe: one per request.
#ifndef BATON_SERVICE_TEXT_STREAM_H_
#define BATON_SERVICE_TEXT_STREAM_H_

#include <string>
#include <vector>

#include "engine/tokenizer.h"

namespace baton {

class TextStream {
 public:
  // `tokenizer` may be null (no text at all); it must outlive the stream.
  TextStream(const Tokenizer* tokenizer, std::vector<std::string> stop_strings);

  struct Delta {
    std::string text;
    bool stopped = false;  // A stop string was completed: end the request.
  };
  Delta Add(uint32_t token_id);
  // The text still held back, at the end of the request.
  std::string Finish();

 private:
  Delta Release(bool final);

  const Tokenizer* tokenizer_;
  std::vector<std::string> stop_strings_;
  std::unique_ptr<IncrementalDetokenizer> detokenizer_;
  std::string pending_;
  bool stopped_ = false;
};

}  // namespace baton

#endif  // BATON_SERVICE_TEXT_STREAM_H_
