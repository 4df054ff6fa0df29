#pragma once
// Private: the `checkpoint` state file, deletion, leftovers and latest_checkpoint as coroutines,
// for the async paths (a manager's save, async_latest_checkpoint); the public blocking functions
// of api/checkpoint.hpp are the bridge over them.

#include "../pipeline/common.hpp"
#include "meshckpt/api/checkpoint.hpp"

namespace meshckpt::detail {

// Creates `dir` and its missing parents, durably (each fsynced into its parent).
task<void> make_directory(io::backend& b, std::string dir);
// `version`, when given, receives the state file's version (object stores; "" when absent).
task<checkpoint_state> read_state(io::backend& b, std::string dir, std::string* version = nullptr);

// On an object store, replacing the state file is a compare and swap (If-Match). `version` is
// the one this writer last read or wrote ("" for none there yet); unknown (nullopt), it is read
// first. On a conflict (another writer replaced the file since) the file is read again, the
// update folded into it by `merge` (when given; else it replaces theirs), and the swap retried,
// a bounded number of times. On a filesystem the directory lock serialises writers instead.
struct state_cas {
  std::optional<std::string> version;
};
using state_merge = std::function<checkpoint_state(checkpoint_state mine, const checkpoint_state& theirs)>;
task<void> write_state(io::backend& b, std::string dir, checkpoint_state st, state_cas* cas = nullptr, state_merge merge = {});
task<void> delete_checkpoint(io::backend& b, std::string prefix);
task<std::size_t> remove_orphans(io::backend& b, std::string dir, std::string name);
task<std::optional<std::string>> latest_checkpoint(io::backend& b, std::string dir);

}  // namespace meshckpt::detail
