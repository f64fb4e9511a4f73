// Memory-mapped safetensors checkpoints: one file, or shards listed by
// model.safetensors.index.json. Reading never copies; tensors are views into
// the mapping, which lives as long as the Checkpoint.
#ifndef BATON_ENGINE_SAFETENSORS_H_
#define BATON_ENGINE_SAFETENSORS_H_

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/dtype.h"

namespace baton {

struct TensorView {
  std::string name;
  std::string file;  // For error messages.
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  const uint8_t* data = nullptr;
  size_t num_bytes = 0;

  int64_t num_elements() const;
  std::string ShapeString() const;  // "[64, 128]"
};

// One mapped .safetensors file. Immutable after Open; safe to share.
class SafetensorsFile {
 public:
  static absl::StatusOr<std::unique_ptr<SafetensorsFile>> Open(const std::string& path);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::map<std::string, TensorView>& tensors() const { return tensors_; }
  const std::string& path() const { return path_; }

 private:
  SafetensorsFile() = default;
  std::string path_;
  void* mapping_ = nullptr;
  size_t mapping_size_ = 0;
  std::map<std::string, TensorView> tensors_;
};

// All tensors of a model directory. Immutable after Open.
class Checkpoint {
 public:
  // Opens DIR/model.safetensors.index.json (and its shards) when present,
  // otherwise DIR/model.safetensors.
  static absl::StatusOr<std::unique_ptr<Checkpoint>> Open(const std::string& dir);

  // Null when absent.
  const TensorView* Find(const std::string& name) const;
  // NotFound naming the tensor and the directory when absent.
  absl::StatusOr<const TensorView*> Get(const std::string& name) const;
  std::vector<std::string> Names() const;
  const std::string& dir() const { return dir_; }
  size_t total_bytes() const;

 private:
  std::string dir_;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, const TensorView*> index_;
};

}  // namespace baton

#endif  // BATON_ENGINE_SAFETENSORS_H_
