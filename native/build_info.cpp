// Facts about this binary and the shared libraries it can find, for `ring-attention info`.
#include <dlfcn.h>
#include <link.h>

#include <string>

#include "common.h"
#include "cpu/threads.h"
#include "cpu/vec.h"

#ifndef RA_BUILD_SYSTEM
#define RA_BUILD_SYSTEM "node-gyp"
#endif

namespace ra {

const char* build_system() { return RA_BUILD_SYSTEM; }

const char* cpu_kernels() {
#ifdef RA_CPU_AVX2
  if (cpu::use_avx2_fma()) return "avx2+fma";
#endif
  return "portable";
}

int cpu_threads() { return cpu::hardware_threads(); }

// Opens `name` as the dynamic loader would (a bare soname searches LD_LIBRARY_PATH and the
// ldconfig cache; a path is taken as is) and returns the file it resolved to, or "".
std::string find_library(const std::string& name) {
  void* handle = dlopen(name.c_str(), RTLD_LAZY | RTLD_LOCAL);
  if (!handle) return "";
  std::string path;
  struct link_map* map = nullptr;
  if (dlinfo(handle, RTLD_DI_LINKMAP, &map) == 0 && map && map->l_name) path = map->l_name;
  dlclose(handle);
  return path.empty() ? name : path;
}

}  // namespace ra
