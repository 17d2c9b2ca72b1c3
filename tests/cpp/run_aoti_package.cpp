// Runs an AOTInductor package whose graph calls roiops ops, in a process with no Python at all: the
// package only names roiops::roi_align / roiops::roi_pool, and they exist in the dispatcher once the
// op library is loaded, which a C++ program must do itself (dlopen) before loading the package.
//
// Usage: run_aoti_package <op_library.so | none> <model.pt2> <inputs_dir> <outputs_dir>
//   "none" skips the dlopen, to show that the package cannot run without the op library.
//   A tensor is the file <dir>/<i>.bin (i = 0, 1, ... in the order of the model's inputs / outputs):
//   int64 ndim, int64 sizes[ndim], float32 data, all little-endian and row-major. This keeps the
//   Python side to a few struct calls, with no pickle format to agree on.

#include <dlfcn.h>

#include <cstdint>
#include <exception>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

#include <ATen/ops/empty.h>
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>

namespace fs = std::filesystem;

namespace {

at::Tensor read_tensor(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  int64_t ndim = 0;
  in.read(reinterpret_cast<char*>(&ndim), sizeof ndim);
  TORCH_CHECK(in && ndim >= 0 && ndim <= 16, path, ": bad header");
  std::vector<int64_t> sizes(ndim);
  in.read(reinterpret_cast<char*>(sizes.data()), ndim * sizeof(int64_t));
  at::Tensor t = at::empty(sizes, at::kFloat);
  in.read(static_cast<char*>(t.data_ptr()), t.nbytes());
  TORCH_CHECK(in && in.peek() == std::char_traits<char>::eof(), path, ": size does not match its header");
  return t;
}

void write_tensor(const fs::path& path, const at::Tensor& tensor) {
  TORCH_CHECK(tensor.scalar_type() == at::kFloat && tensor.is_cpu(), path, ": expected a float32 CPU output");
  // The graph may hand back a strided view; the file format is row-major.
  const at::Tensor t = tensor.contiguous();
  std::ofstream out(path, std::ios::binary);
  const int64_t ndim = t.dim();
  out.write(reinterpret_cast<const char*>(&ndim), sizeof ndim);
  out.write(reinterpret_cast<const char*>(t.sizes().data()), ndim * sizeof(int64_t));
  out.write(static_cast<const char*>(t.const_data_ptr()), t.nbytes());
  TORCH_CHECK(out.good(), path, ": write failed");
}

// The point of this program is a process without Python; make that checkable rather than assumed
// (a stray dependency could pull libpython or libtorch_python in behind our back).
bool python_is_loaded() {
  std::ifstream maps("/proc/self/maps");
  for (std::string line; std::getline(maps, line);) {
    if (line.find("libpython") != std::string::npos || line.find("libtorch_python") != std::string::npos) {
      return true;
    }
  }
  return false;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 5) {
    std::cerr << "usage: " << argv[0] << " <op_library.so | none> <model.pt2> <inputs_dir> <outputs_dir>\n";
    return 2;
  }
  const std::string op_library = argv[1];
  const fs::path inputs_dir = argv[3], outputs_dir = argv[4];

  // RTLD_NOW surfaces a missing symbol here rather than in the middle of a run; RTLD_GLOBAL matches
  // what torch.ops.load_library does. Loading runs the library's static registrars, which is all
  // that is needed: no symbol of it is ever looked up by name.
  if (op_library != "none" && dlopen(op_library.c_str(), RTLD_NOW | RTLD_GLOBAL) == nullptr) {
    std::cerr << "dlopen failed: " << dlerror() << "\n";
    return 1;
  }

  try {
    std::vector<at::Tensor> inputs;
    for (int i = 0; fs::exists(inputs_dir / (std::to_string(i) + ".bin")); ++i) {
      inputs.push_back(read_tensor(inputs_dir / (std::to_string(i) + ".bin")));
    }
    torch::inductor::AOTIModelPackageLoader loader(argv[2]);
    const std::vector<at::Tensor> outputs = loader.run(inputs);
    fs::create_directories(outputs_dir);
    for (size_t i = 0; i < outputs.size(); ++i) {
      write_tensor(outputs_dir / (std::to_string(i) + ".bin"), outputs[i]);
    }
    std::cout << "inputs " << inputs.size() << " outputs " << outputs.size() << "\n";
  } catch (const c10::Error& e) {
    // The message alone: a missing op reads "Could not find schema for roiops::roi_align".
    std::cerr << "error: " << e.what_without_backtrace() << "\n";
    return 1;
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  }

  if (python_is_loaded()) {
    std::cerr << "error: a Python library is mapped into this process\n";
    return 1;
  }
  std::cout << "no python loaded\n";
  return 0;
}
