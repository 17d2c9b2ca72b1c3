// The emulated CUDA launcher's state, and the ops through which tests drive it. Compiled only into the
// emulated CUDA test library (scripts/build_emulated_cuda.sh), never into roiops._C.
#include "emulation.h"

#include <algorithm>
#include <limits>
#include <mutex>
#include <random>

#include "../library.h"
#include "../tensor.h"

namespace roiops {
namespace emu {
namespace {

// Guarded by a mutex: torch may call the ops from several threads, and a launch reads the order.
std::mutex state_mutex;
Order current_order = Order::kForward;
std::mt19937_64 shuffle_rng;
int64_t launch_count = 0;
int64_t host_syncs = 0;
bool capturing_graph = false;

// Limits of every CUDA GPU since compute capability 3.0 (a larger grid or block fails to launch
// with cudaErrorInvalidConfiguration).
constexpr int64_t kMaxGridX = (int64_t(1) << 31) - 1;
constexpr int64_t kMaxGridYZ = 65535;
constexpr int64_t kMaxBlockXY = 1024;
constexpr int64_t kMaxBlockZ = 64;
constexpr int64_t kMaxThreadsPerBlock = 1024;

}  // namespace

void set_order(Order order, uint64_t seed) {
  const std::lock_guard<std::mutex> lock(state_mutex);
  current_order = order;
  shuffle_rng.seed(seed);
}

void check_launch(dim3 grid, dim3 block) {
  const int64_t threads = int64_t(block.x) * block.y * block.z;
  const bool ok = grid.x >= 1 && grid.y >= 1 && grid.z >= 1 && grid.x <= kMaxGridX && grid.y <= kMaxGridYZ &&
                  grid.z <= kMaxGridYZ && block.x >= 1 && block.y >= 1 && block.z >= 1 && block.x <= kMaxBlockXY &&
                  block.y <= kMaxBlockXY && block.z <= kMaxBlockZ && threads <= kMaxThreadsPerBlock;
  check(ok, "emulated CUDA error: invalid configuration argument (grid ", grid.x, " x ", grid.y, " x ", grid.z,
        ", block ", block.x, " x ", block.y, " x ", block.z, ")");
  const std::lock_guard<std::mutex> lock(state_mutex);
  ++launch_count;
}

void count_host_sync() {
  const std::lock_guard<std::mutex> lock(state_mutex);
  ++host_syncs;
}

bool capturing() {
  const std::lock_guard<std::mutex> lock(state_mutex);
  return capturing_graph;
}

Schedule::Schedule(int64_t n) : n_(n), reversed_(false) {
  const std::lock_guard<std::mutex> lock(state_mutex);
  if (current_order == Order::kReversed) {
    reversed_ = true;
  } else if (current_order == Order::kShuffled) {
    shuffled_.resize(n);
    for (int64_t j = 0; j < n; ++j) shuffled_[j] = j;
    std::shuffle(shuffled_.begin(), shuffled_.end(), shuffle_rng);
  }
}

namespace {

void set_launch_order(std::string order, int64_t seed) {
  if (order == "forward") {
    set_order(Order::kForward, 0);
  } else if (order == "reversed") {
    set_order(Order::kReversed, 0);
  } else if (order == "shuffled") {
    set_order(Order::kShuffled, static_cast<uint64_t>(seed));
  } else {
    fail("set_launch_order: order must be 'forward', 'reversed' or 'shuffled', but got '", order, "'");
  }
}

int64_t launches() {
  const std::lock_guard<std::mutex> lock(state_mutex);
  return launch_count;
}

int64_t host_sync_count() {
  const std::lock_guard<std::mutex> lock(state_mutex);
  return host_syncs;
}

bool set_capturing(bool capturing) {
  const std::lock_guard<std::mutex> lock(state_mutex);
  const bool previous = capturing_graph;
  capturing_graph = capturing;
  return previous;
}

// Each thread appends its flat number (block * threads per block + thread) to `trace`, so that a
// test sees which (block, thread) pairs ran, in which order.
__global__ void trace_kernel(int64_t* trace, int64_t capacity, int64_t* next) {
  const int64_t threads = int64_t(blockDim.x) * blockDim.y * blockDim.z;
  const int64_t block = (int64_t(blockIdx.z) * gridDim.y + blockIdx.y) * gridDim.x + blockIdx.x;
  const int64_t thread = (int64_t(threadIdx.z) * blockDim.y + threadIdx.y) * blockDim.x + threadIdx.x;
  if (*next < capacity) trace[*next] = block * threads + thread;
  ++*next;
}

// Launches trace_kernel on a grid x block configuration (3 numbers each) and returns the trace (the
// first 2^20 entries) and the number of threads that ran.
std::tuple<Tensor, int64_t> trace_launch(std::vector<int64_t> grid, std::vector<int64_t> block) {
  check(grid.size() == 3 && block.size() == 3, "trace_launch: grid and block must have 3 dimensions");
  for (const int64_t v : {grid[0], grid[1], grid[2], block[0], block[1], block[2]}) {
    check(v >= 0 && v <= std::numeric_limits<unsigned int>::max(),
          "trace_launch: dimensions must fit an unsigned int, but got ", v);
  }
  constexpr int64_t kCapacity = int64_t(1) << 20;
  Tensor trace = torch::stable::full({kCapacity}, -1.0, ScalarType::Long);
  int64_t next = 0;
  const auto u = [](int64_t v) { return static_cast<unsigned int>(v); };
  ROIOPS_LAUNCH(dim3(u(grid[0]), u(grid[1]), u(grid[2])), dim3(u(block[0]), u(block[1]), u(block[2])), nullptr,
                trace_kernel)(trace.mutable_data_ptr<int64_t>(), kCapacity, &next);
  return {torch::stable::clone(torch::stable::narrow(trace, 0, 0, std::min(next, kCapacity))), next};
}

}  // namespace
}  // namespace emu
}  // namespace roiops

STABLE_TORCH_LIBRARY_FRAGMENT(ROIOPS_OP_NAMESPACE, m) {
  // The order in which later launches run their (block, thread) pairs; seed picks the shuffle.
  m.def("set_launch_order(str order, int seed=0) -> ()");
  // Number of kernel launches so far (a test can check that a call really ran emulated kernels).
  m.def("launch_count() -> int");
  // Device-to-host copies made by the CUDA path so far.
  m.def("host_sync_count() -> int");
  // Makes the stream count as capturing a CUDA graph (or not); returns the previous state.
  m.def("set_capturing(bool capturing) -> bool");
  // Tests of the launcher itself (see trace_launch).
  m.def("trace_launch(int[] grid, int[] block) -> (Tensor, int)");
}

// (No tensor arguments to dispatch on: one kernel for every backend.)
STABLE_TORCH_LIBRARY_IMPL(ROIOPS_OP_NAMESPACE, CompositeExplicitAutograd, m) {
  m.impl("set_launch_order", TORCH_BOX(&roiops::emu::set_launch_order));
  m.impl("launch_count", TORCH_BOX(&roiops::emu::launches));
  m.impl("host_sync_count", TORCH_BOX(&roiops::emu::host_sync_count));
  m.impl("set_capturing", TORCH_BOX(&roiops::emu::set_capturing));
  m.impl("trace_launch", TORCH_BOX(&roiops::emu::trace_launch));
}
