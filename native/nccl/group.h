// Process groups over NCCL: one communicator per process, its own CUDA stream. Every
// wait polls the stream and ncclCommGetAsyncError against a deadline; past it the
// communicator is aborted and the caller gets an error, never a silent hang.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "../common.h"
#include "nccl_api.h"

namespace ra::nccl {

int64_t create_group(const ncclUniqueId& id, int rank, int world_size, int device, int64_t timeout_ms);
void destroy_group(int64_t group);
// A send is posted with this rank's next recv, in one NCCL group, or before its next collective;
// the tensor's memory is kept until it has been sent.
void send(int64_t group, const Tensor& t, int peer);
void recv(int64_t group, Tensor& into, int peer);     // waits for the data
// Sums each tensor over the group, in place: one NCCL group of allReduces, one wait, so that
// a step's ~150 gradient tensors cost one host synchronisation, not one each.
void all_reduce_sum(int64_t group, const std::vector<Tensor*>& ts);
// The same sums, posted without waiting (their memory is kept until they are done); returns a
// ticket for wait_all_reduce, which waits (against the group's timeout) until they are done.
int64_t all_reduce_sum_async(int64_t group, const std::vector<Tensor*>& ts);
void wait_all_reduce(int64_t group, int64_t ticket);
void barrier(int64_t group);

// For the ring loop (cuda/ring_cuda.cu), which moves blocks on its own stream (a cudaStream_t):
int group_rank(int64_t group);
int group_world_size(int64_t group);
// Enqueues on `stream`, as one NCCL group, the send of `bytes` to rank + 1 and the receive
// of as many from rank - 1 into `recv`. Does not wait.
void ring_exchange(int64_t group, const void* send, void* recv, size_t bytes, void* stream);
// Waits until `stream` is idle, polling NCCL's errors; past the group's timeout, or on an
// error, the communicator is aborted and this throws.
void wait_stream(int64_t group, void* stream, const std::string& what);
// After a ring call failed part-way on this rank (its streams drained): the peers' transfers of
// that call would pair with whatever this rank posts next, blocks of the same size taken for the
// wrong ones. So the communicator is aborted, and later calls on the group throw.
void abort_group(int64_t group) noexcept;
// Whether every rank passed the same `values` (`what` they are, for errors): {} when they did,
// else every rank's row. The first time values are seen this gathers them and waits (one
// allReduce); values every rank has passed before cost nothing. Ranks that disagree each get
// the rows and stay usable: no transfer was posted.
std::vector<std::vector<double>> disagreement(int64_t group, const std::vector<double>& values, const std::string& what);

}  // namespace ra::nccl
