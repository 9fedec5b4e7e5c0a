#!/bin/sh
# Makes NVRTC and cuBLAS from pip's NVIDIA wheels (what PyTorch installs) loadable by vigil:
# cudarc opens them by their CUDA 12 names (libnvrtc.so.12, libcublas.so.12) or unversioned
# (libnvrtc.so, libcublas.so); CUDA 13 wheels ship libnvrtc.so.13 and libcublas.so.13. This links
# every library of site-packages/nvidia/*/lib into one folder, adds the unversioned names, and
# prints the LD_LIBRARY_PATH line to use:
#
#   eval "$(sh backend/src/cuda/cuda-libs.sh)" && vigil check-gpu
set -eu
python=${PYTHON:-python3}
dest=${1:-${TMPDIR:-/tmp}/vigil-cuda-libs}
mkdir -p "$dest"
site=$("$python" -c 'import site; print(" ".join(site.getsitepackages()))')
found=0
for s in $site; do
    for lib in "$s"/nvidia/*/lib/lib*.so*; do
        [ -e "$lib" ] || continue
        ln -sf "$lib" "$dest/$(basename "$lib")"
        found=1
    done
done
[ "$found" = 1 ] || { echo "no nvidia/*/lib under $site" >&2; exit 1; }
for name in nvrtc cublas cublasLt; do
    newest=$(ls "$dest"/lib$name.so.* 2>/dev/null | sort -V | tail -n 1 || true)
    [ -n "$newest" ] && ln -sf "$(readlink "$newest")" "$dest/lib$name.so"
done
echo "export LD_LIBRARY_PATH=$dest\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
