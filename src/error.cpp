#include "meshckpt/error.hpp"

#include <cstring>

namespace meshckpt {
namespace {

class category final : public std::error_category {
 public:
  const char* name() const noexcept override { return "meshckpt"; }
  std::string message(int c) const override {
    switch (static_cast<errc>(c)) {
      case errc::ok: return "success";
      case errc::invalid_argument: return "invalid argument";
      case errc::not_found: return "not found";
      case errc::checksum_mismatch: return "checksum mismatch";
      case errc::corrupt_manifest: return "corrupt manifest";
      case errc::unsupported_version: return "unsupported format version";
      case errc::dtype_mismatch: return "dtype mismatch";
      case errc::shape_mismatch: return "shape mismatch";
      case errc::layout_mismatch: return "layout mismatch";
      case errc::unsafe_path: return "unsafe path";
      case errc::limit_exceeded: return "limit exceeded";
      case errc::short_read: return "file shorter than expected";
      case errc::unsupported: return "unsupported";
      case errc::cancelled: return "cancelled";
      case errc::timed_out: return "timed out";
      case errc::locked: return "directory locked by another writer";
    }
    return "unknown meshckpt error";
  }
};

}  // namespace

const std::error_category& meshckpt_category() noexcept {
  static const category c;
  return c;
}

error make_error(errc code, std::string message) { return error{make_error_code(code), std::move(message)}; }

error out_of_memory(std::string_view during) {
  return error{std::error_code(ENOMEM, std::system_category()), "out of memory while " + std::string(during)};
}

error make_errno_error(int err, std::string_view op, std::string_view path) {
  std::string msg(op);
  if (!path.empty()) {
    msg += ' ';
    msg += path;
  }
  msg += ": ";
  msg += std::strerror(err);
  msg += " (errno " + std::to_string(err) + ")";
  return error{std::error_code(err, std::system_category()), std::move(msg)};
}

error with_context(error e, std::string_view context) {
  std::string msg(context);
  msg += ": ";
  msg += e.what();
  e.message = std::move(msg);
  return e;
}

void outcome_throw_as_system_error_with_payload(const error& e) { throw std::system_error(e.code, e.message); }

}  // namespace meshckpt
