#include "operator/json_util.h"

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace baton::op {

absl::StatusOr<Json> ParseJson(const std::string& text, const std::string& what) {
  Json j = Json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return absl::InvalidArgumentError(absl::StrCat(what, ": not valid JSON"));
  return j;
}

const Json* Find(const Json& root, std::initializer_list<const char*> path) {
  const Json* cur = &root;
  for (const char* key : path) {
    if (!cur->is_object()) return nullptr;
    auto it = cur->find(key);
    if (it == cur->end()) return nullptr;
    cur = &*it;
  }
  return cur;
}

std::string GetString(const Json& root, std::initializer_list<const char*> path,
                      const std::string& fallback) {
  const Json* v = Find(root, path);
  return v != nullptr && v->is_string() ? v->get<std::string>() : fallback;
}

int64_t GetInt(const Json& root, std::initializer_list<const char*> path, int64_t fallback) {
  const Json* v = Find(root, path);
  if (v == nullptr || !v->is_number()) return fallback;
  return v->is_number_float() ? static_cast<int64_t>(v->get<double>()) : v->get<int64_t>();
}

bool GetBool(const Json& root, std::initializer_list<const char*> path, bool fallback) {
  const Json* v = Find(root, path);
  return v != nullptr && v->is_boolean() ? v->get<bool>() : fallback;
}

namespace {

bool IsZero(const Json& v) {
  return v.is_null() || (v.is_structured() && v.empty()) ||
         (v.is_string() && v.get_ref<const std::string&>().empty()) ||
         (v.is_boolean() && !v.get<bool>()) || (v.is_number() && v.get<double>() == 0);
}

}  // namespace

bool JsonContains(const Json& actual, const Json& wanted) {
  if (wanted.is_object()) {
    if (!actual.is_object()) return false;
    for (auto it = wanted.begin(); it != wanted.end(); ++it) {
      auto found = actual.find(it.key());
      if (found == actual.end()) {
        // A wanted zero value matches an absent field: the server drops
        // empty maps, lists and strings, false and 0 (omitempty).
        if (IsZero(*it)) continue;
        return false;
      }
      if (!JsonContains(*found, *it)) return false;
    }
    return true;
  }
  if (wanted.is_array()) {
    if (!actual.is_array() || actual.size() != wanted.size()) return false;
    for (size_t i = 0; i < wanted.size(); ++i) {
      if (!JsonContains(actual[i], wanted[i])) return false;
    }
    return true;
  }
  if (wanted.is_number() && actual.is_number()) {
    return actual.get<double>() == wanted.get<double>();
  }
  // The server returns resource quantities as strings ("1" for 1).
  double parsed;
  if (wanted.is_number() && actual.is_string() &&
      absl::SimpleAtod(actual.get_ref<const std::string&>(), &parsed)) {
    return parsed == wanted.get<double>();
  }
  return actual == wanted;
}

std::string StableHash(const Json& value) {
  uint64_t h = 14695981039346656037ull;
  for (unsigned char c : value.dump()) {
    h ^= c;
    h *= 1099511628211ull;
  }
  return absl::StrFormat("%016x", h);
}

std::string FormatTimestamp(absl::Time t) {
  return absl::FormatTime("%Y-%m-%d%ET%H:%M:%SZ", t, absl::UTCTimeZone());
}

std::string FormatMicroTimestamp(absl::Time t) {
  return absl::FormatTime("%Y-%m-%d%ET%H:%M:%E6SZ", t, absl::UTCTimeZone());
}

std::optional<absl::Time> ParseTimestamp(const std::string& text) {
  absl::Time t;
  std::string error;
  if (absl::ParseTime(absl::RFC3339_full, text, &t, &error)) return t;
  return std::nullopt;
}

std::string ObjectKey(const Json& object) {
  return absl::StrCat(GetString(object, {"metadata", "namespace"}), "/",
                      GetString(object, {"metadata", "name"}));
}

}  // namespace baton::op
