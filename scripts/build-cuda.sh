#!/usr/bin/env bash
# Builds the `secure-tuning` binary with the `cuda` feature on a machine that has neither a GPU
# nor a CUDA installation, for an H100/H200 host (compute capability 9.0, driver 580 = CUDA 13.0).
#
#   scripts/build-cuda.sh                 # from the repository root
#   scripts/build-cuda.sh --example ratio_sweep   # extra cargo build arguments are passed on
#
# Output: gpu-bin/ (stripped binaries and env.sh). On the GPU host:
#   source gpu-bin/env.sh && gpu-bin/secure-tuning bench --preset qwen2.5-0.5b --torch python3
#
# How: the CUDA 13.0 compiler, headers and link-time libraries come from NVIDIA's PyPI wheels,
# unpacked under $CUDA_BUILD_BASE (default /opt/cuda-build); libcuda.so, which only the driver
# provides, is replaced at link time by a stub that defines the driver functions cudarc declares.
# Why 13.0 exactly: candle's kernels are shipped as PTX that the driver compiles when loading;
# PTX from a newer nvcc carries an ISA version a 13.0 driver rejects. The first build takes
# 20-30 minutes on 2 cores (candle's kernels most of it); later ones reuse the target folder.
set -euo pipefail
cd "$(dirname "$0")/.."
BASE=${CUDA_BUILD_BASE:-/opt/cuda-build}
export CUDA_ROOT=${CUDA_ROOT:-$BASE/cuda-13.0}
PY=${PYTHON:-python3}

# 1. The toolkit, from wheels (pip skips what is already downloaded).
if [ ! -x "$CUDA_ROOT/bin/nvcc" ]; then
  mkdir -p "$BASE/wheels"
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    -d "$BASE/wheels" \
    nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-cuda-runtime==13.0.96 \
    nvidia-cuda-cccl==13.0.85 nvidia-cuda-nvrtc==13.0.88 nvidia-curand==10.4.0.35 nvidia-cublas==13.0.2.14
  unpack=$(mktemp -d "$BASE/unpack.XXXX")
  for wheel in "$BASE"/wheels/nvidia_*.whl; do unzip -q -o "$wheel" 'nvidia/*' -d "$unpack"; done
  rm -rf "$CUDA_ROOT" && mv "$unpack/nvidia/cu13" "$CUDA_ROOT" && rm -rf "$unpack"
  # The layout nvcc and cudarc's build script look for, and unversioned names for the linker.
  ln -sfn lib "$CUDA_ROOT/lib64"
  mkdir -p "$CUDA_ROOT/targets" && ln -sfn .. "$CUDA_ROOT/targets/x86_64-linux"
  for lib in libcudart.so.13 libnvrtc.so.13 libcurand.so.10 libcublas.so.13 libcublasLt.so.13; do
    ln -sfn "$lib" "$CUDA_ROOT/lib/${lib%%.so*}.so"
  done
fi

# 2. The libcuda.so stub: one empty function per driver entry point in cudarc's bindings.
cargo fetch -q
if [ ! -f "$CUDA_ROOT/lib/stubs/libcuda.so" ]; then
  bindings=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-0.19.*/src/driver/sys/mod.rs | tail -1)
  mkdir -p "$CUDA_ROOT/lib/stubs"
  grep -oE '^\s+fn (cu[A-Za-z0-9_]+)\(' "$bindings" | sed -E 's/^\s+fn //; s/\($//' | sort -u \
    | awk '{ printf "void %s(void) {}\n", $1 }' > "$CUDA_ROOT/lib/stubs/stub.c"
  gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$CUDA_ROOT/lib/stubs/libcuda.so" "$CUDA_ROOT/lib/stubs/stub.c"
fi

# 3. The build. The binary looks for the CUDA libraries where the GPU host's PyTorch keeps them.
export CUDA_HOME=$CUDA_ROOT PATH=$CUDA_ROOT/bin:$PATH
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$BASE/target}
host_libs=/opt/torch/.venv/lib/python3.12/site-packages/nvidia/cu13/lib:/usr/local/cuda/lib64:/usr/local/nvidia/lib64
export RUSTFLAGS="${RUSTFLAGS:-} -C link-arg=-Wl,--enable-new-dtags,-rpath,$host_libs -L native=$CUDA_ROOT/lib/stubs"
start=$(date +%s)
cargo build --release --features cuda --bin secure-tuning "$@"
echo "build: $(( $(date +%s) - start )) s"
mkdir -p gpu-bin
cp "$CARGO_TARGET_DIR/release/secure-tuning" gpu-bin/ && strip gpu-bin/secure-tuning
cat > gpu-bin/env.sh <<'ENV'
# Source on the GPU host: the CUDA 13 libraries of its PyTorch install on the library path.
for dir in /opt/torch/.venv/lib/python3.12/site-packages/nvidia/cu13/lib /usr/local/cuda-13.0/targets/x86_64-linux/lib /usr/local/nvidia/lib64; do
  [ -d "$dir" ] && LD_LIBRARY_PATH="$dir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
done
export LD_LIBRARY_PATH
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null
ENV
du -sh gpu-bin
