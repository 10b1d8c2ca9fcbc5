// CUDA runtime errors as UserError, for the .cu files of the addon.
#pragma once
#include <cuda_runtime.h>

#include <string>

#include "../common.h"

namespace ra::cuda {

inline void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess)
    throw UserError("Error", std::string("CUDA ") + what + " failed: " + cudaGetErrorString(e));
}

}  // namespace ra::cuda
