// Rotary position embedding frequencies, with DeepSeek's YaRN extension.
#ifndef BATON_ENGINE_ROPE_H_
#define BATON_ENGINE_ROPE_H_

#include <vector>

#include "engine/model_config.h"

namespace baton {

// inv_freq[i] for i < qk_rope_head_dim / 2, computed in fp32 as DeepSeek's
// reference does: theta^(-2i/d), blended with theta^(-2i/d)/factor over
// YaRN's correction range when rope_scaling is yarn.
std::vector<float> RopeInvFreq(const ModelConfig& config);

// The factor HF applies to cos and sin: yarn_mscale(factor, mscale) /
// yarn_mscale(factor, mscale_all_dim); 1 for DeepSeek-V3's configs.
float RopeCosSinScale(const ModelConfig& config);

}  // namespace baton

#endif  // BATON_ENGINE_ROPE_H_
