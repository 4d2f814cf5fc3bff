// A direct float32 convolution for tiny sizes (the caller: runtime/native/small_conv.py, from the
// `conv` extern, which picks it by the work a call does): [N, C, H, W] input, any stride,
// dilation, padding and groups, the bias and a ReLU in the same loop. oneDNN's convolution costs
// 25-40 us a call before any work; silero VAD runs 18 convolutions of a few thousand
// multiply-adds each, where this loop takes a few microseconds.
//
// The filter comes as [groups, C/groups, KH, KW, O/groups]: for each output position the loop
// broadcasts one input element over a contiguous row of the group's output channels, so the
// innermost loop vectorizes and no sum waits on the one before it.

#include <cstdint>
#include <vector>

extern "C" void ember_small_conv(const float* x, const float* w, const float* bias, float* y, int64_t n_batch,
                                 int64_t channels, int64_t height, int64_t width, int64_t outputs, int64_t kh,
                                 int64_t kw, int64_t out_h, int64_t out_w, int64_t stride_h, int64_t stride_w,
                                 int64_t dil_h, int64_t dil_w, int64_t pad_h, int64_t pad_w, int64_t groups,
                                 int64_t relu) {
    const int64_t per_group = channels / groups, outs = outputs / groups;
    if (per_group == 1 && outs == 1) {  // depthwise: one output channel a channel, positions innermost
        for (int64_t n = 0; n < n_batch; ++n) {
            for (int64_t c = 0; c < channels; ++c) {
                const float* xc = x + (n * channels + c) * height * width;
                const float* wc = w + c * kh * kw;  // [groups, 1, KH, KW, 1]
                float* yc = y + (n * outputs + c) * out_h * out_w;
                const float b = bias != nullptr ? bias[c] : 0.0f;
                for (int64_t oh = 0; oh < out_h; ++oh) {
                    for (int64_t ow = 0; ow < out_w; ++ow) {
                        float a = b;
                        for (int64_t i = 0; i < kh; ++i) {
                            const int64_t ih = oh * stride_h + i * dil_h - pad_h;
                            if (ih < 0 || ih >= height) continue;
                            for (int64_t j = 0; j < kw; ++j) {
                                const int64_t iw = ow * stride_w + j * dil_w - pad_w;
                                if (iw >= 0 && iw < width) a += xc[ih * width + iw] * wc[i * kw + j];
                            }
                        }
                        yc[oh * out_w + ow] = relu && a < 0.0f ? 0.0f : a;
                    }
                }
            }
        }
        return;
    }
    std::vector<float> acc(outs);
    for (int64_t n = 0; n < n_batch; ++n) {
        for (int64_t g = 0; g < groups; ++g) {
            const float* wg = w + g * per_group * kh * kw * outs;
            for (int64_t oh = 0; oh < out_h; ++oh) {
                for (int64_t ow = 0; ow < out_w; ++ow) {
                    float* a = acc.data();
                    for (int64_t o = 0; o < outs; ++o) a[o] = bias != nullptr ? bias[g * outs + o] : 0.0f;
                    for (int64_t c = 0; c < per_group; ++c) {
                        const float* xc = x + ((n * channels + g * per_group + c) * height) * width;
                        for (int64_t i = 0; i < kh; ++i) {
                            const int64_t ih = oh * stride_h + i * dil_h - pad_h;
                            if (ih < 0 || ih >= height) continue;
                            for (int64_t j = 0; j < kw; ++j) {
                                const int64_t iw = ow * stride_w + j * dil_w - pad_w;
                                if (iw < 0 || iw >= width) continue;
                                const float v = xc[ih * width + iw];
                                const float* wr = wg + ((c * kh + i) * kw + j) * outs;
#pragma omp simd
                                for (int64_t o = 0; o < outs; ++o) a[o] += v * wr[o];
                            }
                        }
                    }
                    float* yo = y + ((n * outputs + g * outs) * out_h + oh) * out_w + ow;
                    for (int64_t o = 0; o < outs; ++o) {
                        const float v = a[o];
                        yo[o * out_h * out_w] = relu && v < 0.0f ? 0.0f : v;
                    }
                }
            }
        }
    }
}
