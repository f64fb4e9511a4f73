#include "engine/tokenizer.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <cstring>
#include <deque>
#include <filesystem>
#include <fstream>
#include <functional>
#include <sstream>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "engine/status_macros.h"
#include "nlohmann/json.hpp"

namespace baton {
namespace tokenizer_internal {

// A compiled PCRE2 pattern. UTF and UCP make \p{L}, \s and friends Unicode
// aware as in the reference tokenizers; JIT when the platform has it.
class Regex {
 public:
  static absl::StatusOr<std::unique_ptr<Regex>> Compile(const std::string& pattern,
                                                        const std::string& source) {
    int error = 0;
    PCRE2_SIZE offset = 0;
    pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                                     PCRE2_UTF | PCRE2_UCP, &error, &offset, nullptr);
    if (code == nullptr) {
      PCRE2_UCHAR message[256];
      pcre2_get_error_message(error, message, sizeof(message));
      return absl::InvalidArgumentError(
          absl::StrCat(source, ": bad regex /", pattern, "/ at offset ", offset, ": ",
                       std::string(reinterpret_cast<const char*>(message))));
    }
    // A failed JIT compile (no JIT on this platform) leaves the interpreter.
    pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);
    return std::unique_ptr<Regex>(new Regex(code));
  }
  ~Regex() { pcre2_code_free(code_); }
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;

  pcre2_match_data* NewMatchData() const {
    return pcre2_match_data_create_from_pattern(code_, nullptr);
  }

  // Finds the first match in `subject` at or after `start`. The subject must
  // be valid UTF-8: Encode checks it once instead of PCRE2 on every call,
  // which would make a long text quadratic.
  absl::StatusOr<bool> Find(std::string_view subject, size_t start, pcre2_match_data* md,
                            size_t* begin, size_t* end) const {
    const int rc = pcre2_match(code_, reinterpret_cast<PCRE2_SPTR>(subject.data()), subject.size(),
                               start, PCRE2_NO_UTF_CHECK, md, nullptr);
    if (rc == PCRE2_ERROR_NOMATCH) return false;
    if (rc < 0) {
      PCRE2_UCHAR message[256];
      pcre2_get_error_message(rc, message, sizeof(message));
      return absl::ResourceExhaustedError(absl::StrCat(
          "tokenizer regex failed: ", std::string(reinterpret_cast<const char*>(message))));
    }
    const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
    *begin = ov[0];
    *end = ov[1];
    if (*end < *begin || *end > subject.size()) {
      // Only \K in a lookahead does this; no tokenizer pattern needs it.
      return absl::InternalError("tokenizer regex produced a backwards match");
    }
    return true;
  }

 private:
  explicit Regex(pcre2_code* code) : code_(code) {}
  pcre2_code* code_;
};

// The BPE merges: (left id, right id) -> (rank, merged id). Open addressing
// on a packed 64-bit key, since this lookup is the inner loop of BPE.
class MergeTable {
 public:
  struct Merge {
    uint32_t rank;
    uint32_t id;
  };

  explicit MergeTable(size_t expected) {
    size_t capacity = 16;
    while (capacity < expected * 2) capacity *= 2;
    slots_.assign(capacity, Slot{kEmpty, {0, 0}});
    mask_ = capacity - 1;
  }

  // A later duplicate replaces an earlier one, as in both reference
  // implementations (they build a hash map from the list).
  void Insert(uint32_t left, uint32_t right, Merge merge) {
    const uint64_t key = Key(left, right);
    for (size_t i = Hash(key);; i = (i + 1) & mask_) {
      if (slots_[i].key == kEmpty || slots_[i].key == key) {
        slots_[i] = Slot{key, merge};
        return;
      }
    }
  }

  const Merge* Find(uint32_t left, uint32_t right) const {
    const uint64_t key = Key(left, right);
    for (size_t i = Hash(key);; i = (i + 1) & mask_) {
      if (slots_[i].key == key) return &slots_[i].merge;
      if (slots_[i].key == kEmpty) return nullptr;
    }
  }

 private:
  // Token ids are bounded far below 2^32 - 1, so no real pair is all ones.
  static constexpr uint64_t kEmpty = ~uint64_t{0};
  struct Slot {
    uint64_t key;
    Merge merge;
  };
  static uint64_t Key(uint32_t left, uint32_t right) {
    return (uint64_t{left} << 32) | uint64_t{right};
  }
  size_t Hash(uint64_t key) const {
    return static_cast<size_t>((key * 0x9E3779B97F4A7C15ull) >> 20) & mask_;
  }

  std::vector<Slot> slots_;
  size_t mask_ = 0;
};

// A byte trie of the added tokens' contents, for the longest match at a
// position. The root has a table for the first byte, since most positions of
// a text start no added token and must be rejected at once.
struct AddedTokenTrie {
  struct Node {
    std::vector<std::pair<unsigned char, int32_t>> children;
    int32_t added_index = -1;  // The added token ending here, if any.
  };
  std::vector<Node> nodes{Node{}};
  int32_t root_children[256];

  AddedTokenTrie() { std::fill(std::begin(root_children), std::end(root_children), -1); }

  void Insert(std::string_view content, int32_t added_index) {
    int32_t node = 0;
    for (size_t i = 0; i < content.size(); ++i) {
      const unsigned char c = static_cast<unsigned char>(content[i]);
      int32_t next = i == 0 ? root_children[c] : Child(node, c);
      if (next < 0) {
        next = static_cast<int32_t>(nodes.size());
        nodes.emplace_back();
        if (i == 0) {
          root_children[c] = next;
        } else {
          nodes[node].children.emplace_back(c, next);
        }
      }
      node = next;
    }
    // A duplicate content keeps the first token, like the reference's trie.
    if (nodes[node].added_index < 0) nodes[node].added_index = added_index;
  }

  // The added token of the longest match at text[pos], with its length.
  std::pair<int32_t, size_t> LongestMatch(std::string_view text, size_t pos) const {
    int32_t node = root_children[static_cast<unsigned char>(text[pos])];
    std::pair<int32_t, size_t> best{-1, 0};
    for (size_t i = pos + 1; node >= 0; ++i) {
      if (nodes[node].added_index >= 0) best = {nodes[node].added_index, i - pos};
      if (i == text.size()) break;
      node = Child(node, static_cast<unsigned char>(text[i]));
    }
    return best;
  }

 private:
  int32_t Child(int32_t node, unsigned char c) const {
    for (const auto& [byte, child] : nodes[node].children) {
      if (byte == c) return child;
    }
    return -1;
  }
};

// The BPE results of recent short words. Direct-mapped: a word has one slot,
// by its hash, and evicts whatever was there, so the cache stays a fixed
// size (kSlots cache lines) and a lookup touches one line. Pieces longer
// than kMaxBytes or with more than kMaxIds tokens are rare and not cached.
class WordCache {
 public:
  static constexpr size_t kSlots = 1 << 16;
  static constexpr size_t kMaxBytes = 23;
  static constexpr size_t kMaxIds = 7;

  WordCache() : slots_(kSlots) {}

  static bool Cacheable(std::string_view word) { return word.size() <= kMaxBytes; }

  // Appends the cached ids of `word` to `out`; false when not cached.
  bool Lookup(std::string_view word, uint64_t hash, std::vector<uint32_t>* out) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    const Slot& slot = slots_[hash & (kSlots - 1)];
    if (slot.n_ids == 0 || slot.hash != hash || slot.len != word.size() ||
        std::memcmp(slot.bytes, word.data(), word.size()) != 0) {
      return false;
    }
    out->insert(out->end(), slot.ids, slot.ids + slot.n_ids);
    return true;
  }

  void Store(std::string_view word, uint64_t hash, absl::Span<const uint32_t> ids)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    if (!Cacheable(word) || ids.empty() || ids.size() > kMaxIds) return;
    Slot& slot = slots_[hash & (kSlots - 1)];
    slot.hash = hash;
    slot.len = static_cast<uint8_t>(word.size());
    slot.n_ids = static_cast<uint8_t>(ids.size());
    std::memcpy(slot.bytes, word.data(), word.size());
    std::copy(ids.begin(), ids.end(), slot.ids);
  }

  // Held once per batch of pieces rather than per piece: Debian's Abseil is
  // built with Mutex deadlock detection, which makes each Lock costly.
  mutable absl::Mutex mu;

 private:
  struct alignas(64) Slot {
    uint64_t hash = 0;
    uint8_t len = 0;
    uint8_t n_ids = 0;  // 0: empty.
    char bytes[kMaxBytes];
    uint32_t ids[kMaxIds];
  };
  std::vector<Slot> slots_ ABSL_GUARDED_BY(mu);
};

}  // namespace tokenizer_internal

namespace {

using Json = nlohmann::json;
using tokenizer_internal::AddedTokenTrie;
using tokenizer_internal::MergeTable;
using tokenizer_internal::Regex;
using tokenizer_internal::WordCache;

// Token ids above this are refused: they would only size tables by mistake.
constexpr int64_t kMaxTokenId = (int64_t{1} << 24) - 1;
// Pieces are encoded in batches of this many, one cache lock per batch.
constexpr size_t kPieceBatch = 256;
constexpr uint32_t kNoToken = ~uint32_t{0};

// GPT-2's pre-tokenizer regex, which ByteLevel with use_regex applies.
constexpr char kGpt2Pattern[] =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

absl::Status Invalid(const std::string& source, const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat(source, ": ", what));
}

// JSON for an error message; never throws, even on odd strings.
std::string Show(const Json& value) {
  std::string text = value.dump(-1, ' ', false, Json::error_handler_t::replace);
  if (text.size() > 200) text = absl::StrCat(text.substr(0, 200), "...");
  return text;
}

// GPT-2's bytes_to_unicode: byte b is written as code point ByteToCodePoint(b)
// in the vocabulary, so that every token is printable text.
std::array<uint32_t, 256> ByteToCodePoint() {
  std::array<uint32_t, 256> table{};
  uint32_t extra = 256;
  for (uint32_t b = 0; b < 256; ++b) {
    const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
    table[b] = printable ? b : extra++;
  }
  return table;
}

// Decodes one UTF-8 character at s[i]; false at an invalid or cut sequence.
// Only used on JSON strings, which the parser has already validated.
bool NextCodePoint(std::string_view s, size_t* i, uint32_t* cp) {
  const unsigned char c = static_cast<unsigned char>(s[*i]);
  size_t len = c < 0x80 ? 1 : c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 0;
  if (len == 0 || *i + len > s.size()) return false;
  uint32_t v = len == 1 ? c : c & (0x7F >> len);
  for (size_t k = 1; k < len; ++k) v = (v << 6) | (static_cast<unsigned char>(s[*i + k]) & 0x3F);
  *i += len;
  *cp = v;
  return true;
}

// The bytes a byte-level vocabulary entry stands for; nullopt when the entry
// is not byte-level text (e.g. "<｜begin▁of▁sentence｜>", which the vocabulary
// also lists as itself).
std::optional<std::string> ByteLevelToBytes(std::string_view token,
                                            const std::array<int, 512>& code_point_to_byte) {
  std::string bytes;
  bytes.reserve(token.size());
  size_t i = 0;
  while (i < token.size()) {
    uint32_t cp = 0;
    if (!NextCodePoint(token, &i, &cp) || cp >= code_point_to_byte.size() ||
        code_point_to_byte[cp] < 0) {
      return std::nullopt;
    }
    bytes.push_back(static_cast<char>(code_point_to_byte[cp]));
  }
  return bytes;
}

// Status of the UTF-8 sequence at bytes[i]: its length when valid; for an
// invalid one, the length of its maximal invalid subpart (at least 1); or
// kCut when the bytes end inside a sequence that could still be valid.
enum class Utf8 { kValid, kInvalid, kCut };
Utf8 CheckUtf8(std::string_view bytes, size_t i, size_t* len) {
  const unsigned char c = static_cast<unsigned char>(bytes[i]);
  *len = 1;
  if (c < 0x80) return Utf8::kValid;
  size_t need;
  unsigned char lo = 0x80, hi = 0xBF;  // The range of the second byte.
  if (c >= 0xC2 && c <= 0xDF) {
    need = 1;
  } else if (c >= 0xE0 && c <= 0xEF) {
    need = 2;
    if (c == 0xE0) lo = 0xA0;
    if (c == 0xED) hi = 0x9F;  // No surrogates.
  } else if (c >= 0xF0 && c <= 0xF4) {
    need = 3;
    if (c == 0xF0) lo = 0x90;
    if (c == 0xF4) hi = 0x8F;  // Nothing above U+10FFFF.
  } else {
    return Utf8::kInvalid;
  }
  for (size_t k = 1; k <= need; ++k) {
    if (i + k >= bytes.size()) return Utf8::kCut;
    const unsigned char b = static_cast<unsigned char>(bytes[i + k]);
    if (b < (k == 1 ? lo : 0x80) || b > (k == 1 ? hi : 0xBF)) return Utf8::kInvalid;
    *len = k + 1;
  }
  return Utf8::kValid;
}

// The offset of the first byte that is not part of valid UTF-8, if any.
std::optional<size_t> FirstInvalidUtf8(std::string_view text) {
  size_t i = 0;
  while (i < text.size()) {
    if (static_cast<unsigned char>(text[i]) < 0x80) {
      ++i;
      continue;
    }
    size_t len = 0;
    if (CheckUtf8(text, i, &len) != Utf8::kValid) return i;
    i += len;
  }
  return std::nullopt;
}

absl::StatusOr<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::InvalidArgumentError(absl::StrCat(path, ": cannot open"));
  std::stringstream text;
  text << in.rdbuf();
  if (in.bad()) return absl::InvalidArgumentError(absl::StrCat(path, ": read failed"));
  return text.str();
}

// A non-negative integer token id, or an error naming `what`.
absl::StatusOr<uint32_t> ReadId(const Json& value, const std::string& source,
                                const std::string& what) {
  if (!value.is_number_integer() || value.get<int64_t>() < 0 ||
      value.get<int64_t>() > kMaxTokenId) {
    return Invalid(source, absl::StrCat(what, " must be a token id in [0, ", kMaxTokenId, "], got ",
                                        Show(value)));
  }
  return static_cast<uint32_t>(value.get<int64_t>());
}

// An optional boolean member; `fallback` when absent or null.
absl::StatusOr<bool> ReadBool(const Json& object, const char* name, bool fallback,
                              const std::string& source) {
  auto it = object.find(name);
  if (it == object.end() || it->is_null()) return fallback;
  if (!it->is_boolean()) {
    return Invalid(source, absl::StrCat("\"", name, "\" must be true or false, got ", Show(*it)));
  }
  return it->get<bool>();
}

// Escapes a literal for PCRE2: ASCII punctuation gets a backslash, which
// PCRE2 reads as that character, and control characters are written \x{..}.
std::string EscapeRegex(const std::string& literal) {
  std::string out;
  for (char c : literal) {
    const unsigned char u = static_cast<unsigned char>(c);
    if (u < 0x20 || u == 0x7F) {
      absl::StrAppend(&out, "\\x{", absl::Hex(u), "}");
      continue;
    }
    if (u < 0x80 && !std::isalnum(u)) out.push_back('\\');
    out.push_back(c);
  }
  return out;
}

// The content of a tokenizer_config.json token entry: a string, or an object
// (an AddedToken) with "content"; empty when absent or null.
absl::StatusOr<std::string> ReadConfigToken(const Json& config, const char* name,
                                            const std::string& source) {
  auto it = config.find(name);
  if (it == config.end() || it->is_null()) return std::string();
  if (it->is_string()) return it->get<std::string>();
  if (it->is_object()) {
    auto content = it->find("content");
    if (content != it->end() && content->is_string()) return content->get<std::string>();
  }
  return Invalid(source, absl::StrCat("\"", name,
                                      "\" must be a string or an object with a string "
                                      "\"content\", got ",
                                      Show(*it)));
}

bool IsAsciiSpace(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}

}  // namespace

Tokenizer::Tokenizer() : cache_(std::make_unique<WordCache>()) {
  std::fill(std::begin(byte_ids_), std::end(byte_ids_), -1);
}
Tokenizer::~Tokenizer() = default;

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::Load(const std::string& model_dir) {
  const std::string path = absl::StrCat(model_dir, "/tokenizer.json");
  std::error_code error;
  if (!std::filesystem::is_regular_file(path, error)) {
    return absl::NotFoundError(absl::StrCat(path, ": not found"));
  }
  BATON_ASSIGN_OR_RETURN(std::string tokenizer_json, ReadFile(path));
  const std::string config_path = absl::StrCat(model_dir, "/tokenizer_config.json");
  std::string config_json;
  if (std::filesystem::is_regular_file(config_path, error)) {
    BATON_ASSIGN_OR_RETURN(config_json, ReadFile(config_path));
  }
  return FromJson(tokenizer_json, path, config_json, config_path);
}

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromJson(const std::string& tokenizer_json,
                                                               const std::string& tokenizer_source,
                                                               const std::string& config_json,
                                                               const std::string& config_source) {
  const std::string& src = tokenizer_source;
  const Json root = Json::parse(tokenizer_json, nullptr, /*allow_exceptions=*/false);
  if (root.is_discarded()) return Invalid(src, "not valid JSON");
  if (!root.is_object()) return Invalid(src, "expected a JSON object");
  std::unique_ptr<Tokenizer> t(new Tokenizer());

  // The model: a byte-level BPE.
  auto model_it = root.find("model");
  if (model_it == root.end() || !model_it->is_object()) {
    return Invalid(src, "missing the \"model\" object");
  }
  const Json& model = *model_it;
  auto type_it = model.find("type");
  if (type_it != model.end() && !(type_it->is_string() && type_it->get<std::string>() == "BPE")) {
    return Invalid(src, absl::StrCat("unsupported model type ", Show(*type_it),
                                     " (only \"BPE\" is supported)"));
  }
  auto vocab_it = model.find("vocab");
  auto merges_it = model.find("merges");
  if (vocab_it == model.end() || !vocab_it->is_object()) {
    return Invalid(src, "model.vocab must be an object of token -> id");
  }
  if (merges_it == model.end() || !merges_it->is_array()) {
    return Invalid(src, "model.merges must be an array");
  }
  for (const char* name : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    auto it = model.find(name);
    if (it != model.end() && !it->is_null() &&
        !(it->is_string() && it->get<std::string>().empty())) {
      return Invalid(src, absl::StrCat("unsupported model.", name, " ", Show(*it)));
    }
  }
  auto dropout = model.find("dropout");
  if (dropout != model.end() && !dropout->is_null() &&
      !(dropout->is_number() && dropout->get<double>() == 0.0)) {
    // Dropout makes encoding random; a server must be deterministic.
    return Invalid(src, absl::StrCat("unsupported model.dropout ", Show(*dropout)));
  }
  BATON_ASSIGN_OR_RETURN(bool byte_fallback, ReadBool(model, "byte_fallback", false, src));
  if (byte_fallback) return Invalid(src, "unsupported model.byte_fallback (not byte-level)");
  BATON_ASSIGN_OR_RETURN(t->ignore_merges_, ReadBool(model, "ignore_merges", false, src));

  std::array<int, 512> code_point_to_byte;
  code_point_to_byte.fill(-1);
  const std::array<uint32_t, 256> byte_to_code_point = ByteToCodePoint();
  for (int b = 0; b < 256; ++b) code_point_to_byte[byte_to_code_point[b]] = b;

  std::unordered_map<std::string, uint32_t> vocab_by_text;
  vocab_by_text.reserve(vocab_it->size());
  uint32_t max_id = 0;
  for (const auto& [text, id_json] : vocab_it->items()) {
    BATON_ASSIGN_OR_RETURN(uint32_t id,
                           ReadId(id_json, src, absl::StrCat("model.vocab[", Show(text), "]")));
    vocab_by_text.emplace(text, id);
    max_id = std::max(max_id, id);
  }
  if (vocab_by_text.empty()) return Invalid(src, "model.vocab is empty");

  // Added tokens: matched literally before pre-tokenization.
  auto added_it = root.find("added_tokens");
  std::vector<std::pair<AddedToken, bool>> added;  // With its "special".
  if (added_it != root.end() && !added_it->is_null()) {
    if (!added_it->is_array()) return Invalid(src, "added_tokens must be an array");
    for (size_t i = 0; i < added_it->size(); ++i) {
      const Json& entry = (*added_it)[i];
      const std::string where = absl::StrCat("added_tokens[", i, "]");
      if (!entry.is_object()) return Invalid(src, absl::StrCat(where, " must be an object"));
      auto id_json = entry.find("id");
      auto content = entry.find("content");
      if (id_json == entry.end()) return Invalid(src, absl::StrCat(where, " has no \"id\""));
      if (content == entry.end() || !content->is_string() || content->get<std::string>().empty()) {
        return Invalid(src, absl::StrCat(where, " needs a non-empty string \"content\""));
      }
      AddedToken token;
      BATON_ASSIGN_OR_RETURN(token.id, ReadId(*id_json, src, absl::StrCat(where, ".id")));
      token.content = content->get<std::string>();
      const std::string field_src = absl::StrCat(src, ": ", where);
      BATON_ASSIGN_OR_RETURN(token.lstrip, ReadBool(entry, "lstrip", false, field_src));
      BATON_ASSIGN_OR_RETURN(token.rstrip, ReadBool(entry, "rstrip", false, field_src));
      BATON_ASSIGN_OR_RETURN(bool single_word, ReadBool(entry, "single_word", false, field_src));
      if (single_word) {
        return Invalid(src, absl::StrCat(where, ": unsupported \"single_word\": true"));
      }
      BATON_ASSIGN_OR_RETURN(bool special, ReadBool(entry, "special", false, field_src));
      max_id = std::max(max_id, token.id);
      added.emplace_back(std::move(token), special);
    }
  }

  // The id -> bytes table.
  t->tokens_.resize(size_t{max_id} + 1);
  for (const auto& [text, id] : vocab_by_text) {
    Token& token = t->tokens_[id];
    std::optional<std::string> bytes = ByteLevelToBytes(text, code_point_to_byte);
    token.present = true;
    token.bytes = bytes.has_value() ? *bytes : text;
    if (bytes.has_value()) {
      t->vocab_.emplace(*bytes, id);
      if (bytes->size() == 1) t->byte_ids_[static_cast<unsigned char>((*bytes)[0])] = id;
    }
  }
  t->added_trie_ = std::make_unique<AddedTokenTrie>();
  for (auto& [token, special] : added) {
    // The added token's own text wins, as in the reference decoders.
    t->tokens_[token.id] = Token{token.content, true, special};
    t->added_trie_->Insert(token.content, static_cast<int32_t>(t->added_.size()));
    t->added_.push_back(std::move(token));
  }

  auto unk = model.find("unk_token");
  if (unk != model.end() && !unk->is_null()) {
    auto found =
        unk->is_string() ? vocab_by_text.find(unk->get<std::string>()) : vocab_by_text.end();
    if (found == vocab_by_text.end()) {
      return Invalid(src, absl::StrCat("model.unk_token ", Show(*unk), " is not in the vocab"));
    }
    t->unk_id_ = found->second;
  }

  // Merges, by rank (their order).
  t->merges_ = std::make_unique<MergeTable>(merges_it->size());
  for (size_t rank = 0; rank < merges_it->size(); ++rank) {
    const Json& entry = (*merges_it)[rank];
    std::string left, right;
    if (entry.is_string()) {
      const std::string& line = entry.get_ref<const std::string&>();
      const size_t space = line.find(' ');
      if (space == std::string::npos || line.find(' ', space + 1) != std::string::npos) {
        return Invalid(src, absl::StrCat("model.merges[", rank, "] ", Show(entry),
                                         " is not two tokens separated by one space"));
      }
      left = line.substr(0, space);
      right = line.substr(space + 1);
    } else if (entry.is_array() && entry.size() == 2 && entry[0].is_string() &&
               entry[1].is_string()) {
      left = entry[0].get<std::string>();
      right = entry[1].get<std::string>();
    } else {
      return Invalid(src, absl::StrCat("model.merges[", rank, "] ", Show(entry),
                                       " must be \"a b\" or [\"a\", \"b\"]"));
    }
    uint32_t ids[3];
    const std::string parts[3] = {left, right, left + right};
    for (int k = 0; k < 3; ++k) {
      auto found = vocab_by_text.find(parts[k]);
      if (found == vocab_by_text.end()) {
        return Invalid(src, absl::StrCat("model.merges[", rank, "] ", Show(entry),
                                         " names unknown token ", Show(parts[k])));
      }
      ids[k] = found->second;
    }
    t->merges_->Insert(ids[0], ids[1], MergeTable::Merge{static_cast<uint32_t>(rank), ids[2]});
  }

  // Normalizer and decoder: only the identity and ByteLevel are supported.
  auto normalizer = root.find("normalizer");
  if (normalizer != root.end() && !normalizer->is_null()) {
    auto ntype = normalizer->find("type");
    auto list = normalizer->find("normalizers");
    const bool empty_sequence = normalizer->is_object() && ntype != normalizer->end() &&
                                *ntype == "Sequence" && list != normalizer->end() &&
                                list->is_array() && list->empty();
    if (!empty_sequence)
      return Invalid(src, absl::StrCat("unsupported normalizer ", Show(*normalizer)));
  }
  auto decoder = root.find("decoder");
  if (decoder != root.end() && !decoder->is_null()) {
    auto dtype = decoder->is_object() ? decoder->find("type") : decoder->end();
    if (!decoder->is_object() || dtype == decoder->end() || *dtype != "ByteLevel") {
      return Invalid(src, absl::StrCat("unsupported decoder ", Show(*decoder),
                                       " (only ByteLevel is supported)"));
    }
  }

  // Pre-tokenizer: flattened into a list of steps.
  std::vector<const Json*> pending;
  auto pre = root.find("pre_tokenizer");
  if (pre != root.end() && !pre->is_null()) pending.push_back(&*pre);
  std::vector<const Json*> flat;
  while (!pending.empty()) {
    const Json* p = pending.front();
    pending.erase(pending.begin());
    if (!p->is_object() || !p->contains("type") || !(*p)["type"].is_string()) {
      return Invalid(src, absl::StrCat("pre_tokenizer ", Show(*p), " has no \"type\""));
    }
    if ((*p)["type"] == "Sequence") {
      auto list = p->find("pretokenizers");
      if (list == p->end() || !list->is_array()) {
        return Invalid(src, "pre_tokenizer Sequence needs a \"pretokenizers\" array");
      }
      // Depth-first, in order.
      std::vector<const Json*> children;
      for (const Json& child : *list) children.push_back(&child);
      pending.insert(pending.begin(), children.begin(), children.end());
    } else {
      flat.push_back(p);
    }
  }
  for (const Json* p : flat) {
    const std::string type = (*p)["type"].get<std::string>();
    const std::string step_src = absl::StrCat(src, ": pre_tokenizer ", type);
    if (type == "Split") {
      auto pattern = p->find("pattern");
      auto behavior = p->find("behavior");
      BATON_ASSIGN_OR_RETURN(bool invert, ReadBool(*p, "invert", false, step_src));
      if (behavior == p->end() || *behavior != "Isolated" || invert) {
        return Invalid(
            step_src,
            absl::StrCat("unsupported behavior ", behavior == p->end() ? "(none)" : Show(*behavior),
                         invert ? " with invert" : "", " (only \"Isolated\", not inverted)"));
      }
      std::string regex;
      if (pattern != p->end() && pattern->is_object() && pattern->contains("Regex") &&
          (*pattern)["Regex"].is_string()) {
        regex = (*pattern)["Regex"].get<std::string>();
      } else if (pattern != p->end() && pattern->is_object() && pattern->contains("String") &&
                 (*pattern)["String"].is_string()) {
        regex = EscapeRegex((*pattern)["String"].get<std::string>());
      } else {
        return Invalid(step_src, "needs a pattern {\"Regex\": ...} or {\"String\": ...}");
      }
      BATON_ASSIGN_OR_RETURN(auto compiled, Regex::Compile(regex, step_src));
      t->pre_tokenizer_.push_back(PreTokenizerStep{std::move(compiled)});
    } else if (type == "ByteLevel") {
      // Both default to true in the Hugging Face library.
      BATON_ASSIGN_OR_RETURN(bool prefix_space, ReadBool(*p, "add_prefix_space", true, step_src));
      BATON_ASSIGN_OR_RETURN(bool use_regex, ReadBool(*p, "use_regex", true, step_src));
      if (prefix_space) t->pre_tokenizer_.push_back(PreTokenizerStep{nullptr});
      if (use_regex) {
        BATON_ASSIGN_OR_RETURN(auto compiled, Regex::Compile(kGpt2Pattern, step_src));
        t->pre_tokenizer_.push_back(PreTokenizerStep{std::move(compiled)});
      }
    } else {
      return Invalid(src, absl::StrCat("unknown pre_tokenizer type \"", type, "\""));
    }
  }

  // tokenizer_config.json: BOS/EOS.
  if (!config_json.empty()) {
    const Json config = Json::parse(config_json, nullptr, /*allow_exceptions=*/false);
    if (config.is_discarded()) return Invalid(config_source, "not valid JSON");
    if (!config.is_object()) return Invalid(config_source, "expected a JSON object");
    BATON_ASSIGN_OR_RETURN(t->add_bos_token_,
                           ReadBool(config, "add_bos_token", false, config_source));
    for (auto [name, out] : {std::pair{"bos_token", &t->bos_id_}, {"eos_token", &t->eos_id_}}) {
      BATON_ASSIGN_OR_RETURN(std::string content, ReadConfigToken(config, name, config_source));
      if (content.empty()) continue;
      std::optional<uint32_t> id = t->AddedTokenId(content);
      if (!id.has_value()) {
        auto found = t->vocab_.find(content);
        if (found != t->vocab_.end()) id = found->second;
      }
      if (!id.has_value()) {
        return Invalid(config_source,
                       absl::StrCat("\"", name, "\" ", Show(content), " is not a token of ", src));
      }
      *out = id;
    }
  }
  return t;
}

std::optional<uint32_t> Tokenizer::AddedTokenId(std::string_view content) const {
  if (content.empty()) return std::nullopt;
  auto [index, length] = added_trie_->LongestMatch(content, 0);
  if (index < 0 || length != content.size()) return std::nullopt;
  return added_[index].id;
}

bool Tokenizer::IsSpecial(uint32_t id) const { return id < tokens_.size() && tokens_[id].special; }

absl::StatusOr<std::string_view> Tokenizer::TokenText(uint32_t id) const {
  if (id >= tokens_.size() || !tokens_[id].present) {
    return absl::OutOfRangeError(
        absl::StrCat("token id ", id, " is not in the vocabulary (size ", tokens_.size(), ")"));
  }
  return std::string_view(tokens_[id].bytes);
}

absl::StatusOr<std::string> Tokenizer::Decode(absl::Span<const uint32_t> ids,
                                              bool skip_special) const {
  std::string out;
  for (uint32_t id : ids) {
    BATON_ASSIGN_OR_RETURN(std::string_view bytes, TokenText(id));
    if (skip_special && tokens_[id].special) continue;
    out.append(bytes);
  }
  return out;
}

absl::StatusOr<std::vector<uint32_t>> Tokenizer::Encode(std::string_view text, bool add_bos) const {
  if (std::optional<size_t> bad = FirstInvalidUtf8(text); bad.has_value()) {
    return absl::InvalidArgumentError(
        absl::StrCat("text to tokenize is not valid UTF-8 at byte ", *bad));
  }
  std::vector<uint32_t> ids;
  ids.reserve(text.size() / 4 + 2);
  if (add_bos) {
    if (!bos_id_.has_value()) {
      return absl::FailedPreconditionError("the tokenizer has no BOS token to add");
    }
    ids.push_back(*bos_id_);
  }

  // Cut the text at added tokens (leftmost, then longest), then encode the
  // spans between them. lstrip/rstrip drop the ASCII whitespace next to a
  // token.
  size_t span_begin = 0;
  bool strip_next = false;  // The previous added token has rstrip.
  auto flush_span = [&](size_t end, bool strip_end) -> absl::Status {
    std::string_view span = text.substr(span_begin, end - span_begin);
    if (strip_next) {
      while (!span.empty() && IsAsciiSpace(span.front())) span.remove_prefix(1);
    }
    if (strip_end) {
      while (!span.empty() && IsAsciiSpace(span.back())) span.remove_suffix(1);
    }
    return span.empty() ? absl::OkStatus() : EncodeSpan(span, &ids);
  };
  size_t pos = 0;
  while (pos < text.size()) {
    auto [index, length] = added_trie_->LongestMatch(text, pos);
    if (index < 0) {
      ++pos;
      continue;
    }
    const AddedToken& token = added_[index];
    BATON_RETURN_IF_ERROR(flush_span(pos, token.lstrip));
    ids.push_back(token.id);
    pos += length;
    span_begin = pos;
    strip_next = token.rstrip;
  }
  BATON_RETURN_IF_ERROR(flush_span(text.size(), false));
  return ids;
}

namespace {

// Per-call match state for each regex step (PCRE2 match data is not shared
// between threads).
class MatchDatas {
 public:
  MatchDatas() = default;
  ~MatchDatas() {
    for (pcre2_match_data* md : data_) pcre2_match_data_free(md);
  }
  MatchDatas(const MatchDatas&) = delete;
  MatchDatas& operator=(const MatchDatas&) = delete;
  void Add(pcre2_match_data* md) { data_.push_back(md); }
  pcre2_match_data* operator[](size_t i) const { return data_[i]; }

 private:
  std::vector<pcre2_match_data*> data_;
};

}  // namespace

absl::Status Tokenizer::EncodeSpan(std::string_view span, std::vector<uint32_t>* ids) const {
  MatchDatas match_datas;
  for (const PreTokenizerStep& step : pre_tokenizer_) {
    pcre2_match_data* md = step.regex != nullptr ? step.regex->NewMatchData() : nullptr;
    if (step.regex != nullptr && md == nullptr)
      return absl::ResourceExhaustedError("out of memory");
    match_datas.Add(md);
  }

  // Final pieces wait here to be encoded a batch at a time; `owned` keeps
  // the pieces that add_prefix_space made.
  std::vector<std::string_view> pieces;
  pieces.reserve(kPieceBatch);
  std::deque<std::string> owned;
  auto emit = [&](std::string_view piece) -> absl::Status {
    pieces.push_back(piece);
    if (pieces.size() < kPieceBatch) return absl::OkStatus();
    absl::Status status = EncodePieces(pieces, ids);
    pieces.clear();
    owned.clear();
    return status;
  };

  // Applies the steps from `step` on to `piece`, depth-first, so that the
  // pieces of a long text are never all held at once.
  auto split = [&](auto& self, size_t step, std::string_view piece) -> absl::Status {
    if (step == pre_tokenizer_.size()) return emit(piece);
    const Regex* regex = pre_tokenizer_[step].regex.get();
    if (regex == nullptr) {
      // ByteLevel's add_prefix_space.
      if (!piece.empty() && piece.front() == ' ') return self(self, step + 1, piece);
      owned.push_back(absl::StrCat(" ", absl::string_view(piece.data(), piece.size())));
      return self(self, step + 1, owned.back());
    }
    // Isolated split: each match and each gap between matches is a piece.
    size_t last = 0;
    size_t search = 0;
    while (search <= piece.size()) {
      size_t begin = 0, end = 0;
      BATON_ASSIGN_OR_RETURN(bool found,
                             regex->Find(piece, search, match_datas[step], &begin, &end));
      if (!found) break;
      if (begin > last)
        BATON_RETURN_IF_ERROR(self(self, step + 1, piece.substr(last, begin - last)));
      if (end > begin)
        BATON_RETURN_IF_ERROR(self(self, step + 1, piece.substr(begin, end - begin)));
      last = end;
      if (end > begin) {
        search = end;
      } else if (end == piece.size()) {
        break;
      } else {
        // An empty match: step over one character, as JavaScript does.
        size_t len = 1;
        CheckUtf8(piece, end, &len);
        search = end + len;
      }
    }
    if (last < piece.size()) BATON_RETURN_IF_ERROR(self(self, step + 1, piece.substr(last)));
    return absl::OkStatus();
  };
  BATON_RETURN_IF_ERROR(split(split, 0, span));
  return EncodePieces(pieces, ids);
}

absl::Status Tokenizer::EncodePieces(absl::Span<const std::string_view> pieces,
                                     std::vector<uint32_t>* ids) const {
  // First the cache, under one lock, into `hits`; `hit_end[i]` is where the
  // ids of piece i end there, or kNoToken when it must go through BPE.
  uint64_t hashes[kPieceBatch];
  uint32_t hit_end[kPieceBatch];
  std::vector<uint32_t> hits;
  bool any_miss = false;
  {
    absl::MutexLock lock(&cache_->mu);
    for (size_t i = 0; i < pieces.size(); ++i) {
      const std::string_view word = pieces[i];
      hit_end[i] = kNoToken;
      if (word.size() == 1 && byte_ids_[static_cast<unsigned char>(word[0])] >= 0) {
        hits.push_back(static_cast<uint32_t>(byte_ids_[static_cast<unsigned char>(word[0])]));
        hit_end[i] = static_cast<uint32_t>(hits.size());
        continue;
      }
      if (!WordCache::Cacheable(word)) {
        any_miss = true;
        continue;
      }
      hashes[i] = std::hash<std::string_view>()(word);
      if (cache_->Lookup(word, hashes[i], &hits)) {
        hit_end[i] = static_cast<uint32_t>(hits.size());
      } else {
        any_miss = true;
      }
    }
  }
  if (!any_miss) {
    ids->insert(ids->end(), hits.begin(), hits.end());
    return absl::OkStatus();
  }
  // Then, in order, the cached ids or BPE; new results go in the cache after.
  struct Computed {
    size_t piece;
    size_t begin, end;  // Its ids in `ids`.
  };
  std::vector<Computed> computed;
  size_t hit_begin = 0;
  for (size_t i = 0; i < pieces.size(); ++i) {
    if (hit_end[i] != kNoToken) {
      ids->insert(ids->end(), hits.begin() + hit_begin, hits.begin() + hit_end[i]);
      hit_begin = hit_end[i];
      continue;
    }
    const size_t begin = ids->size();
    BATON_RETURN_IF_ERROR(Bpe(pieces[i], ids));
    if (WordCache::Cacheable(pieces[i])) computed.push_back(Computed{i, begin, ids->size()});
  }
  absl::MutexLock lock(&cache_->mu);
  for (const Computed& c : computed) {
    cache_->Store(pieces[c.piece], hashes[c.piece],
                  absl::MakeConstSpan(ids->data() + c.begin, c.end - c.begin));
  }
  return absl::OkStatus();
}

absl::Status Tokenizer::Bpe(std::string_view word, std::vector<uint32_t>* ids) const {
  if (ignore_merges_) {
    auto it = vocab_.find(std::string(word));
    if (it != vocab_.end()) {
      ids->push_back(it->second);
      return absl::OkStatus();
    }
  }
  // One symbol per byte in a doubly linked list; a merged-away symbol has
  // len 0. Merges come out of a heap by (rank, position), the order of the
  // reference implementations, so a word of n bytes costs O(n log n).
  struct Symbol {
    uint32_t id;
    int32_t prev;
    int32_t next;
    uint32_t len;
  };
  struct Candidate {
    uint32_t rank;
    int32_t pos;
    uint32_t id;
    bool operator>(const Candidate& o) const {
      return rank != o.rank ? rank > o.rank : pos > o.pos;
    }
  };
  const int32_t n = static_cast<int32_t>(word.size());
  std::vector<Symbol> symbols(n);
  for (int32_t i = 0; i < n; ++i) {
    const int64_t id = byte_ids_[static_cast<unsigned char>(word[i])];
    symbols[i] =
        Symbol{id >= 0 ? static_cast<uint32_t>(id) : kNoToken, i - 1, i + 1 < n ? i + 1 : -1, 1};
  }
  std::vector<Candidate> heap;
  heap.reserve(n);
  auto push = [&](int32_t pos) {
    const int32_t next = symbols[pos].next;
    if (next < 0) return;
    const MergeTable::Merge* m = merges_->Find(symbols[pos].id, symbols[next].id);
    if (m == nullptr) return;
    heap.push_back(Candidate{m->rank, pos, m->id});
    std::push_heap(heap.begin(), heap.end(), std::greater<>());
  };
  for (int32_t i = 0; i + 1 < n; ++i) push(i);
  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end(), std::greater<>());
    const Candidate top = heap.back();
    heap.pop_back();
    Symbol& left = symbols[top.pos];
    if (left.len == 0 || left.next < 0) continue;
    // Stale when either side has changed since it was pushed.
    const MergeTable::Merge* m = merges_->Find(left.id, symbols[left.next].id);
    if (m == nullptr || m->id != top.id) continue;
    Symbol& right = symbols[left.next];
    left.id = top.id;
    left.len += right.len;
    right.len = 0;
    left.next = right.next;
    if (left.next >= 0) symbols[left.next].prev = top.pos;
    if (left.prev >= 0) push(left.prev);
    push(top.pos);
  }
  for (int32_t i = 0; i >= 0; i = symbols[i].next) {
    uint32_t id = symbols[i].id;
    if (id == kNoToken) {
      if (!unk_id_.has_value()) {
        return absl::InvalidArgumentError(absl::StrCat(
            "the tokenizer has no token for byte 0x",
            absl::Hex(static_cast<unsigned char>(word[i]), absl::kZeroPad2), " and no unk_token"));
      }
      id = *unk_id_;
    }
    ids->push_back(id);
  }
  return absl::OkStatus();
}

size_t AppendValidUtf8(std::string_view bytes, bool final, std::string* out) {
  size_t i = 0;
  while (i < bytes.size()) {
    size_t start = i;
    while (i < bytes.size() && static_cast<unsigned char>(bytes[i]) < 0x80) ++i;
    out->append(bytes.data() + start, i - start);
    if (i == bytes.size()) break;
    size_t len = 0;
    switch (CheckUtf8(bytes, i, &len)) {
      case Utf8::kValid:
        out->append(bytes.data() + i, len);
        i += len;
        break;
      case Utf8::kInvalid:
        out->append("\xEF\xBF\xBD");
        i += len;
        break;
      case Utf8::kCut:
        if (!final) return i;
        out->append("\xEF\xBF\xBD");
        return bytes.size();
    }
  }
  return i;
}

IncrementalDetokenizer::IncrementalDetokenizer(const Tokenizer* tokenizer, bool skip_special)
    : tokenizer_(tokenizer), skip_special_(skip_special) {}

absl::StatusOr<std::string> IncrementalDetokenizer::Add(uint32_t id) {
  BATON_ASSIGN_OR_RETURN(std::string_view bytes, tokenizer_->TokenText(id));
  if (skip_special_ && tokenizer_->IsSpecial(id)) return std::string();
  pending_.append(bytes);
  std::string out;
  const size_t consumed = AppendValidUtf8(pending_, /*final=*/false, &out);
  pending_.erase(0, consumed);
  return out;
}

std::string IncrementalDetokenizer::Flush() {
  std::string out;
  AppendValidUtf8(pending_, /*final=*/true, &out);
  pending_.clear();
  return out;
}

}  // namespace baton
