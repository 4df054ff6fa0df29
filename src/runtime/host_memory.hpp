// Large host buffers (snapshot arenas) mapped for transparent huge pages: the first copy into
// a fresh 2 GiB arena otherwise takes one page fault per 4 KiB (524,288 of them), which on a
// virtual machine costs seconds; with 2 MiB pages it is 1,024.
#pragma once

#include <cstddef>
#include <memory>

namespace meshckpt::runtime {

struct host_memory_free {
  std::size_t bytes = 0;
  void operator()(std::byte* p) const noexcept;
};
using host_buffer = std::unique_ptr<std::byte[], host_memory_free>;

// `bytes` of memory: from 2 MiB up, an anonymous mapping advised for huge pages; below that,
// plain `new` (uninitialised). Throws std::bad_alloc when the memory is not there.
host_buffer allocate_host(std::size_t bytes);

}  // namespace meshckpt::runtime
