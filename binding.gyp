{
  "targets": [
    {
      "target_name": "ring_attention",
      "sources": [
        "native/addon.cpp",
        "native/group_addon.cpp",
        "native/tensor.cpp",
        "native/build_info.cpp",
        "native/cpu/attention_fwd.cpp",
        "native/cpu/attention_bwd.cpp",
        "native/ops_addon.cpp",
        "native/cpu/ops/gemm.cpp",
        "native/cpu/ops/embedding.cpp",
        "native/cpu/ops/rmsnorm.cpp",
        "native/cpu/ops/rope.cpp",
        "native/cpu/ops/ffn.cpp",
        "native/cpu/ops/cross_entropy.cpp",
        "native/cpu/ops/optim.cpp",
        "native/cpu/ops/random.cpp",
        "native/ring/local_group.cpp",
        "native/ring/ring_attention.cpp",
        "native/nccl/loader.cpp",
        "native/cublas/loader.cpp",
        "native/nccl/group_stub.cpp",
        "native/cuda/stub.cpp"
      ],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")"],
      "defines": ["NAPI_VERSION=8", "NAPI_CPP_EXCEPTIONS", "NODE_API_SWALLOW_UNTHROWABLE_EXCEPTIONS"],
      "cflags!": ["-fno-exceptions"],
      "cflags_cc!": ["-fno-exceptions", "-fno-rtti"],
      "cflags_cc": ["-std=c++17", "-O3", "-fexceptions"],
      "ldflags": ["-pthread"],
      "libraries": ["-ldl"]
    }
  ]
}
