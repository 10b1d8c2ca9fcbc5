// dlopen of cuBLAS. The search (RING_ATTENTION_CUBLAS_PATH, the loader path, the CUDA
// install, Python wheels; .so.13 before .so.12) lives in lib/libraries.ts; this opens the
// files it chose. Compiled in every build, so a CPU-only binary still reports what it found.
#include <dlfcn.h>

#include <mutex>

#include "../common.h"
#include "cublas_subset.h"

namespace ra::cublas {

namespace {
std::mutex mu;
Api api;
std::string opened;

template <typename F>
void resolve(void* lib, const std::string& path, const char* name, F& fn) {
  fn = reinterpret_cast<F>(dlsym(lib, name));
  if (!fn) throw UserError("Error", path + " is not a usable cuBLAS: it has no " + name + " (cuBLAS 12 or newer is needed)");
}
}  // namespace

const Api& load(const std::string& lt_path, const std::string& path) {
  std::lock_guard<std::mutex> lock(mu);
  if (!opened.empty()) return api;
  // RTLD_GLOBAL is not needed: the loader matches libcublas's NEEDED entry to an open
  // library by soname. Both stay open for the life of the process, like linked ones.
  void* lt = dlopen(lt_path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (!lt) throw UserError("Error", "cannot load cuBLASLt from " + lt_path + ": " + dlerror());
  void* lib = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (!lib) {
    const std::string why = dlerror();
    dlclose(lt);
    throw UserError("Error", "cannot load cuBLAS from " + path + ": " + why);
  }
  Api a{};
  try {
    resolve(lib, path, "cublasCreate_v2", a.Create);
    resolve(lib, path, "cublasSetStream_v2", a.SetStream);
    resolve(lib, path, "cublasSetMathMode", a.SetMathMode);
    resolve(lib, path, "cublasGetStatusString", a.GetStatusString);
    resolve(lib, path, "cublasGemmEx", a.GemmEx);
  } catch (...) {
    dlclose(lib);
    dlclose(lt);
    throw;
  }
  api = a;
  opened = path;
  return api;
}

const Api& loaded() {
  std::lock_guard<std::mutex> lock(mu);
  if (opened.empty()) throw UserError("Error", "cuBLAS has not been loaded");
  return api;
}

std::string loaded_path() {
  std::lock_guard<std::mutex> lock(mu);
  return opened;
}

}  // namespace ra::cublas
