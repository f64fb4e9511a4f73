#include "engine/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "engine/status_macros.h"
#include "nlohmann/json.hpp"

namespace baton {
namespace {

using Json = nlohmann::json;

constexpr uint64_t kMaxHeaderBytes = 100u << 20;  // safetensors' own limit.

absl::Status Corrupt(const std::string& path, const std::string& what) {
  return absl::DataLossError(absl::StrCat(path, ": ", what));
}

bool FileExists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

}  // namespace

int64_t TensorView::num_elements() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

std::string TensorView::ShapeString() const {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

SafetensorsFile::~SafetensorsFile() {
  if (mapping_ != nullptr) ::munmap(mapping_, mapping_size_);
}

absl::StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Open(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    return absl::NotFoundError(absl::StrCat(path, ": cannot open: ", std::strerror(errno)));
  }
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    ::close(fd);
    return absl::InternalError(absl::StrCat(path, ": fstat failed"));
  }
  const size_t size = static_cast<size_t>(st.st_size);
  if (size < 8) {
    ::close(fd);
    return Corrupt(path, absl::StrCat("truncated: ", size, " bytes, not even a header length"));
  }
  void* mapping = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  ::close(fd);
  if (mapping == MAP_FAILED) {
    return absl::InternalError(absl::StrCat(path, ": mmap failed: ", std::strerror(errno)));
  }
  auto file = std::unique_ptr<SafetensorsFile>(new SafetensorsFile());
  file->path_ = path;
  file->mapping_ = mapping;
  file->mapping_size_ = size;

  const auto* bytes = static_cast<const uint8_t*>(mapping);
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | bytes[i];
  if (header_len > kMaxHeaderBytes || header_len > size - 8) {
    return Corrupt(path, absl::StrCat("header length ", header_len, " exceeds the file (", size,
                                      " bytes): truncated or not a safetensors file"));
  }
  Json header = Json::parse(bytes + 8, bytes + 8 + header_len, nullptr, /*allow_exceptions=*/false);
  if (header.is_discarded() || !header.is_object()) {
    return Corrupt(path, "header is not a JSON object");
  }
  const uint8_t* data_begin = bytes + 8 + header_len;
  const size_t data_size = size - 8 - header_len;
  for (auto it = header.begin(); it != header.end(); ++it) {
    if (it.key() == "__metadata__") continue;
    const Json& entry = it.value();
    TensorView view;
    view.name = it.key();
    view.file = path;
    auto bad = [&](const std::string& what) {
      return Corrupt(path, absl::StrCat("tensor \"", view.name, "\": ", what));
    };
    if (!entry.is_object() || !entry.contains("dtype") || !entry["dtype"].is_string() ||
        !entry.contains("shape") || !entry["shape"].is_array() || !entry.contains("data_offsets") ||
        !entry["data_offsets"].is_array() || entry["data_offsets"].size() != 2) {
      return bad("malformed header entry");
    }
    const std::string dtype_name = entry["dtype"].get<std::string>();
    if (!ParseDType(dtype_name, &view.dtype)) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": tensor \"", view.name, "\": unsupported dtype ", dtype_name,
                       " (baton reads F32, BF16, F16, F8_E4M3, F64, I64, I32)"));
    }
    for (const Json& d : entry["shape"]) {
      if (!d.is_number_unsigned()) return bad("shape must hold non-negative integers");
      view.shape.push_back(d.get<int64_t>());
    }
    const Json& offsets = entry["data_offsets"];
    if (!offsets[0].is_number_unsigned() || !offsets[1].is_number_unsigned()) {
      return bad("data_offsets must be non-negative integers");
    }
    const uint64_t begin = offsets[0].get<uint64_t>();
    const uint64_t end = offsets[1].get<uint64_t>();
    if (begin > end || end > data_size) {
      return bad(absl::StrCat("data [", begin, ", ", end, ") lies outside the ", data_size,
                              " data bytes: file truncated or corrupt"));
    }
    view.num_bytes = end - begin;
    if (static_cast<uint64_t>(view.num_elements()) * DTypeSize(view.dtype) != view.num_bytes) {
      return bad(absl::StrCat("shape ", view.ShapeString(), " of ", dtype_name, " needs ",
                              view.num_elements() * DTypeSize(view.dtype), " bytes but has ",
                              view.num_bytes));
    }
    view.data = data_begin + begin;
    file->tensors_.emplace(view.name, std::move(view));
  }
  return file;
}

absl::StatusOr<std::unique_ptr<Checkpoint>> Checkpoint::Open(const std::string& dir) {
  auto checkpoint = std::make_unique<Checkpoint>();
  checkpoint->dir_ = dir;
  std::vector<std::string> shard_names;
  const std::string index_path = dir + "/model.safetensors.index.json";
  if (FileExists(index_path)) {
    std::ifstream in(index_path);
    std::stringstream text;
    text << in.rdbuf();
    Json index = Json::parse(text.str(), nullptr, /*allow_exceptions=*/false);
    if (index.is_discarded() || !index.is_object() || !index.contains("weight_map") ||
        !index["weight_map"].is_object()) {
      return absl::InvalidArgumentError(
          absl::StrCat(index_path, ": expected a JSON object with a \"weight_map\" object"));
    }
    for (auto& [name, shard] : index["weight_map"].items()) {
      if (!shard.is_string()) {
        return absl::InvalidArgumentError(
            absl::StrCat(index_path, ": weight_map entry \"", name, "\" is not a file name"));
      }
      const std::string s = shard.get<std::string>();
      if (s.find('/') != std::string::npos) {
        return absl::InvalidArgumentError(
            absl::StrCat(index_path, ": shard name \"", s, "\" must be a plain file name"));
      }
      if (std::find(shard_names.begin(), shard_names.end(), s) == shard_names.end()) {
        shard_names.push_back(s);
      }
    }
  } else if (FileExists(dir + "/model.safetensors")) {
    shard_names.push_back("model.safetensors");
  } else {
    return absl::NotFoundError(absl::StrCat(
        dir, ": no model.safetensors or model.safetensors.index.json in this directory"));
  }
  for (const std::string& shard : shard_names) {
    BATON_ASSIGN_OR_RETURN(auto file, SafetensorsFile::Open(dir + "/" + shard));
    for (const auto& [name, view] : file->tensors()) {
      auto [it, inserted] = checkpoint->index_.emplace(name, &view);
      if (!inserted) {
        return absl::InvalidArgumentError(absl::StrCat("tensor \"", name, "\" appears in both ",
                                                       it->second->file, " and ", view.file));
      }
    }
    checkpoint->files_.push_back(std::move(file));
  }
  return checkpoint;
}

const TensorView* Checkpoint::Find(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : it->second;
}

absl::StatusOr<const TensorView*> Checkpoint::Get(const std::string& name) const {
  const TensorView* view = Find(name);
  if (view == nullptr) {
    return absl::NotFoundError(absl::StrCat(dir_, ": missing tensor \"", name, "\""));
  }
  return view;
}

std::vector<std::string> Checkpoint::Names() const {
  std::vector<std::string> names;
  names.reserve(index_.size());
  for (const auto& [name, view] : index_) names.push_back(name);
  return names;
}

size_t Checkpoint::total_bytes() const {
  size_t total = 0;
  for (const auto& [name, view] : index_) total += view->num_bytes;
  return total;
}

}  // namespace baton
