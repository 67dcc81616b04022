// One fused AdamW step per parameter tensor: reads the gradient once and updates the f32 state
// rows [master weight; first moment; second moment] in place. Compiled to PTX by build.rs when
// the crate is built with the `cuda` feature; the CPU twin is in src/tune/fused_adamw.rs.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

template <typename G>
__device__ void adamw(float* state, const G* grad, unsigned int n, float lr, float beta1, float beta2,
                      float eps, float c1, float c2, float decay) {
    float* w = state;
    float* m = state + n;
    float* v = state + 2 * (size_t)n;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)blockDim.x * gridDim.x) {
        float g = static_cast<float>(grad[i]);
        float mi = beta1 * m[i] + (1.0f - beta1) * g;
        float vi = beta2 * v[i] + (1.0f - beta2) * g * g;
        m[i] = mi;
        v[i] = vi;
        float step = (lr / c1) * mi / (sqrtf(vi / c2) + eps);
        w[i] = w[i] * decay - step;
    }
}

#define ADAMW(NAME, G)                                                                              \
    extern "C" __global__ void NAME(float* state, const G* grad, unsigned int n, float lr,         \
                                    float beta1, float beta2, float eps, float c1, float c2,       \
                                    float decay) {                                                 \
        adamw<G>(state, grad, n, lr, beta1, beta2, eps, c1, c2, decay);                            \
    }

ADAMW(adamw_f32, float)
ADAMW(adamw_bf16, __nv_bfloat16)
ADAMW(adamw_f16, __half)
