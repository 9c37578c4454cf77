// Per-row kernel interface of the selective row ops (top-p, min-p) and token_stats, shared by the
// per-ISA bodies (selective_kernels_{avx512,avx2,scalar}.cpp) and the drivers (top_p_cpu.cpp,
// min_p_cpu.cpp, token_stats_cpu.cpp). Rules: entropy_ops/backends/kernel.py and
// entropy_ops/nucleus.h. Every kernel computes e_j = exp((x_j - max) s), s = 1/T, through one
// function of its ISA (e_of in selective_body.h): forward, backward and mask agree bit for bit on
// the same ISA. Each row is reduced in an order fixed by V alone (batch invariance).
#pragma once

#include <stdint.h>

namespace entropy_ops {
namespace cpu {

// Scratch that a worker lends to the top-p row kernels, in elements of the compute type: a
// buffer of every e_j (V rounded up to the widest unroll, zero padded) and the candidates of the
// crossing search.
inline int64_t selective_scratch_elems(int64_t vocab) { return (vocab + 63) / 64 * 64 + 64; }

template <typename Acc>
struct NucleusCut {
  bool bad;           // NaN or +inf in the row, or all -inf: nothing below is set
  Acc max;            // the raw max of the row
  Acc cut_e;          // kept_j = e_j > cut_e or (e_j == cut_e and j <= cut_index)
  int64_t cut_index;  // keep-all: cut_e = 0, cut_index = V - 1
};

template <typename Acc>
struct NucleusSums {
  Acc sum_e;    // S_K = sum_K e_j
  Acc sum_e_s;  // sum_K e_j s_j, s_j = (x_j - max) / T (terms with e_j = 0 left out)
};

template <typename Acc>
struct TopPBwdArgs {
  Acc inv_t;
  Acc row_max;
  Acc cut_e;
  int64_t cut_index;
  Acc log_norm;
  Acc inv_norm;      // exp(-log_norm) = 1 / S_K
  Acc entropy;
  Acc grad_entropy;  // nonzero (the driver writes zero rows itself)
};

template <typename Acc>
struct MinPRow {
  bool bad;
  Acc max;
  Acc sum_e;  // sum of the kept e_j (e_j >= min_p)
};

template <typename Acc>
struct MinPBwdArgs {
  Acc inv_t;
  Acc row_max;
  Acc min_p;
  Acc inv_norm;   // exp(-log_norm)
  Acc grad_logp;  // nonzero
  int64_t label;  // in range and kept (the driver writes zero rows otherwise)
};

struct StatsSums {  // in double whatever the compute type, for the drivers' final rounding
  double collision;      // sum p^2
  double varentropy;     // sum p (log p + H)^2
  double entropy_drift;  // sum p^2 (log p + H)
  double mean_d;         // mean_j (x_j - max) over all V entries, raw units (-inf with a -inf logit)
};

// One ISA's kernels for one dtype.
template <typename Acc>
struct SelectiveRowOps {
  // The top-p nucleus of a row (exclusive, or inclusive for the mask); fills buf with e_j.
  NucleusCut<Acc> (*top_p_cut)(const void* row, int64_t vocab, Acc inv_t, double top_p,
                               bool inclusive, Acc* buf, Acc* cand);
  // S_K and sum_K e s over the kept set, from buf (as top_p_cut left it) and the row.
  NucleusSums<Acc> (*top_p_sums)(const void* row, int64_t vocab, Acc inv_t, Acc max, Acc cut_e,
                                 int64_t cut_index, const Acc* buf);
  // out[j] = kept_j (0/1 bytes), from buf.
  void (*top_p_mask)(const Acc* buf, int64_t vocab, Acc cut_e, int64_t cut_index, uint8_t* out);
  // grad_j = -gH q_j (log q_j + H) / T on K, 0 elsewhere, in the row's dtype (may alias row).
  void (*top_p_bwd)(const void* row, void* grad, int64_t vocab, const TopPBwdArgs<Acc>& a);
  // Max pass, then S = sum of e_j >= min_p.
  MinPRow<Acc> (*min_p_sums)(const void* row, int64_t vocab, Acc inv_t, Acc min_p);
  // e of one logit, bit-identical to the lanes of the row kernels.
  Acc (*e_at)(Acc x, Acc max, Acc inv_t);
  // grad_j = glogp (1[j=y] - q_j) / T on the kept set, 0 elsewhere.
  void (*min_p_bwd)(const void* row, void* grad, int64_t vocab, const MinPBwdArgs<Acc>& a);
  // token_stats' second pass, given the row's max, log S and H.
  StatsSums (*stats_sums)(const void* row, int64_t vocab, Acc max, Acc inv_t, Acc log_sum,
                          Acc entropy);
};

struct SelectiveKernels {
  const char* name;
  SelectiveRowOps<float> ops[3];  // by dtype code 0..2
};

extern const SelectiveKernels kSelectiveScalar;
#if defined(__x86_64__)  // as kAvx2Kernels (entropy_kernels.h)
extern const SelectiveKernels kSelectiveAvx2;
extern const SelectiveKernels kSelectiveAvx512;
#endif
extern const SelectiveRowOps<double> kSelectiveF64;  // fp64 rows on every ISA

// The kernels of the ISA in use (isa.h's choice: ENTROPY_OPS_CPU_ISA, set_isa).
const SelectiveRowOps<float>& selective_ops(int dtype);

}  // namespace cpu
}  // namespace entropy_ops
