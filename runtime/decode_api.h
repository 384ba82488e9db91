#pragma once
// NSA decode over a paged KV cache (NSA.md, Decode), and the cache's append step.
//
// The cache. K and V pools [num_pages, page_size, H, dk] / [num_pages, page_size, H, dv], each contiguous (page
// stride page_size * H * dim, token stride H * dim, head stride dim); page_size a multiple of l' (so that a
// selected block lies in one page) and of 8. Sequence b's token s sits in physical page
// page_table[b * page_table_stride + s / page_size], row s % page_size. A contiguous [B, Tmax, H, d] cache is the
// identity table. seqlens [B] (device, int32) holds each sequence's tokens in the cache.
// The compressed cache k_cmp [B, max_cmp, H, dk] / v_cmp [.., dv] (strided views): entry i of sequence b is the
// mean pool of its tokens [i*d, i*d + l), complete once token i*d + l - 1 is in the cache. decode_append() keeps it
// up to date with the built-in mean pool; with a learned compressor the caller writes the entries
// completed_cmp_entries() names.
//
// Problem: dtype, HQ, H, dk, dv, l, d, l', n, w, scale as for the forward; B the batch; T the cache's capacity per
// sequence (max_pages * page_size), which bounds what a query can see (the kernel is built for it).
//
// Given a workspace where the config needs one (split-KV, DecodeTensors.workspace), nothing here synchronizes,
// allocates or reads device memory on the host, and the launch configuration depends only on (B, Tq or Tn, the
// problem and its config): a step is capturable in a CUDA graph and replayable as the sequences grow. Device
// data (seqlens, page tables) cannot be checked on the host unless the caller passes host copies (seqlens_host,
// page_table_host), which are then checked in full; without them, lengths past the capacity, a query count larger
// than a sequence, or page ids outside the pools are undefined behaviour.
#include <cuda.h>

#include <cstdint>
#include <utility>

#include "codegen/family.h"
#include "codegen/problem.h"
#include "runtime/tensor.h"

namespace nsajit {

struct PagedCache {
  const void* k = nullptr;  // [num_pages, page_size, H, dk]
  const void* v = nullptr;  // [num_pages, page_size, H, dv]
  int64_t num_pages = 0;    // pages in these pools (page ids must be below it)
};

struct PageTable {
  const int32_t* pages = nullptr;  // [B, stride] on the device
  int64_t stride = 0;              // = max_pages per sequence
  int page_size = 0;
  const int32_t* pages_host = nullptr;  // optional host copy [B, stride]: checked when given
};

struct DecodeTensors {
  TensorView q;  // [B, Tq, HQ, dk]: the last Tq tokens of each sequence (query i at position seqlens[b] - Tq + i)
  const void* g_cmp = nullptr;  // [B, Tq, HQ] gates, strides below; a null gate disables its branch
  const void* g_slc = nullptr;
  const void* g_win = nullptr;
  int64_t gate_stride_b = 0, gate_stride_t = 0, gate_stride_h = 0;  // head stride 0 means 1
  TensorView o;  // [B, Tq, HQ, dv]
  PagedCache cache;                  // the K/V every branch reads
  PagedCache cache_slc, cache_win;   // optional separate per-branch caches (same page table), else `cache`
  PageTable table;
  const int32_t* seqlens = nullptr;       // [B] device
  const int32_t* seqlens_host = nullptr;  // optional host copy: checked when given
  TensorView k_cmp, v_cmp;                // [B, max_cmp, H, dk|dv]
  int64_t max_cmp = 0;                    // entries per sequence the compressed cache holds
  int32_t* idx = nullptr;                 // optional [B, Tq, H, n] chosen blocks (ascending, -1 padded) and
  int32_t* cnt = nullptr;                 // cnt [B, Tq, H]: both or neither; written when g_slc is given
  // Scratch for split-KV (a config with SPLIT > 1): at least decode_workspace_bytes(problem, Tq) bytes (with the
  // same config argument as the call), 256-byte aligned. Without it such a call allocates and frees its own and
  // synchronizes `stream`, and is refused while `stream` is capturing; a SPLIT=1 call needs none.
  void* workspace = nullptr;
  size_t workspace_bytes = 0;
};

// Checks everything it can (throws UsageError naming the argument), then launches on `stream`: every output row of
// the Tq query tokens of the B sequences. Tq in 1 .. 16.
void decode(const Problem& problem, int Tq, const DecodeTensors& t, CUstream stream,
            const TileConfig* config = nullptr);
void check_decode(const Problem& problem, int Tq, const DecodeTensors& t, const TileConfig* config = nullptr);
// The workspace a decode step of Tq query tokens needs with `config` (null: the config decode() would resolve, the
// tuned one or the default, for the GPU of the current context, or the only GPU when none is current); 0 when it
// needs none. check_decode() checks a given workspace's size only when it is given the config too.
size_t decode_workspace_bytes(const Problem& problem, int Tq, const TileConfig* config = nullptr);

struct AppendTensors {
  TensorView k_new, v_new;  // [B, Tn, H, dk|dv]: written at positions seqlens[b] .. seqlens[b] + Tn
  void* k_pool = nullptr;   // the pools written (as PagedCache, writable)
  void* v_pool = nullptr;
  int64_t num_pages = 0;
  PageTable table;
  const int32_t* seqlens = nullptr;       // [B] device: the lengths before the append (not updated here)
  const int32_t* seqlens_host = nullptr;  // optional host copy: checked when given
  TensorView k_cmp, v_cmp;  // optional [B, max_cmp, H, dk|dv]: the completed entries are written (mean pool)
  int64_t max_cmp = 0;
};

// Appends Tn >= 1 tokens to every sequence and completes the compressed entries they finish. A caller with separate
// per-branch caches appends to each (k_cmp null for all but one).
void decode_append(const Problem& problem, int Tn, const AppendTensors& t, CUstream stream,
                   const TileConfig* config = nullptr);
void check_decode_append(const Problem& problem, int Tn, const AppendTensors& t, const TileConfig* config = nullptr);

// The compressed entries that growing a sequence from old_len to new_len tokens completes: [first, first + count).
std::pair<int64_t, int64_t> completed_cmp_entries(const Problem& problem, int64_t old_len, int64_t new_len);

inline constexpr int kDecodeMaxTq = 16;

}  // namespace nsajit
