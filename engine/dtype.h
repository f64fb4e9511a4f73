// Element types of checkpoint tensors and their conversions to float.
#ifndef BATON_ENGINE_DTYPE_H_
#define BATON_ENGINE_DTYPE_H_

#include <cstdint>
#include <cstring>
#include <string>

namespace baton {

enum class DType { kF32, kBF16, kF16, kF8E4M3, kF64, kI64, kI32 };

// Bytes per element.
int DTypeSize(DType dtype);
// The safetensors name ("F32", "BF16", ...).
const char* DTypeName(DType dtype);
// Parses a safetensors dtype name; false for types baton does not read.
bool ParseDType(const std::string& name, DType* dtype);

inline float Bf16ToFloat(uint16_t v) {
  uint32_t bits = static_cast<uint32_t>(v) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

// An element of an f32 or a BF16 buffer, as f32 (for code templated on both).
inline float ElementToFloat(float v) { return v; }
inline float ElementToFloat(uint16_t v) { return Bf16ToFloat(v); }

// Round to nearest even, as torch does; NaN stays NaN.
inline uint16_t FloatToBf16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof bits);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((bits >> 16) | 0x40);
  bits += 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>(bits >> 16);
}

float F16ToFloat(uint16_t v);
// OCP FP8 E4M3 (the "fn" variant: no infinities, 0x7f/0xff are NaN).
float Fp8E4M3ToFloat(uint8_t v);

}  // namespace baton

#endif  // BATON_ENGINE_DTYPE_H_
