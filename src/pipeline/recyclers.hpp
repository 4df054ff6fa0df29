#pragma once
// Private: the recyclers (runtime/recycler.hpp) of what every save and restore builds: manifests,
// encoded manifests, the slice lists of write plans.

#include <cstddef>
#include <vector>

#include "../runtime/recycler.hpp"
#include "meshckpt/format/manifest.hpp"
#include "meshckpt/plan/write_plan.hpp"

namespace meshckpt::detail {

// Manifests (the skeleton of a save, the decoded manifest of a restore), up to 65,536 tensors.
runtime::recycler<format::manifest>& manifests();
// Byte buffers (encoded manifests), up to 16 MiB.
runtime::recycler<std::vector<std::byte>>& byte_buffers();
// The slice lists of write plans, up to 65,536 slices.
runtime::recycler<std::vector<plan::slice_write>>& slice_writes();

}  // namespace meshckpt::detail
