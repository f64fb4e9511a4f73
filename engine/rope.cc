#include "engine/rope.h"

#include <algorithm>
#include <cmath>

namespace baton {
namespace {

// The dimension index whose wavelength completes `rotations` turns over the
// original context (YaRN's find_correction_dim).
double CorrectionDim(double rotations, int dim, double base, int original_len) {
  return dim * std::log(original_len / (rotations * 2 * M_PI)) / (2 * std::log(base));
}

double YarnMscale(double scale, double mscale) {
  return scale <= 1.0 ? 1.0 : 0.1 * mscale * std::log(scale) + 1.0;
}

}  // namespace

std::vector<float> RopeInvFreq(const ModelConfig& c) {
  const int dim = c.qk_rope_head_dim;
  const float base = static_cast<float>(c.rope_theta);
  std::vector<float> inv_freq(dim / 2);
  for (int i = 0; i < dim / 2; ++i) {
    inv_freq[i] = 1.0f / std::pow(base, static_cast<float>(2 * i) / static_cast<float>(dim));
  }
  if (!c.yarn.enabled || c.yarn.factor <= 1.0) return inv_freq;

  const int original = c.yarn.original_max_position_embeddings;
  double low = std::floor(CorrectionDim(c.yarn.beta_fast, dim, c.rope_theta, original));
  double high = std::ceil(CorrectionDim(c.yarn.beta_slow, dim, c.rope_theta, original));
  low = std::max(low, 0.0);
  high = std::min(high, static_cast<double>(dim - 1));
  if (low == high) high += 0.001;  // Avoid a zero-width ramp.
  const float factor = static_cast<float>(c.yarn.factor);
  for (int i = 0; i < dim / 2; ++i) {
    const float ramp = std::clamp(static_cast<float>((i - low) / (high - low)), 0.0f, 1.0f);
    const float smooth = 1.0f - ramp;  // 1: keep the original (extrapolate).
    inv_freq[i] = inv_freq[i] / factor * (1.0f - smooth) + inv_freq[i] * smooth;
  }
  return inv_freq;
}

float RopeCosSinScale(const ModelConfig& c) {
  if (!c.yarn.enabled) return 1.0f;
  const double mscale_all = c.yarn.mscale_all_dim;
  return static_cast<float>(YarnMscale(c.yarn.factor, c.yarn.mscale) /
                            YarnMscale(c.yarn.factor, mscale_all));
}

}  // namespace baton
