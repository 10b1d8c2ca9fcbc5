// dlopen of NCCL. The search order (RING_ATTENTION_NCCL_PATH, the loader path, the CUDA
// install, Python wheels) lives in lib/libraries.ts; this opens the file it chose.
#include <dlfcn.h>

#include <mutex>

#include "../common.h"
#include "nccl_api.h"

namespace ra::nccl {

namespace {
std::mutex mu;
Api api;
std::string opened;  // path of the library api points into

template <typename F>
void resolve(void* lib, const std::string& path, const char* name, F& fn) {
  fn = reinterpret_cast<F>(dlsym(lib, name));
  if (!fn)
    throw UserError("Error", path + " is not a usable NCCL: it has no " + name + " (NCCL 2.19 or newer is needed)");
}
}  // namespace

const Api& load(const std::string& path) {
  std::lock_guard<std::mutex> lock(mu);
  if (!opened.empty()) return api;
  void* lib = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (!lib) throw UserError("Error", "cannot load NCCL from " + path + ": " + dlerror());
  Api a{};
  try {
#define RESOLVE(fn) resolve(lib, path, "nccl" #fn, a.fn)
    RESOLVE(GetVersion), RESOLVE(GetUniqueId), RESOLVE(CommInitRank), RESOLVE(CommDestroy), RESOLVE(CommAbort);
    RESOLVE(CommGetAsyncError), RESOLVE(GetErrorString), RESOLVE(Send), RESOLVE(Recv), RESOLVE(AllReduce);
    RESOLVE(GroupStart), RESOLVE(GroupEnd), RESOLVE(CommInitRankConfig), RESOLVE(CommFinalize);
#undef RESOLVE
  } catch (...) {
    dlclose(lib);
    throw;
  }
  api = a;  // the library stays open for the life of the process, like any linked one
  opened = path;
  return api;
}

const Api& loaded() {
  std::lock_guard<std::mutex> lock(mu);
  if (opened.empty()) throw UserError("Error", "NCCL has not been loaded");
  return api;
}

ncclUniqueId unique_id() {
  const Api& a = loaded();
  ncclUniqueId id;
  ncclResult_t r = a.GetUniqueId(&id);
  if (r != ncclSuccess) throw UserError("Error", std::string("ncclGetUniqueId failed: ") + a.GetErrorString(r));
  return id;
}

}  // namespace ra::nccl
