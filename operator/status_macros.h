// Status propagation helpers for the operator (a copy of engine/status_macros.h:
// operator/ must not depend on engine/). Debian's Abseil has no status macros.
#ifndef BATON_OPERATOR_STATUS_MACROS_H_
#define BATON_OPERATOR_STATUS_MACROS_H_

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define BATON_CONCAT_INNER_(a, b) a##b
#define BATON_CONCAT_(a, b) BATON_CONCAT_INNER_(a, b)

// Returns from the enclosing function when `expr` yields a non-OK status.
#define BATON_RETURN_IF_ERROR(expr)                \
  do {                                             \
    ::absl::Status baton_status_ = (expr);         \
    if (!baton_status_.ok()) return baton_status_; \
  } while (false)

// `BATON_ASSIGN_OR_RETURN(auto x, MakeX());` unwraps a StatusOr or returns
// its error.
#define BATON_ASSIGN_OR_RETURN(lhs, expr) \
  BATON_ASSIGN_OR_RETURN_IMPL_(BATON_CONCAT_(baton_statusor_, __LINE__), lhs, expr)
#define BATON_ASSIGN_OR_RETURN_IMPL_(var, lhs, expr) \
  auto var = (expr);                                 \
  if (!var.ok()) return std::move(var).status();     \
  lhs = std::move(var).value()

#endif  // BATON_OPERATOR_STATUS_MACROS_H_
