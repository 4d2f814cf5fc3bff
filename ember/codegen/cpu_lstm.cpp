// The step loop of a float32 LSTM (ONNX's meaning: ember/ir/ops/_recurrence.py; the caller:
// runtime/native/lstm.py, from the `recurrent` extern). The input projections of every step, X.W + Wb + Rb,
// come in precomputed (one GEMM in the caller); each step adds R.h, then the gates. A small LSTM
// (openWakeWord's 16 steps of 64 units) spends ~7 us a step in torch's RNN loop on dispatch; here a
// step is a 4H x H matrix-vector product and 4H activations.
//
// Gates in torch's order: i f g o (the caller reorders ONNX's i o f c). Directions: bit d of
// `backward` set runs direction d from the last step to the first.

// (ember's CPU prelude, codegen/cpu_prelude.py, comes first: ember_sigmoidf and ember_tanhf
// vectorize; std::exp and std::tanh called per element took 2/3 of a step)
#include <cmath>
#include <cstdint>
#include <vector>

namespace {

// one direction of the recurrence over every step, batch row by batch row
void direction(const float* xw, const float* r, float* h, float* c, float* y, int64_t steps, int64_t batch,
               int64_t hidden, int64_t y_stride, bool backward) {
    const int64_t n4 = 4 * hidden;
    std::vector<float> gates(n4);
    for (int64_t s = 0; s < steps; ++s) {
        const int64_t t = backward ? steps - 1 - s : s;
        for (int64_t b = 0; b < batch; ++b) {
            const float* x_row = xw + (t * batch + b) * n4;
            float* hb = h + b * hidden;
            float* cb = c + b * hidden;
            float* g = gates.data();
#pragma omp simd
            for (int64_t j = 0; j < n4; ++j) g[j] = x_row[j];
            for (int64_t k = 0; k < hidden; ++k) {  // R.h as H rows of R^T scaled and summed: no
                const float hk = hb[k];               // horizontal sums, every lane busy
                const float* rk = r + k * n4;
#pragma omp simd
                for (int64_t j = 0; j < n4; ++j) g[j] += hk * rk[j];
            }
            const float* gi = gates.data();
            const float* gf = gi + hidden;
            const float* gg = gf + hidden;
            const float* go = gg + hidden;
#pragma omp simd
            for (int64_t k = 0; k < hidden; ++k) {
                const float cell = ember_sigmoidf(gf[k]) * cb[k] + ember_sigmoidf(gi[k]) * ember_tanhf(gg[k]);
                cb[k] = cell;
                hb[k] = ember_sigmoidf(go[k]) * ember_tanhf(cell);
            }
            if (y != nullptr) {
                float* out = y + t * y_stride + b * hidden;
                for (int64_t k = 0; k < hidden; ++k) out[k] = hb[k];
            }
        }
    }
}

}  // namespace

// xw [dirs, steps, batch, 4H], r [dirs, H, 4H] (R transposed), h and c [dirs, batch, H] (initial in, final out),
// y [steps, dirs, batch, H] or null. Directions run on their own threads when `threads` > 1. With xw null, the
// input projections are made here from x [steps, batch, input], w [dirs, input, 4H] (W transposed) and bias
// [dirs, 4H] (Wb + Rb): a small LSTM's one GEMM (silero_vad's one step of 64) cost more in a torch call than here.
extern "C" void ember_lstm(const float* xw, const float* r, float* h, float* c, float* y, int64_t dirs,
                           int64_t steps, int64_t batch, int64_t hidden, int64_t backward, int64_t threads,
                           const float* x, const float* w, const float* bias, int64_t input) {
    const int64_t n4 = 4 * hidden;
    std::vector<float> projected;
    if (xw == nullptr) {
        const int64_t rows = steps * batch;
        projected.resize(dirs * rows * n4);
        for (int64_t d = 0; d < dirs; ++d) {
            for (int64_t row = 0; row < rows; ++row) {
                float* out = projected.data() + (d * rows + row) * n4;
                const float* x_row = x + row * input;
#pragma omp simd
                for (int64_t j = 0; j < n4; ++j) out[j] = bias[d * n4 + j];
                for (int64_t i = 0; i < input; ++i) {
                    const float xi = x_row[i];
                    const float* wi = w + (d * input + i) * n4;
#pragma omp simd
                    for (int64_t j = 0; j < n4; ++j) out[j] += xi * wi[j];
                }
            }
        }
        xw = projected.data();
    }
#pragma omp parallel for num_threads(threads) if (threads > 1)
    for (int64_t d = 0; d < dirs; ++d) {
        direction(xw + d * steps * batch * n4, r + d * n4 * hidden, h + d * batch * hidden, c + d * batch * hidden,
                  y == nullptr ? nullptr : y + d * batch * hidden, steps, batch, hidden, dirs * batch * hidden,
                  (backward >> d) & 1);
    }
}
