#include "operator/log.h"

#include <cstdio>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "operator/json_util.h"

namespace baton::op {
namespace {

void Write(char level, const std::string& message) {
  const std::string line = absl::StrCat(FormatMicroTimestamp(absl::Now()), " ",
                                        std::string(1, level), " ", message, "\n");
  std::fwrite(line.data(), 1, line.size(), stderr);
}

}  // namespace

void LogInfo(const std::string& message) { Write('I', message); }
void LogError(const std::string& message) { Write('E', message); }

}  // namespace baton::op
