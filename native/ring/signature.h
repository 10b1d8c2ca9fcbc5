// What every rank of a ring must pass alike, as numbers the ranks can compare. Threads of one
// process find a mismatch at the first block they hand over (its size); over NCCL, blocks of
// different sizes hang the transfers, and flags that change no size (causal, scale) would mix
// two computations silently. So the NCCL ring compares these first (cuda/ring_cuda.cu).
#pragma once
#include <cstdio>
#include <string>
#include <vector>

#include "ring_attention.h"

namespace ra::ring {

inline const char* const kSignatureFields[] = {
    "pass", "dtype", "batch", "shard length", "query heads", "K/V heads", "head dim",
    "causal", "layout", "documentIds", "scale", "parts",
};

inline std::vector<double> call_signature(const RingShape& s, DType dtype, bool backward) {
  return {double(backward), double(dtype), double(s.batch), double(s.seq), double(s.heads), double(s.kv_heads),
          double(s.head_dim), double(s.causal), double(s.zigzag), double(s.docs != nullptr), double(s.scale),
          double(s.parts)};
}

inline std::string signature_value(size_t field, double v) {
  switch (field) {
    case 0: return v != 0 ? "backward" : "forward";
    case 1: return dtype_name(DType(int(v)));
    case 7: return v != 0 ? "true" : "false";
    case 8: return v != 0 ? "zigzag" : "contiguous";
    case 9: return v != 0 ? "given" : "none";
    default: {
      char buf[32];
      std::snprintf(buf, sizeof buf, field == 10 ? "%.7g" : "%.9g", v);  // the scale is a float
      return buf;
    }
  }
}

// "" when every rank's row equals rank 0's; else, for the first rank that differs, each field
// in which it differs, e.g. "rank 0 and rank 3 differ: shard length 4096 vs 4000".
inline std::string signature_mismatch(const std::vector<std::vector<double>>& rows) {
  for (size_t r = 1; r < rows.size(); ++r) {
    if (rows[r] == rows[0]) continue;
    std::string why = "rank 0 and rank " + std::to_string(r) + " differ:";
    const char* sep = " ";
    for (size_t f = 0; f < rows[0].size() && f < rows[r].size(); ++f) {
      if (rows[r][f] == rows[0][f]) continue;
      why += sep + std::string(kSignatureFields[f]) + " " + signature_value(f, rows[0][f]) + " vs " +
             signature_value(f, rows[r][f]);
      sep = ", ";
    }
    return why;
  }
  return "";
}

}  // namespace ra::ring
