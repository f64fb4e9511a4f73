// The constants of the vectorized e^x for x <= 0 (softmax inputs after
// subtracting the maximum), shared by the AVX-512 and AVX2 kernels so that
// both compute the same function: x = n ln 2 + r with |r| <= ln 2 / 2, e^r
// by its degree-6 Taylor polynomial (Horner), times 2^n; about 2 ulp.
// Arguments below kExpMinArgument give e^-87.3 (1.2e-38, as good as 0 next
// to the maximum's 1), so 2^n stays a normal float.
#ifndef BATON_ENGINE_EXP_POLYNOMIAL_H_
#define BATON_ENGINE_EXP_POLYNOMIAL_H_

namespace baton::kernels {

inline constexpr float kExpMinArgument = -87.3f;
inline constexpr float kLog2E = 1.44269504f;
// ln 2 in two parts, so that n * kLn2High is exact.
inline constexpr float kLn2High = 0.693359375f;
inline constexpr float kLn2Low = -2.12194440e-4f;
// The Taylor coefficients of e^r, highest degree first (Horner's order).
inline constexpr float kExpTaylor[] = {1.0f / 720, 1.0f / 120, 1.0f / 24, 1.0f / 6,
                                       0.5f,       1.0f,       1.0f};

}  // namespace baton::kernels

#endif  // BATON_ENGINE_EXP_POLYNOMIAL_H_
