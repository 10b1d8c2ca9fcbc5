// The kernel that makes the spans documents.cuh reads. Its own header, included by dispatch.cu
// alone (and the emulator test), so that no instantiation compiles a copy of it.
#pragma once
#include <climits>

#include "flash.h"

namespace ra::cuda::flash {

// One thread per span: spans[b][2s], spans[b][2s + 1] = min, max of ids[b][64s, 64s + 64).
__global__ void doc_spans_kernel(const int* ids, int batch, int seq, int* spans) {
  const int per_row = (seq + kDocSpan - 1) / kDocSpan;
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= int64_t(batch) * per_row) return;
  const int64_t b = i / per_row, s = i % per_row;
  const int* row = ids + b * seq + s * kDocSpan;
  const int n = int(min(int64_t(kDocSpan), seq - s * kDocSpan));
  int lo = INT_MAX, hi = INT_MIN;
  for (int j = 0; j < n; ++j) lo = min(lo, row[j]), hi = max(hi, row[j]);
  spans[2 * i] = lo;
  spans[2 * i + 1] = hi;
}

}  // namespace ra::cuda::flash
