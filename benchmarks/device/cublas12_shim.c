/* libcublas.so.12 that forwards to the CUDA 13 cuBLAS found on a machine.
 *
 * Only for benchmarks/faiss_gpu.py's check on a machine that has CUDA 13 libraries and no network (the faiss-gpu-cu12
 * wheel needs libcublas.so.12, whose 580 MB wheel cannot be carried there). It defines the eight cuBLAS entry points
 * FAISS 1.14 calls (`nm -D --undefined-only libfaiss*.so | grep cublas`), under the version node libcublas.so.12 that
 * the FAISS library asks for, and calls the functions of the same name in the library named by $RKD_CUBLAS13
 * (default libcublas.so.13). Their C signatures did not change between cuBLAS 12 and 13. Anywhere with a network,
 * install nvidia-cublas-cu12 instead (pip install faiss-gpu-cu12 does).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>

typedef int status_t; /* cublasStatus_t */
typedef void *handle_t;

static void *target(const char *name) {
    static void *lib;
    static const char *path;
    if (!lib) {
        path = getenv("RKD_CUBLAS13");
        if (!path)
            path = "libcublas.so.13";
        lib = dlopen(path, RTLD_NOW | RTLD_GLOBAL);
        if (!lib) {
            fprintf(stderr, "cublas12_shim: %s\n", dlerror());
            abort();
        }
    }
    void *f = dlsym(lib, name);
    if (!f) {
        fprintf(stderr, "cublas12_shim: %s has no %s\n", path, name);
        abort();
    }
    return f;
}

status_t cublasCreate_v2(handle_t *h) {
    return ((status_t(*)(handle_t *))target("cublasCreate_v2"))(h);
}

status_t cublasDestroy_v2(handle_t h) {
    return ((status_t(*)(handle_t))target("cublasDestroy_v2"))(h);
}

status_t cublasSetStream_v2(handle_t h, void *stream) {
    return ((status_t(*)(handle_t, void *))target("cublasSetStream_v2"))(h, stream);
}

status_t cublasSetMathMode(handle_t h, int mode) {
    return ((status_t(*)(handle_t, int))target("cublasSetMathMode"))(h, mode);
}

status_t cublasGetMathMode(handle_t h, int *mode) {
    return ((status_t(*)(handle_t, int *))target("cublasGetMathMode"))(h, mode);
}

typedef status_t (*sgemmex_t)(handle_t, int, int, int, int, int, const float *, const void *, int, int, const void *,
                              int, int, const float *, void *, int, int);

status_t cublasSgemmEx(handle_t h, int ta, int tb, int m, int n, int k, const float *alpha, const void *a, int at,
                       int lda, const void *b, int bt, int ldb, const float *beta, void *c, int ct, int ldc) {
    return ((sgemmex_t)target("cublasSgemmEx"))(h, ta, tb, m, n, k, alpha, a, at, lda, b, bt, ldb, beta, c, ct, ldc);
}

typedef status_t (*gemmex_t)(handle_t, int, int, int, int, int, const void *, const void *, int, int, const void *,
                             int, int, const void *, void *, int, int, int, int);

status_t cublasGemmEx(handle_t h, int ta, int tb, int m, int n, int k, const void *alpha, const void *a, int at,
                      int lda, const void *b, int bt, int ldb, const void *beta, void *c, int ct, int ldc,
                      int compute, int algo) {
    return ((gemmex_t)target("cublasGemmEx"))(h, ta, tb, m, n, k, alpha, a, at, lda, b, bt, ldb, beta, c, ct, ldc,
                                              compute, algo);
}

typedef status_t (*batched_t)(handle_t, int, int, int, int, int, const void *, const void *, int, int, long long,
                              const void *, int, int, long long, const void *, void *, int, int, long long, int, int,
                              int);

status_t cublasGemmStridedBatchedEx(handle_t h, int ta, int tb, int m, int n, int k, const void *alpha,
                                    const void *a, int at, int lda, long long sa, const void *b, int bt, int ldb,
                                    long long sb, const void *beta, void *c, int ct, int ldc, long long sc,
                                    int batch, int compute, int algo) {
    return ((batched_t)target("cublasGemmStridedBatchedEx"))(h, ta, tb, m, n, k, alpha, a, at, lda, sa, b, bt, ldb,
                                                             sb, beta, c, ct, ldc, sc, batch, compute, algo);
}
