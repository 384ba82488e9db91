#include "db/keys.h"

#include <fmt/format.h>
#include <llvm/ADT/StringExtras.h>
#include <llvm/Support/BLAKE3.h>

#include <array>
#include <cctype>
#include <charconv>
#include <cmath>
#include <optional>
#include <set>
#include <vector>

#include "base/error.h"

namespace nsajit {
namespace {

// Splits on spaces, dropping empty pieces.
std::vector<std::string_view> tokens(std::string_view s) {
  std::vector<std::string_view> out;
  while (!s.empty()) {
    const size_t space = s.find(' ');
    const std::string_view piece = s.substr(0, space);
    if (!piece.empty()) out.push_back(piece);
    if (space == std::string_view::npos) break;
    s.remove_prefix(space + 1);
  }
  return out;
}

template <typename Int>
std::optional<Int> parse_int(std::string_view s) {
  Int v{};
  const auto [ptr, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (s.empty() || ec != std::errc() || ptr != s.data() + s.size()) return std::nullopt;
  return v;
}

std::optional<double> parse_double(std::string_view s) {
  double v = 0;
  const auto [ptr, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (s.empty() || ec != std::errc() || ptr != s.data() + s.size() || !std::isfinite(v)) return std::nullopt;
  return v;
}

}  // namespace

std::string ProblemKey::str() const {
  const std::string bucket = fmt::format("T<={}", t_bucket);
  // T sits right after the B= field in Problem::describe().
  const size_t b = shape.find(" B=");
  if (b == std::string::npos) return shape.empty() ? bucket : bucket + " " + shape;
  const size_t end = shape.find(' ', b + 1);
  if (end == std::string::npos) return shape + " " + bucket;
  return shape.substr(0, end) + " " + bucket + shape.substr(end);
}

ProblemKey problem_key(const Problem& p) {
  ProblemKey key;
  int64_t bucket = 1;
  while (bucket < p.T) bucket <<= 1;
  key.t_bucket = bucket;
  const std::string description = p.describe();
  std::string shape;
  for (std::string_view t : tokens(description)) {
    if (t.substr(0, 2) == "T=") continue;
    if (!shape.empty()) shape += ' ';
    shape += t;
  }
  key.shape = std::move(shape);
  return key;
}

Problem parse_problem(std::string_view description) {
  auto fail = [&](const std::string& what) -> UsageError {
    return UsageError(fmt::format("bad problem description '{}': {}", description, what));
  };
  const std::vector<std::string_view> parts = tokens(description);
  if (parts.empty()) throw fail("missing field 'dtype' (the description is empty)");
  Problem p;
  try {
    p.dtype = parse_dtype(parts[0]);
  } catch (const UsageError&) {
    throw fail(fmt::format("field 'dtype': '{}' is not bf16 or fp16", parts[0]));
  }
  // The fields Problem::describe() always writes, and the optional scale.
  struct Field {
    const char* name;
    int64_t* i64 = nullptr;
    int* i32 = nullptr;
    double* f64 = nullptr;
    bool optional = false;
  };
  const std::array<Field, 12> fields = {{{"B", &p.B, nullptr, nullptr, false},
                                         {"T", &p.T, nullptr, nullptr, false},
                                         {"HQ", nullptr, &p.HQ, nullptr, false},
                                         {"H", nullptr, &p.H, nullptr, false},
                                         {"dk", nullptr, &p.dk, nullptr, false},
                                         {"dv", nullptr, &p.dv, nullptr, false},
                                         {"l", nullptr, &p.l, nullptr, false},
                                         {"d", nullptr, &p.d, nullptr, false},
                                         {"l'", nullptr, &p.lsel, nullptr, false},
                                         {"n", nullptr, &p.n, nullptr, false},
                                         {"w", nullptr, &p.w, nullptr, false},
                                         {"scale", nullptr, nullptr, &p.scale, true}}};
  std::set<std::string_view> seen;
  for (size_t i = 1; i < parts.size(); ++i) {
    const std::string_view part = parts[i];
    const size_t eq = part.find('=');
    if (eq == std::string_view::npos) throw fail(fmt::format("'{}' is not a NAME=VALUE field", part));
    const std::string_view name = part.substr(0, eq), value = part.substr(eq + 1);
    const Field* field = nullptr;
    for (const Field& f : fields)
      if (name == f.name) field = &f;
    if (!field) throw fail(fmt::format("unknown field '{}'", name));
    if (!seen.insert(field->name).second) throw fail(fmt::format("field '{}' given twice", name));
    if (field->i64) {
      const auto v = parse_int<int64_t>(value);
      if (!v) throw fail(fmt::format("field '{}': '{}' is not an integer", name, value));
      *field->i64 = *v;
    } else if (field->i32) {
      const auto v = parse_int<int>(value);
      if (!v) throw fail(fmt::format("field '{}': '{}' is not an integer", name, value));
      *field->i32 = *v;
    } else {
      const auto v = parse_double(value);
      if (!v || *v <= 0) throw fail(fmt::format("field '{}': '{}' is not a positive number", name, value));
      *field->f64 = *v;
    }
  }
  for (const Field& f : fields)
    if (!f.optional && !seen.count(f.name)) throw fail(fmt::format("missing field '{}'", f.name));
  try {
    p.validate();
  } catch (const UsageError& e) {
    throw fail(e.what());
  }
  return p;
}

TileConfig parse_config(std::string_view description) {
  TileConfig c;
  for (std::string_view part : tokens(description)) {
    const size_t eq = part.find('=');
    const std::string_view name = eq == std::string_view::npos ? part : part.substr(0, eq);
    bool name_ok = !name.empty();
    for (char ch : name) name_ok = name_ok && (std::isalnum(static_cast<unsigned char>(ch)) || ch == '_');
    if (eq == std::string_view::npos || !name_ok)
      throw UsageError(fmt::format("bad tile config '{}': '{}' is not a NAME=VALUE field", description, part));
    const auto v = parse_int<int>(part.substr(eq + 1));
    if (!v)
      throw UsageError(fmt::format("bad tile config '{}': field '{}': '{}' is not an integer", description, name,
                                   part.substr(eq + 1)));
    if (!c.emplace(std::string(name), *v).second)
      throw UsageError(fmt::format("bad tile config '{}': field '{}' given twice", description, name));
  }
  return c;
}

std::string source_hash(const KernelSpec& spec) {
  const std::string source = generate_source(spec);
  llvm::BLAKE3 hasher;
  hasher.update(llvm::StringRef(source.data(), source.size()));
  const std::array<uint8_t, 32> digest = hasher.final();
  return llvm::toHex(digest, /*LowerCase=*/true);
}

Staleness staleness(const BestEntry& e, const Toolkit& current, const std::string& arch) {
  Staleness st;
  const Toolkit& tk = e.toolkit;
  if (tk.nvrtc_version != current.nvrtc_version)
    st.reasons.push_back(fmt::format("NVRTC {} (now {})", tk.nvrtc_version, current.nvrtc_version));
  if (current.driver_version != 0 && tk.driver_version != current.driver_version)
    st.reasons.push_back(fmt::format("driver {} (now {})", tk.driver_version, current.driver_version));
  st.toolkit = !st.reasons.empty();
  const KernelFamily& f = find_family(e.family);
  if (source_hash(KernelSpec{&f, parse_problem(e.problem), parse_config(e.config), arch}) != e.source_hash) {
    st.reasons.push_back("kernel source changed");
    st.source = true;
  }
  return st;
}

}  // namespace nsajit
