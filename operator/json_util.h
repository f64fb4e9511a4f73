// JSON helpers shared by the operator: nlohmann::json without exceptions
// (parse with allow_exceptions=false, read through typed accessors that
// tolerate missing or mistyped fields), a semantic "contains" for comparing
// what the operator wants with what the API server returns (which adds
// defaults), a stable hash, and Kubernetes timestamps.
//
// Thread-safety: pure functions.
#ifndef BATON_OPERATOR_JSON_UTIL_H_
#define BATON_OPERATOR_JSON_UTIL_H_

#include <cstdint>
#include <initializer_list>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "nlohmann/json.hpp"

namespace baton::op {

using Json = nlohmann::json;

// Parses `text`; INVALID_ARGUMENT naming `what` when it is not JSON.
absl::StatusOr<Json> ParseJson(const std::string& text, const std::string& what);

// The value at `path` (object keys), or null when any step is missing.
const Json* Find(const Json& root, std::initializer_list<const char*> path);
std::string GetString(const Json& root, std::initializer_list<const char*> path,
                      const std::string& fallback = "");
int64_t GetInt(const Json& root, std::initializer_list<const char*> path, int64_t fallback = 0);
bool GetBool(const Json& root, std::initializer_list<const char*> path, bool fallback = false);

// True when every field of `wanted` is present in `actual` with the same
// value (objects recursively; arrays element by element with equal length;
// numbers compared as numbers). Fields only `actual` has are ignored: those
// are the server's defaults; wanted zero values (empty, false, 0) match an
// absent field, as the server omits them.
bool JsonContains(const Json& actual, const Json& wanted);

// FNV-1a over the canonical dump (object keys sorted): stable across builds,
// so that an operator upgrade does not restart every pod.
std::string StableHash(const Json& value);

// "2006-01-02T15:04:05Z" and the MicroTime form with 6 fractional digits.
std::string FormatTimestamp(absl::Time t);
std::string FormatMicroTimestamp(absl::Time t);
// Parses RFC 3339 (with or without fractional seconds).
std::optional<absl::Time> ParseTimestamp(const std::string& text);

// "namespace/name" of an object.
std::string ObjectKey(const Json& object);

}  // namespace baton::op

#endif  // BATON_OPERATOR_JSON_UTIL_H_
