// The C ABI: codes, messages and validation, all before any GPU is needed.
#include <doctest/doctest.h>

#include <string>

#include "runtime/nsajit_c.h"

TEST_CASE("C ABI: presets, workspace size, usage errors with messages") {
  nsajit_problem p{};
  REQUIRE(nsajit_preset("paper", &p) == NSAJIT_OK);
  CHECK(p.dk == 192);
  CHECK(p.dv == 128);
  CHECK(p.l == 32);
  CHECK(p.d == 16);
  CHECK(p.HQ == 64);
  CHECK(p.H == 4);
  CHECK(nsajit_preset("nope", &p) == NSAJIT_USAGE);
  CHECK(std::string(nsajit_last_error()).find("unknown preset 'nope'") != std::string::npos);
  REQUIRE(nsajit_preset("fla", &p) == NSAJIT_OK);
  CHECK(nsajit_forward_workspace_bytes(&p) > static_cast<size_t>(p.T) * p.HQ * 4);

  nsajit_problem bad = p;
  bad.H = 5;
  nsajit_forward_tensors t{};
  CHECK(nsajit_forward(&bad, &t, nullptr) == NSAJIT_USAGE);
  CHECK(std::string(nsajit_last_error()).find("not a multiple of H = 5") != std::string::npos);
  bad = p;
  bad.dtype = 7;
  CHECK(nsajit_forward(&bad, &t, nullptr) == NSAJIT_USAGE);
  CHECK(std::string(nsajit_last_error()).find("bad dtype") != std::string::npos);
  CHECK(nsajit_forward(&p, nullptr, nullptr) == NSAJIT_USAGE);
  CHECK(std::string(nsajit_last_error()).find("tensors is a null pointer") != std::string::npos);
  CHECK(nsajit_forward(&p, &t, nullptr) == NSAJIT_USAGE);
  CHECK(std::string(nsajit_last_error()).find("all three gates are null") != std::string::npos);
  int32_t offsets[] = {0, 10};
  t.g_win = offsets;
  t.o.data = offsets;
  t.cu_seqlens = offsets;
  CHECK(nsajit_forward(&p, &t, nullptr) == NSAJIT_USAGE);
  CHECK(std::string(nsajit_last_error()).find("cu_seqlens_host") != std::string::npos);
  nsajit_attn_args a{};
  CHECK(nsajit_win_fwd(&p, &a, nullptr) == NSAJIT_USAGE);
  CHECK(std::string(nsajit_last_error()).find("q is a null pointer") != std::string::npos);
}
