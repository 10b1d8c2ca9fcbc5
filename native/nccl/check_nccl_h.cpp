// Compiled only when the build finds the real nccl.h (the GPU machine has it in the
// nvidia-nccl wheel): every declaration in nccl_api.h must match NCCL's, or the build fails.
#include <nccl.h>

#include <cstddef>
#include <type_traits>

#include "nccl_api.h"

namespace {
namespace ours = ra::nccl;

// Maps each of our types to NCCL's, so that function pointer types can be compared whole.
template <typename T> struct Real { using type = T; };
template <> struct Real<ours::ncclComm_t> { using type = ::ncclComm_t; };
template <> struct Real<ours::ncclComm_t*> { using type = ::ncclComm_t*; };
template <> struct Real<ours::ncclUniqueId> { using type = ::ncclUniqueId; };
template <> struct Real<ours::ncclUniqueId*> { using type = ::ncclUniqueId*; };
template <> struct Real<ours::ncclResult_t> { using type = ::ncclResult_t; };
template <> struct Real<ours::ncclResult_t*> { using type = ::ncclResult_t*; };
template <> struct Real<ours::ncclDataType_t> { using type = ::ncclDataType_t; };
template <> struct Real<ours::ncclRedOp_t> { using type = ::ncclRedOp_t; };
template <> struct Real<ours::ncclConfig_t*> { using type = ::ncclConfig_t*; };
template <typename F> struct RealFn;
template <typename R, typename... A> struct RealFn<R (*)(A...)> {
  using type = typename Real<R>::type (*)(typename Real<A>::type...);
};

#define SAME_FN(field, fn) \
  static_assert(std::is_same_v<RealFn<decltype(ours::Api::field)>::type, decltype(&::fn)>, #fn " differs from nccl.h")
SAME_FN(GetVersion, ncclGetVersion);
SAME_FN(GetUniqueId, ncclGetUniqueId);
SAME_FN(CommInitRank, ncclCommInitRank);
SAME_FN(CommInitRankConfig, ncclCommInitRankConfig);
SAME_FN(CommDestroy, ncclCommDestroy);
SAME_FN(CommAbort, ncclCommAbort);
SAME_FN(CommFinalize, ncclCommFinalize);
SAME_FN(CommGetAsyncError, ncclCommGetAsyncError);
SAME_FN(GetErrorString, ncclGetErrorString);
SAME_FN(Send, ncclSend);
SAME_FN(Recv, ncclRecv);
SAME_FN(AllReduce, ncclAllReduce);
SAME_FN(GroupStart, ncclGroupStart);
SAME_FN(GroupEnd, ncclGroupEnd);

static_assert(std::is_same_v<ours::cudaStream_t, ::cudaStream_t>);
static_assert(sizeof(ours::ncclUniqueId) == sizeof(::ncclUniqueId));
// Our config is the head of NCCL's: the same offsets, and the magic NCCL_CONFIG_INITIALIZER sets.
static_assert(offsetof(ours::ncclConfig_t, size) == offsetof(::ncclConfig_t, size));
static_assert(offsetof(ours::ncclConfig_t, magic) == offsetof(::ncclConfig_t, magic));
static_assert(offsetof(ours::ncclConfig_t, version) == offsetof(::ncclConfig_t, version));
static_assert(offsetof(ours::ncclConfig_t, blocking) == offsetof(::ncclConfig_t, blocking));
static_assert(ours::kNcclConfigVersion == NCCL_VERSION(2, 14, 0));
constexpr ::ncclConfig_t kInitializer = NCCL_CONFIG_INITIALIZER;
static_assert(kInitializer.magic == ours::kNcclConfigMagic);
static_assert(sizeof(ours::ncclResult_t) == sizeof(::ncclResult_t));
static_assert(sizeof(ours::ncclDataType_t) == sizeof(::ncclDataType_t));
static_assert(sizeof(ours::ncclRedOp_t) == sizeof(::ncclRedOp_t));
#define SAME_VALUE(name) static_assert(int(ours::name) == int(::name), #name " differs from nccl.h")
SAME_VALUE(ncclSuccess);
SAME_VALUE(ncclInProgress);
SAME_VALUE(ncclRemoteError);
SAME_VALUE(ncclUint8);
SAME_VALUE(ncclFloat16);
SAME_VALUE(ncclFloat32);
SAME_VALUE(ncclFloat64);
SAME_VALUE(ncclBfloat16);
SAME_VALUE(ncclSum);
}  // namespace
