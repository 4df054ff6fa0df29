#pragma once
// Private: the `checkpoint` state file, deletion, leftovers and latest_checkpoint as coroutines,
// for the async paths (a manager's save, async_latest_checkpoint); the public blocking functions
// of api/checkpoint.hpp are the bridge over them.

#include "../pipeline/common.hpp"
#include "meshckpt/api/checkpoint.hpp"

namespace meshckpt::detail {

// Creates `dir` and its missing parents, durably (each fsynced into its parent).
task<void> make_directory(io::backend& b, std::string dir);
task<checkpoint_state> read_state(io::backend& b, std::string dir);
task<void> write_state(io::backend& b, std::string dir, checkpoint_state st);
task<void> delete_checkpoint(io::backend& b, std::string prefix);
task<std::size_t> remove_orphans(io::backend& b, std::string dir, std::string name);
task<std::optional<std::string>> latest_checkpoint(io::backend& b, std::string dir);

}  // namespace meshckpt::detail
