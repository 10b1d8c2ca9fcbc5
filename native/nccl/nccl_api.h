// The part of NCCL we call, declared here so that one binary builds without NCCL and
// loads it at run time (dlopen). The values and signatures are NCCL's (nccl.h, 2.19+);
// check_nccl_h.cpp verifies them against the real header whenever the build finds one.
#pragma once
#include <cstddef>
#include <string>

struct CUstream_st;  // the CUDA runtime's stream, declared as cuda_runtime.h does

namespace ra::nccl {

typedef struct ncclComm* ncclComm_t;
typedef ::CUstream_st* cudaStream_t;
typedef struct { char internal[128]; } ncclUniqueId;

typedef enum {
  ncclSuccess = 0, ncclUnhandledCudaError = 1, ncclSystemError = 2, ncclInternalError = 3,
  ncclInvalidArgument = 4, ncclInvalidUsage = 5, ncclRemoteError = 6, ncclInProgress = 7,
} ncclResult_t;
typedef enum { ncclUint8 = 1, ncclFloat16 = 6, ncclFloat32 = 7, ncclFloat64 = 8, ncclBfloat16 = 9 } ncclDataType_t;
typedef enum { ncclSum = 0 } ncclRedOp_t;

// The head of nccl.h's ncclConfig_t, which is versioned: NCCL copies `size` bytes over its
// defaults and resets every field newer than `version`, so declaring the fields up to
// `blocking` (2.14) and claiming 2.14 leaves the rest at NCCL's defaults.
typedef struct {
  size_t size;
  unsigned int magic;
  unsigned int version;
  int blocking;
} ncclConfig_t;
constexpr unsigned int kNcclConfigMagic = 0xcafebeef;
constexpr unsigned int kNcclConfigVersion = 21400;  // NCCL_VERSION(2, 14, 0)

// Function pointers, named as in nccl.h without the prefix.
struct Api {
  ncclResult_t (*GetVersion)(int* version);
  ncclResult_t (*GetUniqueId)(ncclUniqueId* id);
  ncclResult_t (*CommInitRank)(ncclComm_t* comm, int nranks, ncclUniqueId id, int rank);
  ncclResult_t (*CommInitRankConfig)(ncclComm_t* comm, int nranks, ncclUniqueId id, int rank, ncclConfig_t* config);
  ncclResult_t (*CommDestroy)(ncclComm_t comm);
  ncclResult_t (*CommAbort)(ncclComm_t comm);
  ncclResult_t (*CommGetAsyncError)(ncclComm_t comm, ncclResult_t* error);
  const char* (*GetErrorString)(ncclResult_t result);
  ncclResult_t (*Send)(const void* buf, size_t count, ncclDataType_t type, int peer, ncclComm_t comm, cudaStream_t stream);
  ncclResult_t (*Recv)(void* buf, size_t count, ncclDataType_t type, int peer, ncclComm_t comm, cudaStream_t stream);
  ncclResult_t (*AllReduce)(const void* send, void* recv, size_t count, ncclDataType_t type, ncclRedOp_t op,
                            ncclComm_t comm, cudaStream_t stream);
  ncclResult_t (*GroupStart)();
  ncclResult_t (*GroupEnd)();
  ncclResult_t (*CommFinalize)(ncclComm_t comm);  // 2.14, as CommInitRankConfig
};

// Opens libnccl at `path` once per process and resolves every symbol above; throws a
// UserError naming what is missing. Later calls return the same library.
const Api& load(const std::string& path);
// The library load() opened; throws when none was.
const Api& loaded();
// A fresh ncclUniqueId from the loaded library (rank 0 hands it out through the rendezvous).
ncclUniqueId unique_id();

}  // namespace ra::nccl
