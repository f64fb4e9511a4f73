// The golden cases (tests/data/golden: DeepSeek's official implementation
// run on tiny DeepSeek-V3 checkpoints): their tokens and fp32 logits, for
// the CPU engine's tests and the GPU backend's alike.
#ifndef BATON_TESTS_SUPPORT_GOLDEN_H_
#define BATON_TESTS_SUPPORT_GOLDEN_H_

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "engine/safetensors.h"
#include "gtest/gtest.h"

namespace baton::golden {

struct GoldenCase {
  std::string name;     // Directory under tests/data/golden.
  std::string weights;  // Subdirectory holding the checkpoint ("" or "fp32").
};

// tests/data/golden/NAME; the BATON_TEST_DATA environment variable, where
// set, names tests/data instead (a test binary carried to another machine,
// scripts/gpu-bundle).
inline std::string CaseDir(const GoldenCase& c) {
  const char* data = std::getenv("BATON_TEST_DATA");
  return std::string(data != nullptr && *data != '\0' ? data : BATON_TEST_DATA) + "/golden/" +
         c.name;
}

struct Golden {
  std::vector<int32_t> input_ids, fed_tokens, greedy_tokens;
  std::vector<float> prefill_all, prefill_last, decode;  // fp32/absorb
};

inline std::vector<int32_t> ReadIds(const SafetensorsFile& f, const std::string& name) {
  const TensorView& v = f.tensors().at(name);
  std::vector<int32_t> out(v.num_elements());
  for (size_t i = 0; i < out.size(); ++i) {
    int64_t x;
    std::memcpy(&x, v.data + 8 * i, 8);
    out[i] = static_cast<int32_t>(x);
  }
  return out;
}

inline std::vector<float> ReadFloats(const SafetensorsFile& f, const std::string& name) {
  const TensorView& v = f.tensors().at(name);
  std::vector<float> out(v.num_elements());
  std::memcpy(out.data(), v.data, v.num_bytes);
  return out;
}

inline Golden LoadGolden(const GoldenCase& c) {
  auto file = SafetensorsFile::Open(CaseDir(c) + "/golden.safetensors");
  Golden g;
  if (!file.ok()) {
    ADD_FAILURE() << file.status();
    return g;
  }
  g.input_ids = ReadIds(**file, "input_ids");
  g.fed_tokens = ReadIds(**file, "fed_tokens");
  g.greedy_tokens = ReadIds(**file, "greedy_tokens");
  g.prefill_all = ReadFloats(**file, "fp32.absorb.prefill_all_logits");
  g.prefill_last = ReadFloats(**file, "fp32.absorb.prefill_last_logits");
  g.decode = ReadFloats(**file, "fp32.absorb.decode_logits");
  return g;
}

inline float MaxAbsDiff(const float* a, const float* b, size_t n) {
  float m = 0.f;
  for (size_t i = 0; i < n; ++i) m = std::max(m, std::fabs(a[i] - b[i]));
  return m;
}

inline int Argmax(const float* x, int n) {
  return static_cast<int>(std::max_element(x, x + n) - x);
}

}  // namespace baton::golden

#endif  // BATON_TESTS_SUPPORT_GOLDEN_H_
