#!/usr/bin/env bash
# benchmarks/faiss_gpu.py run, on a GPU machine with CUDA 13 libraries and no network.
#
# usage: bash benchmarks/device/faiss_gpu.sh WHEELS PACK OUT
#   WHEELS: faiss_gpu_cu12-*.whl (cp312) and nvidia_cuda_runtime_cu12-*.whl, fetched here with `pip download`;
#   PACK:   from `python benchmarks/faiss_gpu.py make-pack`;
#   OUT:    gets pytest.log (tests/test_distill_vq.py with the GPU visible), run.log and faiss_gpu.json.
# faiss-gpu-cu12 links libcudart.so.12 (taken from its wheel) and libcublas.so.12, whose wheel is too large to carry:
# cublas12_shim.c stands in for it and calls the machine's CUDA 13 cuBLAS. With a network, `pip install
# faiss-gpu-cu12` brings the real libraries and none of this is needed.
set -euo pipefail
wheels=$(cd "$1" && pwd) pack=$2 out=$3
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
mkdir -p "$out" "$work/lib"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$work/site" \
    "$wheels"/faiss_gpu_cu12-*.whl
python3 - "$wheels" "$work/lib" <<'PY'
import glob, sys, zipfile
wheel = glob.glob(sys.argv[1] + "/nvidia_cuda_runtime_cu12-*.whl")[0]
with zipfile.ZipFile(wheel) as z:
    data = z.read("nvidia/cuda_runtime/lib/libcudart.so.12")
open(sys.argv[2] + "/libcudart.so.12", "wb").write(data)
PY
cublas13=$(find /usr/local/cuda/ /usr/local/cuda*/ /opt /usr/lib -name 'libcublas.so.13*' 2>/dev/null | sort | head -1)
[ -n "$cublas13" ] || { echo "no libcublas.so.13 on this machine" >&2; exit 1; }
gcc -O2 -Wall -shared -fPIC -o "$work/lib/libcublas.so.12" "$here/cublas12_shim.c" \
    -Wl,--version-script="$here/cublas12_shim.map" -Wl,-soname,libcublas.so.12 -ldl
echo "" | gcc -shared -fPIC -x c - -o "$work/lib/libcublasLt.so.12" -Wl,-soname,libcublasLt.so.12
export RKD_CUBLAS13=$cublas13 _FAISS_WHEEL_DISABLE_CUDA_PRELOAD=1 PYTHONUNBUFFERED=1
export LD_LIBRARY_PATH="$work/lib:$(dirname "$cublas13")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export PYTHONPATH="$work/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
echo "cuBLAS behind the shim: $cublas13"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
python3 -c "import faiss, torch; print('faiss', faiss.__version__, 'GPUs', faiss.get_num_gpus(), 'torch', torch.__version__)"
python3 -m pytest -q -p no:cacheprovider tests/test_distill_vq.py 2>&1 | tee "$out/pytest.log" || echo "pytest failed"
python3 benchmarks/faiss_gpu.py run "$pack" "$out" 2>&1 | tee "$out/run.log"
