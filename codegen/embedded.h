#pragma once
// Kernel template files embedded into the binary at build time (cmake/embed_templates.cmake), so the runtime
// needs no files beside it.
#include <cstddef>
#include <string_view>

namespace nsajit {

struct EmbeddedFile {
  std::string_view path;  // relative to the source root, e.g. "templates/win_fwd.cuh"
  std::string_view text;
};

const EmbeddedFile* embedded_files(std::size_t* count);

// The text of an embedded template; throws nsajit::Error if it was not embedded.
std::string_view embedded_template(std::string_view path);

}  // namespace nsajit
