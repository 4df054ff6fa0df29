#pragma once
/// \file
/// meshckpt's error vocabulary: `result<T>` (Boost.Outcome) carrying an `error`, which is a
/// `std::error_code` plus a message that says what failed, where (file relative to the
/// checkpoint directory, tensor key, offset) and why.

#include <boost/outcome/std_result.hpp>
#include <boost/outcome/try.hpp>

#include <string>
#include <system_error>

namespace meshckpt {

/// Error conditions specific to meshckpt. IO failures use `std::system_category()` with the
/// errno the operating system reported instead.
enum class errc {
  ok = 0,
  invalid_argument = 1,     ///< a caller-supplied value is malformed (shape, layout, name, ...)
  not_found = 2,            ///< the checkpoint, file or tensor does not exist
  checksum_mismatch = 3,    ///< bytes on disk do not match their recorded checksum (XXH3; CRC-32C in TensorFlow files)
  corrupt_manifest = 4,     ///< the manifest is truncated, malformed or inconsistent
  unsupported_version = 5,  ///< the manifest was written by an incompatible format version
  dtype_mismatch = 6,       ///< saved and requested dtypes differ
  shape_mismatch = 7,       ///< saved and requested global shapes differ
  layout_mismatch = 8,      ///< the saved slices do not cover a requested shard
  unsafe_path = 9,          ///< a file name would escape the checkpoint directory, or is not a regular file
  limit_exceeded = 10,      ///< a size or count exceeds a safety cap
  short_read = 11,          ///< a file ended before the bytes the manifest promises
  unsupported = 12,         ///< the request needs a capability this build or setup lacks
  cancelled = 13,           ///< the operation was cancelled before it took effect
  timed_out = 14,           ///< another process did not answer in time (dead, hung, or too slow)
  locked = 15,              ///< another process is writing into the checkpoint directory (it holds DIR/meshckpt.lock)
};

/// The `std::error_category` of `errc`; its name is "meshckpt".
const std::error_category& meshckpt_category() noexcept;

/// Makes `errc` usable as a `std::error_code`.
inline std::error_code make_error_code(errc e) noexcept { return {static_cast<int>(e), meshckpt_category()}; }

/// An error: a code to branch on and a message for people. The message is complete on its own
/// (it includes the code's description), e.g.
/// `checksum mismatch in tensor "model/w" slice [0:4, 0:8] of file "ck.data-…-0" at offset 4096`.
struct error {
  std::error_code code;
  std::string message;

  /// The full message, or the code's description when no message was attached.
  [[nodiscard]] std::string what() const { return message.empty() ? code.message() : message; }
};

/// Builds an error with a meshckpt code and a message.
error make_error(errc code, std::string message);

/// Builds an error from an errno value, e.g. `make_errno_error(ENOSPC, "write", "ck.data-…-0")`
/// gives "write ck.data-…-0: No space left on device (errno 28)".
error make_errno_error(int err, std::string_view op, std::string_view path);

/// The error of an allocation failure (`std::bad_alloc` caught inside an operation): ENOMEM in
/// the system category, "out of memory while <during>". Operations report it instead of
/// throwing, after releasing what they held.
error out_of_memory(std::string_view during);

/// Returns `e` with `context + ": "` prepended to its message (for adding the tensor key or the
/// checkpoint path as an error travels up).
error with_context(error e, std::string_view context);

// Hooks that make Outcome treat `error` like a `std::error_code` (so `.value()` on a failed
// result throws `std::system_error` carrying the message).
inline std::error_code make_error_code(const error& e) { return e.code; }
[[noreturn]] void outcome_throw_as_system_error_with_payload(const error& e);

/// The result of every fallible meshckpt operation: a value or an `error`. It is Outcome's
/// `std_result<T, error>` (so `BOOST_OUTCOME_TRY` / `BOOST_OUTCOME_CO_TRY` work) with `*r` and
/// `r->` added for brevity; like `.value()`, they throw `std::system_error` when `r` holds an
/// error.
template <class T>
class result : public boost::outcome_v2::std_result<T, error> {
  using base = boost::outcome_v2::std_result<T, error>;

 public:
  using base::base;
  result(const base& b) : base(b) {}
  result(base&& b) : base(std::move(b)) {}

  template <class U = T>
  requires(!std::is_void_v<U>) U& operator*() & { return this->value(); }
  template <class U = T>
  requires(!std::is_void_v<U>) const U& operator*() const& { return this->value(); }
  template <class U = T>
  requires(!std::is_void_v<U>) U && operator*() && { return std::move(this->value()); }
  template <class U = T>
  requires(!std::is_void_v<U>) U* operator->() { return &this->value(); }
  template <class U = T>
  requires(!std::is_void_v<U>) const U* operator->() const { return &this->value(); }
};

/// Success value for `result<void>`.
inline auto success() { return boost::outcome_v2::success(); }

}  // namespace meshckpt

template <>
struct std::is_error_code_enum<meshckpt::errc> : std::true_type {};
