#include <doctest/doctest.h>
#include <llvm/Support/BLAKE3.h>
#include <grp.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "base/error.h"
#include "cache/cubin_cache.h"

namespace fs = std::filesystem;
using nsajit::CubinCache;
using nsajit::CubinMeta;

namespace {

constexpr size_t kHeaderBytes = 120;  // the entry header, see cubin_cache.h

// A fresh directory per test, removed afterwards.
struct TempDir {
  fs::path path;
  TempDir() {
    std::string model = (fs::temp_directory_path() / "nsajit-cache-test-XXXXXX").string();
    REQUIRE(mkdtemp(model.data()) != nullptr);
    path = model;
  }
  ~TempDir() {
    std::error_code ec;
    fs::permissions(path, fs::perms::owner_all, fs::perm_options::add, ec);
    fs::remove_all(path, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
};

// Sets or unsets environment variables for one test and restores them afterwards.
struct EnvGuard {
  std::vector<std::pair<std::string, std::optional<std::string>>> saved;
  explicit EnvGuard(std::initializer_list<const char*> names) {
    for (const char* name : names) {
      const char* value = std::getenv(name);
      saved.emplace_back(name, value ? std::optional<std::string>(value) : std::nullopt);
    }
  }
  ~EnvGuard() {
    for (const auto& [name, value] : saved) {
      if (value)
        setenv(name.c_str(), value->c_str(), 1);
      else
        unsetenv(name.c_str());
    }
  }
};

// Deterministic pseudo-random bytes (xorshift), different for each seed.
std::vector<char> make_cubin(uint64_t seed, size_t bytes) {
  std::vector<char> out(bytes);
  uint64_t x = seed * 0x9e3779b97f4a7c15ull + 1;
  for (char& c : out) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    c = static_cast<char>(x >> 56);
  }
  return out;
}

std::string key_of(int i) {
  return nsajit::cubin_cache_key("extern \"C\" __global__ void k" + std::to_string(i) + "() {}",
                                 {"-arch=sm_90a", "-default-device"}, "sm_90a", "13.0");
}

CubinMeta sample_meta(int i = 0) {
  CubinMeta meta;
  meta.family = "win_fwd";
  meta.spec = "win_fwd bf16 d=128 tile=64x64 #" + std::to_string(i);
  meta.arch = "sm_90a";
  meta.nvrtc_version = "13.0";
  meta.registers = 128 + i;
  meta.spill_bytes = i % 3;
  meta.shared_bytes = 49152 + i;
  meta.created = 1700000000 + i;
  return meta;
}

std::string read_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  REQUIRE(in);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

void write_file(const fs::path& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  REQUIRE(out);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  REQUIRE(out);
}

bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

std::string error_of(const auto& action) {
  try {
    action();
  } catch (const nsajit::Error& e) {
    return e.what();
  }
  return {};
}

std::vector<fs::path> files_under(const fs::path& dir) {
  std::vector<fs::path> out;
  for (const auto& entry : fs::recursive_directory_iterator(dir))
    if (entry.is_regular_file()) out.push_back(entry.path());
  return out;
}

// --- the concurrency workload --------------------------------------------------------------------------------

constexpr int kSharedKeys = 3;
constexpr int kPrivateKeys = 2;

// Key number k's payload: sizes from 1 KB to 40 KB, so a reader of a partial file would notice.
std::vector<char> cubin_of_key(int k) { return make_cubin(static_cast<uint64_t>(k), 1000 + (k * 7919) % 40000); }

// Stores and loads a mix of keys shared by all workers and keys of its own; returns what went wrong, if
// anything. Runs in child processes, so it reports instead of asserting.
std::string run_worker(const CubinCache& cache, int worker, int iterations) {
  std::vector<int> keys;
  for (int k = 0; k < kSharedKeys; ++k) keys.push_back(k);
  for (int k = 0; k < kPrivateKeys; ++k) keys.push_back(100 + worker * kPrivateKeys + k);
  uint64_t x = 0x12345678u + static_cast<uint64_t>(worker);
  try {
    for (int i = 0; i < iterations; ++i) {
      x = x * 6364136223846793005ull + 1442695040888963407ull;
      int k = keys[(x >> 33) % keys.size()];
      if ((x >> 20) & 1) {
        cache.store(key_of(k), cubin_of_key(k), sample_meta(k));
        continue;
      }
      std::string problem;
      std::optional<CubinCache::Loaded> loaded = cache.load(key_of(k), &problem);
      if (!problem.empty()) return "worker " + std::to_string(worker) + ": " + problem;
      if (loaded && (loaded->cubin != cubin_of_key(k) || loaded->meta != sample_meta(k)))
        return "worker " + std::to_string(worker) + ": wrong content for key " + std::to_string(k);
    }
  } catch (const std::exception& e) {
    return "worker " + std::to_string(worker) + ": " + e.what();
  }
  return {};
}

// After the workers: every key they wrote loads valid, nothing is bad and no temporary file is left.
void check_after_workers(const CubinCache& cache, int workers) {
  std::vector<int> keys;
  for (int k = 0; k < kSharedKeys; ++k) keys.push_back(k);
  for (int k = 100; k < 100 + workers * kPrivateKeys; ++k) keys.push_back(k);
  size_t present = 0;
  for (int k : keys) {
    std::string problem;
    std::optional<CubinCache::Loaded> loaded = cache.load(key_of(k), &problem);
    CHECK(problem.empty());
    if (loaded) {
      ++present;
      CHECK(loaded->cubin == cubin_of_key(k));
      CHECK(loaded->meta == sample_meta(k));
    }
  }
  // With this many iterations every key is stored at least once (the sequence is fixed).
  CHECK(present == keys.size());
  CHECK(cache.verify(false).empty());
  CHECK(cache.list().size() == keys.size());
  for (const fs::path& file : files_under(cache.dir())) CHECK_MESSAGE(file.extension() == ".nsajitcb", file);
}

}  // namespace

TEST_CASE("cubin cache key: deterministic and sensitive to every input") {
  const std::string source = "extern \"C\" __global__ void k() {}";
  const std::vector<std::string> options = {"-arch=sm_90a", "-default-device", "-O3"};
  const std::string key = nsajit::cubin_cache_key(source, options, "sm_90a", "13.0");
  CHECK(key.size() == 64);
  CHECK(nsajit::is_cubin_cache_key(key));
  CHECK(key == nsajit::cubin_cache_key(source, options, "sm_90a", "13.0"));

  std::set<std::string> keys = {key};
  auto add = [&](const std::string& k) {
    CHECK(nsajit::is_cubin_cache_key(k));
    CHECK_MESSAGE(keys.insert(k).second, "key collision: ", k);
  };
  add(nsajit::cubin_cache_key(source + " ", options, "sm_90a", "13.0"));
  add(nsajit::cubin_cache_key(source, {"-arch=sm_90a", "-default-device", "-O2"}, "sm_90a", "13.0"));
  add(nsajit::cubin_cache_key(source, {"-arch=sm_90a", "-default-device"}, "sm_90a", "13.0"));
  add(nsajit::cubin_cache_key(source, {"-arch=sm_90a", "-default-device", "-O3", ""}, "sm_90a", "13.0"));
  add(nsajit::cubin_cache_key(source, {"-default-device", "-arch=sm_90a", "-O3"}, "sm_90a", "13.0"));
  add(nsajit::cubin_cache_key(source, {"-arch=sm_80", "-default-device", "-O3"}, "sm_90a", "13.0"));
  add(nsajit::cubin_cache_key(source, options, "sm_90", "13.0"));
  add(nsajit::cubin_cache_key(source, options, "sm_90a", "13.1"));
  // Concatenations that would collide without the length prefixes.
  add(nsajit::cubin_cache_key("s", {"ab", "c"}, "x", "y"));
  add(nsajit::cubin_cache_key("s", {"a", "bc"}, "x", "y"));
  add(nsajit::cubin_cache_key("s", {"abc"}, "x", "y"));
  add(nsajit::cubin_cache_key("s", {}, "x", "y"));
  add(nsajit::cubin_cache_key("s", {""}, "x", "y"));
  add(nsajit::cubin_cache_key("sa", {"b"}, "x", "y"));
  add(nsajit::cubin_cache_key("s", {"ab"}, "x", "y"));
  add(nsajit::cubin_cache_key("s", {"a"}, "bx", "y"));
  add(nsajit::cubin_cache_key("s", {"a"}, "b", "xy"));
  add(nsajit::cubin_cache_key("s", {"a"}, "bx", ""));
  add(nsajit::cubin_cache_key("", {}, "", ""));

  CHECK_FALSE(nsajit::is_cubin_cache_key(""));
  CHECK_FALSE(nsajit::is_cubin_cache_key(key.substr(1)));
  std::string upper = key;
  for (char& c : upper) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  if (upper != key) CHECK_FALSE(nsajit::is_cubin_cache_key(upper));
}

TEST_CASE("cubin cache: store and load round trip") {
  TempDir tmp;
  CubinCache cache(tmp.path / "a" / "b");  // created with its parents
  CHECK(fs::is_directory(tmp.path / "a" / "b"));
  CHECK(cache.dir() == tmp.path / "a" / "b");

  const std::string key = key_of(1);
  std::string problem = "stale";
  CHECK_FALSE(cache.load(key, &problem));
  CHECK(problem.empty());

  const std::vector<char> cubin = make_cubin(1, 12345);
  cache.store(key, cubin, sample_meta(1));
  std::optional<CubinCache::Loaded> loaded = cache.load(key, &problem);
  REQUIRE(loaded);
  CHECK(problem.empty());
  CHECK(loaded->cubin == cubin);
  CHECK(loaded->meta == sample_meta(1));

  SUBCASE("on-disk layout") {
    const fs::path path = cache.dir() / key.substr(0, 2) / (key + ".nsajitcb");
    CHECK(cache.entry_path(key) == path);
    const std::string bytes = read_file(path);
    CHECK(bytes.substr(0, 8) == "NSAJITCB");
    CHECK(bytes.substr(56, 64) == key);
    CHECK(contains(bytes, "\"family\":\"win_fwd\""));
    CHECK(contains(bytes, "\"registers\":129"));
    const uint32_t meta_bytes = static_cast<uint8_t>(bytes[12]) | static_cast<uint8_t>(bytes[13]) << 8;
    CHECK(bytes.size() == kHeaderBytes + meta_bytes + cubin.size());
    CHECK(bytes.substr(bytes.size() - cubin.size()) == std::string(cubin.begin(), cubin.end()));
  }
  SUBCASE("a second store replaces the entry") {
    const std::vector<char> other = make_cubin(2, 777);
    cache.store(key, other, sample_meta(2));
    loaded = cache.load(key);
    REQUIRE(loaded);
    CHECK(loaded->cubin == other);
    CHECK(loaded->meta == sample_meta(2));
  }
  SUBCASE("created is stamped when zero") {
    CubinMeta meta = sample_meta(3);
    meta.created = 0;
    const int64_t before =
        std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
    cache.store(key, cubin, meta);
    loaded = cache.load(key);
    REQUIRE(loaded);
    CHECK(loaded->meta.created >= before);
    CHECK(loaded->meta.created <= before + 60);
  }
  SUBCASE("empty payload and non-UTF-8 metadata") {
    CubinMeta meta = sample_meta(4);
    meta.spec = "bad \xff byte";
    cache.store(key, {}, meta);
    loaded = cache.load(key, &problem);
    REQUIRE(loaded);
    CHECK(problem.empty());
    CHECK(loaded->cubin.empty());
    CHECK(contains(loaded->meta.spec, "bad "));
  }
  SUBCASE("a second object on the same directory sees the entry") {
    CubinCache again(cache.dir());
    loaded = again.load(key);
    REQUIRE(loaded);
    CHECK(loaded->cubin == cubin);
  }
}

TEST_CASE("cubin cache: a bad entry is reported, removed and never returned") {
  TempDir tmp;
  CubinCache cache(tmp.path);
  const std::string key = key_of(1);
  const std::vector<char> cubin = make_cubin(1, 5000);
  cache.store(key, cubin, sample_meta(1));
  const fs::path path = cache.entry_path(key);
  std::string bytes = read_file(path);
  REQUIRE(bytes.size() > kHeaderBytes + cubin.size());
  std::string reason;

  SUBCASE("empty file") {
    bytes.clear();
    reason = "truncated";
  }
  SUBCASE("truncated in the header") {
    bytes.resize(60);
    reason = "truncated";
  }
  SUBCASE("truncated in the payload") {
    bytes.resize(bytes.size() - 1000);
    reason = "truncated";
  }
  SUBCASE("last byte missing") {
    bytes.pop_back();
    reason = "truncated";
  }
  SUBCASE("a byte appended") {
    bytes.push_back('\0');
    reason = "size mismatch";
  }
  SUBCASE("one payload byte flipped") {
    bytes[bytes.size() - 100] = static_cast<char>(bytes[bytes.size() - 100] ^ 0x01);
    reason = "checksum mismatch";
  }
  SUBCASE("one metadata byte flipped") {
    bytes[kHeaderBytes + 1] = static_cast<char>(bytes[kHeaderBytes + 1] ^ 0x01);
    reason = "checksum mismatch";
  }
  SUBCASE("one checksum byte flipped") {
    bytes[30] = static_cast<char>(bytes[30] ^ 0x80);
    reason = "checksum mismatch";
  }
  SUBCASE("payload size field changed") {
    // The low byte of the little-endian payload size: 5000 becomes 5001, one byte more than the file holds.
    REQUIRE(cubin.size() % 2 == 0);
    bytes[16] = static_cast<char>(bytes[16] ^ 0x01);
    reason = "truncated: the file has " + std::to_string(bytes.size()) + " bytes, its header says " +
             std::to_string(bytes.size() + 1);
  }
  SUBCASE("payload size field made smaller") {
    bytes[16] = static_cast<char>(bytes[16] ^ 0x08);  // 5000 = 0x1388 becomes 0x1380: 8 bytes fewer
    REQUIRE((cubin.size() & 0x08) != 0);
    reason = "size mismatch: the file has " + std::to_string(bytes.size()) + " bytes, its header says " +
             std::to_string(bytes.size() - 8);
  }
  SUBCASE("garbage bytes") {
    const std::vector<char> garbage = make_cubin(99, 4096);
    bytes.assign(garbage.begin(), garbage.end());
    reason = "bad magic";
  }
  SUBCASE("garbage text") {
    bytes = "hello";
    reason = "bad magic";
  }
  SUBCASE("unknown format version") {
    bytes[8] = 2;
    reason = "format version 2";
  }
  SUBCASE("the entry of another key") {
    const std::string other = key_of(2);
    cache.store(other, cubin, sample_meta(1));
    bytes = read_file(cache.entry_path(other));
    reason = "key mismatch: the file holds the entry of key " + other;
  }
  SUBCASE("metadata lacking a field, with a matching checksum") {
    const size_t at = bytes.find("\"registers\"");
    REQUIRE(at != std::string::npos);
    bytes.replace(at, 11, "\"registerz\"");
    llvm::BLAKE3 hasher;
    hasher.update(bytes.substr(kHeaderBytes));
    const std::array<uint8_t, 32> sum = hasher.final();
    bytes.replace(24, 32, std::string(sum.begin(), sum.end()));
    reason = "bad metadata";
  }

  write_file(path, bytes);
  std::string problem;
  CHECK_FALSE(cache.load(key, &problem));
  INFO("problem: ", problem);
  CHECK(contains(problem, reason));
  CHECK(contains(problem, path.string()));
  CHECK(contains(problem, "removed"));
  CHECK_FALSE(fs::exists(path));

  // The caller compiles again and stores.
  cache.store(key, cubin, sample_meta(1));
  std::optional<CubinCache::Loaded> again = cache.load(key, &problem);
  REQUIRE(again);
  CHECK(problem.empty());
  CHECK(again->cubin == cubin);
}

TEST_CASE("cubin cache: concurrent writers and readers in several processes") {
  TempDir tmp;
  CubinCache cache(tmp.path);
  constexpr int kProcesses = 4;
  constexpr int kIterations = 300;
  std::fflush(nullptr);
  std::vector<pid_t> children;
  for (int p = 0; p < kProcesses; ++p) {
    pid_t pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
      std::string failure = run_worker(CubinCache(tmp.path), p, kIterations);
      if (!failure.empty()) std::fprintf(stderr, "%s\n", failure.c_str());
      _exit(failure.empty() ? 0 : 1);
    }
    children.push_back(pid);
  }
  for (pid_t pid : children) {
    int status = 0;
    REQUIRE(waitpid(pid, &status, 0) == pid);
    CHECK(WIFEXITED(status));
    CHECK(WEXITSTATUS(status) == 0);
  }
  check_after_workers(cache, kProcesses);
}

TEST_CASE("cubin cache: concurrent writers and readers in several threads") {
  TempDir tmp;
  const CubinCache cache(tmp.path);
  constexpr int kThreads = 4;
  std::vector<std::string> failures(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) threads.emplace_back([&, t] { failures[t] = run_worker(cache, t, 300); });
  for (std::thread& thread : threads) thread.join();
  for (const std::string& failure : failures) CHECK_MESSAGE(failure.empty(), failure);
  check_after_workers(cache, kThreads);
}

TEST_CASE("cubin cache: list") {
  TempDir tmp;
  CubinCache cache(tmp.path);
  CHECK(cache.list().empty());

  const auto now = [] {
    return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch())
        .count();
  };
  const int64_t before = now();
  std::vector<std::string> keys;
  for (int i = 0; i < 3; ++i) {
    keys.push_back(key_of(i));
    cache.store(keys.back(), cubin_of_key(i), sample_meta(i));
  }
  const int64_t after = now();
  // Files that are not entries.
  write_file(tmp.path / "README", "mine");
  write_file(tmp.path / keys[0].substr(0, 2) / "notes.txt", "mine");
  fs::create_directories(tmp.path / "other");
  write_file(tmp.path / "other" / (keys[0] + ".nsajitcb"), read_file(cache.entry_path(keys[0])));
  write_file(tmp.path / keys[1].substr(0, 2) / (keys[1] + ".123456.nsajitcb-tmp"), "partial");

  std::vector<CubinCache::Entry> entries = cache.list();
  REQUIRE(entries.size() == 3);
  std::sort(keys.begin(), keys.end());
  for (size_t i = 0; i < entries.size(); ++i) {
    const CubinCache::Entry& entry = entries[i];
    CAPTURE(entry.key);
    CHECK(entry.key == keys[i]);  // sorted by key
    CHECK(entry.path == cache.entry_path(entry.key));
    CHECK(entry.bytes == fs::file_size(entry.path));
    CHECK(entry.modified >= before - 2);
    CHECK(entry.modified <= after + 2);
    CHECK(entry.problem.empty());
    CHECK_FALSE(entry.removed);
    REQUIRE(entry.meta);
    int k = 0;
    while (key_of(k) != entry.key) ++k;
    CHECK(*entry.meta == sample_meta(k));
  }

  // A bad entry is listed with its problem.
  const fs::path truncated = cache.entry_path(keys[2]);
  write_file(truncated, read_file(truncated).substr(0, 50));
  entries = cache.list();
  REQUIRE(entries.size() == 3);
  CHECK(entries[2].path == truncated);
  CHECK(contains(entries[2].problem, "truncated"));
  CHECK_FALSE(entries[2].meta);
  CHECK(fs::exists(truncated));  // list only reports
}

TEST_CASE("cubin cache: verify and repair") {
  TempDir tmp;
  CubinCache cache(tmp.path);
  for (int i = 0; i < 5; ++i) cache.store(key_of(i), cubin_of_key(i), sample_meta(i));
  CHECK(cache.verify(false).empty());

  // Two corrupted entries, one in the wrong shard directory, one whose name is not a key.
  const fs::path flipped = cache.entry_path(key_of(0));
  std::string bytes = read_file(flipped);
  bytes[bytes.size() - 1] = static_cast<char>(bytes[bytes.size() - 1] ^ 0x10);
  write_file(flipped, bytes);
  const fs::path truncated = cache.entry_path(key_of(1));
  write_file(truncated, read_file(truncated).substr(0, 200));
  const std::string moved_key = key_of(2);
  const std::string wrong_shard_name = moved_key[0] == '0' ? "11" : "00";
  fs::create_directories(tmp.path / wrong_shard_name);
  const fs::path wrong_shard = tmp.path / wrong_shard_name / (moved_key + ".nsajitcb");
  fs::rename(cache.entry_path(moved_key), wrong_shard);
  const fs::path not_a_key = tmp.path / "ab" / "notakey.nsajitcb";
  fs::create_directories(not_a_key.parent_path());
  write_file(not_a_key, "x");

  std::map<fs::path, std::string> expected = {{flipped, "checksum mismatch"},
                                              {truncated, "truncated"},
                                              {wrong_shard, "in the wrong directory '" + wrong_shard_name + "'"},
                                              {not_a_key, "not a cache key"}};
  auto check_report = [&](const std::vector<CubinCache::Entry>& bad, bool removed) {
    CHECK(bad.size() == expected.size());
    for (const CubinCache::Entry& entry : bad) {
      CAPTURE(entry.path);
      CAPTURE(entry.problem);
      REQUIRE(expected.count(entry.path) == 1);
      CHECK(contains(entry.problem, expected[entry.path]));
      CHECK(entry.removed == removed);
      CHECK(fs::exists(entry.path) != removed);
    }
  };
  check_report(cache.verify(false), false);
  check_report(cache.verify(true), true);
  CHECK(cache.verify(false).empty());
  for (int i = 3; i < 5; ++i) {
    std::optional<CubinCache::Loaded> loaded = cache.load(key_of(i));
    REQUIRE(loaded);
    CHECK(loaded->cubin == cubin_of_key(i));
  }
  CHECK(cache.list().size() == 2);
}

TEST_CASE("cubin cache: clear removes entries and stale temporary files only") {
  TempDir tmp;
  CubinCache cache(tmp.path);
  CHECK(cache.clear() == 0);
  for (int i = 0; i < 4; ++i) cache.store(key_of(i), cubin_of_key(i), sample_meta(i));
  const std::string shard = key_of(0).substr(0, 2);
  const std::vector<fs::path> unrelated = {
      tmp.path / "README", tmp.path / shard / "notes.txt", tmp.path / shard / "kernel.cubin",
      tmp.path / "other" / (key_of(0) + ".nsajitcb"),  // not in a shard directory
  };
  fs::create_directories(tmp.path / "other");
  for (const fs::path& path : unrelated) write_file(path, "not the cache's");
  const fs::path directory = tmp.path / shard / (key_of(1) + ".nsajitcb");  // a directory with the entry suffix
  fs::create_directories(directory);
  const fs::path fresh_temp = tmp.path / shard / (key_of(0) + ".aaaaaaaaaaaa.nsajitcb-tmp");
  const fs::path stale_temp = tmp.path / shard / (key_of(0) + ".bbbbbbbbbbbb.nsajitcb-tmp");
  write_file(fresh_temp, "a writer at work");
  write_file(stale_temp, "a writer that died");
  fs::last_write_time(stale_temp, fs::file_time_type::clock::now() - std::chrono::hours(2));

  CHECK(cache.clear() == 4);
  CHECK(cache.list().empty());
  for (int i = 0; i < 4; ++i) CHECK_FALSE(fs::exists(cache.entry_path(key_of(i))));
  for (const fs::path& path : unrelated) CHECK_MESSAGE(read_file(path) == "not the cache's", path);
  CHECK(fs::is_directory(directory));
  CHECK(fs::exists(fresh_temp));
  CHECK_FALSE(fs::exists(stale_temp));
  CHECK(cache.clear() == 0);

  // Still usable.
  cache.store(key_of(0), cubin_of_key(0), sample_meta(0));
  CHECK(cache.load(key_of(0)));
}

TEST_CASE("cubin cache: default directory") {
  EnvGuard guard({"NSAJIT_CACHE_DIR", "XDG_CACHE_HOME", "HOME"});
  setenv("HOME", "/home/someone", 1);
  setenv("XDG_CACHE_HOME", "/xdg/cache", 1);
  setenv("NSAJIT_CACHE_DIR", "/custom/nsajit-cache", 1);
  CHECK(CubinCache::default_dir() == fs::path("/custom/nsajit-cache"));
  setenv("NSAJIT_CACHE_DIR", "", 1);
  CHECK(CubinCache::default_dir() == fs::path("/xdg/cache/nsajit"));
  unsetenv("NSAJIT_CACHE_DIR");
  CHECK(CubinCache::default_dir() == fs::path("/xdg/cache/nsajit"));
  setenv("XDG_CACHE_HOME", "relative/cache", 1);  // ignored, as the XDG spec says
  CHECK(CubinCache::default_dir() == fs::path("/home/someone/.cache/nsajit"));
  unsetenv("XDG_CACHE_HOME");
  CHECK(CubinCache::default_dir() == fs::path("/home/someone/.cache/nsajit"));
}

TEST_CASE("cubin cache: unusable directories give a clear nsajit::Error") {
  TempDir tmp;
  const fs::path file = tmp.path / "a-file";
  write_file(file, "x");

  std::string message = error_of([&] { CubinCache cache(file / "cache"); });
  CHECK(contains(message, (file / "cache").string()));
  CHECK(contains(message, "Not a directory"));

  message = error_of([&] { CubinCache cache(file); });
  CHECK(contains(message, file.string()));
  CHECK(contains(message, "Not a directory"));

  // A shard directory that is a file.
  CubinCache cache(tmp.path / "cache");
  const std::string key = key_of(1);
  write_file(cache.dir() / key.substr(0, 2), "in the way");
  message = error_of([&] { cache.store(key, make_cubin(1, 10), sample_meta()); });
  CHECK(contains(message, (cache.dir() / key.substr(0, 2)).string()));
  CHECK(contains(message, "Not a directory"));

  // A directory the process may read but not write. Permission bits do not bind root (CI runs as root), so the
  // case runs in a forked child that, when root, first drops to nobody (uid/gid 65534) for good.
  const fs::path ro_dir = tmp.path / "readonly";
  const std::string other = key_of(2);
  fs::create_directories(ro_dir / other.substr(0, 2));
  const bool as_root = geteuid() == 0;
  constexpr uid_t kNobody = 65534;
  if (as_root) {
    // nobody must reach the directory (mkdtemp made tmp.path 0700) and own what it may not write.
    fs::permissions(tmp.path, fs::perms::owner_all | fs::perms::others_exec);
    for (const fs::path& p : {ro_dir, ro_dir / other.substr(0, 2)}) REQUIRE(chown(p.c_str(), kNobody, kNobody) == 0);
  }
  fs::permissions(ro_dir, fs::perms::owner_read | fs::perms::owner_exec);
  fs::permissions(ro_dir / other.substr(0, 2), fs::perms::owner_read | fs::perms::owner_exec);

  int fds[2];
  REQUIRE(pipe(fds) == 0);
  std::fflush(nullptr);
  const pid_t pid = fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    // The child reports instead of asserting: "<who>\n<store error>\n<loaded: 0 or 1>".
    close(fds[0]);
    std::string report;
    if (as_root && (setgroups(0, nullptr) != 0 || setgid(kNobody) != 0 || setuid(kNobody) != 0))
      report = "cannot drop privileges: " + std::string(std::strerror(errno));
    else if (as_root && (setuid(0) == 0 || geteuid() == 0))
      report = "privileges were not dropped for good";
    else {
      report = "uid " + std::to_string(geteuid()) + "\n";
      try {
        const CubinCache readonly(ro_dir);
        report += error_of([&] { readonly.store(other, make_cubin(2, 10), sample_meta()); }) + "\n";
        report += readonly.load(other) ? "1" : "0";
      } catch (const std::exception& e) {
        report += std::string("unexpected exception: ") + e.what();
      }
    }
    const char* p = report.data();
    for (size_t left = report.size(); left > 0;) {
      const ssize_t n = write(fds[1], p, left);
      if (n <= 0) _exit(3);
      p += n, left -= static_cast<size_t>(n);
    }
    _exit(0);
  }
  close(fds[1]);
  std::string report;
  std::array<char, 4096> buffer{};
  for (ssize_t n; (n = read(fds[0], buffer.data(), buffer.size())) > 0;) report.append(buffer.data(), static_cast<size_t>(n));
  close(fds[0]);
  int status = 0;
  REQUIRE(waitpid(pid, &status, 0) == pid);
  REQUIRE(WIFEXITED(status));
  REQUIRE(WEXITSTATUS(status) == 0);
  INFO("child report: ", report);
  const size_t nl1 = report.find('\n'), nl2 = report.rfind('\n');
  REQUIRE(nl1 != std::string::npos);
  REQUIRE(nl2 > nl1);
  CHECK(report.substr(0, nl1) == "uid " + std::to_string(as_root ? kNobody : geteuid()));
  message = report.substr(nl1 + 1, nl2 - nl1 - 1);
  CHECK(contains(message, (ro_dir / other.substr(0, 2)).string()));
  CHECK(contains(message, "Permission denied"));
  CHECK(report.substr(nl2 + 1) == "0");  // reading still works: the key is simply absent
  CHECK(files_under(ro_dir).empty());
  fs::permissions(ro_dir / other.substr(0, 2), fs::perms::owner_all);
  fs::permissions(ro_dir, fs::perms::owner_all);
}

TEST_CASE("cubin cache: keys that are not cache keys are refused") {
  TempDir tmp;
  CubinCache cache(tmp.path);
  for (std::string bad : {std::string(""), std::string("abc"), std::string("../../etc/passwd"), std::string(64, 'A'),
                          std::string(63, 'a') + "/"}) {
    CAPTURE(bad);
    CHECK(contains(error_of([&] { cache.load(bad); }), "not a CUBIN cache key"));
    CHECK(contains(error_of([&] { cache.store(bad, make_cubin(1, 10), sample_meta()); }), "not a CUBIN cache key"));
  }
  CHECK(files_under(tmp.path).empty());
}
