// What every rank of a ring must pass alike, as numbers the ranks can compare. A mismatch would
// hang the transfers (blocks of different sizes, or CPU and CUDA ranks waiting for different
// messages) or silently mix two computations (causal, scale, layout), so each ring call first
// compares these: over NCCL once per new set (cuda/ring_cuda.cu), between the threads of one
// process on every call (agree_in_process, a barrier).
#pragma once
#include <cstddef>
#include <cstdio>
#include <string>
#include <vector>

#include "ring_attention.h"

namespace ra::ring {

inline const char* const kSignatureFields[] = {
    "pass", "dtype", "batch", "shard length", "query heads", "K/V heads", "head dim",
    "causal", "layout", "documentIds", "scale", "parts", "device",
};

inline std::vector<double> call_signature(const RingShape& s, DType dtype, Device device, bool backward) {
  return {double(backward), double(dtype), double(s.batch), double(s.seq), double(s.heads), double(s.kv_heads),
          double(s.head_dim), double(s.causal), double(s.zigzag), double(s.docs != nullptr), double(s.scale),
          double(s.parts), double(device)};
}

inline std::string signature_value(size_t field, double v) {
  switch (field) {
    case 0: return v != 0 ? "backward" : "forward";
    case 1: return dtype_name(DType(int(v)));
    case 7: return v != 0 ? "true" : "false";
    case 8: return v != 0 ? "zigzag" : "contiguous";
    case 9: return v != 0 ? "given" : "none";
    case 12: return device_name(Device(int(v)));
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

// Throws, alike on every rank, when the rows (one per rank) differ.
inline void check_signatures(const std::vector<std::vector<double>>& rows) {
  const std::string why = signature_mismatch(rows);
  if (why.empty()) return;
  throw UserError("RangeError", "ring attention: the ranks passed different arguments (" + why +
                                    "): every rank must pass shards of the same shape, dtype and device, the same "
                                    "options, and documentIds on every rank or none");
}

// Threads of one process compare on every call: it costs a barrier, not a wait for a device.
// Float32 holds each field exactly (the scale is a float) for lengths and counts below 2^24;
// past that two lengths may compare equal, and the size check of the first block refuses them.
inline void agree_in_process(Transport& t, const std::vector<double>& signature) {
  const size_t n = signature.size(), world = size_t(t.world_size());
  std::vector<float> sums(n * world, 0.f);
  for (size_t f = 0; f < n; ++f) sums[size_t(t.rank()) * n + f] = float(signature[f]);
  t.all_reduce_sum(sums.data(), sums.size(), {"ring attention's argument check", {}});
  std::vector<std::vector<double>> rows(world);
  for (size_t r = 0; r < world; ++r) rows[r].assign(sums.begin() + ptrdiff_t(r * n), sums.begin() + ptrdiff_t((r + 1) * n));
  check_signatures(rows);
}

}  // namespace ra::ring
