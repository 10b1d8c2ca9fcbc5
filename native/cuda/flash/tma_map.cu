// Tensor maps for the Hopper kernels' TMA loads (tma.cuh), made on the host by the driver's
// cuTensorMapEncodeTiled. Its own file so that test/gpu/wgmma_unit.cu can link it alone.
#include <cuda.h>
#include <cudaTypedefs.h>

#include <cstring>
#include <string>

#include "../check.h"
#include "tma.cuh"

namespace ra::cuda::flash {

// The driver's encoder, reached through the runtime so that the addon does not link libcuda.
TmaMap tma_map(const TmaShape& s, DType dtype) {
  static_assert(sizeof(TmaMap) == sizeof(CUtensorMap) && alignof(TmaMap) >= alignof(CUtensorMap), "TmaMap must hold a CUtensorMap");
  static PFN_cuTensorMapEncodeTiled_v12000 encode = [] {
    void* fn = nullptr;
    cudaDriverEntryPointQueryResult found{};
#if CUDART_VERSION >= 12050
    check(cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &fn, 12000, cudaEnableDefault, &found),
          "cudaGetDriverEntryPointByVersion(cuTensorMapEncodeTiled)");
#else  // CUDA 12.0-12.4 (R535/R550 drivers' toolkits) have only this form, deprecated since
    check(cudaGetDriverEntryPoint("cuTensorMapEncodeTiled", &fn, cudaEnableDefault, &found),
          "cudaGetDriverEntryPoint(cuTensorMapEncodeTiled)");
#endif
    if (found != cudaDriverEntryPointSuccess || fn == nullptr)
      throw UserError("Error", "the CUDA driver has no cuTensorMapEncodeTiled (the Hopper kernels need CUDA 12 or later)");
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(fn);
  }();
  CUtensorMap map;
  const cuuint64_t dims[4] = {s.dims[0], s.dims[1], s.dims[2], s.dims[3]};
  const cuuint64_t strides[3] = {s.strides[0], s.strides[1], s.strides[2]};
  const cuuint32_t box[4] = {cuuint32_t(kTmaBoxCols), 1, s.box_rows, 1}, unit[4] = {1, 1, 1, 1};
  const CUresult r = encode(&map, dtype == DType::F16 ? CU_TENSOR_MAP_DATA_TYPE_FLOAT16 : CU_TENSOR_MAP_DATA_TYPE_BFLOAT16,
                            4, const_cast<void*>(s.base), dims, strides, box, unit, CU_TENSOR_MAP_INTERLEAVE_NONE,
                            CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_128B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  if (r != CUDA_SUCCESS)
    throw UserError("Error", "cuTensorMapEncodeTiled refused a tensor of [" + std::to_string(s.dims[3]) + ", " +
                                 std::to_string(s.dims[2]) + ", " + std::to_string(s.dims[1]) + ", " +
                                 std::to_string(s.dims[0]) + "] (CUresult " + std::to_string(int(r)) + ")");
  TmaMap out;
  std::memcpy(&out, &map, sizeof map);
  return out;
}

}  // namespace ra::cuda::flash
