#!/usr/bin/env bash
# benchmarks/faiss_gpu.py run, with tests/test_distill_vq.py, on a GPU machine with CUDA 13 libraries and no network.
#
# usage: bash benchmarks/device/faiss_gpu.sh SITE CUDART_WHEEL PACK OUT
#   SITE:         an unpacked faiss-gpu wheel (pip install --target SITE faiss-gpu, or split_wheel.py join);
#   CUDART_WHEEL: nvidia_cuda_runtime_cu12-*.whl, fetched here with `pip download`;
#   PACK:         from `python benchmarks/faiss_gpu.py make-pack`;
#   OUT:          gets pytest.log, pytest-gpu.log, run.log and faiss_gpu.json.
# faiss-gpu (CUDA 12) preloads libcudart.so.12, libcublas.so.12, libcublasLt.so.12 and libcurand.so.10 from the
# nvidia.cuda_runtime, nvidia.cublas and nvidia.curand wheels. cuBLAS 12's wheel (580 MB) cannot be carried here, so
# this script lays out those three folders itself: libcudart.so.12 from CUDART_WHEEL, cublas12_shim.c compiled as
# libcublas.so.12 (it calls the machine's CUDA 13 cuBLAS), an empty libcublasLt.so.12 (FAISS calls none of its
# functions) and the machine's libcurand.so.10. With a network, `pip install faiss-gpu` brings the real libraries.
set -euo pipefail
site=$(cd "$1" && pwd) cudart=$2 pack=$3 out=$4
here=$(cd "$(dirname "$0")" && pwd)
nv=$(mktemp -d)
mkdir -p "$out" "$nv/nvidia/cuda_runtime/lib" "$nv/nvidia/cublas/lib" "$nv/nvidia/curand/lib"
python3 - "$cudart" "$nv/nvidia/cuda_runtime/lib" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    open(sys.argv[2] + "/libcudart.so.12", "wb").write(z.read("nvidia/cuda_runtime/lib/libcudart.so.12"))
PY
find_lib() { find /opt /usr/local/cuda/ /usr/lib -name "$1" 2>/dev/null | sort | head -1; }
cublas13=$(find_lib 'libcublas.so.13') curand=$(find_lib 'libcurand.so.10')
[ -n "$cublas13" ] && [ -n "$curand" ] || { echo "no libcublas.so.13 or libcurand.so.10 here" >&2; exit 1; }
gcc -O2 -Wall -shared -fPIC -o "$nv/nvidia/cublas/lib/libcublas.so.12" "$here/cublas12_shim.c" \
    -Wl,--version-script="$here/cublas12_shim.map" -Wl,-soname,libcublas.so.12 -ldl
echo "" | gcc -shared -fPIC -x c - -o "$nv/nvidia/cublas/lib/libcublasLt.so.12" -Wl,-soname,libcublasLt.so.12
ln -s "$curand" "$nv/nvidia/curand/lib/libcurand.so.10"
# one `nvidia` package spanning this folder and the machine's own nvidia wheels (torch's CUDA 13 libraries)
echo "__path__ = __import__('pkgutil').extend_path(__path__, __name__)" > "$nv/nvidia/__init__.py"
export RKD_CUBLAS13=$cublas13 PYTHONUNBUFFERED=1
export LD_LIBRARY_PATH="$(dirname "$cublas13")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export PYTHONPATH="$site:$nv:$PWD${PYTHONPATH:+:$PYTHONPATH}"
echo "cuBLAS behind the shim: $cublas13"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
python3 -c "import faiss, torch; print('faiss', faiss.__version__, faiss.__file__, 'GPUs', faiss.get_num_gpus(), 'torch', torch.__version__)"
timeout 240 python3 -m pytest -q -p no:cacheprovider -k "not gpu" tests/test_distill_vq.py 2>&1 | tee "$out/pytest.log" \
    || echo "pytest failed"
timeout 120 python3 -m pytest -q -p no:cacheprovider -k gpu tests/test_distill_vq.py 2>&1 | tee "$out/pytest-gpu.log" \
    || echo "pytest (GPU test) failed"
timeout 300 python3 benchmarks/faiss_gpu.py run "$pack" "$out" 2>&1 | grep -v "WARNING clustering" | tee "$out/run.log"
