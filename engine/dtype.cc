#include "engine/dtype.h"

#include <cmath>
#include <limits>

namespace baton {

int DTypeSize(DType dtype) {
  switch (dtype) {
    case DType::kF32:
    case DType::kI32:
      return 4;
    case DType::kBF16:
    case DType::kF16:
      return 2;
    case DType::kF8E4M3:
      return 1;
    case DType::kF64:
    case DType::kI64:
      return 8;
  }
  return 0;
}

const char* DTypeName(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return "F32";
    case DType::kBF16:
      return "BF16";
    case DType::kF16:
      return "F16";
    case DType::kF8E4M3:
      return "F8_E4M3";
    case DType::kF64:
      return "F64";
    case DType::kI64:
      return "I64";
    case DType::kI32:
      return "I32";
  }
  return "?";
}

bool ParseDType(const std::string& name, DType* dtype) {
  static constexpr struct {
    const char* name;
    DType dtype;
  } kNames[] = {{"F32", DType::kF32},        {"BF16", DType::kBF16}, {"F16", DType::kF16},
                {"F8_E4M3", DType::kF8E4M3}, {"F64", DType::kF64},   {"I64", DType::kI64},
                {"I32", DType::kI32}};
  for (const auto& n : kNames) {
    if (name == n.name) {
      *dtype = n.dtype;
      return true;
    }
  }
  return false;
}

float F16ToFloat(uint16_t v) {
  const int sign = (v >> 15) & 1;
  const int exponent = (v >> 10) & 0x1f;
  const int mantissa = v & 0x3ff;
  float magnitude;
  if (exponent == 0) {
    magnitude = std::ldexp(static_cast<float>(mantissa), -24);
  } else if (exponent == 31) {
    magnitude =
        mantissa ? std::numeric_limits<float>::quiet_NaN() : std::numeric_limits<float>::infinity();
  } else {
    magnitude = std::ldexp(static_cast<float>(mantissa + 1024), exponent - 25);
  }
  return sign ? -magnitude : magnitude;
}

float Fp8E4M3ToFloat(uint8_t v) {
  const int sign = (v >> 7) & 1;
  const int exponent = (v >> 3) & 0xf;
  const int mantissa = v & 0x7;
  float magnitude;
  if (exponent == 0xf && mantissa == 0x7) {
    magnitude = std::numeric_limits<float>::quiet_NaN();
  } else if (exponent == 0) {
    magnitude = std::ldexp(static_cast<float>(mantissa), -9);  // subnormal: m/8 * 2^-6
  } else {
    magnitude = std::ldexp(static_cast<float>(mantissa + 8), exponent - 10);  // (1+m/8) 2^(e-7)
  }
  return sign ? -magnitude : magnitude;
}

}  // namespace baton
