// A parser for the subset of YAML that kubeconfig files (and simple
// manifests) use, into JSON: block mappings and sequences (including the
// "- key: value" compact form), plain, single- and double-quoted scalars,
// literal and folded block scalars (| and >, with - and + chomping), flow
// collections on one line ([a, b], {k: v}), comments, and the first
// document of a stream. Anchors, aliases, tags and multi-line plain or flow
// scalars are refused with an error rather than misread.
//
// The operator links no YAML library: kubeconfig is its only YAML input.
//
// Thread-safety: a pure function.
#ifndef BATON_OPERATOR_YAML_LITE_H_
#define BATON_OPERATOR_YAML_LITE_H_

#include <string>

#include "absl/status/statusor.h"
#include "operator/json_util.h"

namespace baton::op {

// Plain scalars are typed as YAML 1.2's core schema does: null/~, true and
// false, integers, floats; everything else is a string. `source` names the
// text in errors.
absl::StatusOr<Json> ParseYaml(const std::string& text, const std::string& source);

}  // namespace baton::op

#endif  // BATON_OPERATOR_YAML_LITE_H_
