// Runs the flash-attention kernels on the CPU emulator (shim.h) against a float64 reference:
// forward (out, lse), the ring merge into a float32 running output (causal too, where rows of
// a piece see no key and must pass through untouched), and the backward with atomic and
// deterministic dQ, over dtypes, head dims 1-256, ragged tiles, GQA and causal shapes where
// whole tiles see no key. Packed documents (scattered ids, and documents end to end, whose
// kernels must skip tiles: each does fewer products) also run as views at shifted offsets, as
// the ring's steps take them. The Hopper kernels (wgmma, TMA, mbarriers) run cases of their own.
// Built and run by test/flash-emulator.test.ts:
//   g++ -std=c++20 -O2 -fsanitize=address -DRA_FLASH_EMULATOR -I. -Itest/flash-emulator \
//       test/flash-emulator/test.cpp -o t && ./t [deferred]
// ONLY=<i> or ONLY=sm90-<i> runs one case. SWEEP=<seed> [SWEEP_N=<n>] [SWEEP_SM90=1] runs n
// random shapes instead (not in CI: a sweep to run by hand after changing a kernel).
#include "shim.h"
#include "native/cuda/flash/fwd_kernel.cuh"
#include "native/cuda/flash/fwd_sm90_kernel.cuh"
#include "native/cuda/flash/bwd_sm90_kernel.cuh"
#include "native/cuda/flash/bwd_kernel.cuh"
#include "native/cuda/flash/doc_spans_kernel.cuh"
#include <cstring>
#include <string>
using namespace ra::cuda::flash;

// Lane-level mma calls per kernel, so that a test can tell which kernels skipped tiles.
struct Products { uint64_t fwd = 0, dkdv = 0, dq = 0; };
Products products;
// The Hopper kernels (fwd_sm90_kernel.cuh, bwd_sm90_kernel.cuh) in place of the others where
// dispatch.cu would use them; sm90_launches counts that they did run.
bool use_sm90 = false, sm90_pingpong = true;
int sm90_launches = 0;
// Backward launches whose dQ atomics were float4 / float (both paths must run).
int dq_vec4_launches = 0, dq_scalar_launches = 0;
// Row-by-row errors (see cmp): a row's largest error over its largest value, floored at kRowFloor
// of the whole tensor's, within the whole tensor's tolerance. Measured over every case here (the
// immediate mode): at most 0.27 of it for out, 0.21 for the gradients; a row wrong whole is 1/tol
// of it.
// Tried: a dK/dV kernel that drops the last key passed the whole-tensor check in causal cases
// (that key is seen by few queries) and fails this one.
constexpr double kRowFloor = 0.05;
struct { double out = 0, grad = 0; } worst_row_seen;  // the largest, over the tolerance, printed at the end
// Each backward kernel with and without `prefetch` (launch.cuh picks by the GPU's occupancy),
// alternately, each kernel on its own count; both ways must run for both.
struct Prefetch { int launches[2] = {}; } dkdv_prefetch, dq_prefetch;
bool next_prefetch(Prefetch& k) {
  const bool on = k.launches[1] <= k.launches[0];
  ++k.launches[on];
  return on;
}
template <class F> void counted(uint64_t& into, F&& launch) {
  const uint64_t before = emu_mma_count;
  launch();
  into += emu_mma_count - before;
}

template <class T, int D, bool C> void run_fwd_t(const FwdParams& p) {
  using Tr = FwdTraitsFor<D, T>;
  dim3 grid{unsigned((p.seq_q + Tr::kBlockM - 1) / Tr::kBlockM), unsigned(p.heads), unsigned(p.batch)};
  counted(products.fwd, [&] { emu_launch(grid, Tr::kNThreads, Tr::kSmemBytes, [&] { fwd_kernel<Tr, C>(p); }); });
}
template <class T, int D, bool C> void run_bwd_t(const BwdParams& p) {
  using Tr = BwdTraitsFor<D, T>;
  // dQ's atomics as on sm_90 (dispatch.cu's dq_vec4), four floats each where rows are aligned.
  const bool vec4 = !p.deterministic && dq_rows_aligned(p);
  if (!p.deterministic) ++(vec4 ? dq_vec4_launches : dq_scalar_launches);
  dim3 gk{unsigned((p.fwd.seq_k + Tr::kBlockN - 1) / Tr::kBlockN), unsigned(p.fwd.kv_heads), unsigned(p.fwd.batch)};
  const bool prefetch = next_prefetch(dkdv_prefetch);
  for (int col = 0; col < p.fwd.head_dim; col += Tr::kDAcc)
    counted(products.dkdv, [&] {
      emu_launch(gk, Tr::kNThreads, prefetch ? Tr::kSmemBytes : Tr::kPlainSmemBytes,
                 [&] { bwd_dkdv_kernel<Tr, C>(p, col, !p.deterministic && col == 0, vec4, prefetch); });
    });
  if (!p.deterministic) return;
  const bool prefetch_dq = next_prefetch(dq_prefetch);
  const int smem = prefetch_dq ? Tr::kDqSmemBytes : Tr::kDqPlainSmemBytes;
  dim3 gq{unsigned((p.fwd.seq_q + Tr::kBlockM - 1) / Tr::kBlockM), unsigned(p.fwd.heads), unsigned(p.fwd.batch)};
  counted(products.dq, [&] { emu_launch(gq, Tr::kNThreads, smem, [&] { bwd_dq_kernel<Tr, C>(p, prefetch_dq); }); });
}
template <class T, int D, bool C> void run_fwd_sm90_t(const FwdParams& p) {
  using Tr = Sm90FwdTraits<D, T>;
  dim3 grid{unsigned((p.seq_q + Tr::kBlockM - 1) / Tr::kBlockM), unsigned(p.heads), unsigned(p.batch)};
  if (!fwd_tma_describable(p)) emu_fail("a test's forward that TMA cannot describe");
  const Sm90FwdMaps maps = sm90_fwd_maps<Tr>(p);
  ++sm90_launches;
  counted(products.fwd, [&] { emu_launch(grid, Tr::kNThreads, Tr::kSmemBytes, [&] { fwd_sm90_kernel<Tr, C>(p, maps, sm90_pingpong); }); });
}
template <class T> void fwd(const FwdParams& p, bool c) {
  if (p.seq_q == 0 || p.batch == 0) return;
  int d = p.head_dim;
  if (use_sm90 && (d == 64 || d == 128) && p.vec_ok) {
    if (d == 64) c ? run_fwd_sm90_t<T, 64, true>(p) : run_fwd_sm90_t<T, 64, false>(p);
    else c ? run_fwd_sm90_t<T, 128, true>(p) : run_fwd_sm90_t<T, 128, false>(p);
    return;
  }
  if (d <= 64) c ? run_fwd_t<T, 64, true>(p) : run_fwd_t<T, 64, false>(p);
  else if (d <= 128) c ? run_fwd_t<T, 128, true>(p) : run_fwd_t<T, 128, false>(p);
  else c ? run_fwd_t<T, 256, true>(p) : run_fwd_t<T, 256, false>(p);
}
template <class T, int D, bool C> void run_bwd_sm90_t(const BwdParams& p) {
  using Tr = Sm90BwdTraits<D, T>;
  dim3 grid{unsigned((p.fwd.seq_k + Tr::kBlockN - 1) / Tr::kBlockN), unsigned(p.fwd.kv_heads), unsigned(p.fwd.batch)};
  if (!bwd_tma_describable(p)) emu_fail("a test's backward that TMA cannot describe");
  const Sm90BwdMaps maps = sm90_bwd_maps<Tr>(p);
  ++sm90_launches;
  counted(products.dkdv, [&] {
    emu_launch(grid, Tr::kNThreads, Tr::kSmemBytes, [&] { bwd_sm90_kernel<Tr, C>(p, maps, !p.deterministic); });
  });
  if (!p.deterministic) return;
  using Ta = BwdTraitsFor<D, T>;
  const bool prefetch_dq = next_prefetch(dq_prefetch);
  const int smem = prefetch_dq ? Ta::kDqSmemBytes : Ta::kDqPlainSmemBytes;
  dim3 gq{unsigned((p.fwd.seq_q + Ta::kBlockM - 1) / Ta::kBlockM), unsigned(p.fwd.heads), unsigned(p.fwd.batch)};
  counted(products.dq, [&] { emu_launch(gq, Ta::kNThreads, smem, [&] { bwd_dq_kernel<Ta, C>(p, prefetch_dq); }); });
}
template <class T> void bwd(const BwdParams& p, bool c) {
  if (p.fwd.seq_q == 0 || p.fwd.seq_k == 0 || p.fwd.batch == 0) return;
  int d = p.fwd.head_dim;
  if (use_sm90 && (d == 64 || d == 128) && p.fwd.vec_ok) {
    if (d == 64) c ? run_bwd_sm90_t<T, 64, true>(p) : run_bwd_sm90_t<T, 64, false>(p);
    else c ? run_bwd_sm90_t<T, 128, true>(p) : run_bwd_sm90_t<T, 128, false>(p);
    return;
  }
  if (d <= 64) c ? run_bwd_t<T, 64, true>(p) : run_bwd_t<T, 64, false>(p);
  else if (d <= 128) c ? run_bwd_t<T, 128, true>(p) : run_bwd_t<T, 128, false>(p);
  else c ? run_bwd_t<T, 256, true>(p) : run_bwd_t<T, 256, false>(p);
}

// docs: random document ids in [0, docs); with runs, `docs` documents laid end to end instead
// (Sq == Sk, the same ids for queries and keys), so that whole tiles share no document.
// expect_skips: documents end to end long enough that some tile meets only one (curated cases).
struct Case { int B, Sq, Sk, H, Hkv, D; bool causal, det; int docs = 0; bool runs = false; bool expect_skips = true; };

// The spans of an id array, made by the kernel the library runs, checked against a plain loop.
std::vector<int> spans_of(const std::vector<int>& ids, int batch, int seq) {
  std::vector<int> spans(doc_span_ints(batch, seq), 12345);
  const int n = int(spans.size() / 2);
  emu_launch(dim3{unsigned((n + 127) / 128)}, 128, 0, [&] { doc_spans_kernel(ids.data(), batch, seq, spans.data()); });
  for (int i = 0; i < n; ++i) {
    const int b = i / (n / batch), s0 = i % (n / batch) * kDocSpan;
    const auto first = ids.begin() + size_t(b) * seq + s0, last = first + std::min(kDocSpan, seq - s0);
    if (spans[2 * i] != *std::min_element(first, last) || spans[2 * i + 1] != *std::max_element(first, last))
      emu_fail("document spans differ from a plain loop");
  }
  return spans;
}

template <class T>
bool run_case(const Case& c, int mode) {
  std::mt19937 rng(c.B * 1000003 + c.Sq * 7919 + c.Sk * 31 + c.D);
  std::uniform_real_distribution<float> U(-1.f, 1.f);
  const size_t nq = size_t(c.B) * c.Sq * c.H * c.D, nk = size_t(c.B) * c.Sk * c.Hkv * c.D;
  std::vector<T> q(nq), k(nk), v(nk), dO(nq), out(nq);
  std::vector<float> qf(nq), kf(nk), vf(nk), dOf(nq);
  for (size_t i = 0; i < nq; ++i) q[i] = T(U(rng) * 2.f), qf[i] = float(q[i]), dO[i] = T(U(rng)), dOf[i] = float(dO[i]);
  for (size_t i = 0; i < nk; ++i) k[i] = T(U(rng) * 2.f), kf[i] = float(k[i]), v[i] = T(U(rng)), vf[i] = float(v[i]);
  const float scale = 1.f / std::sqrt(float(c.D));
  const int64_t off = c.causal ? int64_t(c.Sk) - c.Sq : 0;
  const int grp = c.H / c.Hkv;
  auto Q = [&](int b, int i, int h) { return &qf[((size_t(b) * c.Sq + i) * c.H + h) * c.D]; };
  auto K = [&](int b, int j, int h) { return &kf[((size_t(b) * c.Sk + j) * c.Hkv + h) * c.D]; };
  auto V = [&](int b, int j, int h) { return &vf[((size_t(b) * c.Sk + j) * c.Hkv + h) * c.D]; };
  auto DO = [&](int b, int i, int h) { return &dOf[((size_t(b) * c.Sq + i) * c.H + h) * c.D]; };
  // Packed sequences: any ids, not only runs, so that rows and tiles see none, some or all keys.
  std::vector<int> doc_q(size_t(c.B) * c.Sq), doc_k(size_t(c.B) * c.Sk);
  if (c.docs && c.runs) {
    // Row b: ids 100b, 100b + 1, ... in order, each run starting at a random cut; rows differ
    // in their ids and in how many documents they hold, so that a row read with another's
    // spans goes wrong.
    for (int b = 0; b < c.B; ++b) {
      std::vector<int> cuts(b % 2 ? std::max(0, c.docs / 3 - 1) : c.docs - 1);
      for (auto& x : cuts) x = std::uniform_int_distribution<int>(1, c.Sk - 1)(rng);
      std::sort(cuts.begin(), cuts.end());
      for (int j = 0; j < c.Sk; ++j)
        doc_k[size_t(b) * c.Sk + j] = doc_q[size_t(b) * c.Sq + j] =
            100 * b + int(std::upper_bound(cuts.begin(), cuts.end(), j) - cuts.begin());
    }
  } else if (c.docs) {
    std::uniform_int_distribution<int> D(0, c.docs - 1);
    for (auto& d : doc_q) d = D(rng);
    for (auto& d : doc_k) d = D(rng);
  }
  std::vector<int> spans_q, spans_k;
  if (c.docs) spans_q = spans_of(doc_q, c.B, c.Sq), spans_k = spans_of(doc_k, c.B, c.Sk);
  auto sees = [&](int b, int i, int j) { return !c.docs || doc_q[size_t(b) * c.Sq + i] == doc_k[size_t(b) * c.Sk + j]; };
  // reference forward
  std::vector<double> ro(nq, 0.0), rP;  std::vector<float> rlse(size_t(c.B) * c.H * c.Sq);
  std::vector<double> rdq(nq, 0), rdk(nk, 0), rdv(nk, 0);
  std::vector<float> delta(rlse.size());
  std::vector<T> outr(nq);
  for (int b = 0; b < c.B; ++b) for (int h = 0; h < c.H; ++h) for (int i = 0; i < c.Sq; ++i) {
    const int kh = h / grp;
    std::vector<double> s(c.Sk, -INFINITY);
    double m = -INFINITY;
    for (int j = 0; j < c.Sk; ++j) {
      if ((c.causal && j > i + off) || !sees(b, i, j)) continue;
      double d = 0; for (int e = 0; e < c.D; ++e) d += double(Q(b, i, h)[e]) * K(b, j, kh)[e];
      s[j] = d * scale; m = std::max(m, s[j]);
    }
    double l = 0; for (int j = 0; j < c.Sk; ++j) if (s[j] > -INFINITY) l += std::exp(s[j] - m);
    const size_t li = (size_t(b) * c.H + h) * c.Sq + i;
    rlse[li] = l > 0 ? float(m + std::log(l)) : -INFINITY;
    double* o = &ro[((size_t(b) * c.Sq + i) * c.H + h) * c.D];
    if (l > 0) for (int j = 0; j < c.Sk; ++j) if (s[j] > -INFINITY) {
      double pj = std::exp(s[j] - m) / l; for (int e = 0; e < c.D; ++e) o[e] += pj * V(b, j, kh)[e];
    }
    double dl = 0;
    for (int e = 0; e < c.D; ++e) { T t = T(float(o[e])); outr[&o[e] - ro.data()] = t; dl += double(float(t)) * DO(b, i, h)[e]; }
    delta[li] = float(dl);
    // backward
    for (int j = 0; j < c.Sk; ++j) {
      if (!(s[j] > -INFINITY)) continue;
      const double P = std::exp(s[j] - double(rlse[li]));
      double dp = 0; for (int e = 0; e < c.D; ++e) dp += double(DO(b, i, h)[e]) * V(b, j, kh)[e];
      const double dS = P * (dp - delta[li]);
      for (int e = 0; e < c.D; ++e) {
        rdq[((size_t(b) * c.Sq + i) * c.H + h) * c.D + e] += scale * dS * K(b, j, kh)[e];
        rdk[((size_t(b) * c.Sk + j) * c.Hkv + kh) * c.D + e] += scale * dS * Q(b, i, h)[e];
        rdv[((size_t(b) * c.Sk + j) * c.Hkv + kh) * c.D + e] += P * DO(b, i, h)[e];
      }
    }
  }
  FwdParams p{};
  p.batch = c.B, p.seq_q = c.Sq, p.heads = c.H, p.head_dim = c.D, p.seq_k = c.Sk, p.kv_heads = c.Hkv;
  p.q_row_stride = p.o_row_stride = int64_t(c.H) * c.D;
  p.q_batch_stride = p.o_batch_stride = int64_t(c.Sq) * c.H * c.D;
  p.k_row_stride = p.v_row_stride = int64_t(c.Hkv) * c.D;
  p.k_batch_stride = p.v_batch_stride = int64_t(c.Sk) * c.Hkv * c.D;
  p.lse_head_stride = c.Sq, p.lse_batch_stride = int64_t(c.Sq) * c.H;
  p.scale = scale, p.causal_offset = off, p.vec_ok = c.D % 8 == 0;
  if (c.docs) {
    p.doc_q = doc_q.data(), p.doc_k = doc_k.data(), p.doc_q_batch_stride = c.Sq, p.doc_k_batch_stride = c.Sk;
    p.doc_q_spans = spans_q.data(), p.doc_k_spans = spans_k.data();
  }
  std::vector<float> lse(rlse.size(), 12345.f);
  for (auto& x : out) x = T(NAN);
  p.q = q.data(), p.k = k.data(), p.v = v.data(), p.out = out.data(), p.lse = lse.data();
  bool ok = true;
  char name[200];
  snprintf(name, sizeof name, "%s%s B%d Sq%d Sk%d H%d/%d D%d causal%d det%d docs%d%s mode%d", sizeof(T) == 2 && std::is_same<T, __half>::value ? "f16" : "bf16",
           use_sm90 ? (sm90_pingpong ? " sm90" : " sm90 no-pingpong") : "", c.B, c.Sq, c.Sk, c.H, c.Hkv, c.D, c.causal, c.det, c.docs, c.runs ? " runs" : "", mode);
  auto cmp = [&](const char* what, auto get, size_t n, auto ref, double tol) {
    // The floor on the reference's size: a gradient that is zero in exact arithmetic (a row that
    // sees one key) comes out as rounding noise of the order of the inputs' precision.
    double mx = 0, mr = 1e-4; size_t bad = SIZE_MAX;
    for (size_t i = 0; i < n; ++i) {
      double a = get(i), r = ref(i);
      if (std::isinf(r) || std::isinf(a)) { if (a != r && bad == SIZE_MAX) bad = i; continue; }
      if (std::isnan(a)) { if (bad == SIZE_MAX) bad = i; continue; }
      mx = std::max(mx, std::fabs(a - r)); mr = std::max(mr, std::fabs(r));
    }
    // Row by row too (D values: one query's or one key's head): against the tensor's largest
    // value alone, a small row could be wrong whole (a key tile's last key dropped) and pass.
    // A row is measured against its own largest value, floored at kRowFloor of the tensor's.
    double worst_row = 0; size_t bad_row = SIZE_MAX;
    if (!std::strstr(what, "lse") && (n == nq || n == nk))
      for (size_t r0 = 0; r0 < n; r0 += c.D) {
        double e = 0, m = 0;
        for (size_t i = r0; i < r0 + c.D; ++i) {
          const double a = get(i), r = ref(i);
          if (std::isfinite(a) && std::isfinite(r)) e = std::max(e, std::fabs(a - r)), m = std::max(m, std::fabs(r));
        }
        const double ratio = e / std::max(m, kRowFloor * mr);
        if (ratio > worst_row) worst_row = ratio, bad_row = r0 / c.D;
      }
    double& seen = std::strstr(what, "out") ? worst_row_seen.out : worst_row_seen.grad;
    seen = std::max(seen, worst_row / tol);
    const bool pass = bad == SIZE_MAX && mx <= tol * mr && worst_row <= tol;
    if (!pass) { ok = false; printf("  FAIL %s %s: max err %.3g (ref max %.3g), worst row %zu at %.3g of its size%s", name, what, mx, mr, bad_row, worst_row, bad != SIZE_MAX ? " nan/inf mismatch at " : "");
      if (bad != SIZE_MAX) printf("%zu (got %g want %g)", bad, double(get(bad)), double(ref(bad))); printf("\n"); }
  };
  const double tol = std::is_same<T, __half>::value ? 4e-3 : 2e-2;
  if (mode == 0) {
    const Products before_docs = products;
    fwd<T>(p, c.causal);
    cmp("out", [&](size_t i) { return double(float(out[i])); }, nq, [&](size_t i) { return ro[i]; }, tol);
    cmp("lse", [&](size_t i) { return double(lse[i]); }, lse.size(), [&](size_t i) { return double(rlse[i]); }, 1e-4);
    // backward, given reference lse and delta
    std::vector<float> dq(nq, 0.f), dk(nk, 0.f), dv(nk, 0.f);
    BwdParams bp{};
    bp.fwd = p; bp.fwd.lse = rlse.data();
    bp.dout = dO.data(); bp.delta = delta.data();
    bp.dq_accum = dq.data(), bp.dk_accum = dk.data(), bp.dv_accum = dv.data();
    bp.dq_batch_stride = p.q_batch_stride, bp.dq_row_stride = p.q_row_stride;
    bp.dk_batch_stride = p.k_batch_stride, bp.dk_row_stride = p.k_row_stride;
    bp.deterministic = c.det;
    bwd<T>(bp, c.causal);
    cmp("dq", [&](size_t i) { return double(dq[i]); }, nq, [&](size_t i) { return rdq[i]; }, tol * 1.5);
    cmp("dk", [&](size_t i) { return double(dk[i]); }, nk, [&](size_t i) { return rdk[i]; }, tol * 1.5);
    cmp("dv", [&](size_t i) { return double(dv[i]); }, nk, [&](size_t i) { return rdv[i]; }, tol * 1.5);
    if (c.runs && c.expect_skips) {
      // Tiles that share no document were skipped: each kernel does fewer products than in the
      // same calls without ids.
      const Products with_docs{products.fwd - before_docs.fwd, products.dkdv - before_docs.dkdv, products.dq - before_docs.dq};
      std::vector<T> o2(nq);
      std::vector<float> l2(lse.size()), scratch(nq + 2 * nk);
      FwdParams f = p;
      f.doc_q = f.doc_k = nullptr, f.out = o2.data(), f.lse = l2.data();
      BwdParams b2 = bp;
      b2.fwd.doc_q = b2.fwd.doc_k = nullptr, b2.dq_accum = scratch.data(), b2.dk_accum = scratch.data() + nq;
      b2.dv_accum = scratch.data() + nq + nk;
      const Products before = products;
      fwd<T>(f, c.causal);
      bwd<T>(b2, c.causal);
      const Products without{products.fwd - before.fwd, products.dkdv - before.dkdv, products.dq - before.dq};
      auto fewer = [&](const char* kernel, uint64_t with, uint64_t wo) {
        if (with < wo) return;  // equal counts: not one tile skipped
        ok = false;
        printf("  FAIL %s: %s: %llu products with documents, %llu without: tiles were not skipped\n", name, kernel,
               (unsigned long long)with, (unsigned long long)wo);
      };
      fewer("forward", with_docs.fwd, without.fwd);
      fewer("dK/dV", with_docs.dkdv, without.dkdv);
      if (c.det) fewer("dQ", with_docs.dq, without.dq);
    }
    // dkv_overwrite (the ring's per-step buffer): dK/dV written over whatever was there.
    std::fill(dk.begin(), dk.end(), 777.f), std::fill(dv.begin(), dv.end(), -777.f), std::fill(dq.begin(), dq.end(), 0.f);
    bp.dkv_overwrite = true;
    bwd<T>(bp, c.causal);
    cmp("dk overwritten", [&](size_t i) { return double(dk[i]); }, nk, [&](size_t i) { return rdk[i]; }, tol * 1.5);
    cmp("dv overwritten", [&](size_t i) { return double(dv[i]); }, nk, [&](size_t i) { return rdv[i]; }, tol * 1.5);
  } else if (mode == 1) {
    // ring merge: keys in two pieces [0, s1) and [s1, Sk), each a separate call accumulating into
    // float out. Causal: the second piece's diagonal moves s1 keys left, so rows near the top
    // see none of its keys (or, with Sq > Sk, none at all): they must come through untouched.
    std::vector<float> acc(nq, 0.f);
    std::vector<float> l2(lse.size(), -INFINITY);
    const int s1 = c.Sk / 3;
    FwdParams a = p; a.out_accum = acc.data(); a.lse = l2.data(); a.out = nullptr;
    a.seq_k = s1; fwd<T>(a, c.causal);
    FwdParams b2 = a; b2.seq_k = c.Sk - s1; b2.k = k.data() + int64_t(s1) * p.k_row_stride; b2.v = v.data() + int64_t(s1) * p.v_row_stride;
    if (c.docs) b2.doc_k = doc_k.data() + s1, b2.doc_k_shift = s1;
    b2.causal_offset = off - s1;
    fwd<T>(b2, c.causal);
    cmp("merged out", [&](size_t i) { return double(acc[i]); }, nq, [&](size_t i) { return ro[i]; }, tol);
    cmp("merged lse", [&](size_t i) { return double(l2[i]); }, lse.size(), [&](size_t i) { return double(rlse[i]); }, 1e-4);
  } else {
    // Views, as the ring's steps take them: query rows [q0, q1) against keys [k0, k1), their ids
    // read at a shift into the whole arrays (and their spans). Two query pieces x two key
    // pieces, at offsets that are no multiple of a tile or a span; the forward merges into a
    // float32 output, the backward adds into dQ, dK and dV; together they are the whole.
    const int qs = std::min(c.Sq, c.Sq / 2 + 3), ks = std::min(c.Sk, c.Sk / 5 + 1);
    const int64_t qrow = p.q_row_stride, krow = p.k_row_stride;
    std::vector<float> acc(nq, 0.f), l2(lse.size(), -INFINITY), dq(nq, 0.f), dk(nk, 0.f), dv(nk, 0.f);
    auto view = [&](int q0, int q1, int k0, int k1, float* lse_base) {
      FwdParams w = p;
      w.q = q.data() + q0 * qrow, w.k = k.data() + k0 * krow, w.v = v.data() + k0 * krow;
      w.out = nullptr, w.out_accum = acc.data() + q0 * qrow, w.lse = lse_base + q0;
      w.seq_q = q1 - q0, w.seq_k = k1 - k0;
      w.causal_offset = off + q0 - k0;
      if (c.docs) {
        w.doc_q = doc_q.data() + q0, w.doc_q_shift = q0;
        w.doc_k = doc_k.data() + k0, w.doc_k_shift = k0;
      }
      return w;
    };
    const int qcut[3] = {0, qs, c.Sq}, kcut[3] = {0, ks, c.Sk};
    for (int a = 0; a < 2; ++a)
      for (int e = 0; e < 2; ++e) {
        if (qcut[a] == qcut[a + 1] || kcut[e] == kcut[e + 1]) continue;
        fwd<T>(view(qcut[a], qcut[a + 1], kcut[e], kcut[e + 1], l2.data()), c.causal);
        BwdParams vb{};
        vb.fwd = view(qcut[a], qcut[a + 1], kcut[e], kcut[e + 1], rlse.data());
        vb.dout = dO.data() + qcut[a] * qrow, vb.delta = delta.data() + qcut[a];
        vb.dq_accum = dq.data() + qcut[a] * qrow;
        vb.dk_accum = dk.data() + kcut[e] * krow, vb.dv_accum = dv.data() + kcut[e] * krow;
        vb.dq_batch_stride = p.q_batch_stride, vb.dq_row_stride = qrow;
        vb.dk_batch_stride = p.k_batch_stride, vb.dk_row_stride = krow;
        vb.deterministic = c.det;
        bwd<T>(vb, c.causal);
      }
    cmp("views out", [&](size_t i) { return double(acc[i]); }, nq, [&](size_t i) { return ro[i]; }, tol);
    cmp("views lse", [&](size_t i) { return double(l2[i]); }, lse.size(), [&](size_t i) { return double(rlse[i]); }, 1e-4);
    cmp("views dq", [&](size_t i) { return double(dq[i]); }, nq, [&](size_t i) { return rdq[i]; }, tol * 1.5);
    cmp("views dk", [&](size_t i) { return double(dk[i]); }, nk, [&](size_t i) { return rdk[i]; }, tol * 1.5);
    cmp("views dv", [&](size_t i) { return double(dv[i]); }, nk, [&](size_t i) { return rdv[i]; }, tol * 1.5);
  }
  if (ok) printf("  ok   %s\n", name);
  fflush(stdout);
  return ok;
}

// A NaN in a query row comes out as NaN in that row's out and lse, alone and merged as a ring
// step, not as the 0 and -inf of a row that sees no key (fmaxf drops a NaN from the row max);
// the other rows stay finite. Returns the failures.
template <class T>
int nan_row_case() {
  const int Sq = 70, Sk = 100, D = 64, bad = 5;
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> U(-1.f, 1.f);
  std::vector<T> q(size_t(Sq) * D), k(size_t(Sk) * D), v(size_t(Sk) * D), out(size_t(Sq) * D);
  for (auto* a : {&q, &k, &v}) for (auto& x : *a) x = T(U(rng));
  for (int e = 0; e < D; ++e) q[size_t(bad) * D + e] = T(NAN);
  FwdParams p{};
  p.batch = 1, p.seq_q = Sq, p.heads = 1, p.head_dim = D, p.seq_k = Sk, p.kv_heads = 1;
  p.q_row_stride = p.o_row_stride = p.k_row_stride = p.v_row_stride = D;
  p.q_batch_stride = p.o_batch_stride = int64_t(Sq) * D, p.k_batch_stride = p.v_batch_stride = int64_t(Sk) * D;
  p.lse_head_stride = p.lse_batch_stride = Sq, p.scale = 0.125f, p.vec_ok = true;
  std::vector<float> lse(Sq), acc(size_t(Sq) * D, 0.f), lse_acc(Sq, -INFINITY);
  p.q = q.data(), p.k = k.data(), p.v = v.data(), p.out = out.data(), p.lse = lse.data();
  fwd<T>(p, false);
  FwdParams step = p;
  step.out = nullptr, step.out_accum = acc.data(), step.lse = lse_acc.data();
  fwd<T>(step, false);
  int fails = 0;
  auto check = [&](const char* what, auto out_at, const std::vector<float>& l) {
    for (int i = 0; i < Sq; ++i) {
      bool row_ok = bool(std::isnan(l[i])) == (i == bad);
      for (int e = 0; e < D; ++e) row_ok = row_ok && bool(std::isnan(out_at(size_t(i) * D + e))) == (i == bad);
      if (!row_ok) return ++fails, void(printf("  FAIL NaN query row%s, %s: row %d (lse %g)\n", use_sm90 ? " sm90" : "", what, i, l[i]));
    }
    printf("  ok   NaN query row%s, %s\n", use_sm90 ? " sm90" : "", what);
  };
  check("alone", [&](size_t i) { return float(out[i]); }, lse);
  check("as a ring step", [&](size_t i) { return acc[i]; }, lse_acc);
  return fails;
}

// A random shape: any head dim the kernels take (64 or 128 on Hopper), GQA, lengths past
// several tiles, with and without causal masking, packed documents scattered or end to end.
Case random_case(std::mt19937& g, bool sm90) {
  auto pick = [&](std::initializer_list<int> xs) { return xs.begin()[std::uniform_int_distribution<size_t>(0, xs.size() - 1)(g)]; };
  auto in = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(g); };
  Case c{};
  c.B = in(1, 2), c.H = pick({1, 2, 4, 6});
  do c.Hkv = pick({1, 2, 3, 6}); while (c.H % c.Hkv);
  c.D = sm90 ? pick({64, 128}) : pick({1, 8, 16, 33, 48, 64, 80, 96, 128, 160, 200, 256});
  c.Sq = in(1, 300), c.Sk = in(1, 300), c.causal = in(0, 1), c.det = in(0, 1);
  switch (in(0, 2)) {
    case 1: c.docs = in(1, 5); break;
    case 2: c.Sk = c.Sq, c.docs = in(1, std::min(8, c.Sq)), c.runs = true, c.expect_skips = false; break;
  }
  return c;
}

// One case in every mode: alone, as a ring step (on Hopper, the forward without its ping-pong)
// and, with documents, as views; in bf16, and in f16 too when asked. With use_sm90, a mode in
// which the Hopper kernel did not run fails. Returns the failures.
int run_modes(const Case& c, bool with_f16) {
  int fails = 0;
  for (int mode = 0; mode < (c.docs ? 3 : 2); ++mode) {
    const int before = sm90_launches;
    sm90_pingpong = mode != 1;
    fails += !run_case<__nv_bfloat16>(c, mode);
    if (with_f16) fails += !run_case<__half>(c, mode);
    if (use_sm90 && sm90_launches == before) ++fails, printf("  FAIL: the Hopper kernel did not run\n");
  }
  return fails;
}

int random_sweep(unsigned seed, int n, bool sm90) {
  std::mt19937 g(seed);
  use_sm90 = sm90;
  int fails = 0;
  for (int t = 0; t < n; ++t) fails += run_modes(random_case(g, sm90), t % 2);
  printf("dQ atomics: %d float4 launches, %d float launches\n", dq_vec4_launches, dq_scalar_launches);
  printf("backward loads one tile ahead: dK/dV %d launches, not %d; dQ %d, not %d\n", dkdv_prefetch.launches[1],
         dkdv_prefetch.launches[0], dq_prefetch.launches[1], dq_prefetch.launches[0]);
  printf("worst row error, over the tolerance: out %.3g, gradients %.3g\n", worst_row_seen.out, worst_row_seen.grad);
  printf("%d failures\n", fails);
  return fails != 0;
}

int main(int argc, char** argv) {
  emu_deferred_cp = argc > 1 && std::string(argv[1]) == "deferred";
  if (const char* seed = getenv("SWEEP"))
    return random_sweep(unsigned(atoi(seed)), getenv("SWEEP_N") ? atoi(getenv("SWEEP_N")) : 10, getenv("SWEEP_SM90"));
  std::vector<Case> cases = {
    {1, 64, 64, 1, 1, 64, false, false},
    {2, 70, 100, 4, 2, 64, false, false},
    {1, 100, 70, 2, 1, 64, true, false},
    {1, 70, 100, 2, 2, 64, true, true},
    {1, 37, 150, 2, 1, 33, true, false},
    {1, 130, 90, 3, 1, 80, true, true},
    {1, 90, 130, 2, 2, 128, false, true},
    {1, 77, 77, 2, 1, 128, true, false},
    {1, 50, 70, 2, 1, 200, true, false},
    {1, 70, 45, 2, 2, 256, true, true},
    {1, 40, 66, 1, 1, 256, false, false},
    {1, 20, 130, 1, 1, 8, true, false},
    {1, 1, 1, 1, 1, 1, false, false},
    {1, 200, 30, 2, 1, 64, true, false},
    {1, 200, 30, 2, 1, 64, true, true},
    {3, 1, 150, 4, 1, 96, true, false},
    {1, 65, 129, 8, 2, 100, true, true},
    {2, 129, 65, 2, 1, 160, false, false},
    {1, 97, 97, 4, 4, 48, true, false},
    // a 128-query forward block whose first row tile sees no key and whose second does
    {1, 100, 20, 2, 1, 128, true, true},
    {1, 250, 30, 2, 2, 96, true, true, 3},
    // packed documents
    {1, 70, 100, 2, 2, 64, true, true, 3},
    {2, 100, 100, 4, 2, 64, true, false, 4},
    {1, 90, 130, 2, 2, 128, false, true, 2},
    {1, 77, 77, 2, 1, 128, true, false, 5},
    {1, 130, 90, 3, 1, 80, true, false, 3},
    {1, 66, 66, 2, 1, 256, false, false, 2},
    // documents end to end: whole tiles skipped
    {1, 300, 300, 2, 1, 64, true, false, 6, true},
    {2, 260, 260, 2, 2, 128, true, true, 9, true},
    {1, 200, 200, 1, 1, 256, false, true, 4, true},
    {1, 330, 330, 1, 1, 40, false, false, 7, true},
    {1, 512, 512, 1, 1, 64, true, true, 4, true},  // long documents: tiles inside one need no mask
  };
  int fails = 0;
  const char* only = getenv("ONLY");
  for (size_t i = 0; i < cases.size(); ++i) {
    if (only && std::to_string(i) != only) continue;
    fails += run_modes(cases[i], i % 3 == 0);
  }
  if (!only) fails += nan_row_case<__nv_bfloat16>();
  // The Hopper forward and backward, alone, as ring steps (mode 1, the forward without its
  // ping-pong) and as views (mode 2, with documents), on the shapes they take: head dim 64 or
  // 128. Several key tiles (double buffer), ragged last tiles, GQA, causal with rows that see
  // no key (Sq > Sk), one query row, packed documents.
  const std::vector<Case> sm90_cases = {
    {1, 64, 64, 1, 1, 64, false, false},
    {2, 70, 100, 4, 2, 64, false, false},
    {1, 300, 300, 2, 1, 64, true, false},
    {1, 260, 100, 2, 1, 64, true, false},
    {1, 129, 400, 4, 2, 128, false, false},
    {1, 200, 333, 2, 2, 128, true, true},
    {3, 1, 150, 4, 1, 128, true, false},
    // packed documents: scattered ids, and runs whose tiles must be skipped
    {1, 90, 130, 2, 2, 128, false, true, 2},
    {2, 200, 170, 4, 2, 64, false, false, 3},  // 128-query steps: a lane's 32 queries' documents
    {1, 200, 200, 2, 1, 64, true, true, 3},    // the same, causal, with dQ left to its own kernel
    {1, 300, 300, 2, 1, 64, true, false, 6, true},
    {2, 260, 260, 2, 2, 128, true, true, 9, true},
    {1, 640, 640, 1, 1, 64, true, false, 10, true},  // 128-key tiles: shorter documents to skip
  };
  // Where tma.cuh says an element of a swizzled tile lies (what test/gpu/wgmma_unit.cu places
  // and reads by) is where the emulated TMA puts it and the emulated wgmma finds it.
  for (int r = 0; r < 128; ++r)
    for (int c = 0; c < 128; ++c)
      if (2 * uint32_t(tma_tile_at<128>(r, c)) != emu_swizzle128(2 * uint32_t(tma_tile<128>(r, c)))) {
        printf("  FAIL tma_tile_at(%d, %d) is not where the 128-byte swizzle puts the element\n", r, c);
        ++fails;
      }
  use_sm90 = true;
  for (size_t i = 0; i < sm90_cases.size(); ++i) {
    if (only && "sm90-" + std::to_string(i) != only) continue;
    fails += run_modes(sm90_cases[i], i % 2 == 0);
  }
  if (!only) fails += nan_row_case<__nv_bfloat16>();
  printf("dQ atomics: %d float4 launches, %d float launches\n", dq_vec4_launches, dq_scalar_launches);
  printf("backward loads one tile ahead: dK/dV %d launches, not %d; dQ %d, not %d\n", dkdv_prefetch.launches[1],
         dkdv_prefetch.launches[0], dq_prefetch.launches[1], dq_prefetch.launches[0]);
  printf("worst row error, over the tolerance: out %.3g, gradients %.3g\n", worst_row_seen.out, worst_row_seen.grad);
  printf("%d failures\n", fails);
  return fails != 0;
}
