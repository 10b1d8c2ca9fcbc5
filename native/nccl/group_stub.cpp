// Builds without CUDA have no NCCL groups.
#include "group.h"

namespace ra::nccl {

static UserError no_cuda() { return UserError("Error", "NCCL groups need a build with CUDA (this one was built without nvcc)"); }
int64_t create_group(const ncclUniqueId&, int, int, int, int64_t) { throw no_cuda(); }
void destroy_group(int64_t) {}
void send(int64_t, const Tensor&, int) { throw no_cuda(); }
void recv(int64_t, Tensor&, int) { throw no_cuda(); }
void all_reduce_sum(int64_t, const std::vector<Tensor*>&) { throw no_cuda(); }
int64_t all_reduce_sum_async(int64_t, const std::vector<Tensor*>&) { throw no_cuda(); }
void wait_all_reduce(int64_t, int64_t) { throw no_cuda(); }
void barrier(int64_t) { throw no_cuda(); }
int group_rank(int64_t) { throw no_cuda(); }
int group_world_size(int64_t) { throw no_cuda(); }
void ring_exchange(int64_t, const void*, void*, size_t, void*) { throw no_cuda(); }
void wait_stream(int64_t, void*, const std::string&) { throw no_cuda(); }
void abort_group(int64_t) noexcept {}
std::vector<std::vector<double>> disagreement(int64_t, const std::vector<double>&, const std::string&) { throw no_cuda(); }

}  // namespace ra::nccl
