// Whole-tensor attention on CUDA: contiguous strides into the flash params, float32
// gradient accumulators (the kernels add into them), one conversion to the tensors' dtype.
// Temporaries go back to the caching allocator while kernels may still run: safe because
// everything here is ordered on the one default stream, as is every later user of a block.
#include <memory>

#include "attention.h"
#include "device.h"
#include "flash/flash.h"

namespace ra::cuda {
namespace {

// The operands' shapes, dtypes and devices are checked by the caller (check_attention_operands).
flash::FwdParams whole(const Tensor& q, const Tensor& k, bool causal, float scale) {
  const auto &qs = q.shape, &ks = k.shape;
  if (qs.size() != 4 || ks.size() != 4 || qs[0] != ks[0] || qs[3] != ks[3] || ks[2] == 0 || qs[2] % ks[2] != 0)
    throw UserError("RangeError", "attention: inconsistent shapes");
  if (q.device != Device::CUDA || k.device != Device::CUDA) throw UserError("TypeError", "attention: expected CUDA tensors");
  flash::FwdParams p{};
  p.batch = int(qs[0]), p.seq_q = int(qs[1]), p.heads = int(qs[2]), p.head_dim = int(qs[3]);
  p.seq_k = int(ks[1]), p.kv_heads = int(ks[2]);
  p.q_row_stride = p.o_row_stride = qs[2] * qs[3];
  p.q_batch_stride = p.o_batch_stride = qs[1] * qs[2] * qs[3];
  p.k_row_stride = p.v_row_stride = ks[2] * ks[3];
  p.k_batch_stride = p.v_batch_stride = ks[1] * ks[2] * ks[3];
  p.lse_head_stride = qs[1];
  p.lse_batch_stride = qs[1] * qs[2];
  p.scale = scale;
  p.causal_offset = causal ? ks[1] - qs[1] : 0;
  // Allocations are 256-byte aligned; with head_dim % 8 == 0 every row starts on 16 bytes.
  p.vec_ok = p.head_dim % 8 == 0;
  return p;
}

// Packed sequences: the ids on the device (the same for queries and keys), then their spans,
// set in p. The returned storage must live until the kernels are queued.
std::unique_ptr<Storage> with_documents(flash::FwdParams& p, const int32_t* docs) {
  if (!docs) return nullptr;
  const size_t n = size_t(p.batch) * p.seq_q;
  auto s = std::make_unique<Storage>(Device::CUDA, (n + flash::doc_span_ints(p.batch, p.seq_q)) * 4);
  int* ids = static_cast<int*>(s->ptr);
  upload_async(docs, ids, n * 4);
  flash::document_spans(ids, p.batch, p.seq_q, ids + n, nullptr);
  p.doc_q = p.doc_k = ids;
  p.doc_q_spans = p.doc_k_spans = ids + n;
  p.doc_q_batch_stride = p.doc_k_batch_stride = p.seq_q;
  return s;
}

Tensor zeros_f32(const std::vector<int64_t>& shape) {
  Tensor t = Tensor::empty(shape, DType::F32, Device::CUDA);
  zero(t.storage->ptr, t.storage->bytes);
  return t;
}

}  // namespace

AttnOut attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, bool causal, float scale,
                          const int32_t* docs) {
  auto p = whole(q, k, causal, scale);
  auto doc_storage = with_documents(p, docs);
  AttnOut r{Tensor::empty(q.shape, q.dtype, Device::CUDA), Tensor::empty({p.batch, p.heads, p.seq_q}, DType::F32, Device::CUDA)};
  p.q = q.storage->ptr, p.k = k.storage->ptr, p.v = v.storage->ptr;
  p.out = r.out.storage->ptr, p.out_accum = nullptr, p.lse = r.lse.f32();
  flash::forward(p, q.dtype, causal, nullptr);
  return r;
}

AttnGrads attention_backward(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                             const Tensor& lse, bool causal, float scale, bool deterministic, const int32_t* docs) {
  flash::BwdParams bp{};
  bp.fwd = whole(q, k, causal, scale);
  auto& p = bp.fwd;
  auto doc_storage = with_documents(p, docs);
  p.q = q.storage->ptr, p.k = k.storage->ptr, p.v = v.storage->ptr, p.lse = const_cast<float*>(lse.f32());
  Tensor delta = Tensor::empty({p.batch, p.heads, p.seq_q}, DType::F32, Device::CUDA);
  flash::compute_delta(p, out.storage->ptr, dout.storage->ptr, delta.f32(), q.dtype, nullptr);
  Tensor dq = zeros_f32(q.shape), dk = zeros_f32(k.shape), dv = zeros_f32(k.shape);
  bp.dout = dout.storage->ptr, bp.delta = delta.f32();
  bp.dq_accum = dq.f32(), bp.dk_accum = dk.f32(), bp.dv_accum = dv.f32();
  bp.dq_batch_stride = p.q_batch_stride, bp.dq_row_stride = p.q_row_stride;
  bp.dk_batch_stride = p.k_batch_stride, bp.dk_row_stride = p.k_row_stride;
  bp.deterministic = deterministic;
  flash::backward(bp, q.dtype, causal, nullptr);
  AttnGrads g{Tensor::empty(q.shape, q.dtype, Device::CUDA), Tensor::empty(k.shape, k.dtype, Device::CUDA),
              Tensor::empty(k.shape, k.dtype, Device::CUDA)};
  f32_to_dtype(dq.f32(), g.dq.storage->ptr, q.dtype, size_t(q.numel()));
  f32_to_dtype(dk.f32(), g.dk.storage->ptr, k.dtype, size_t(k.numel()));
  f32_to_dtype(dv.f32(), g.dv.storage->ptr, k.dtype, size_t(k.numel()));
  return g;
}

}  // namespace ra::cuda
