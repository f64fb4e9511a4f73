// One-line logs on stderr: "2024-01-02T03:04:05.123456Z I message". The
// operator logs for people and for `kubectl logs`; each line is written
// with a single call so that threads do not interleave.
//
// Thread-safety: may be called from any thread.
#ifndef BATON_OPERATOR_LOG_H_
#define BATON_OPERATOR_LOG_H_

#include <string>

namespace baton::op {

void LogInfo(const std::string& message);
void LogError(const std::string& message);

}  // namespace baton::op

#endif  // BATON_OPERATOR_LOG_H_
