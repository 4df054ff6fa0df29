// Snapshots (snapshot.hpp): planning the distinct slices, budgeted arenas, the copy.

#include "snapshot.hpp"

#include "../device/device_copy.hpp"
#include "../runtime/engine.hpp"

#include <atomic>
#include <cstring>
#include <mutex>
#include <map>
#include <optional>

#include <boost/asio/post.hpp>

namespace meshckpt::detail {

namespace asio = boost::asio;

snapshot_plan plan_snapshot(const std::vector<named_tensor>& tensors) {
  snapshot_plan p;
  for (std::size_t t = 0; t < tensors.size(); ++t) {
    const auto& v = tensors[t].tensor;
    std::map<std::vector<std::int64_t>, std::size_t> seen;
    for (std::size_t k = 0; k < v.shards().size(); ++k) {
      auto b = v.layout().shard_box(v.global_shape(), v.shards()[k].device);
      if (!b) continue;
      auto key = b->origin;
      key.insert(key.end(), b->extent.begin(), b->extent.end());
      auto [it, fresh] = seen.emplace(std::move(key), p.pieces.size());
      if (fresh) {
        p.pieces.push_back({t, v.shards()[k].data, {}, v.shards()[k].memory, v.shards()[k].gpu});
        p.need += (v.shards()[k].data.size() + 63) / 64 * 64;
      }
      p.pieces[it->second].shards.push_back(k);
    }
  }
  return p;
}

std::shared_ptr<snapshot_arena> try_acquire_arena(checkpoint_impl& impl, std::uint64_t need) {
  const std::uint64_t budget = impl.opt.snapshot_budget_bytes;
  std::lock_guard lk(impl.arena_mu);
  for (auto& a : impl.arenas)
    if (a.use_count() == 1 && a->capacity >= need) return a;
  std::erase_if(impl.arenas, [](auto& a) { return a.use_count() == 1; });  // too small: drop idle ones
  std::uint64_t busy = 0;
  for (auto& a : impl.arenas) busy += a->capacity;
  if (budget && busy + need > budget) return nullptr;
  auto a = std::make_shared<snapshot_arena>();
  a->bytes = runtime::allocate_host(need);
  a->capacity = need;
  impl.arenas.push_back(a);
  return a;
}

runtime::task<std::shared_ptr<snapshot_arena>> acquire_arena(checkpoint_impl& impl, std::uint64_t need) {
  auto ex = co_await asio::this_coro::executor;
  while (true) {
    std::uint64_t seen;
    {
      std::lock_guard lk(impl.arena_mu);
      seen = impl.arena_releases;
    }
    if (auto a = try_acquire_arena(impl, need)) co_return a;
    // Woken by the next release (or at once, when one happened since the attempt).
    auto freed = io::async_op<void>(
        ex,
        [&impl, seen](io::completion<void> c) {
          std::unique_lock lk(impl.arena_mu);
          if (impl.arena_releases != seen) {
            lk.unlock();
            return c(success());
          }
          impl.arena_waiters.push_back(std::move(c));
        },
        runtime::use_awaitable);
    (void)co_await std::move(freed);
  }
}

void release_arena(checkpoint_impl& impl, std::vector<std::shared_ptr<const void>>& owners) {
  std::vector<io::completion<void>> waiters;
  {
    std::lock_guard lk(impl.arena_mu);
    owners.clear();
    ++impl.arena_releases;
    waiters.swap(impl.arena_waiters);
  }
  for (auto& w : waiters) w(success());
}

runtime::task<void> copy_snapshot(const snapshot_plan& p, snapshot_arena& arena, std::vector<named_tensor>& tensors, unsigned copiers) {
  std::vector<std::vector<local_shard>> shards(tensors.size());
  for (std::size_t t = 0; t < tensors.size(); ++t) shards[t] = tensors[t].tensor.shards();
  // Host pieces of 16 MiB handed out through an atomic cursor: each copier takes the next until
  // none is left, so a copier that starts late only finds less to do.
  constexpr std::size_t piece_bytes = 16u << 20;
  struct shared_work {
    std::vector<std::pair<std::byte*, std::span<std::byte>>> work;  // destination, source
    std::atomic<std::size_t> next{0};
    void run() {
      for (std::size_t i; (i = next.fetch_add(1)) < work.size();) std::memcpy(work[i].first, work[i].second.data(), work[i].second.size());
    }
  };
  auto w = std::make_shared<shared_work>();
  std::vector<std::pair<const snapshot_plan::piece*, std::byte*>> on_device;
  std::uint64_t off = 0;
  for (const auto& pc : p.pieces) {
    std::byte* dst = arena.bytes.get() + off;
    for (auto k : pc.shards) {
      shards[pc.tensor][k].data = std::span<std::byte>(dst, pc.src.size());
      shards[pc.tensor][k].memory = nullptr;
    }
    if (pc.memory) {
      const std::span<std::byte> whole(arena.bytes.get(), arena.capacity);
      BOOST_OUTCOME_CO_TRY(device::detail::pin_once(*pc.memory, whole, arena.pinned_for, arena.pins));
      on_device.emplace_back(&pc, dst);
    } else {
      for (std::size_t o = 0; o < pc.src.size(); o += piece_bytes)
        w->work.emplace_back(dst + o, pc.src.subspan(o, std::min(piece_bytes, pc.src.size() - o)));
    }
    off += (pc.src.size() + 63) / 64 * 64;
  }
  // Device copies first, so that they overlap the host copies; all of them one group, awaited
  // once (no thread waits).
  device::detail::copy_group all;
  for (const auto& [pc, dst] : on_device)
    all.to_host(*pc->memory, pc->gpu, std::span<std::byte>(dst, pc->src.size()), pc->src.data(),
                "snapshot of tensor \"" + tensors[pc->tensor].key + "\"");
  if (!w->work.empty())
    for (unsigned i = 0; i < std::max(1u, copiers); ++i) all.post(runtime::cpu_pool().executor(), [w] { w->run(); });
  auto copied = all.wait();
  BOOST_OUTCOME_CO_TRY(co_await std::move(copied));
  for (std::size_t t = 0; t < tensors.size(); ++t) {
    const auto& v = tensors[t].tensor;
    tensors[t].tensor = dtensor_view::create(v.type(), v.global_shape(), v.layout(), std::move(shards[t])).value();
  }
  co_return success();
}

}  // namespace meshckpt::detail
