#include "service/text_stream.h"

#include <algorithm>

namespace baton {

TextStream::TextStream(const Tokenizer* tokenizer, std::vector<std::string> stop_strings)
    : tokenizer_(tokenizer), stop_strings_(std::move(stop_strings)) {
  stop_strings_.erase(std::remove(stop_strings_.begin(), stop_strings_.end(), ""),
                      stop_strings_.end());
  if (tokenizer_ != nullptr) {
    detokenizer_ = std::make_unique<IncrementalDetokenizer>(tokenizer_, /*skip_special=*/true);
  }
}

TextStream::Delta TextStream::Add(uint32_t token_id) {
  if (detokenizer_ == nullptr || stopped_) return {};
  auto text = detokenizer_->Add(token_id);
  if (text.ok()) pending_ += *text;
  return Release(/*final=*/false);
}

std::string TextStream::Finish() {
  if (detokenizer_ == nullptr || stopped_) return "";
  pending_ += detokenizer_->Flush();
  return Release(/*final=*/true).text;
}

TextStream::Delta TextStream::Release(bool final) {
  Delta delta;
  // The earliest complete stop string ends the text.
  size_t stop_at = std::string::npos;
  for (const std::string& stop : stop_strings_) stop_at = std::min(stop_at, pending_.find(stop));
  if (stop_at != std::string::npos) {
    delta.text = pending_.substr(0, stop_at);
    delta.stopped = stopped_ = true;
    pending_.clear();
    return delta;
  }
  // Hold back the longest tail that could still grow into a stop string.
  size_t hold = 0;
  if (!final) {
    for (const std::string& stop : stop_strings_) {
      for (size_t len = std::min(stop.size() - 1, pending_.size()); len > hold; --len) {
        if (pending_.compare(pending_.size() - len, len, stop, 0, len) == 0) {
          hold = len;
          break;
        }
      }
    }
  }
  delta.text = pending_.substr(0, pending_.size() - hold);
  pending_.erase(0, pending_.size() - hold);
  return delta;
}

}  // namespace baton
