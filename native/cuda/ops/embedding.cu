// Launchers of the embedding kernels (embedding.cuh) for whole tensors.
#include "embedding.cuh"
#include "internal.h"
#include "ops.h"

namespace ra::cuda::ops {

Tensor embedding(const int32_t* ids, int64_t M, const Tensor& table) {
  const DType t = activation_dtype(table, "table");
  const int64_t C = cols(table);
  Tensor out = Tensor::empty({M, C}, t, Device::CUDA);
  if (M == 0) return out;
  Tensor d_ids = upload_ints(ids, M);
  by_dtype(t, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    launch_embedding_fwd<T>(ints(d_ids), ptr<T>(table), ptr<T>(out), M, C, nullptr);
  });
  check_launch("embedding kernel launch");
  return out;
}

void embedding_backward(const int32_t* ids, int64_t M, const Tensor& dy, Tensor& dtable, int32_t skip) {
  const DType t = activation_dtype(dy, "dy");
  expect(dtable, DType::F32, "dtable");
  const int64_t C = cols(dtable);
  if (M == 0 || C == 0) return;
  const TokenGroups groups = group_tokens_by_id(ids, M, rows(dtable), skip);
  Tensor d_groups = upload_ints(groups.data.data(), int64_t(groups.data.size()));
  by_dtype(t, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    launch_embedding_bwd<T>(groups, ints(d_groups), ptr<T>(dy), ptr<float>(dtable), C, nullptr);
  });
  check_launch("embedding backward kernel launch");
}

}  // namespace ra::cuda::ops
