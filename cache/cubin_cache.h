#pragma once
// On-disk cache of compiled CUBINs, keyed by the content that produced them (source, options, arch, NVRTC
// version), so an edited template or a new NVRTC can never return a stale binary.
//
// Layout: <dir>/<first 2 hex chars of key>/<key>.nsajitcb. Entries are written to a temporary file in the same
// directory (<key>.<random>.nsajitcb-tmp) and renamed into place, so readers only ever see whole files and any
// number of processes may share one directory; two writers of one key both succeed and leave one valid entry.
//
// Entry file (integers little-endian):
//   offset  size  field
//        0     8  magic "NSAJITCB"
//        8     4  format version (1)
//       12     4  metadata size M
//       16     8  payload size P
//       24    32  checksum: BLAKE3-256 of the M + P bytes after the header
//       56    64  key (64 lowercase hex chars)
//      120     M  metadata, a JSON object (CubinMeta's fields under the same names)
//    120+M     P  payload: the CUBIN
// The file size must be exactly 120 + M + P. An entry that fails any check is never returned as valid: load()
// removes it and reports why, and the caller compiles again. That is also what happens to an entry a power loss
// left incomplete (entries are not fsync'ed: a recompile costs about a second).
// No file locks: rename is all correctness needs, and LLVM's tryLockFile takes fcntl locks, which belong to a
// process (not a thread) and are dropped when the process closes any descriptor of the file.
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace nsajit {

// What the compiler knew about a CUBIN; stored beside it as JSON for `nsajit cache list`.
struct CubinMeta {
  std::string family;         // kernel family name
  std::string spec;           // one-line summary of the kernel spec
  std::string arch;           // e.g. "sm_90a"
  std::string nvrtc_version;  // e.g. "13.0"
  int registers = 0;
  int spill_bytes = 0;
  int shared_bytes = 0;
  int64_t created = 0;  // unix seconds; store() writes the current time when this is 0

  bool operator==(const CubinMeta&) const = default;
};

// The cache key: BLAKE3-256 (64 lowercase hex chars) of every input of a compile, each field length-prefixed
// so that no two different inputs concatenate to the same bytes.
std::string cubin_cache_key(std::string_view source, const std::vector<std::string>& options, std::string_view arch,
                            std::string_view nvrtc_version);

// True for a string cubin_cache_key could have returned.
bool is_cubin_cache_key(std::string_view key);

// All members are const and keep no state beyond the directory: one object may be used from many threads,
// and many processes may use one directory. Environment failures (a directory that cannot be created or
// written, a file that cannot be read) throw nsajit::Error naming the path and the OS error; a key that is
// not a cache key throws nsajit::Error.
class CubinCache {
public:
  // Creates the directory (and its parents) if missing.
  explicit CubinCache(std::filesystem::path dir);

  // $NSAJIT_CACHE_DIR if set and non-empty, else $XDG_CACHE_HOME/nsajit if that is an absolute path, else
  // $HOME/.cache/nsajit (the home directory from the password database when HOME is unset).
  static std::filesystem::path default_dir();

  const std::filesystem::path& dir() const { return dir_; }

  // Where the entry of `key` lives.
  std::filesystem::path entry_path(const std::string& key) const;

  struct Loaded {
    std::vector<char> cubin;
    CubinMeta meta;
  };
  // nullopt if there is no entry. An entry that is present but bad (truncated, corrupted, foreign key...) is
  // removed, *problem (if given) says which file and why, and nullopt is returned; otherwise *problem is
  // left empty.
  std::optional<Loaded> load(const std::string& key, std::string* problem = nullptr) const;

  // Writes the entry, replacing any entry of the same key.
  void store(const std::string& key, std::span<const char> cubin, const CubinMeta& meta) const;

  struct Entry {
    std::string key;  // from the file name
    std::filesystem::path path;
    uint64_t bytes = 0;    // file size
    int64_t modified = 0;  // unix seconds
    std::optional<CubinMeta> meta;
    std::string problem;   // empty if the entry is valid
    bool removed = false;  // verify(true) removed this bad entry
  };
  // Every entry file, sorted by key. Reads headers and metadata only; the payload checksum is verify's job.
  std::vector<Entry> list() const;

  // Reads every entry in full and returns the bad ones; with repair, removes them (Entry::removed).
  std::vector<Entry> verify(bool repair) const;

  // Removes every entry and returns how many. Also removes our temporary files older than an hour (left by
  // killed writers; younger ones may belong to a writer still at work). Other files are left alone.
  std::size_t clear() const;

private:
  std::filesystem::path dir_;
};

}  // namespace nsajit
