#pragma once
// Private: the snapshot of a copy-mode or lazy save: the distinct slices (replicas once) copied
// into reusable, budgeted host memory, the save's views re-pointed at the copy.

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "checkpoint_impl.hpp"

namespace meshckpt::detail {

// The distinct slices of a save's tensors (replicas once): what a snapshot copies.
struct snapshot_plan {
  struct piece {
    std::size_t tensor;
    std::span<std::byte> src;
    std::vector<std::size_t> shards;        // indices into the tensor's shards with this box
    device::accelerator* memory = nullptr;  // device memory: copied by the accelerator
    int gpu = 0;
  };
  std::vector<piece> pieces;
  std::uint64_t need = 0;  // bytes of snapshot memory (each piece 64-byte aligned)
};

snapshot_plan plan_snapshot(const std::vector<named_tensor>& tensors);

// Snapshot memory of `need` bytes, reusing an idle arena, when the budget allows it now; null
// when the budget is held by saves in flight. Throws std::bad_alloc.
std::shared_ptr<snapshot_arena> try_acquire_arena(checkpoint_impl& impl, std::uint64_t need);

// As try_acquire_arena, waiting (a coroutine: no thread waits) until saves in flight free the
// budget.
runtime::task<std::shared_ptr<snapshot_arena>> acquire_arena(checkpoint_impl& impl, std::uint64_t need);

// Gives the memory held by `owners` back and wakes the snapshots waiting for it.
void release_arena(checkpoint_impl& impl, std::vector<std::shared_ptr<const void>>& owners);

// Copies the planned slices into `arena` and re-points the views at the copy: `copiers` tasks
// on the CPU pool share the host pieces (two in copy mode, where the copy is the caller's
// stall); device pieces are copied by their accelerator meanwhile (started first, so they
// overlap the host copies). Everything is awaited as one group: no thread waits. A failed
// device copy fails the snapshot with the views untouched (the write then copies from the
// device itself).
runtime::task<void> copy_snapshot(const snapshot_plan& p, snapshot_arena& arena, std::vector<named_tensor>& tensors, unsigned copiers);

}  // namespace meshckpt::detail
