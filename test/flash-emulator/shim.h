// A CPU emulator for the flash-attention kernels (native/cuda/flash/) and the training-op
// kernels (native/cuda/ops/*.cuh, driven by test/ops-emulator/), so that CI, which has no
// GPU, runs the real kernel code: each CUDA thread is a fiber; __syncthreads, __syncwarp and
// the shuffles are real barriers between them; ldmatrix, mma.sync m16n8k16 and cp.async are
// emulated from the PTX ISA's fragment layouts (mma.cuh switches to these under
// RA_FLASH_EMULATOR). Shared memory is exactly the launch size, filled with NaN bytes; warps
// run at random relative speeds; cp.async lands at issue or only at the wait ("deferred").
// What it checks: index math, masking, barriers, bounds (with AddressSanitizer). What it
// cannot: the hardware itself; that is test/gpu's job. x86-64 only (the fiber switch).
#pragma once
#include <cstdint>
#include <cmath>
#include <cstring>
#include <cstdio>
#include <cstdlib>
#include <ucontext.h>
#include <vector>
#include <random>
#include <functional>
#include <array>
#include <deque>
#include <algorithm>
#include <memory>
#include "native/common.h"
#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#endif

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__
#define __align__(n)
#define __grid_constant__

struct dim3 { unsigned x = 1, y = 1, z = 1; };
inline dim3 threadIdx, blockIdx, gridDim, blockDim;
inline unsigned char* emu_smem = nullptr;
inline size_t emu_smem_bytes = 0;
// The shared address of emu_smem[0]: a random multiple of 128 per block, as the hardware's
// dynamic shared memory need not start where a swizzle pattern does.
inline uint32_t emu_smem_window = 0;
// The 128-byte swizzle (TMA's and wgmma's): the 16-byte chunk of a shared address XORed with
// its bits 7-9.
inline uint32_t emu_swizzle128(uint32_t addr) { return addr ^ (((addr >> 7) & 7) << 4); }

struct __nv_bfloat16 {
  uint16_t x;
  __nv_bfloat16() = default;
  __nv_bfloat16(float f) : x(ra::f32_to_bf16(f)) {}
  operator float() const { return ra::bf16_to_f32(x); }
};
struct __half {
  uint16_t x;
  __half() = default;
  __half(float f) : x(ra::f32_to_f16(f)) {}
  operator float() const { return ra::f16_to_f32(x); }
};
struct float2 { float x, y; };
inline float2 make_float2(float x, float y) { return {x, y}; }
struct alignas(16) float4 { float x, y, z, w; };
struct __nv_bfloat162 { __nv_bfloat16 x, y; };
struct __half2 { __half x, y; };
inline __nv_bfloat162 __floats2bfloat162_rn(float a, float b) { return {__nv_bfloat16(a), __nv_bfloat16(b)}; }
inline __half2 __floats2half2_rn(float a, float b) { return {__half(a), __half(b)}; }
inline float __bfloat162float(__nv_bfloat16 h) { return float(h); }
inline __nv_bfloat16 __float2bfloat16_rn(float f) { return __nv_bfloat16(f); }
// IEEE single operations, each rounded once (fma: once for the whole a*b + c), as on the GPU.
inline float __fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fsqrt_rn(float a) { return std::sqrt(a); }
struct CUstream_st;
typedef CUstream_st* cudaStream_t;
template <class T> inline float bits_to_f(uint16_t u);
template <> inline float bits_to_f<__nv_bfloat16>(uint16_t u) { return ra::bf16_to_f32(u); }
template <> inline float bits_to_f<__half>(uint16_t u) { return ra::f16_to_f32(u); }

template <class T> inline T max(T a, T b) { return a > b ? a : b; }
template <class T> inline T min(T a, T b) { return a < b ? a : b; }

[[noreturn]] inline void emu_fail(const char* what) {
  fprintf(stderr, "EMU FAILURE: %s (block %u,%u,%u thread %u)\n", what, blockIdx.x, blockIdx.y, blockIdx.z, threadIdx.x);
  abort();
}

// ---- fibers ----
extern "C" void emu_switch(void** save_sp, void* new_sp);
asm(R"(
.text
.globl emu_switch
.type emu_switch,@function
emu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
)");
// A wgmma this thread has issued and not yet waited for (emu_wgmma): its accumulators hold a
// marker until the wait, which then checks that its operands did not change meanwhile.
struct EmuWgmmaInFlight {
  float* d;
  std::vector<float> in, out;  // the accumulators before and after
  const uint32_t* a_regs;      // this thread's A fragment, if from registers, and its value
  std::array<uint32_t, 4> a_own;
  std::function<void(const std::vector<float>&, std::vector<float>&)> product;  // from shared memory as it is then
  int group = 0;  // the commit group, counted from 1; 0 while not committed
};
struct EmuCp {
  void* dst;
  std::array<char, 16> data;
  int bytes;
};
inline void emu_cp_land(const std::vector<EmuCp>& group) {
  for (auto& c : group) memcpy(c.dst, c.data.data(), c.bytes);
}
struct Fiber {
  void* sp = nullptr;
  char* stack;
  bool done = false;
  unsigned tid;
  // cp.async copies not yet landed ("deferred"): those since the last commit, then the
  // committed groups, oldest first (a wait_group N lands all but the newest N).
  std::vector<EmuCp> pending;
  std::deque<std::vector<EmuCp>> committed;
  std::vector<EmuWgmmaInFlight> wgmma;
  int wgmma_groups = 0;  // commit groups so far
  bool wgmma_fenced = false;  // a wgmma.fence since this thread's last wait_group
  bool proxy_fenced = false;  // a fence.proxy.async since this thread's last bulk wait_group
  int bulk_groups = 0;  // bulk commit groups so far
};
inline std::vector<Fiber>* emu_fibers;
inline int emu_cur = -1;
inline void* emu_sched_sp;
inline std::function<void()> emu_body;
inline std::mt19937 emu_rng(1234);
inline bool emu_deferred_cp = false;
inline uint64_t emu_progress = 0;

inline void emu_yield() { emu_switch(&(*emu_fibers)[emu_cur].sp, emu_sched_sp); }

struct Barrier { int n = 0, count = 0; unsigned gen = 0; };
// Counts this thread in; the last of the n completes the barrier's use. Returns whether it did.
inline bool emu_barrier_arrive(Barrier& b) {
  if (++b.count != b.n) return false;
  b.count = 0, b.gen++, emu_progress++;
  return true;
}
inline void emu_barrier(Barrier& b) {
  const unsigned g = b.gen;
  if (!emu_barrier_arrive(b)) while (b.gen == g) emu_yield();
}
struct WarpScratch {
  Barrier bar;
  const void* ptr[32];
  uint32_t a[32][4], b[32][2];
  float f[32];
  unsigned u[32];
};
inline Barrier emu_block_bar;
inline Barrier emu_named[16];  // bar.sync id, threads (tma.cuh's named_barrier_sync); 0 is emu_block_bar
inline WarpScratch emu_warps[16];

inline int lane_id() { return threadIdx.x % 32; }
inline WarpScratch& my_warp() { return emu_warps[threadIdx.x / 32]; }

inline void __syncthreads() { emu_barrier(emu_block_bar); }
// bar.sync (wait) or bar.arrive (count this thread and go on).
inline void emu_named_barrier(int id, int threads, bool wait) {
  if (id < 1 || id > 15 || threads % 32 || threads > int(blockDim.x)) emu_fail("named barrier: id or thread count");
  auto& b = emu_named[id];
  if (b.count == 0) b.n = threads;  // set by the first thread of each use
  else if (b.n != threads) emu_fail("named barrier: thread counts differ");
  if (wait) emu_barrier(b);
  else emu_barrier_arrive(b);
}
inline void __syncwarp(unsigned = 0xffffffffu) { emu_barrier(my_warp().bar); }
inline float __shfl_xor_sync(unsigned, float x, int m) {
  auto& w = my_warp();
  w.f[lane_id()] = x;
  emu_barrier(w.bar);
  float r = w.f[lane_id() ^ m];
  emu_barrier(w.bar);
  return r;
}
inline double __shfl_xor_sync(unsigned, double x, int m) {
  // two float-sized halves through the same barrier protocol, as the hardware moves 64-bit values
  uint64_t u;
  memcpy(&u, &x, 8);
  float lo, hi;
  uint32_t l32 = uint32_t(u), h32 = uint32_t(u >> 32);
  memcpy(&lo, &l32, 4), memcpy(&hi, &h32, 4);
  lo = __shfl_xor_sync(0xffffffffu, lo, m), hi = __shfl_xor_sync(0xffffffffu, hi, m);
  memcpy(&l32, &lo, 4), memcpy(&h32, &hi, 4);
  u = uint64_t(l32) | (uint64_t(h32) << 32);
  memcpy(&x, &u, 8);
  return x;
}
inline unsigned __ballot_sync(unsigned, int pred) {
  auto& w = my_warp();
  w.u[lane_id()] = pred != 0;
  emu_barrier(w.bar);
  unsigned r = 0;
  for (int l = 0; l < 32; ++l) r |= w.u[l] << l;
  emu_barrier(w.bar);
  return r;
}
inline int __ffs(int x) { return __builtin_ffs(x); }
inline float atomicAdd(float* p, float v) { float o = *p; *p = o + v; return o; }
// sm_90's vector atomic: 16-byte aligned global memory, each float added on its own.
inline float4 atomicAdd(float4* p, float4 v) {
  if (reinterpret_cast<uintptr_t>(p) % 16 != 0) emu_fail("float4 atomicAdd not 16-byte aligned");
  const float4 o = *p;
  *p = {o.x + v.x, o.y + v.y, o.z + v.z, o.w + v.w};
  return o;
}

inline void check_smem(const void* p, size_t n, const char* what) {
  auto a = (const unsigned char*)p;
  if (a < emu_smem || a + n > emu_smem + emu_smem_bytes) emu_fail(what);
}
inline void emu_ldmatrix(uint32_t* r, const void* row, bool trans) {
  auto& w = my_warp();
  const int l = lane_id();
  if (uintptr_t(row) % 16) emu_fail("ldmatrix row not 16-byte aligned");
  check_smem(row, 16, "ldmatrix row outside dynamic smem");
  w.ptr[l] = row;
  emu_barrier(w.bar);
  for (int i = 0; i < 4; ++i) {
    uint16_t h[2];
    for (int e = 0; e < 2; ++e) {
      const uint16_t* src;
      if (!trans) src = (const uint16_t*)w.ptr[i * 8 + l / 4] + 2 * (l % 4) + e;
      else src = (const uint16_t*)w.ptr[i * 8 + 2 * (l % 4) + e] + l / 4;
      h[e] = *src;
    }
    r[i] = uint32_t(h[0]) | (uint32_t(h[1]) << 16);
  }
  emu_barrier(w.bar);
}
inline uint64_t emu_mma_count = 0;  // lane-level mma calls: shows which tiles a kernel skipped
template <class T>
inline void emu_mma(float* c, const uint32_t* a, uint32_t b0, uint32_t b1) {
  ++emu_mma_count;
  auto& w = my_warp();
  const int l = lane_id();
  for (int i = 0; i < 4; ++i) w.a[l][i] = a[i];
  w.b[l][0] = b0, w.b[l][1] = b1;
  emu_barrier(w.bar);
  float A[16][16], B[16][8];
  auto lo = [](uint32_t v) { return bits_to_f<T>(uint16_t(v & 0xffff)); };
  auto hi = [](uint32_t v) { return bits_to_f<T>(uint16_t(v >> 16)); };
  for (int L = 0; L < 32; ++L) {
    const int g = L >> 2, t = L & 3;
    A[g][2 * t] = lo(w.a[L][0]), A[g][2 * t + 1] = hi(w.a[L][0]);
    A[g + 8][2 * t] = lo(w.a[L][1]), A[g + 8][2 * t + 1] = hi(w.a[L][1]);
    A[g][2 * t + 8] = lo(w.a[L][2]), A[g][2 * t + 9] = hi(w.a[L][2]);
    A[g + 8][2 * t + 8] = lo(w.a[L][3]), A[g + 8][2 * t + 9] = hi(w.a[L][3]);
    B[2 * t][g] = lo(w.b[L][0]), B[2 * t + 1][g] = hi(w.b[L][0]);
    B[2 * t + 8][g] = lo(w.b[L][1]), B[2 * t + 9][g] = hi(w.b[L][1]);
  }
  const int g = l >> 2, t = l & 3;
  for (int e = 0; e < 4; ++e) {
    const int row = g + 8 * (e >> 1), col = 2 * t + (e & 1);
    float s = c[e];
    for (int k = 0; k < 16; ++k) s += A[row][k] * B[k][col];
    c[e] = s;
  }
  emu_barrier(w.bar);
}
// Warpgroup MMA (wgmma.cuh): the 128 threads of a warpgroup meet, then each computes its own
// accumulators from the operands as the descriptors (no swizzle, or the 128-byte one) and the
// A fragments of the other threads say. As on hardware, the product is in flight until a
// wait_group that covers its commit group: the accumulators hold a marker (NaN) until then, so
// that reading them early gives NaN, and the wait fails if they were written, if this thread's
// A registers changed, or if the product computed again from shared memory differs (an
// operand overwritten in flight).
struct GroupScratch { Barrier bar; std::array<std::array<uint32_t, 4>, 128> a; };
inline GroupScratch emu_groups[4];
// A signalling NaN no product yields: copies keep its bits, but any arithmetic on it (acc *=
// corr on an accumulator in flight) quiets it, which the wait then sees.
constexpr uint32_t kEmuInFlightBits = 0x7fa0dead;
template <class T, int N>
inline void emu_wgmma(float* d, const uint32_t* a_regs, uint64_t da, uint64_t db, bool a_mn_major, bool b_mn_major,
                      int accumulate) {
  if (blockDim.x % 128) emu_fail("wgmma needs whole warpgroups");
  emu_mma_count += N / 8;  // as N / 8 m16n8k16 products per warp
  // The PTX ISA asks for wgmma.fence before the first wgmma and between the thread's own access
  // to the registers and a wgmma that uses them; modelled as a fence since the last wait.
  if (!(*emu_fibers)[emu_cur].wgmma_fenced) emu_fail("wgmma: no wgmma.fence since the last wait_group");
  auto& G = emu_groups[threadIdx.x / 128];
  const int tid = threadIdx.x % 128, w = tid / 32, l = tid % 32;
  if (a_regs) for (int i = 0; i < 4; ++i) G.a[tid][i] = a_regs[i];
  emu_barrier(G.bar);
  auto A = std::make_shared<const decltype(G.a)>(G.a);
  emu_barrier(G.bar);  // every thread has the fragments before any can issue the next product
  // Element (mn, k) of an operand. No swizzle: core matrices of 8 x 16 bytes, lbo along k, sbo
  // along mn. 128-byte swizzle: rows of 128 bytes, 8-row groups sbo apart, then swizzled; K-major,
  // the rows are mn and an instruction's 16 k lie in one row (lbo unused); MN-major, the rows
  // are k, each holding 64 mn, and the next 64 mn are lbo on. The pattern repeats every 1024
  // bytes; the kernels start in its first row (base offset 0, bits 49-51), which is checked.
  auto fetch = [](uint64_t desc, int mn, int k, bool mn_major) {
    const unsigned layout = unsigned(desc >> 62);
    if (layout > 1) emu_fail("wgmma: only the no-swizzle and 128-byte swizzle layouts are emulated");
    const uint32_t start = uint32_t(desc & 0x3fff) << 4, lbo = uint32_t((desc >> 16) & 0x3fff) << 4,
                   sbo = uint32_t((desc >> 32) & 0x3fff) << 4;
    if ((desc >> 49) & 7) emu_fail("wgmma: base offset not 0");
    if (layout && (start >> 7) & 7) emu_fail("wgmma: a swizzled operand that starts past the first row of its pattern");
    uint32_t addr;
    if (layout == 0)
      addr = start + (mn / 8) * sbo + (k / 8) * lbo + (mn_major ? (mn % 8) * 2 + (k % 8) * 16 : (mn % 8) * 16 + (k % 8) * 2);
    else if (!mn_major)
      addr = emu_swizzle128(start + (mn / 8) * sbo + (mn % 8) * 128 + k * 2);
    else
      addr = emu_swizzle128(start + (mn / 64) * lbo + (mn % 64) * 2 + (k / 8) * sbo + (k % 8) * 128);
    if (addr < emu_smem_window) emu_fail("wgmma operand outside dynamic smem");
    const size_t off = addr - emu_smem_window;
    check_smem(emu_smem + off, 2, "wgmma operand outside dynamic smem");
    uint16_t u;
    memcpy(&u, emu_smem + off, 2);
    return bits_to_f<T>(u);
  };
  const bool from_regs = a_regs != nullptr;
  auto product = [=](const std::vector<float>& in, std::vector<float>& out) {
    auto a_at = [&](int row, int k) {
      if (!from_regs) return fetch(da, row, k, a_mn_major);
      // the mma.sync A fragment of warp row / 16: lane 4 (row % 8) + (k % 8) / 2, register
      // (row % 16) / 8 + 2 (k / 8), half k % 2
      const uint32_t r = (*A)[32 * (row / 16) + 4 * (row % 8) + (k % 8) / 2][(row % 16) / 8 + 2 * (k / 8)];
      return bits_to_f<T>(uint16_t(k % 2 ? r >> 16 : r & 0xffff));
    };
    out.resize(N / 2);
    for (int i = 0; i < N / 2; ++i) {
      const int row = 16 * w + l / 4 + 8 * ((i >> 1) & 1), col = (i >> 2) * 8 + 2 * (l % 4) + (i & 1);
      float s = accumulate ? in[i] : 0.f;
      for (int k = 0; k < 16; ++k) s += a_at(row, k) * fetch(db, col, k, b_mn_major);
      out[i] = s;
    }
  };
  auto& f = (*emu_fibers)[emu_cur];
  // The accumulators' values: the result of the last product in flight into them, if any.
  EmuWgmmaInFlight e{d, std::vector<float>(d, d + N / 2), {}, a_regs, {}, product};
  for (auto& p : f.wgmma) {
    if (p.d == d && p.out.size() == size_t(N / 2)) e.in = p.out;
    else if (p.d < d + N / 2 && d < p.d + p.out.size()) emu_fail("wgmma: accumulators that overlap another product's in flight");
  }
  if (a_regs) for (int i = 0; i < 4; ++i) e.a_own[i] = a_regs[i];
  product(e.in, e.out);
  for (int i = 0; i < N / 2; ++i) memcpy(&d[i], &kEmuInFlightBits, 4);
  f.wgmma.push_back(std::move(e));
  for (auto& g : f.committed) emu_cp_land(g);
  f.committed.clear();
}
inline void emu_wgmma_fence() { (*emu_fibers)[emu_cur].wgmma_fenced = true; }
inline void emu_wgmma_commit() {
  auto& f = (*emu_fibers)[emu_cur];
  ++f.wgmma_groups;
  for (auto& e : f.wgmma)
    if (!e.group) e.group = f.wgmma_groups;
}
// wait_group n: every product of this thread but those of its n most recent commit groups
// completes. Accumulators another product still in flight adds to keep the marker. A product
// takes time: other threads run first (a few scheduler passes), so that one which reuses an
// operand released too early does so while the product is still in flight.
inline void emu_wgmma_wait(int n) {
  for (int pass = 1 + int(emu_rng() % 4); pass > 0; --pass) emu_yield();
  auto& f = (*emu_fibers)[emu_cur];
  f.wgmma_fenced = false;
  const int last_done = f.wgmma_groups - n;
  std::vector<EmuWgmmaInFlight> done, left;
  for (auto& e : f.wgmma) {
    if (!e.group) emu_fail("wgmma: waited with a product never committed");
    (e.group <= last_done ? done : left).push_back(std::move(e));
  }
  for (auto& e : done) {
    for (size_t i = 0; i < e.out.size(); ++i)
      if (memcmp(&e.d[i], &kEmuInFlightBits, 4)) emu_fail("wgmma: accumulators written while the product was in flight");
    if (e.a_regs)
      for (int i = 0; i < 4; ++i)
        if (e.a_regs[i] != e.a_own[i]) emu_fail("wgmma: A registers changed while the product was in flight");
    std::vector<float> again;
    e.product(e.in, again);
    if (memcmp(again.data(), e.out.data(), 4 * again.size())) emu_fail("wgmma: a shared-memory operand changed while the product was in flight");
  }
  for (auto& e : done) {
    bool still = false;
    for (auto& l : left) still |= l.d < e.d + e.out.size() && e.d < l.d + l.out.size();
    if (!still) memcpy(e.d, e.out.data(), 4 * e.out.size());
  }
  f.wgmma = std::move(left);
}
inline void emu_wgmma_wait_all() { emu_wgmma_wait(0); }

// cp.async of 16 bytes (.cg) or 4 (.ca): reads global memory at issue, lands at issue or, in
// "deferred" mode, at the wait_group that covers its commit group.
inline void emu_cp_async(void* dst, const void* src, int bytes) {
  if (uintptr_t(dst) % bytes || uintptr_t(src) % bytes) emu_fail("cp.async address not aligned to its size");
  check_smem(dst, bytes, "cp.async dst outside dynamic smem");
  auto& f = (*emu_fibers)[emu_cur];
  EmuCp c{dst, {}, bytes};
  memcpy(c.data.data(), src, bytes);  // reads global now (ASan checks it)
  if (!emu_deferred_cp) memcpy(dst, c.data.data(), bytes);
  else f.pending.push_back(c);
}
inline void emu_cp_commit() {
  auto& f = (*emu_fibers)[emu_cur];
  f.committed.push_back(std::move(f.pending));  // an empty group counts too, as in PTX
  f.pending.clear();
}
inline void emu_cp_wait(int newest_left) {
  auto& f = (*emu_fibers)[emu_cur];
  while (f.committed.size() > size_t(newest_left)) emu_cp_land(f.committed.front()), f.committed.pop_front();
}
inline bool emu_cp_outstanding(const Fiber& f) {
  if (!f.pending.empty()) return true;
  for (auto& g : f.committed)
    if (!g.empty()) return true;
  return false;
}

// TMA and mbarriers (native/cuda/flash/tma.cuh). A barrier's state lives here, keyed by its
// shared-memory offset, since the hardware's 8-byte encoding is not ours to know. A TMA copy
// reads global memory at issue; it lands (and reports its bytes) at issue, or in "deferred"
// mode at a random later pass of the scheduler, so that a kernel that reads a buffer before
// its barrier says so, or refills one still being read, computes with the wrong bytes.
// Maps are 128-byte swizzled (tma.cuh), so a box is 128 bytes wide.
struct EmuTensorMap {
  const void* base;
  uint64_t dims[4], strides[3];
  uint32_t box_cols, box_rows;
};
inline EmuTensorMap emu_tensor_map(const void* base, const uint64_t* dims, const uint64_t* strides, uint32_t cols,
                                   uint32_t rows) {
  EmuTensorMap m{base, {dims[0], dims[1], dims[2], dims[3]}, {strides[0], strides[1], strides[2]}, cols, rows};
  if (uintptr_t(base) % 16 || rows < 1 || rows > 256) emu_fail("tensor map: base or box");
  if (cols * (strides[0] / dims[0]) != 128) emu_fail("tensor map: a 128-byte swizzled box must be 128 bytes wide");
  for (auto st : m.strides) if (st % 16) emu_fail("tensor map: stride not a multiple of 16 bytes");
  return m;
}
// waits/first: per thread, how many waits it has done here and the parity of its first.
struct EmuMbar {
  int expected = 0, pending = 0;
  int64_t tx = 0;
  unsigned phase = 0;
  std::vector<int> waits, first;
};
inline std::vector<std::pair<size_t, EmuMbar>> emu_mbars;
inline EmuMbar& emu_mbar(uint64_t* bar) {
  check_smem(bar, 8, "mbarrier outside dynamic smem");
  if (uintptr_t(bar) % 8) emu_fail("mbarrier not 8-byte aligned");
  const size_t off = (unsigned char*)bar - emu_smem;
  for (auto& [o, m] : emu_mbars) if (o == off) return m;
  emu_fail("mbarrier used before mbarrier.init");
}
inline void emu_mbar_init(uint64_t* bar, int count) {
  check_smem(bar, 8, "mbarrier outside dynamic smem");
  const size_t off = (unsigned char*)bar - emu_smem;
  for (auto& [o, m] : emu_mbars) if (o == off) emu_fail("mbarrier initialised twice");
  emu_mbars.push_back({off, EmuMbar{count, count, 0, 0}});
}
inline void emu_mbar_step(EmuMbar& m) {
  if (m.pending == 0 && m.tx == 0) m.phase++, m.pending = m.expected, emu_progress++;
}
inline void emu_mbar_arrive(uint64_t* bar, uint32_t tx) {
  auto& m = emu_mbar(bar);
  if (m.pending == 0) emu_fail("mbarrier: more arrivals than expected in a phase");
  m.tx += tx, m.pending--;
  emu_mbar_step(m);
}
// A parity wait names a phase only up to two: each thread must wait on every phase in turn
// (its k-th wait is for phase k, or k - 1 when its first wait was on parity 1, the phase before
// a fresh barrier's), and must not start a wait once that phase and the next have completed:
// on hardware it would then wait for the phase after next. Both are checked at every wait,
// so a waiter that falls behind fails whatever the schedule, not only when it hangs.
inline void emu_mbar_wait(uint64_t* bar, int parity) {
  auto& m = emu_mbar(bar);
  const unsigned tid = threadIdx.x;
  if (m.waits.size() < blockDim.x) m.waits.assign(blockDim.x, 0), m.first.assign(blockDim.x, -1);
  if (m.first[tid] < 0) m.first[tid] = parity;
  const long target = long(m.waits[tid]++) - m.first[tid];
  if ((target & 1) != parity) emu_fail("mbarrier: a wait's parity skips a phase");
  if (long(m.phase) > target + 1) emu_fail("mbarrier: a waiter fell a whole phase behind (its parity wait is ambiguous)");
  while (int(emu_mbar(bar).phase & 1) == parity) emu_yield();
  // Deferred mode: now and then a waiter is slow to wake, so that a kernel which relies on the
  // order waiters happen to run in (not on a barrier) goes wrong.
  if (emu_deferred_cp && emu_rng() % 8 == 0)
    for (int pass = int(emu_rng() % 4 ? emu_rng() % 32 : 64 + emu_rng() % 512); pass > 0; --pass) emu_yield();
}
struct EmuBulkCopy { unsigned char* dst; std::vector<unsigned char> data; uint64_t* bar; };
inline std::vector<EmuBulkCopy> emu_bulk_inflight;
inline void emu_bulk_land(EmuBulkCopy& c) {
  memcpy(c.dst, c.data.data(), c.data.size());
  emu_progress++;
  auto& m = emu_mbar(c.bar);
  m.tx -= int64_t(c.data.size());
  emu_mbar_step(m);
}
// The box (box_cols columns from col, head, box_rows rows from row, batch) as rows of 128
// bytes, each 16-byte chunk where the swizzle of its shared address puts it.
inline void emu_tma_load(void* dst, const EmuTensorMap* map, uint64_t* bar, int col, int head, int row, int batch) {
  const uint32_t dst_addr = uint32_t((unsigned char*)dst - emu_smem) + emu_smem_window;
  if (dst_addr % 1024) emu_fail("TMA destination not 1024-byte aligned (where the 128-byte swizzle starts over)");
  check_smem(dst, size_t(map->box_rows) * 128, "TMA box outside dynamic smem");
  emu_mbar(bar);
  std::vector<unsigned char> box(size_t(map->box_rows) * 128, 0);
  const uint64_t esz = map->strides[0] / map->dims[0];
  if (esz != 2 || col % map->box_cols) emu_fail("TMA: 16-bit elements, whole boxes across the row");
  for (uint32_t r = 0; r < map->box_rows; ++r) {
    const int64_t rr = int64_t(row) + r;
    if (col < 0 || uint64_t(col) >= map->dims[0] || head < 0 || uint64_t(head) >= map->dims[1] || rr < 0 ||
        uint64_t(rr) >= map->dims[2] || batch < 0 || uint64_t(batch) >= map->dims[3])
      continue;  // out of bounds: zeros
    const auto src = (const unsigned char*)map->base + batch * map->strides[2] + rr * map->strides[1] +
                     head * map->strides[0] + col * esz;
    memcpy(box.data() + r * 128, src, std::min<uint64_t>(128, (map->dims[0] - col) * esz));
  }
  EmuBulkCopy c{(unsigned char*)dst, std::vector<unsigned char>(box.size()), bar};
  for (uint32_t at = 0; at < box.size(); at += 16) memcpy(&c.data[emu_swizzle128(dst_addr + at) - dst_addr], &box[at], 16);
  emu_bulk_inflight.push_back(std::move(c));
  if (!emu_deferred_cp) emu_bulk_land(emu_bulk_inflight.back()), emu_bulk_inflight.pop_back();
}
// Deferred mode: each copy in flight lands with probability 1/4 per scheduler pass.
inline void emu_bulk_pump() {
  for (size_t i = 0; i < emu_bulk_inflight.size();) {
    if (emu_rng() % 4 == 0) {
      emu_bulk_land(emu_bulk_inflight[i]);
      emu_bulk_inflight.erase(emu_bulk_inflight.begin() + long(i));
    } else {
      ++i;
    }
  }
}

// Bulk reductions of shared memory into global memory (tma.cuh's bulk_reduce_add): float32
// added element by element. A reduction reads its shared memory at issue, or in "deferred" mode
// at a random later pass of the scheduler (rarely: a pass is short beside a kernel's step) or at
// its thread's wait_group, whichever comes first: a kernel which rewrites the buffer before its
// wait adds the wrong values.
struct EmuBulkReduce { float* dst; const float* src; uint32_t n; unsigned owner; int group; };
inline std::vector<EmuBulkReduce> emu_reduce_inflight;
inline void emu_reduce_land(const EmuBulkReduce& r) {
  for (uint32_t i = 0; i < r.n; ++i) r.dst[i] += r.src[i];
  emu_progress++;
}
// What the emulator can tell of the proxies: a thread that issues a bulk reduction must have
// fenced (fence.proxy.async) since its last wait, as it must after storing what it reads.
inline void emu_fence_proxy_async() { (*emu_fibers)[emu_cur].proxy_fenced = true; }
inline void emu_bulk_reduce_add(float* dst, const float* src, uint32_t bytes) {
  if (uintptr_t(dst) % 16 || uintptr_t(src) % 16 || bytes % 16 || bytes == 0) emu_fail("bulk reduce: addresses or size not 16-byte multiples");
  if (!(*emu_fibers)[emu_cur].proxy_fenced) emu_fail("bulk reduce: no fence.proxy.async since the thread's last bulk wait");
  check_smem(src, bytes, "bulk reduce source outside dynamic smem");
  emu_reduce_inflight.push_back({dst, src, bytes / 4, threadIdx.x, 0});
  if (!emu_deferred_cp) emu_reduce_land(emu_reduce_inflight.back()), emu_reduce_inflight.pop_back();
}
inline void emu_bulk_commit() {
  const int g = ++(*emu_fibers)[emu_cur].bulk_groups;
  for (auto& r : emu_reduce_inflight)
    if (r.owner == threadIdx.x && !r.group) r.group = g;
}
// wait_group(.read) n: this thread's reductions but those of its n most recent groups land.
inline void emu_bulk_wait(int n) {
  auto& f = (*emu_fibers)[emu_cur];
  f.proxy_fenced = false;
  const int last_done = f.bulk_groups - n;
  for (size_t i = 0; i < emu_reduce_inflight.size();) {
    auto& r = emu_reduce_inflight[i];
    if (r.owner != threadIdx.x) { ++i; continue; }
    if (!r.group) emu_fail("bulk reduce: waited with a reduction never committed");
    if (r.group > last_done) { ++i; continue; }
    emu_reduce_land(r);
    emu_reduce_inflight.erase(emu_reduce_inflight.begin() + long(i));
  }
}
inline void emu_reduce_pump() {
  for (size_t i = 0; i < emu_reduce_inflight.size();) {
    if (emu_reduce_inflight[i].group && emu_rng() % 4096 == 0) {
      emu_reduce_land(emu_reduce_inflight[i]);
      emu_reduce_inflight.erase(emu_reduce_inflight.begin() + long(i));
    } else {
      ++i;
    }
  }
}

inline void emu_fiber_entry() {
  emu_body();
  (*emu_fibers)[emu_cur].done = true;
  emu_progress++;
  emu_switch(&(*emu_fibers)[emu_cur].sp, emu_sched_sp);
  abort();
}

// Runs every block of the grid, one at a time, each with nthreads fibers.
inline void emu_launch(dim3 grid, int nthreads, size_t smem_bytes, std::function<void()> body) {
  gridDim = grid;
  blockDim = dim3{unsigned(nthreads), 1, 1};
  for (unsigned z = 0; z < grid.z; ++z)
    for (unsigned y = 0; y < grid.y; ++y)
      for (unsigned x = 0; x < grid.x; ++x) {
        blockIdx = dim3{x, y, z};
        emu_smem_bytes = smem_bytes;
        emu_smem_window = 128 * uint32_t(emu_rng() % 16);
        const size_t emu_alloc = (smem_bytes + 127) / 128 * 128 + 128;
        emu_smem = (unsigned char*)aligned_alloc(128, emu_alloc);
        memset(emu_smem, 0xff, smem_bytes);
#if defined(__SANITIZE_ADDRESS__)  // shared memory past the launch size is off limits
        ASAN_POISON_MEMORY_REGION(emu_smem + smem_bytes, emu_alloc - smem_bytes);
#endif
        emu_block_bar = Barrier{nthreads};
        for (auto& nb : emu_named) nb = Barrier{};
        for (int w = 0; w < nthreads / 32; ++w) emu_warps[w].bar = Barrier{32};
        for (int g = 0; g < nthreads / 128; ++g) emu_groups[g].bar = Barrier{128};
        emu_mbars.clear();
        std::vector<Fiber> fibers(nthreads);
        emu_fibers = &fibers;
        emu_body = body;
        for (int i = 0; i < nthreads; ++i) {
          auto& f = fibers[i];
          f.tid = i;
          static std::vector<std::vector<char>> pool;
          if (pool.size() <= size_t(i)) pool.emplace_back(1 << 20);
          f.stack = pool[i].data();
          uintptr_t top = (uintptr_t(f.stack) + (1 << 20)) & ~uintptr_t(15);
          void** sp = (void**)(top - 16);
          sp[0] = (void*)&emu_fiber_entry;  // returned into by emu_switch; rsp = top - 8 at entry
          sp -= 6;
          for (int r = 0; r < 6; ++r) sp[r] = nullptr;
          f.sp = sp;
        }
        std::vector<float> speed(nthreads / 32 + 1);
        for (auto& sp : speed) sp = std::uniform_real_distribution<float>(0.05f, 1.f)(emu_rng);
        int live = nthreads;
        uint64_t last_progress = emu_progress, idle = 0;
        while (live > 0) {
          // random order of a pass, so that warps run ahead of each other in varied ways
          for (int i = 0; i < nthreads; ++i) {
            if (fibers[i].done) continue;
            if (float(emu_rng() >> 8) * (1.f / 16777216.f) > speed[i / 32]) continue;
            emu_cur = i;
            threadIdx = dim3{unsigned(i), 0, 0};
            emu_switch(&emu_sched_sp, fibers[i].sp);
            if (fibers[i].done) {
              --live;
              // PTX leaves a block that exits with copies in flight undefined: the kernels wait.
              if (emu_cp_outstanding(fibers[i])) emu_fail("thread exited with cp.async outstanding");
              if (!fibers[i].wgmma.empty()) emu_fail("thread exited with a wgmma in flight");
              for (auto& r : emu_reduce_inflight)
                if (r.owner == unsigned(i)) emu_fail("thread exited with a bulk reduction not waited for");
            }
          }
          emu_bulk_pump();
          emu_reduce_pump();
          if (emu_progress == last_progress) {
            if (++idle > 100000) { fprintf(stderr, "EMU DEADLOCK in block %u,%u,%u (divergent barrier?)\n", x, y, z); abort(); }
          } else idle = 0, last_progress = emu_progress;
        }
        if (!emu_bulk_inflight.empty()) emu_fail("block exited with TMA copies in flight");
        // Stricter than hardware may be: every use of a named barrier is completed, so that
        // arrivals and waits that do not pair up show.
        for (auto& nb : emu_named)
          if (nb.count) emu_fail("block exited with a named barrier partly arrived at");
#if defined(__SANITIZE_ADDRESS__)
        ASAN_UNPOISON_MEMORY_REGION(emu_smem, emu_alloc);
#endif
        free(emu_smem);
        emu_smem = nullptr;
      }
}
