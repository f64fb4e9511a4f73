// The byte-level BPE tokenizer of a Hugging Face tokenizer.json (the format
// of DeepSeek-V2/V3 checkpoints), and a detokenizer that streams text deltas.
//
// Supported tokenizer.json: model.type "BPE" (merges as "a b" strings or
// ["a", "b"] pairs, optional ignore_merges), added_tokens, pre_tokenizer null,
// "Split" (Regex or String pattern, behavior "Isolated", invert false),
// "ByteLevel" (add_prefix_space, use_regex: GPT-2's regex) or a "Sequence" of
// these, normalizer null or an empty "Sequence", decoder null or "ByteLevel".
// Anything else is refused at Load rather than tokenized differently from the
// reference.
#ifndef BATON_ENGINE_TOKENIZER_H_
#define BATON_ENGINE_TOKENIZER_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace baton {

namespace tokenizer_internal {
class Regex;
class MergeTable;
class WordCache;
struct AddedTokenTrie;
}  // namespace tokenizer_internal

// Thread-safety: a loaded Tokenizer is immutable except for its word cache,
// which a mutex guards, so every const method may be called concurrently.
class Tokenizer {
 public:
  // Reads `model_dir`/tokenizer.json and, when present,
  // `model_dir`/tokenizer_config.json (bos_token, eos_token, add_bos_token).
  // NotFoundError when tokenizer.json does not exist, so that a caller can
  // serve token-id prompts without a tokenizer (absl::IsNotFound); any other
  // problem is an InvalidArgumentError naming the file and what is wrong.
  static absl::StatusOr<std::unique_ptr<Tokenizer>> Load(const std::string& model_dir);

  // The same from the texts of the two files. `config_json` may be empty
  // (no tokenizer_config.json); the sources name the files in errors.
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromJson(const std::string& tokenizer_json,
                                                             const std::string& tokenizer_source,
                                                             const std::string& config_json,
                                                             const std::string& config_source);

  ~Tokenizer();
  Tokenizer(const Tokenizer&) = delete;
  Tokenizer& operator=(const Tokenizer&) = delete;

  // Token ids of `text` (UTF-8), with the BOS token first when `add_bos`.
  // Added tokens (special or not) are matched literally, longest first.
  // Text that is not valid UTF-8 is an InvalidArgumentError giving the byte
  // offset (the reference tokenizers only take valid Unicode strings);
  // add_bos without a known BOS token is a FailedPreconditionError.
  absl::StatusOr<std::vector<uint32_t>> Encode(std::string_view text, bool add_bos) const;

  // The bytes of `ids` joined: not necessarily valid UTF-8 when the ids split
  // a character (see IncrementalDetokenizer for streaming). `skip_special`
  // leaves out the special added tokens. An id without a token is an
  // OutOfRangeError.
  absl::StatusOr<std::string> Decode(absl::Span<const uint32_t> ids, bool skip_special) const;

  // The raw bytes of one token (an added token's content as written).
  absl::StatusOr<std::string_view> TokenText(uint32_t id) const;

  // One past the largest token id (model vocabulary and added tokens).
  uint32_t vocab_size() const { return static_cast<uint32_t>(tokens_.size()); }
  std::optional<uint32_t> bos_id() const { return bos_id_; }
  std::optional<uint32_t> eos_id() const { return eos_id_; }
  // tokenizer_config.json's add_bos_token (false when absent).
  bool add_bos_token() const { return add_bos_token_; }
  // True for added tokens marked "special" (false for out-of-range ids).
  bool IsSpecial(uint32_t id) const;
  // The id of an added token given its content, e.g. "<｜end▁of▁sentence｜>".
  std::optional<uint32_t> AddedTokenId(std::string_view content) const;

 private:
  struct Token {
    std::string bytes;
    bool present = false;  // Some ids may have no token at all.
    bool special = false;
  };
  struct AddedToken {
    uint32_t id = 0;
    std::string content;
    bool lstrip = false;
    bool rstrip = false;
  };

  Tokenizer();

  // Appends the ids of a span holding no added token.
  absl::Status EncodeSpan(std::string_view span, std::vector<uint32_t>* ids) const;
  // Appends the BPE ids of pre-tokenized pieces, through the word cache.
  absl::Status EncodePieces(absl::Span<const std::string_view> pieces,
                            std::vector<uint32_t>* ids) const;
  absl::Status Bpe(std::string_view word, std::vector<uint32_t>* ids) const;

  std::vector<Token> tokens_;  // Indexed by id.
  // Model vocabulary, keyed on the token's bytes (not its byte-level text).
  std::unordered_map<std::string, uint32_t> vocab_;
  std::unique_ptr<tokenizer_internal::MergeTable> merges_;
  int64_t byte_ids_[256];  // The token of each single byte, -1 when none.
  std::optional<uint32_t> unk_id_;
  bool ignore_merges_ = false;

  std::vector<AddedToken> added_;
  std::unique_ptr<tokenizer_internal::AddedTokenTrie> added_trie_;

  // Pre-tokenization, in order: each regex splits every piece further into
  // matches and the gaps between them. A ByteLevel with add_prefix_space
  // prepends a space to each piece at its place in the sequence.
  struct PreTokenizerStep {
    std::unique_ptr<tokenizer_internal::Regex> regex;  // Null: add a prefix space.
  };
  std::vector<PreTokenizerStep> pre_tokenizer_;

  std::optional<uint32_t> bos_id_;
  std::optional<uint32_t> eos_id_;
  bool add_bos_token_ = false;

  // BPE results of recent short pieces: a fixed-size table (a few MB)
  // guarded by its own mutex.
  std::unique_ptr<tokenizer_internal::WordCache> cache_;
};

// Turns a stream of token ids into text deltas that are always valid UTF-8:
// bytes of a character split across tokens are held until it completes.
// Bytes that can never form a character become U+FFFD, one per maximal
// invalid subsequence (as WHATWG's and Python's decoders do). So the deltas
// join to Decode()'s text whenever that text is valid UTF-8.
//
// Not thread-safe: one per stream. `tokenizer` must outlive it.
class IncrementalDetokenizer {
 public:
  explicit IncrementalDetokenizer(const Tokenizer* tokenizer, bool skip_special = false);

  // The text completed by `id` (often empty). An id without a token is an
  // OutOfRangeError and leaves the state unchanged.
  absl::StatusOr<std::string> Add(uint32_t id);
  // The held bytes at the end of the stream, each incomplete character as
  // U+FFFD; the detokenizer is then empty again.
  std::string Flush();

 private:
  const Tokenizer* tokenizer_;
  bool skip_special_;
  std::string pending_;  // Bytes of an incomplete trailing character.
};

// Appends `bytes` to `out` as valid UTF-8, each maximal invalid subsequence
// as U+FFFD. An incomplete character at the end is left unconsumed unless
// `final`; returns how many bytes were consumed.
size_t AppendValidUtf8(std::string_view bytes, bool final, std::string* out);

}  // namespace baton

#endif  // BATON_ENGINE_TOKENIZER_H_
