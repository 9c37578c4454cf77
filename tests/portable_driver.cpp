// A driver of the CPU kernels without Python, for tests/test_portable_build.py: built for another
// architecture (aarch64) and run there or under an emulator, it computes what the test then
// recomputes with entropy_ops._C on this machine, and the two must agree bit for bit.
//
//   portable_driver IN OUT
//
// IN: int32 dtype code, int64 n_rows, int64 vocab, double temperature, the [n_rows, vocab] logits
// in that dtype, n_rows int64 labels (native byte order). OUT: the ISA lines below, then the
// outputs of entropy_fwd, entropy_bwd, top_p_entropy_fwd, top_p_mask, min_p_logprobs_fwd and
// token_stats on the scalar kernels, concatenated as raw bytes in that order.
#include <stdint.h>
#include <stdio.h>

#include <string>
#include <vector>

#include "cpu/entropy_cpu.h"
#include "cpu/isa.h"
#include "cpu/selective_cpu.h"

namespace eoc = entropy_ops::cpu;

namespace {

struct Out {
  std::vector<unsigned char> bytes;
  void* add(size_t n) {  // the pointer stays valid: every buffer is reserved up front
    bytes.resize(bytes.size() + n);
    return bytes.data() + bytes.size() - n;
  }
};

bool read_all(FILE* f, void* p, size_t n) { return fread(p, 1, n, f) == n; }

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: %s IN OUT\n", argv[0]);
    return 2;
  }
  FILE* in = fopen(argv[1], "rb");
  int32_t dtype = 0;
  int64_t n = 0, vocab = 0;
  double temperature = 1;
  if (!in || !read_all(in, &dtype, 4) || !read_all(in, &n, 8) || !read_all(in, &vocab, 8) ||
      !read_all(in, &temperature, 8)) {
    fprintf(stderr, "cannot read the header of %s\n", argv[1]);
    return 2;
  }
  const size_t elem = dtype == 0 ? 4 : dtype == 3 ? 8 : 2;
  const size_t acc = dtype == 3 ? 8 : 4;
  std::vector<unsigned char> logits(n * vocab * elem);
  std::vector<int64_t> labels(n);
  if (!read_all(in, logits.data(), logits.size()) || !read_all(in, labels.data(), n * 8)) {
    fprintf(stderr, "%s is short\n", argv[1]);
    return 2;
  }
  fclose(in);

  std::string isas;
  for (const std::string& s : eoc::supported_isas()) isas += s + " ";
  const bool avx2 = eoc::set_isa("avx2");
  const bool scalar = eoc::set_isa("scalar");
  printf("supported_isas: %s\nset_isa(avx2): %d\nset_isa(scalar): %d\nget_isa: %s\n",
         isas.c_str(), avx2, scalar, eoc::get_isa().c_str());

  eoc::RowsArgs r{};
  r.logits = logits.data();
  r.dtype = dtype;
  r.n_rows = n;
  r.vocab = vocab;
  r.row_stride = vocab;
  r.temperature = nullptr;
  r.temperature_scalar = temperature;
  r.labels = labels.data();
  r.labels_int32 = false;
  r.ignore_index = -100;
  r.mask = nullptr;
  r.num_threads = 2;

  Out o;
  o.bytes.reserve(n * (40 * acc + 8 + vocab * (elem + 1)));
  void* row_max = o.add(n * acc);
  void* log_norm = o.add(n * acc);
  void* entropy = o.add(n * acc);
  eoc::entropy_fwd_cpu(r, row_max, log_norm, entropy, o.add(n * acc));

  std::vector<unsigned char> g_h(n * acc), g_lp(n * acc);
  for (int64_t i = 0; i < n; ++i) {
    if (acc == 4) {
      reinterpret_cast<float*>(g_h.data())[i] = 0.5f;
      reinterpret_cast<float*>(g_lp.data())[i] = -1.0f;
    } else {
      reinterpret_cast<double*>(g_h.data())[i] = 0.5;
      reinterpret_cast<double*>(g_lp.data())[i] = -1.0;
    }
  }
  eoc::entropy_bwd_cpu(r, row_max, log_norm, entropy, g_h.data(), g_lp.data(),
                       o.add(n * vocab * elem), vocab);

  void* tp_entropy = o.add(n * acc);
  void* tp_max = o.add(n * acc);
  void* tp_cut = o.add(n * acc);
  void* tp_index = o.add(n * 4);
  eoc::top_p_entropy_fwd_cpu(r, 0.9, tp_entropy, tp_max, tp_cut, static_cast<int32_t*>(tp_index),
                             o.add(n * acc));
  eoc::top_p_mask_cpu(r, 0.9, false, static_cast<uint8_t*>(o.add(n * vocab)), vocab);

  void* mp_logp = o.add(n * acc);
  void* mp_max = o.add(n * acc);
  eoc::min_p_logprobs_fwd_cpu(r, 0.05, mp_logp, mp_max, o.add(n * acc));

  void* stats[8];
  for (void*& s : stats) s = o.add(n * acc);
  eoc::token_stats_cpu(r, stats);

  FILE* out = fopen(argv[2], "wb");
  if (!out || fwrite(o.bytes.data(), 1, o.bytes.size(), out) != o.bytes.size() || fclose(out)) {
    fprintf(stderr, "cannot write %s\n", argv[2]);
    return 2;
  }
  return 0;
}
