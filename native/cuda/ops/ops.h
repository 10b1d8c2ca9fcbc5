// The training ops on CUDA tensors: what lib/ops.ts calls for 'cuda' arguments, with the CPU
// ops' semantics (native/cpu/ops.h: "=" overwrites, "+=" accumulates). Work is enqueued on
// the default stream, in order with every other op and the attention kernels, and the host
// does not wait, except where a number is returned (cross_entropy's loss, sum_of_squares):
// those copy a small result to the host and so wait for the work before them.
//
// Storage types: the activation-like tensors of one call (x, w, y, dy, dx, table, h, wHead,
// dh, ...) are all float32 or all bfloat16; accumulated weight gradients (dw, dtable, dwGate,
// dwUp, dwDown, dwHead) and rstd are float32; adamw is float32 throughout. Every sum is
// float32 or wider. Matrix products are cuBLAS (loaded at run time: load_cublas) with float32
// compute; TF32 is not used, so float32 products are float32-exact up to summation order.
// Built from the .cu files beside this when nvcc is found, else from ../stub.cpp (throws).
#pragma once
#include <cstdint>
#include <string>

#include "../../common.h"

namespace ra::cuda::ops {

// Opens cuBLAS (paths found by lib/libraries.ts); idempotent.
void load_cublas(const std::string& lt_path, const std::string& path);

Tensor linear(const Tensor& x, const Tensor& w);                                                    // y =
void linear_backward(const Tensor& dy, const Tensor& x, const Tensor& w, Tensor* dx, Tensor& dw);   // dx =, dw +=
// ids: host array of M values in [0, V), uploaded for the call.
Tensor embedding(const int32_t* ids, int64_t M, const Tensor& table);                              // out =
void embedding_backward(const int32_t* ids, int64_t M, const Tensor& dy, Tensor& dtable, int32_t skip);  // dtable += (id skip: nothing)
void rmsnorm(const Tensor& x, const Tensor& w, float eps, Tensor& y, Tensor& rstd);                 // y =, rstd =
void rmsnorm_backward(const Tensor& dy, const Tensor& x, const Tensor& w, const Tensor& rstd, Tensor& dx,
                      Tensor& dw);                                                                 // dx =, dw +=
// positions: host array of M values, inv_freq: host array of D/2 values, uploaded for the call.
Tensor rope(const Tensor& x, const int32_t* positions, const double* inv_freq, bool inverse);       // out =
Tensor ffn(const Tensor& x, const Tensor& w_gate, const Tensor& w_up, const Tensor& w_down, int64_t block_rows);
void ffn_backward(const Tensor& dy, const Tensor& x, const Tensor& w_gate, const Tensor& w_up, const Tensor& w_down,
                  int64_t block_rows, Tensor& dx, Tensor& dw_gate, Tensor& dw_up, Tensor& dw_down);  // dx =, dw* +=
struct CrossEntropyResult {
  double loss_sum;
  int64_t count;
};
// targets: host array of M values; waits for the device to return the loss.        dh =, dw_head +=
CrossEntropyResult cross_entropy(const Tensor& h, const Tensor& w_head, const int32_t* targets, int64_t chunk_rows,
                                 int32_t ignore_index, float grad_scale, Tensor* dh, Tensor* dw_head);
void adamw(Tensor& param, const Tensor& grad, Tensor& m, Tensor& v, int64_t step, float lr, float beta1, float beta2,
           float eps, float weight_decay);
// One AdamW step over many tensors in one launch, each as adamw() with its own weight decay,
// after grad *= grad_scale (written back) when grad_scale is not 1; copies[i], when not null
// (bfloat16), gets params[i] rounded. Lists of one length, tensors distinct (checked by the caller).
void adamw_multi(const std::vector<Tensor*>& params, const std::vector<Tensor*>& grads, const std::vector<Tensor*>& ms,
                 const std::vector<Tensor*>& vs, const std::vector<Tensor*>& copies, const std::vector<float>& weight_decay,
                 int64_t step, float lr, float beta1, float beta2, float eps, float grad_scale);
double sum_of_squares(const std::vector<const Tensor*>& ts);  // of all of them; waits for the device
void scale(Tensor& t, float s);
void add(Tensor& a, const Tensor& b);
void zero(Tensor& t);
// dst = src in dst's dtype: from float32 to any dtype, or between tensors of one dtype.
void copy(Tensor& dst, const Tensor& src);

}  // namespace ra::cuda::ops
