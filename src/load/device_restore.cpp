// Restores onto device shards (common.hpp, read_through_staging). Reads land in page-locked
// host staging with the same layout, through the same planner and checks as any restore; the
// staged bytes then go to the devices asynchronously while the next batch is read. Two staging
// buffers alternate, so memory stays bounded whatever the state's size.
#include <algorithm>

#include "../device/device_copy.hpp"
#include "../pipeline/common.hpp"

namespace meshckpt::detail {

namespace {

// Device bytes a batch gathers before its copies start (a tensor larger than this is a batch
// of its own).
constexpr std::size_t batch_bytes = 64u << 20;
constexpr std::size_t shard_alignment = 4096;

std::size_t aligned(std::size_t n) { return (n + shard_alignment - 1) / shard_alignment * shard_alignment; }

std::size_t staged_bytes(const named_tensor& t) {
  std::size_t n = 0;
  for (const auto& sh : t.tensor.shards())
    if (sh.on_device()) n += aligned(sh.data.size());
  return n;
}

void add(read_report& to, const read_report& r) {
  to.bytes_read += r.bytes_read;
  to.tensors += r.tensors;
  to.resharded_shards += r.resharded_shards;
}

// Groups the device targets into batches of about batch_bytes, in order.
std::vector<std::vector<const named_tensor*>> batches_of(const std::vector<const named_tensor*>& dev) {
  std::vector<std::vector<const named_tensor*>> batches(1);
  std::size_t in_batch = 0;
  for (const auto* t : dev) {
    const std::size_t n = staged_bytes(*t);
    if (!batches.back().empty() && in_batch + n > batch_bytes) {
      batches.emplace_back();
      in_batch = 0;
    }
    batches.back().push_back(t);
    in_batch += n;
  }
  return batches;
}

using device_copy = std::pair<const local_shard*, std::span<std::byte>>;  // target shard, its staged bytes

// The batch's targets with their device shards replaced by `staging` (host shards as they
// are), and the copies to the devices once the staging is read into.
result<std::vector<named_tensor>> stage_batch(const std::vector<const named_tensor*>& batch, std::byte* staging,
                                              std::vector<device_copy>& to_copy) {
  std::vector<named_tensor> staged;
  std::size_t off = 0;
  for (const auto* t : batch) {
    std::vector<local_shard> shards = t->tensor.shards();
    for (auto& sh : shards) {
      if (!sh.on_device()) continue;
      std::span<std::byte> host_side(staging + off, sh.data.size());
      to_copy.emplace_back(t->tensor.shard_of(sh.device), host_side);
      sh.data = host_side;
      sh.memory = nullptr;
      off += aligned(host_side.size());
    }
    BOOST_OUTCOME_TRY(auto view, dtensor_view::create(t->tensor.type(), t->tensor.global_shape(), t->tensor.layout(), std::move(shards)));
    staged.push_back({t->key, std::move(view)});
  }
  return staged;
}

}  // namespace

task<read_report> read_through_staging(std::span<const named_tensor> targets, const staged_round& round) {
  read_report total;
  std::vector<named_tensor> host;
  std::vector<const named_tensor*> dev;
  std::vector<device::accelerator*> accelerators;
  std::size_t largest = 0;
  for (const auto& t : targets) {
    if (!any_on_device(t.tensor.shards())) {
      host.push_back(t);
      continue;
    }
    dev.push_back(&t);
    largest = std::max(largest, staged_bytes(t));
    for (const auto& sh : t.tensor.shards())
      if (sh.on_device() && std::find(accelerators.begin(), accelerators.end(), sh.memory) == accelerators.end())
        accelerators.push_back(sh.memory);
  }
  if (!host.empty()) {
    BOOST_OUTCOME_CO_TRY(auto rep, co_await round(host));
    add(total, rep);
  }
  if (dev.empty()) co_return total;
  const auto batches = batches_of(dev);
  const std::size_t cap = std::max(batch_bytes, largest);
  std::optional<device::detail::staging> staging[2];
  device::detail::copy_group copies[2];
  result<void> failed = success();
  for (std::size_t i = 0; i < batches.size() && failed; ++i) {
    const std::size_t slot = i % 2;
    if (i >= 2) {
      // The copies out of this buffer must be done before it is read into again.
      auto copied = copies[slot].wait();
      if (auto r = co_await std::move(copied); !r) {
        failed = with_context(r.error(), "copying restored tensors to the device");
        break;
      }
    }
    if (!staging[slot]) {
      std::size_t need = 0;
      for (const auto* t : batches[i]) need += staged_bytes(*t);
      auto made = device::detail::make_staging(batches.size() == 1 ? need : cap, accelerators);
      if (!made) {
        failed = made.error();
        break;
      }
      staging[slot] = std::move(made).value();
    }
    std::vector<device_copy> to_copy;
    auto staged = stage_batch(batches[i], staging[slot]->bytes.get(), to_copy);
    if (!staged) {
      failed = staged.error();
      break;
    }
    auto reading = round(*staged);
    auto rep = co_await std::move(reading);
    if (!rep) {
      failed = rep.error();
      break;
    }
    add(total, *rep);
    for (const auto& [target, host_side] : to_copy) copies[slot].to_device(*target->memory, target->gpu, target->data.data(), host_side);
  }
  // Every copy completes before its staging goes away, whatever failed.
  for (auto& c : copies) {
    auto copied = c.wait();
    auto r = co_await std::move(copied);
    if (!r && failed) failed = with_context(r.error(), "copying restored tensors to the device");
  }
  if (!failed) co_return failed.error();
  co_return total;
}

}  // namespace meshckpt::detail
