#pragma once
/// \file
/// `load_status`: the outcome of a restore (TensorFlow's CheckpointLoadStatus) — which
/// checkpoint values were used, which live objects restored — with its assertions, and where
/// the warning of an incomplete restore goes.

#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "meshckpt/error.hpp"

namespace meshckpt {

namespace detail {
struct status_state;
}  // namespace detail

/// The outcome of `restore`/`read`: which checkpoint values were used and which live objects
/// were restored. A cheap handle; copies share state. Assertions can start passing later, as
/// deferred restorations fire when children are tracked.
///
/// When the last handle is destroyed, a warning lists checkpoint values never used and live
/// objects never restored — unless `expect_partial()` was called (see `set_warning_handler`).
class load_status {
 public:
  /// Every live object reachable from the root that holds a value was restored by this status;
  /// extra checkpoint values are fine. Also fails if a deferred restoration failed.
  result<load_status> assert_existing_objects_matched() const;
  /// The above, plus every checkpoint object was matched and every checkpoint value used.
  result<load_status> assert_consumed() const;
  /// Something besides the root (and the save counter) was matched.
  result<load_status> assert_nontrivial_match() const;
  /// Silences the destruction warning; returns this status.
  load_status expect_partial() const;

  /// Keys of checkpoint values not used (so far).
  std::vector<std::string> unused_keys() const;
  /// Paths of live objects (reachable at restore time) not restored (so far).
  std::vector<std::string> unrestored_objects() const;
  /// Errors of deferred restorations (dtype/shape mismatches found when a child was tracked).
  std::vector<error> deferred_errors() const;
  /// The checkpoint path, or empty for `restore(std::nullopt)`.
  std::string path() const;

  explicit load_status(std::shared_ptr<detail::status_state> s) : s_(std::move(s)) {}

 private:
  std::shared_ptr<detail::status_state> s_;
};

/// Where load-status warnings go; the default prints them to stderr. Returns the old handler.
std::function<void(std::string_view)> set_warning_handler(std::function<void(std::string_view)> h);

}  // namespace meshckpt
