#include "cache/cubin_cache.h"

#include <fmt/format.h>
#include <llvm/ADT/SmallString.h>
#include <llvm/ADT/StringExtras.h>
#include <llvm/Support/BLAKE3.h>
#include <llvm/Support/Chrono.h>
#include <llvm/Support/Error.h>
#include <llvm/Support/FileSystem.h>
#include <llvm/Support/JSON.h>
#include <llvm/Support/Path.h>
#include <llvm/Support/raw_ostream.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <system_error>
#include <utility>

#include "base/error.h"

namespace nsajit {
namespace {

namespace fs = std::filesystem;
namespace sfs = llvm::sys::fs;

constexpr std::string_view kMagic = "NSAJITCB";
// Part of the key as well, so a build that writes another format uses other keys and never fights over (and
// removes) the entries of this one.
constexpr uint32_t kFormatVersion = 1;
constexpr size_t kKeyChars = 64;
constexpr size_t kChecksumBytes = 32;
constexpr size_t kHeaderBytes = 8 + 4 + 4 + 8 + kChecksumBytes + kKeyChars;
static_assert(kHeaderBytes == 120);
constexpr uint32_t kMaxMetaBytes = 1u << 20;
constexpr std::string_view kEntrySuffix = ".nsajitcb";
constexpr std::string_view kTempSuffix = ".nsajitcb-tmp";
// A writer needs milliseconds; a temporary file this old was left by a process that died.
constexpr int64_t kStaleTempSeconds = 3600;

int64_t now_unix() {
  return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

llvm::StringRef as_ref(std::string_view s) { return {s.data(), s.size()}; }

void put_le(std::string& out, uint64_t value, int bytes) {
  for (int i = 0; i < bytes; ++i) out.push_back(static_cast<char>((value >> (8 * i)) & 0xff));
}

uint64_t get_le(const char* p, int bytes) {
  uint64_t value = 0;
  for (int i = 0; i < bytes; ++i) value |= uint64_t{static_cast<unsigned char>(p[i])} << (8 * i);
  return value;
}

void hash_field(llvm::BLAKE3& hasher, std::string_view field) {
  std::string length;
  put_le(length, field.size(), 8);
  hasher.update(as_ref(length));
  hasher.update(as_ref(field));
}

std::array<uint8_t, kChecksumBytes> checksum(std::string_view meta, std::string_view payload) {
  llvm::BLAKE3 hasher;
  hasher.update(as_ref(meta));
  hasher.update(as_ref(payload));
  return hasher.final();
}

void require_key(const std::string& key) {
  if (!is_cubin_cache_key(key))
    throw Error(fmt::format("not a CUBIN cache key: '{}' (expected {} lowercase hex characters)", key, kKeyChars));
}

bool has_suffix(const fs::path& path, std::string_view suffix) { return path.filename().string().ends_with(suffix); }

// --- metadata --------------------------------------------------------------------------------------------

// llvm::json asserts on invalid UTF-8; a spec summary is ours, but make sure.
std::string utf8(const std::string& s) { return llvm::json::isUTF8(s) ? s : llvm::json::fixUTF8(s); }

std::string meta_to_json(const CubinMeta& meta) {
  llvm::json::Object object{
      {"family", utf8(meta.family)},       {"spec", utf8(meta.spec)},
      {"arch", utf8(meta.arch)},           {"nvrtc_version", utf8(meta.nvrtc_version)},
      {"registers", meta.registers},       {"spill_bytes", meta.spill_bytes},
      {"shared_bytes", meta.shared_bytes}, {"created", meta.created},
  };
  std::string out;
  llvm::raw_string_ostream os(out);
  os << llvm::json::Value(std::move(object));
  os.flush();
  return out;
}

// Empty on success, else why the metadata is unusable.
std::string meta_from_json(std::string_view text, CubinMeta& meta) {
  llvm::Expected<llvm::json::Value> value = llvm::json::parse(as_ref(text));
  if (!value) return "bad metadata: " + llvm::toString(value.takeError());
  llvm::json::Path::Root root("metadata");
  llvm::json::ObjectMapper mapper(*value, root);
  bool ok = mapper && mapper.map("family", meta.family) && mapper.map("spec", meta.spec) &&
            mapper.map("arch", meta.arch) && mapper.map("nvrtc_version", meta.nvrtc_version) &&
            mapper.map("registers", meta.registers) && mapper.map("spill_bytes", meta.spill_bytes) &&
            mapper.map("shared_bytes", meta.shared_bytes) && mapper.map("created", meta.created);
  if (!ok) return "bad metadata: " + llvm::toString(root.getError());
  return {};
}

// --- reading entries ---------------------------------------------------------------------------------------

class OpenFile {
public:
  explicit OpenFile(sfs::file_t fd) : fd_(fd) {}
  OpenFile(const OpenFile&) = delete;
  OpenFile& operator=(const OpenFile&) = delete;
  ~OpenFile() { (void)sfs::closeFile(fd_); }
  sfs::file_t fd() const { return fd_; }

private:
  sfs::file_t fd_;
};

// Reads up to n bytes (fewer only at end of file).
size_t read_up_to(sfs::file_t fd, char* data, size_t n, const fs::path& path) {
  size_t done = 0;
  while (done < n) {
    llvm::Expected<size_t> got = sfs::readNativeFile(fd, llvm::MutableArrayRef<char>(data + done, n - done));
    if (!got)
      throw Error(fmt::format("cannot read cache entry {}: {}", path.string(), llvm::toString(got.takeError())));
    if (*got == 0) break;
    done += *got;
  }
  return done;
}

enum class Depth { header, full };

// One entry file as found on disk. Holds the file open, so its inode cannot be reused before a removal that
// compares it (remove_if_same).
struct Inspection {
  std::unique_ptr<OpenFile> file;  // null if the file does not exist
  sfs::UniqueID id;
  uint64_t bytes = 0;
  int64_t modified = 0;
  std::string key;      // from the file name
  std::string problem;  // empty if valid (to the depth inspected)
  std::optional<CubinMeta> meta;
  std::vector<char> payload;  // Depth::full only
};

// The checks behind load(), list() and verify(). The key comes from the file name, the rest from the file;
// environment failures (other than the file being absent) throw.
Inspection inspect(const fs::path& path, Depth depth) {
  Inspection in;
  std::string name = path.filename().string();
  in.key = name.substr(0, name.size() - std::min(name.size(), kEntrySuffix.size()));

  llvm::Expected<sfs::file_t> fd = sfs::openNativeFileForRead(path.string());
  if (!fd) {
    std::error_code ec = llvm::errorToErrorCode(fd.takeError());
    if (ec == std::errc::no_such_file_or_directory) return in;
    throw Error(fmt::format("cannot open cache entry {}: {}", path.string(), ec.message()));
  }
  in.file = std::make_unique<OpenFile>(*fd);
  sfs::file_status status;
  if (std::error_code ec = sfs::status(in.file->fd(), status))
    throw Error(fmt::format("cannot stat cache entry {}: {}", path.string(), ec.message()));
  in.id = status.getUniqueID();
  in.bytes = status.getSize();
  in.modified = llvm::sys::toTimeT(status.getLastModificationTime());

  if (!is_cubin_cache_key(in.key)) {
    in.problem = "file name is not a cache key";
    return in;
  }
  std::string shard = path.parent_path().filename().string();
  if (shard != in.key.substr(0, 2)) {
    in.problem = fmt::format("in the wrong directory '{}' (expected '{}')", shard, in.key.substr(0, 2));
    return in;
  }

  std::array<char, kHeaderBytes> header{};
  size_t got = read_up_to(in.file->fd(), header.data(), header.size(), path);
  if (std::string_view(header.data(), std::min(got, kMagic.size())) != kMagic.substr(0, std::min(got, kMagic.size()))) {
    in.problem = "not a cache entry (bad magic)";
    return in;
  }
  if (got < kHeaderBytes) {
    in.problem = fmt::format("truncated: {} bytes, shorter than the {}-byte header", got, kHeaderBytes);
    return in;
  }
  const char* p = header.data() + kMagic.size();
  uint32_t version = static_cast<uint32_t>(get_le(p, 4));
  uint32_t meta_bytes = static_cast<uint32_t>(get_le(p + 4, 4));
  uint64_t payload_bytes = get_le(p + 8, 8);
  std::string_view stored_sum(p + 16, kChecksumBytes);
  std::string_view stored_key(p + 16 + kChecksumBytes, kKeyChars);
  if (version != kFormatVersion) {
    in.problem = fmt::format("format version {}, this build reads version {}", version, kFormatVersion);
    return in;
  }
  if (stored_key != in.key) {
    in.problem = is_cubin_cache_key(stored_key)
                     ? fmt::format("key mismatch: the file holds the entry of key {}", stored_key)
                     : "key mismatch: the file's key field is not a cache key";
    return in;
  }
  if (meta_bytes > kMaxMetaBytes || payload_bytes > std::numeric_limits<uint64_t>::max() - kHeaderBytes - meta_bytes) {
    in.problem = fmt::format("bad header: metadata {} bytes, payload {} bytes", meta_bytes, payload_bytes);
    return in;
  }
  uint64_t expected = kHeaderBytes + meta_bytes + payload_bytes;
  if (in.bytes != expected) {
    in.problem = fmt::format("{}: the file has {} bytes, its header says {}",
                             in.bytes < expected ? "truncated" : "size mismatch", in.bytes, expected);
    return in;
  }

  std::string meta_text(meta_bytes, '\0');
  if (read_up_to(in.file->fd(), meta_text.data(), meta_bytes, path) != meta_bytes) {
    in.problem = "truncated while reading";
    return in;
  }
  if (depth == Depth::full) {
    in.payload.resize(payload_bytes);
    if (read_up_to(in.file->fd(), in.payload.data(), payload_bytes, path) != payload_bytes) {
      in.problem = "truncated while reading";
      return in;
    }
    auto sum = checksum(meta_text, std::string_view(in.payload.data(), in.payload.size()));
    if (std::memcmp(sum.data(), stored_sum.data(), kChecksumBytes) != 0) {
      in.problem = "checksum mismatch";
      return in;
    }
  }
  CubinMeta meta;
  in.problem = meta_from_json(meta_text, meta);
  if (in.problem.empty()) in.meta = std::move(meta);
  return in;
}

// Removes the inspected file unless another process has put a different file at its path since (a fresh
// entry must not be lost). Returns why the removal failed, or nothing.
std::optional<std::string> remove_if_same(const fs::path& path, const Inspection& in) {
  sfs::UniqueID now;
  if (std::error_code ec = sfs::getUniqueID(path.string(), now))
    return ec == std::errc::no_such_file_or_directory ? std::nullopt : std::optional(ec.message());
  if (now != in.id) return std::nullopt;
  if (std::error_code ec = sfs::remove(path.string())) return ec.message();
  return std::nullopt;
}

// --- walking the directory ---------------------------------------------------------------------------------

// The children of `dir` (none if it does not exist); other failures throw.
std::vector<fs::directory_entry> children(const fs::path& dir) {
  std::vector<fs::directory_entry> out;
  std::error_code ec;
  fs::directory_iterator it(dir, ec);
  for (fs::directory_iterator end; !ec && it != end; it.increment(ec)) out.push_back(*it);
  if (ec && ec != std::errc::no_such_file_or_directory)
    throw Error(fmt::format("cannot list cache directory {}: {}", dir.string(), ec.message()));
  return out;
}

bool is_lower_hex(char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); }

bool is_shard_name(const std::string& name) {
  return name.size() == 2 && is_lower_hex(name[0]) && is_lower_hex(name[1]);
}

// Regular files in the shard directories whose names end with `suffix`, sorted by name.
std::vector<fs::path> files_with_suffix(const fs::path& dir, std::string_view suffix) {
  std::vector<fs::path> out;
  for (const fs::directory_entry& shard : children(dir)) {
    std::error_code ec;
    if (!is_shard_name(shard.path().filename().string()) || !shard.is_directory(ec)) continue;
    for (const fs::directory_entry& file : children(shard.path()))
      if (has_suffix(file.path(), suffix) && file.is_regular_file(ec)) out.push_back(file.path());
  }
  std::sort(out.begin(), out.end(), [](const fs::path& a, const fs::path& b) { return a.filename() < b.filename(); });
  return out;
}

CubinCache::Entry to_entry(const fs::path& path, Inspection& in) {
  CubinCache::Entry entry;
  entry.key = in.key;
  entry.path = path;
  entry.bytes = in.bytes;
  entry.modified = in.modified;
  entry.meta = std::move(in.meta);
  entry.problem = in.problem;
  return entry;
}

}  // namespace

std::string cubin_cache_key(std::string_view source, const std::vector<std::string>& options, std::string_view arch,
                            std::string_view nvrtc_version) {
  llvm::BLAKE3 hasher;
  hash_field(hasher, fmt::format("nsajit cubin cache, format {}", kFormatVersion));
  hash_field(hasher, source);
  hash_field(hasher, std::to_string(options.size()));
  for (const std::string& option : options) hash_field(hasher, option);
  hash_field(hasher, arch);
  hash_field(hasher, nvrtc_version);
  std::array<uint8_t, 32> digest = hasher.final();
  return llvm::toHex(digest, /*LowerCase=*/true);
}

bool is_cubin_cache_key(std::string_view key) {
  return key.size() == kKeyChars && std::all_of(key.begin(), key.end(), is_lower_hex);
}

CubinCache::CubinCache(std::filesystem::path dir) : dir_(std::move(dir)) {
  if (dir_.empty()) throw Error("the CUBIN cache directory path is empty");
  if (std::error_code ec = sfs::create_directories(dir_.string()))
    throw Error(fmt::format("cannot create the CUBIN cache directory {}: {}", dir_.string(), ec.message()));
  // create_directories accepts an existing file of that name.
  if (!sfs::is_directory(dir_.string()))
    throw Error(fmt::format("cannot use {} as the CUBIN cache directory: {}", dir_.string(),
                            std::make_error_code(std::errc::not_a_directory).message()));
}

std::filesystem::path CubinCache::default_dir() {
  auto env = [](const char* name) -> std::string {
    const char* value = std::getenv(name);
    return value ? value : "";
  };
  if (std::string dir = env("NSAJIT_CACHE_DIR"); !dir.empty()) return dir;
  // The XDG base directory spec says to ignore relative paths.
  if (std::string xdg = env("XDG_CACHE_HOME"); !xdg.empty() && fs::path(xdg).is_absolute())
    return fs::path(xdg) / "nsajit";
  llvm::SmallString<256> home;
  if (!llvm::sys::path::home_directory(home) || home.empty())
    throw Error("cannot find a directory for the CUBIN cache: set NSAJIT_CACHE_DIR (no home directory found)");
  return fs::path(home.str().str()) / ".cache" / "nsajit";
}

std::filesystem::path CubinCache::entry_path(const std::string& key) const {
  require_key(key);
  return dir_ / key.substr(0, 2) / (key + std::string(kEntrySuffix));
}

std::optional<CubinCache::Loaded> CubinCache::load(const std::string& key, std::string* problem) const {
  if (problem) problem->clear();
  fs::path path = entry_path(key);
  Inspection in = inspect(path, Depth::full);
  if (!in.file) return std::nullopt;
  if (in.problem.empty()) return Loaded{std::move(in.payload), std::move(*in.meta)};
  std::string message = fmt::format("bad CUBIN cache entry {}: {}", path.string(), in.problem);
  if (std::optional<std::string> failure = remove_if_same(path, in))
    message += "; could not remove it: " + *failure;
  else
    message += "; removed";
  if (problem) *problem = std::move(message);
  return std::nullopt;
}

void CubinCache::store(const std::string& key, std::span<const char> cubin, const CubinMeta& meta) const {
  fs::path path = entry_path(key);
  fs::path shard = path.parent_path();
  if (std::error_code ec = sfs::create_directories(shard.string()))
    throw Error(fmt::format("cannot create CUBIN cache directory {}: {}", shard.string(), ec.message()));

  CubinMeta stamped = meta;
  if (stamped.created == 0) stamped.created = now_unix();
  std::string meta_text = meta_to_json(stamped);
  if (meta_text.size() > kMaxMetaBytes)
    throw Error(fmt::format("CUBIN metadata of {} bytes is over the limit of {}", meta_text.size(), kMaxMetaBytes));
  std::string_view payload(cubin.data(), cubin.size());
  auto sum = checksum(meta_text, payload);

  std::string header(kMagic);
  put_le(header, kFormatVersion, 4);
  put_le(header, meta_text.size(), 4);
  put_le(header, payload.size(), 8);
  header.append(reinterpret_cast<const char*>(sum.data()), sum.size());
  header.append(key);

  int fd = -1;
  llvm::SmallString<256> temp;
  std::string model = (shard / (key + ".%%%%%%%%%%%%" + std::string(kTempSuffix))).string();
  if (std::error_code ec = sfs::createUniqueFile(model, fd, temp))
    throw Error(fmt::format("cannot create a temporary file in the CUBIN cache directory {}: {}", shard.string(),
                            ec.message()));
  {
    llvm::raw_fd_ostream os(fd, /*shouldClose=*/true);
    os << header << meta_text << as_ref(payload);
    os.close();
    if (os.has_error()) {
      std::error_code ec = os.error();
      os.clear_error();  // else raw_fd_ostream's destructor aborts
      (void)sfs::remove(temp);
      throw Error(fmt::format("cannot write CUBIN cache file {}: {}", temp.str().str(), ec.message()));
    }
  }
  // rename() is atomic: readers see the old entry or the new one, never a part.
  if (std::error_code ec = sfs::rename(temp, path.string())) {
    (void)sfs::remove(temp);
    throw Error(fmt::format("cannot rename {} to {}: {}", temp.str().str(), path.string(), ec.message()));
  }
}

std::vector<CubinCache::Entry> CubinCache::list() const {
  std::vector<Entry> entries;
  for (const fs::path& path : files_with_suffix(dir_, kEntrySuffix)) {
    Inspection in = inspect(path, Depth::header);
    if (in.file) entries.push_back(to_entry(path, in));
  }
  return entries;
}

std::vector<CubinCache::Entry> CubinCache::verify(bool repair) const {
  std::vector<Entry> bad;
  for (const fs::path& path : files_with_suffix(dir_, kEntrySuffix)) {
    Inspection in = inspect(path, Depth::full);
    if (!in.file || in.problem.empty()) continue;
    Entry entry = to_entry(path, in);
    if (repair) {
      if (std::optional<std::string> failure = remove_if_same(path, in))
        entry.problem += "; could not remove it: " + *failure;
      else
        entry.removed = true;
    }
    bad.push_back(std::move(entry));
  }
  return bad;
}

std::size_t CubinCache::clear() const {
  auto remove = [](const fs::path& path) {
    std::error_code ec = sfs::remove(path.string(), /*IgnoreNonExisting=*/false);
    if (ec == std::errc::no_such_file_or_directory) return false;  // another process removed it
    if (ec) throw Error(fmt::format("cannot remove {}: {}", path.string(), ec.message()));
    return true;
  };
  std::size_t removed = 0;
  for (const fs::path& path : files_with_suffix(dir_, kEntrySuffix)) removed += remove(path) ? 1 : 0;
  int64_t stale_before = now_unix() - kStaleTempSeconds;
  for (const fs::path& path : files_with_suffix(dir_, kTempSuffix)) {
    sfs::file_status status;
    if (sfs::status(path.string(), status)) continue;  // gone, renamed into place by its writer
    if (llvm::sys::toTimeT(status.getLastModificationTime()) < stale_before) remove(path);
  }
  return removed;
}

}  // namespace nsajit
