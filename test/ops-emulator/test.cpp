// Runs the training-op kernels of native/cuda/ops/*.cuh, unmodified and through their own
// launch functions, on the CPU emulator (test/flash-emulator/shim.h) against float64
// references: embedding, RMSNorm, RoPE, SwiGLU, the cross-entropy rows, AdamW (and the
// multi-tensor AdamW against it, bit for bit), sum of squares, scale and add, in float32 and bfloat16, over ragged shapes (no multiple of the
// block sizes; more rows than the dw chunks; more elements than one grid-stride pass).
// Also the placement of host uploads in the pinned staging ring (native/cuda/staging.h).
// The cuBLAS products of the ops cannot run here; test/gpu/ops-cuda.test.ts covers them.
// Built and run by test/ops-emulator.test.ts:
//   g++ -std=c++20 -O2 -fsanitize=address -DRA_FLASH_EMULATOR -I. -Itest/flash-emulator \
//       test/ops-emulator/test.cpp -o t && ./t
#include "shim.h"
#include "native/cuda/ops/cross_entropy.cuh"
#include "native/cuda/ops/embedding.cuh"
#include "native/cuda/ops/optim.cuh"
#include "native/cuda/ops/rmsnorm.cuh"
#include "native/cuda/ops/rope.cuh"
#include "native/cuda/ops/swiglu.cuh"
#include "native/cuda/staging.h"
#include <string>
#include <type_traits>
using namespace ra::cuda::ops;

static int failures = 0;
static std::mt19937 rng(7);
static float U(float a = 1.f) { return std::uniform_real_distribution<float>(-a, a)(rng); }

static std::string fmt(double x) {
  char b[32];
  snprintf(b, sizeof b, "%g", x);
  return b;
}

template <class T> const char* tname() { return std::is_same_v<T, float> ? "f32" : "bf16"; }
// A value exactly representable in T, so the float64 reference sees what the kernel sees.
template <class T> float rnd(float v) { return float(T(v)); }

inline double as_double(double v) { return v; }
inline double as_double(float v) { return v; }
inline double as_double(__nv_bfloat16 v) { return float(v); }

// Every got[i] within tol * max(max|want|, floor) of want[i] (tol 0: equal), and no NaN.
// The floor is for references that cancel to ~0: the size of the terms that cancel.
template <class G>
void check(const std::string& name, const G& got, const std::vector<double>& want, double tol, double floor = 1e-3) {
  double err = 0, scale = floor;
  size_t bad = SIZE_MAX;
  for (size_t i = 0; i < want.size(); ++i) {
    const double g = as_double(got[i]);
    if (std::isnan(g) && bad == SIZE_MAX) bad = i;
    err = std::max(err, std::fabs(g - want[i])), scale = std::max(scale, std::fabs(want[i]));
  }
  const bool ok = bad == SIZE_MAX && err <= tol * scale;
  if (!ok) ++failures;
  printf("  %s %s: max err %.3g (ref max %.3g, tol %.3g)%s\n", ok ? "ok  " : "FAIL", name.c_str(), err, scale, tol,
         bad != SIZE_MAX ? " NaN" : "");
}

template <class T> double tol(double f32) { return std::is_same_v<T, float> ? f32 : 8e-3; }

template <class T>
void embedding(int64_t M, int64_t C, int64_t V, int32_t skip) {  // skip: the padding id, -1 none
  std::vector<int32_t> ids(M);
  for (auto& i : ids) i = int32_t(rng() % V);
  std::vector<T> table(V * C), out(M * C, T(NAN)), dy(M * C);
  std::vector<float> dtable(V * C);
  for (auto& x : table) x = T(U());
  for (auto& x : dy) x = T(U());
  for (auto& x : dtable) x = U();
  std::vector<double> want(M * C), dwant(dtable.begin(), dtable.end());
  for (int64_t m = 0; m < M; ++m)
    for (int64_t c = 0; c < C; ++c) want[m * C + c] = float(table[ids[m] * C + c]), dwant[ids[m] * C + c] += ids[m] == skip ? 0 : float(dy[m * C + c]);
  launch_embedding_fwd<T>(ids.data(), table.data(), out.data(), M, C, nullptr);
  // The CPU backend's bits: float32 adds into each row in token order.
  std::vector<double> dcpu(dtable.begin(), dtable.end());
  for (int64_t c = 0; c < C; ++c) {
    std::vector<float> row(V);
    for (int64_t v = 0; v < V; ++v) row[v] = dtable[v * C + c];
    for (int64_t m = 0; m < M; ++m)
      if (ids[m] != skip) row[ids[m]] += float(dy[m * C + c]);
    for (int64_t v = 0; v < V; ++v) dcpu[v * C + c] = row[v];
  }
  const TokenGroups groups = group_tokens_by_id(ids.data(), M, V, skip);
  launch_embedding_bwd<T>(groups, groups.data.data(), dy.data(), dtable.data(), C, nullptr);
  const std::string n = std::string("embedding ") + tname<T>() + " M" + std::to_string(M) + " C" + std::to_string(C) + " V" + std::to_string(V) + " skip" + std::to_string(skip);
  check(n + " out", out, want, 0);
  check(n + " dtable", dtable, dwant, 1.2e-7 * (1 + double(M) / V));  // float32 sums of about M / V terms
  check(n + " dtable = CPU bits", dtable, dcpu, 0);
}

template <class T>
// x up to `size`: at 3e-3 its mean square is below eps, so where eps goes shows.
void rmsnorm(int64_t M, int64_t C, float size = 2) {
  const float eps = 1e-5f;
  std::vector<T> x(M * C), w(C), y(M * C, T(NAN)), dy(M * C), dx(M * C, T(NAN));
  std::vector<float> rstd(M, NAN), dw(C);
  for (auto& v : x) v = T(U(size));
  for (auto& v : w) v = T(1 + U(0.5f));
  for (auto& v : dy) v = T(U());
  for (auto& v : dw) v = U();
  std::vector<double> wy(M * C), wr(M), wdx(M * C), wdw(dw.begin(), dw.end());
  double dx_terms = 1e-3;  // dx cancels to ~0 at C = 1: compare with its first term's size
  for (int64_t m = 0; m < M; ++m) {
    double ss = 0, s = 0;
    for (int64_t c = 0; c < C; ++c) ss += double(float(x[m * C + c])) * float(x[m * C + c]);
    const double r = 1 / std::sqrt(ss / C + eps);
    wr[m] = r;
    for (int64_t c = 0; c < C; ++c) {
      const double xv = float(x[m * C + c]), wv = float(w[c]), g = float(dy[m * C + c]);
      wy[m * C + c] = wv * xv * r, s += g * wv * xv, wdw[c] += g * xv * r;
    }
    for (int64_t c = 0; c < C; ++c) {
      const double first = r * double(float(w[c])) * float(dy[m * C + c]);
      wdx[m * C + c] = first - r * double(float(x[m * C + c])) * r * r * s / C;
      dx_terms = std::max(dx_terms, std::fabs(first));
    }
  }
  launch_rmsnorm_fwd<T>(x.data(), w.data(), eps, y.data(), rstd.data(), M, C, nullptr);
  std::vector<float> partial(rmsnorm_dw_chunks(M) * C, NAN);
  std::vector<float> rstd_in(wr.begin(), wr.end());
  launch_rmsnorm_bwd<T>(dy.data(), x.data(), w.data(), rstd_in.data(), dx.data(), dw.data(), partial.data(), M, C, nullptr);
  const std::string n = std::string("rmsNorm ") + tname<T>() + " M" + std::to_string(M) + " C" + std::to_string(C) +
                        (size != 2 ? " x up to " + fmt(size) : "");
  check(n + " y", y, wy, tol<T>(2e-6));
  check(n + " rstd", rstd, wr, 2e-6);
  check(n + " dx", dx, wdx, tol<T>(1e-5), dx_terms);
  check(n + " dw", dw, wdw, 1e-5);
}

template <class T>
void rope(int64_t M, int64_t H, int64_t D, bool inverse, bool in_place) {
  const double theta = 10000;
  std::vector<int32_t> pos(M);
  for (auto& p : pos) p = int32_t(rng() % 3 == 0 ? rng() % 2000000 : rng() % 100);
  std::vector<T> x(M * H * D), out(M * H * D, T(NAN));
  for (auto& v : x) v = T(U());
  std::vector<double> want(M * H * D);
  const int64_t half = D / 2;
  std::vector<double> inv_freq(half);
  for (int64_t i = 0; i < half; ++i) inv_freq[i] = std::pow(theta, -2.0 * double(i) / double(D));
  for (int64_t m = 0; m < M; ++m)
    for (int64_t i = 0; i < half; ++i) {
      const double a = double(pos[m]) * inv_freq[i];
      const double c = float(std::cos(a)), s = (inverse ? -1 : 1) * double(float(std::sin(a)));
      for (int64_t h = 0; h < H; ++h) {
        const int64_t o = (m * H + h) * D;
        const double u = float(x[o + i]), v = float(x[o + i + half]);
        want[o + i] = u * c - v * s, want[o + i + half] = v * c + u * s;
      }
    }
  T* dst = in_place ? x.data() : out.data();
  launch_rope<T>(x.data(), pos.data(), inv_freq.data(), dst, M, H, D, inverse, nullptr);
  const std::string n = std::string("rope ") + tname<T>() + (inverse ? " inverse" : "") + (in_place ? " in place" : "") +
                        " M" + std::to_string(M) + " H" + std::to_string(H) + " D" + std::to_string(D);
  check(n, in_place ? x : out, want, tol<T>(1e-6));
}

template <class T>
void swiglu(int64_t n) {
  std::vector<float> g(n), u(n), dh(n);
  for (int64_t i = 0; i < n; ++i) g[i] = U(6), u[i] = U(2), dh[i] = U();
  std::vector<T> h(n, T(NAN)), dg(n, T(NAN)), du(n, T(NAN));
  std::vector<double> wh(n), wdg(n), wdu(n);
  for (int64_t i = 0; i < n; ++i) {
    const double gv = g[i], s = 1 / (1 + std::exp(-gv));
    wh[i] = gv * s * u[i], wdg[i] = dh[i] * u[i] * s * (1 + gv * (1 - s)), wdu[i] = dh[i] * gv * s;
  }
  launch_swiglu_fwd<T>(g.data(), u.data(), h.data(), n, nullptr);
  launch_swiglu_bwd<T>(g.data(), u.data(), dh.data(), dg.data(), du.data(), n, nullptr);
  const std::string nm = std::string("swiglu ") + tname<T>() + " n" + std::to_string(n);
  check(nm + " h", h, wh, tol<T>(2e-6));
  check(nm + " dg", dg, wdg, tol<T>(2e-6));
  check(nm + " du", du, wdu, tol<T>(2e-6));
  if constexpr (std::is_same_v<T, float>) {  // in place, as ffn.cu runs it for float32
    std::vector<float> g2 = g, u2 = u;
    launch_swiglu_bwd<float>(g2.data(), u2.data(), dh.data(), g2.data(), u2.data(), n, nullptr);
    check(nm + " dg in place", g2, wdg, 2e-6);
    check(nm + " du in place", u2, wdu, 2e-6);
  }
}

// Each row's loss and gradient (times gs) in float64; an ignored row's are 0.
void ce_reference(const std::vector<float>& logits, const std::vector<int32_t>& t, int64_t V, int32_t ignore, float gs,
                  std::vector<double>& wl, std::vector<double>& wd) {
  for (size_t r = 0; r < t.size(); ++r) {
    if (t[r] == ignore) { wl[r] = 0; continue; }
    double mx = -INFINITY, s = 0;
    for (int64_t j = 0; j < V; ++j) mx = std::max(mx, double(logits[r * V + j]));
    for (int64_t j = 0; j < V; ++j) s += std::exp(logits[r * V + j] - mx);
    const double lse = mx + std::log(s);
    wl[r] = lse - logits[r * V + t[r]];
    for (int64_t j = 0; j < V; ++j) wd[r * V + j] = gs * (std::exp(logits[r * V + j] - lse) - (j == t[r]));
  }
}

template <class T>
void cross_entropy(int64_t rows, int64_t V, bool in_place) {
  const int32_t ignore = -100;
  const float gs = 0.37f;
  std::vector<float> logits(rows * V);
  for (auto& v : logits) v = U(4);
  std::vector<int32_t> t(rows);
  for (auto& x : t) x = rng() % 4 == 0 ? ignore : int32_t(rng() % V);
  std::vector<double> loss(rows, NAN), wl(rows), wd(rows * V);
  ce_reference(logits, t, V, ignore, gs, wl, wd);
  std::vector<T> dl(rows * V, T(NAN));
  T* dst = dl.data();
  if constexpr (std::is_same_v<T, float>) if (in_place) dst = logits.data();
  launch_ce_rows<T>(logits.data(), t.data(), rows, V, ignore, gs, loss.data(), dst, nullptr);
  const std::string n = std::string("cross-entropy rows ") + tname<T>() + (in_place ? " in place" : "") + " rows" +
                        std::to_string(rows) + " V" + std::to_string(V);
  check(n + " loss", loss, wl, 2e-6);
  if constexpr (std::is_same_v<T, float>) check(n + " dlogits", in_place ? logits : dl, wd, 2e-6);
  else check(n + " dlogits", dl, wd, tol<T>(0));
}

// Cross-entropy rows at logits where the max and its precision matter (from a mutation run:
// without them, a kernel without its max subtraction, one whose max loop missed the last logit,
// exp(l - float(lse)), and a block_max whose scratch block_sum reused too early, all passed).
// Rows by kind: 1e4 + U(4) (float(lse) loses 6e-4 of each probability); U(4) with the max, 200,
// at the last column; 95 + U(4) (expf overflows without the max); -1e4 + U(4) (underflows to 0
// without it); U(4). A third of the targets are V - 1. 200 rows: more blocks for a race to show.
void cross_entropy_large(int64_t rows, int64_t V, bool in_place) {
  const float gs = 0.37f;
  std::vector<float> logits(rows * V);
  std::vector<int32_t> t(rows);
  for (int64_t r = 0; r < rows; ++r) {
    const int kind = int(r % 5);
    const float off = kind == 0 ? 1e4f : kind == 2 ? 95.f : kind == 3 ? -1e4f : 0.f;
    for (int64_t j = 0; j < V; ++j) logits[r * V + j] = off + U(4);
    if (kind == 1) logits[r * V + V - 1] = 200.f;
    t[r] = r % 3 == 0 ? int32_t(V - 1) : int32_t(rng() % V);
  }
  std::vector<double> loss(rows, NAN), wl(rows), wd(rows * V);
  ce_reference(logits, t, V, -100, gs, wl, wd);
  std::vector<float> dl(rows * V, NAN);
  float* dst = in_place ? logits.data() : dl.data();
  launch_ce_rows<float>(logits.data(), t.data(), rows, V, -100, gs, loss.data(), dst, nullptr);
  const std::string n = "cross-entropy rows large logits" + std::string(in_place ? " in place" : "") + " rows" +
                        std::to_string(rows) + " V" + std::to_string(V);
  // Each row's loss against its own size: the largest (200) would set one tolerance for all.
  std::vector<double> got_rel(rows), want_rel(rows);
  for (int64_t r = 0; r < rows; ++r) {
    const double size = std::max(1.0, std::fabs(wl[r]));
    got_rel[r] = loss[r] / size, want_rel[r] = wl[r] / size;
  }
  check(n + " loss (each row relative to its own)", got_rel, want_rel, 2e-6, 1);
  check(n + " dlogits", in_place ? logits : dl, wd, 2e-6, gs);
}

// Gradients (and moments) of size `size`: at 1e-7, sqrt(v) is near eps, so where eps goes shows.
void adamw(int64_t n, float size = 1) {
  std::vector<float> p(n), g(n), m(n), v(n);
  for (int64_t i = 0; i < n; ++i) p[i] = U(), g[i] = U(size), m[i] = U(0.1f * size), v[i] = std::fabs(U(0.01f * size * size));
  const float lr = 1e-2f, b1 = 0.9f, b2 = 0.95f, eps = 1e-8f, wd = 0.1f;
  const int step = 3;
  const double bc1 = 1 - std::pow(double(b1), step), bc2 = 1 - std::pow(double(b2), step);
  std::vector<double> wp(n), wm(n), wv(n);
  for (int64_t i = 0; i < n; ++i) {
    wm[i] = double(b1) * m[i] + (1 - double(b1)) * g[i], wv[i] = double(b2) * v[i] + (1 - double(b2)) * g[i] * g[i];
    wp[i] = p[i] * (1 - double(lr) * wd) - lr / bc1 * wm[i] / (std::sqrt(wv[i]) / std::sqrt(bc2) + eps);
  }
  launch_adamw(p.data(), g.data(), m.data(), v.data(), n, b1, b2, eps, float(lr / bc1), float(std::sqrt(bc2)),
               float(double(lr) * wd), nullptr);
  const std::string nm = "adamw n" + std::to_string(n) + (size != 1 ? " gradients up to " + fmt(size) : "");
  check(nm + " param", p, wp, 2e-6);
  check(nm + " m", m, wm, 2e-6, 1e-3 * size);
  check(nm + " v", v, wv, 2e-6, 1e-3 * double(size) * size);
}

// The multi-tensor AdamW against launch_adamw (and launch_scale) one tensor at a time: the
// same bits, with per-tensor decay, a gradient scale written back, bfloat16 copies, tensors
// of 1 element, of a chunk and one more, several chunks, and an empty one (no chunk).
void adamw_multi(float grad_scale) {
  const std::vector<int64_t> sizes = {1, kAdamWChunk + 1, 0, 3 * kAdamWChunk - 5, 700};
  const float lr = 1e-2f, b1 = 0.9f, b2 = 0.95f, eps = 1e-8f;
  const int step = 3;
  const double bc1 = 1 - std::pow(double(b1), step), bc2 = 1 - std::pow(double(b2), step);
  struct One { std::vector<float> p, g, m, v; std::vector<__nv_bfloat16> copy; float wd; };
  std::vector<One> want, got;
  for (size_t k = 0; k < sizes.size(); ++k) {
    One o;
    const int64_t n = sizes[k];
    for (int64_t i = 0; i < n; ++i) o.p.push_back(U()), o.g.push_back(U(3)), o.m.push_back(U(0.1f)), o.v.push_back(std::fabs(U(0.01f)));
    o.copy.assign(size_t(n), __nv_bfloat16(0.f));
    o.wd = 0.1f * float(k);
    want.push_back(o), got.push_back(o);
  }
  std::vector<AdamWSlice> slices;
  int64_t chunks = 0;
  for (size_t k = 0; k < sizes.size(); ++k) {
    One &w = want[k], &o = got[k];
    const int64_t n = sizes[k];
    if (n == 0) continue;
    if (grad_scale != 1.f) launch_scale<float>(w.g.data(), n, grad_scale, nullptr);
    launch_adamw(w.p.data(), w.g.data(), w.m.data(), w.v.data(), n, b1, b2, eps, float(lr / bc1), float(std::sqrt(bc2)),
                 float(double(lr) * w.wd), nullptr);
    for (int64_t i = 0; i < n; ++i) w.copy[size_t(i)] = __float2bfloat16_rn(w.p[size_t(i)]);
    slices.push_back({o.p.data(), o.g.data(), o.m.data(), o.v.data(), k % 2 ? nullptr : o.copy.data(), n, chunks,
                      float(double(lr) * o.wd)});
    if (k % 2) o.copy = w.copy;  // no copy asked: nothing to compare
    chunks += adamw_chunks(n);
  }
  const AdamWScalars sc{b1, b2, eps, float(lr / bc1), float(std::sqrt(bc2)), grad_scale};
  launch_adamw_multi<__nv_bfloat16>(slices.data(), int(slices.size()), chunks, sc, nullptr);
  int wrong = 0;
  auto same = [](const auto& a, const auto& b) {  // memcmp is not for the null data() of an empty vector, even for 0 bytes
    return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(a[0])) == 0);
  };
  for (size_t k = 0; k < sizes.size(); ++k)
    wrong += !same(want[k].p, got[k].p) + !same(want[k].m, got[k].m) + !same(want[k].v, got[k].v) +
             !same(want[k].g, got[k].g) + !same(want[k].copy, got[k].copy);
  if (wrong) ++failures;
  printf("  %s adamw multi (grad scale %g): %zu tensors in %lld chunks, %d arrays differ from one launch per tensor\n",
         wrong ? "FAIL" : "ok  ", double(grad_scale), sizes.size(), (long long)chunks, wrong);
}

template <class T>
void elementwise(int64_t n) {
  std::vector<T> a(n), b(n), x(n);
  for (int64_t i = 0; i < n; ++i) a[i] = T(U()), b[i] = T(U()), x[i] = T(U());
  std::vector<double> wa(n), ws(n), ss(1, 0);
  for (int64_t i = 0; i < n; ++i)
    wa[i] = double(float(a[i])) + float(b[i]), ws[i] = double(float(x[i])) * 0.3f, ss[0] += double(float(x[i])) * float(x[i]);
  std::vector<double> partial(sum_of_squares_blocks(n), NAN);
  launch_sum_of_squares<T>(x.data(), n, partial.data(), nullptr);
  std::vector<double> got(1, 0);
  for (double p : partial) got[0] += p;
  launch_add<T>(a.data(), b.data(), n, nullptr);
  launch_scale<T>(x.data(), n, 0.3f, nullptr);
  const std::string nm = std::string(tname<T>()) + " n" + std::to_string(n);
  check("sumOfSquares " + nm, got, ss, 1e-12);
  check("add " + nm, a, wa, tol<T>(1e-7));
  check("scale " + nm, x, ws, tol<T>(1e-7));
}

template <class T>
void all() {
  // 5000 tokens of 2 ids: long groups; V 1000 > M: most ids unused.
  for (auto [M, C, V] : {std::array<int64_t, 3>{1, 1, 1}, {37, 70, 11}, {300, 5, 7}, {9, 300, 4}, {5000, 3, 2}, {40, 9, 1000}})
    for (int32_t skip : {-1, 0}) embedding<T>(M, C, V, skip);  // 0: every id of a 1-row table is padding
  for (auto [M, C] : {std::array<int64_t, 2>{1, 1}, {3, 257}, {130, 64}, {300, 33}, {5, 1000}}) rmsnorm<T>(M, C);
  rmsnorm<T>(130, 64, 3e-3f);
  for (auto [M, H, D] : {std::array<int64_t, 3>{1, 1, 2}, {77, 3, 10}, {300, 2, 128}})
    for (bool inv : {false, true}) rope<T>(M, H, D, inv, M == 77);
  for (int64_t n : {1, 1000, 4099}) swiglu<T>(n);
  for (auto [rows, V] : {std::array<int64_t, 2>{1, 1}, {13, 37}, {5, 1000}}) {
    cross_entropy<T>(rows, V, false);
    if (std::is_same_v<T, float>) cross_entropy<T>(rows, V, true);
  }
  for (int64_t n : {1, 1000, 70001}) elementwise<T>(n);
}

// The staging ring of upload_async never hands out bytes that a copy still in flight reads.
// Copies go to two streams, each finishing in its own order, so the oldest copy is not
// always the one in the way.
void staging_ring() {
  const size_t capacity = 1000;
  ra::cuda::StagingRing<int> ring(capacity);
  struct Copy { size_t begin, end; int id; };
  std::vector<Copy> copies;
  int finished[2] = {-1, -1};  // per stream (id % 2), the newest finished copy
  auto is_done = [&](int id) { return id <= finished[id % 2]; };
  int waits = 0, overlaps = 0, outside = 0;
  for (int id = 0; id < 20000; ++id) {
    for (int& f : finished) f += int(rng() % 5) * 2 * (rng() % 2);  // the device moves on, unevenly
    for (int& f : finished) f = std::min(f, id - 1);
    const size_t bytes = 1 + rng() % (rng() % 8 == 0 ? capacity : 200);
    const size_t at = ring.reserve(bytes, is_done, [&](int w) { ++waits, finished[w % 2] = std::max(finished[w % 2], w); });
    if (at + bytes > capacity) ++outside;
    for (const Copy& c : copies)
      if (!is_done(c.id) && at < c.end && c.begin < at + bytes) ++overlaps;
    std::erase_if(copies, [&](const Copy& c) { return is_done(c.id); });
    copies.push_back({at, at + bytes, id});
    ring.in_use(at, bytes, id);
  }
  // Waits must happen (some uploads fill the ring) but not at every upload.
  const bool ok = overlaps == 0 && outside == 0 && waits > 100 && waits < 20000 && ring.copies_in_flight() < 200;
  if (!ok) ++failures;
  printf("  %s staging ring: %d overlaps, %d outside, %d waits in 20000 uploads, %zu in flight\n", ok ? "ok  " : "FAIL",
         overlaps, outside, waits, ring.copies_in_flight());
}

int main() {
  staging_ring();
  all<float>();
  all<__nv_bfloat16>();
  for (auto [rows, V] : {std::array<int64_t, 2>{5, 37}, {10, 1000}, {200, 300}})
    for (bool in_place : {false, true}) cross_entropy_large(rows, V, in_place);
  rmsnorm<float>(400, 300);  // many blocks, for a race in block_sum's scratch to show
  for (int64_t n : {1, 1000, 270000}) adamw(n);
  adamw(1000, 1e-7f);  // 270000: more than one grid-stride pass (1024 x 256)
  adamw_multi(1.f);
  adamw_multi(0.37f);
  printf("%d failures\n", failures);
  return failures != 0;
}
