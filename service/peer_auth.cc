#include "service/peer_auth.h"

#include <cstdio>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"

namespace baton {

absl::StatusOr<std::string> PeerAuth::ReadSecret(const std::string& secret,
                                                 const std::string& secret_file) {
  if (!secret.empty() || secret_file.empty()) return secret;
  std::ifstream in(secret_file);
  if (!in) return absl::NotFoundError(absl::StrCat(secret_file, ": cannot read the secret file"));
  std::stringstream text;
  text << in.rdbuf();
  std::string s = text.str();
  while (!s.empty() && (s.back() == '\n' || s.back() == '\r')) s.pop_back();
  if (s.empty())
    return absl::InvalidArgumentError(absl::StrCat(secret_file, ": the secret is empty"));
  return s;
}

bool PeerAuth::Allow(const std::string& presented, const std::string& what,
                     const std::string& peer) const {
  if (secret_.empty()) return true;
  unsigned char diff = presented.size() == secret_.size() ? 0 : 1;
  for (size_t i = 0; i < secret_.size(); ++i) {
    diff |= static_cast<unsigned char>(secret_[i] ^ (i < presented.size() ? presented[i] : 0));
  }
  if (diff == 0) return true;
  refused_.fetch_add(1);
  std::fprintf(stderr, "baton: refused %s from %s: wrong or missing shared secret\n", what.c_str(),
               peer.c_str());
  return false;
}

}  // namespace baton
