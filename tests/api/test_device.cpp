// Shards in device memory, on the simulated device (device/accelerator.hpp): its memory faults
// on any host access, so a path that touched a device shard without the copy engine would
// crash here. The suites of the host path, through device shards: tensor IO, resharding onto
// device shards, the Checkpoint API's three save modes and restore, the manager, dtype
// conversion, safetensors, and failures (a device copy that fails, IO errors, nothing left
// behind, an earlier checkpoint intact).

#include <catch2/catch.hpp>

#include <sys/wait.h>

#include <csignal>

#include <deque>

#include "api_model.hpp"
#include "meshckpt/api/checkpoint_manager.hpp"
#include "meshckpt/interchange/safetensors_io.hpp"
#include "meshckpt/pipeline/tensor_io.hpp"
#include "meshckpt/device/accelerator.hpp"
#include "meshckpt/plan/global_copy.hpp"
#include "support.hpp"

using namespace meshckpt;

namespace {

// A tensor whose local shards are device memory of `acc` (testing::test_tensor), filled and
// checked through the copy engine (testing::fill and matches take device views).
struct device_tensor {
  testing::test_tensor storage;
  dtensor_view view;

  static device_tensor create(device::accelerator& acc, dtype t, shape s, layout l) {
    testing::test_tensor st(t, std::move(s), std::move(l), &acc);
    dtensor_view v = st.view();
    return device_tensor{std::move(st), std::move(v)};
  }
  void fill(const std::string& key, std::uint64_t seed) const { testing::fill(view, key, seed); }
  bool matches(const std::string& key, std::uint64_t seed) const { return testing::matches(view, key, seed); }
};

std::unique_ptr<device::accelerator> sim(int devices = 2) {
  device::simulated_options o;
  o.devices = devices;
  o.capacity = std::size_t{1} << 30;
  return device::make_simulated(o).value();
}

mesh mesh_xy(std::int64_t x, std::int64_t y) { return mesh::create({{"x", x}, {"y", y}}).value(); }

// A state of mixed layouts on mesh x=2,y=4: tensors over several 8 MiB staging blocks, small
// ones, uneven splits, an empty one.
struct device_state {
  std::deque<device_tensor> tensors;
  std::vector<named_tensor> named;
  device_state(device::accelerator& acc, const mesh& m) {
    add(acc, m, "big", dtype::float32, {2048, 3072}, {"x", "y"});  // 24 MiB
    add(acc, m, "rows", dtype::bfloat16, {1000, 257}, {"y", "unsharded"});
    add(acc, m, "replicated", dtype::int64, {300, 7}, {"unsharded", "unsharded"});
    add(acc, m, "uneven", dtype::int8, {3}, {"y"});
    add(acc, m, "empty", dtype::float32, {0, 4}, {"x", "unsharded"});
  }
  void add(device::accelerator& acc, const mesh& m, std::string key, dtype t, shape s, std::vector<std::string> l) {
    tensors.push_back(device_tensor::create(acc, t, std::move(s), layout::create(std::move(l), m).value()));
    named.push_back({std::move(key), tensors.back().view});
  }
  void fill(std::uint64_t seed) const {
    for (std::size_t i = 0; i < named.size(); ++i) tensors[i].fill(named[i].key, seed);
  }
  bool matches(std::uint64_t seed) const {
    bool ok = true;
    for (std::size_t i = 0; i < named.size(); ++i) ok = tensors[i].matches(named[i].key, seed) && ok;
    return ok;
  }
};

// Variables over the given views, as children of one state dict (for the Checkpoint API).
struct state_of {
  std::deque<graph::variable> vars;
  graph::state_dict sd;
  explicit state_of(const std::vector<named_tensor>& named) {
    for (const auto& n : named) {
      vars.emplace_back(n.tensor);
      sd.insert(n.key, vars.back());
    }
  }
};

bool only_checkpoint_files(const std::string& dir) {
  auto be = backends::make_posix_backend();
  auto scan = scan_directory(*be, dir);
  return scan && scan->leftovers.empty();
}

}  // namespace

TEST_CASE("the simulated device: copies both ways, faults on host access, rejects host pointers", "[device]") {
  auto acc = sim(2);
  CHECK(acc->name() == "simulated");
  CHECK(acc->device_count() == 2);
  auto buf = device::device_buffer::allocate(*acc, 1, 10000).value();
  std::vector<std::byte> in(10000), out(10000);
  for (std::size_t i = 0; i < in.size(); ++i) in[i] = static_cast<std::byte>(i * 7);
  REQUIRE(device::copy_to_device_blocking(*acc, 1, buf.data(), in));
  REQUIRE(device::copy_to_host_blocking(*acc, 1, out, buf.data()));
  CHECK(in == out);
  CHECK(device::copies_started(*acc) == 2);

  // Not device memory of that device: refused, nothing copied.
  auto r = device::copy_to_host_blocking(*acc, 1, out, in.data());
  REQUIRE_FALSE(r);
  CHECK_THAT(r.error().what(), Catch::Contains("not memory of device 1"));
  CHECK_FALSE(device::copy_to_host_blocking(*acc, 0, out, buf.data()));  // another device's memory
  CHECK_FALSE(device::device_buffer::allocate(*acc, 2, 16));             // no device 2
  CHECK(device::device_buffer::allocate(*acc, 0, std::size_t{2} << 30).error().code == std::errc::not_enough_memory);

  // A host dereference of a device pointer faults, as a GPU pointer's would.
  pid_t child = ::fork();
  if (child == 0) {
    ::signal(SIGSEGV, SIG_DFL);  // not a sanitizer's handler, which would report and exit instead
    volatile std::byte b = *buf.data();
    (void)b;
    ::_exit(0);
  }
  int status = 0;
  ::waitpid(child, &status, 0);
  CHECK(WIFSIGNALED(status));
  CHECK(WTERMSIG(status) == SIGSEGV);

  // Freed memory is reused (gigabytes allocated and freed in a loop stay within the capacity).
  for (int i = 0; i < 8; ++i) CHECK(device::device_buffer::allocate(*acc, 0, std::size_t{512} << 20));
}

TEST_CASE("write_tensors and read_tensors with device shards, bit-exact, through the copy engine", "[device][tensor_io]") {
  auto be = testing::test_backend();
  auto acc = sim(2);
  testing::temp_dir tmp;
  device_state st(*acc, mesh_xy(2, 4));
  st.fill(11);
  const auto before = device::copies_started(*acc);
  auto w = write_tensors(*be, tmp / "ck", st.named);
  REQUIRE(w);
  CHECK(device::copies_started(*acc) > before);
  auto v = verify(*be, tmp / "ck");
  REQUIRE(v);
  CHECK(v->ok());

  // Back into the same device shards, after they were overwritten.
  st.fill(12);
  auto r = read_tensors(*be, tmp / "ck", st.named);
  REQUIRE(r);
  CHECK(r->tensors == st.named.size());
  CHECK(st.matches(11));

  // Onto host shards: the bytes on disk are those of a host save.
  std::deque<dtensor> host;
  std::vector<named_tensor> host_named;
  for (const auto& n : st.named) {
    host.push_back(dtensor::create(n.tensor.type(), n.tensor.global_shape(), n.tensor.layout()).value());
    host_named.push_back({n.key, host.back().view()});
  }
  REQUIRE(read_tensors(*be, tmp / "ck", host_named));
  for (const auto& n : host_named) CHECK(testing::matches(n.tensor, n.key, 11));

  // A host save restored onto device shards.
  for (const auto& n : host_named) testing::fill(n.tensor, n.key, 13);
  REQUIRE(write_tensors(*be, tmp / "host", host_named));
  REQUIRE(read_tensors(*be, tmp / "host", st.named));
  CHECK(st.matches(13));
}

TEST_CASE("resharding onto device shards: other meshes, layouts and device counts", "[device][reshard]") {
  auto be = testing::test_backend();
  auto acc = sim(3);
  testing::temp_dir tmp;
  device_state st(*acc, mesh_xy(2, 4));
  st.fill(21);
  REQUIRE(write_tensors(*be, tmp / "ck", st.named));
  const std::vector<std::pair<mesh, std::vector<std::vector<std::string>>>> targets = {
      {mesh_xy(4, 2), {{"y", "x"}, {"x", "unsharded"}, {"unsharded", "y"}, {"x"}, {"unsharded", "x"}}},
      {mesh::create({{"x", 3}}).value(), {{"unsharded", "x"}, {"x", "unsharded"}, {"x", "unsharded"}, {"x"}, {"unsharded", "x"}}},
      {mesh::create({{"x", 1}}).value(),
       {{"unsharded", "unsharded"}, {"unsharded", "unsharded"}, {"x", "unsharded"}, {"x"}, {"unsharded", "x"}}}};
  for (const auto& [m, layouts] : targets) {
    INFO("target mesh of " << m.num_devices() << " devices");
    std::deque<device_tensor> dst;
    std::vector<named_tensor> named;
    for (std::size_t i = 0; i < st.named.size(); ++i) {
      const auto& n = st.named[i];
      dst.push_back(device_tensor::create(*acc, n.tensor.type(), n.tensor.global_shape(), layout::create(layouts[i], m).value()));
      named.push_back({n.key, dst.back().view});
    }
    auto r = read_tensors(*be, tmp / "ck", named);
    REQUIRE(r);
    for (std::size_t i = 0; i < named.size(); ++i) CHECK(dst[i].matches(named[i].key, 21));
  }
}

TEST_CASE("a restore of many device tensors goes in batches through two staging buffers", "[device][tensor_io]") {
  auto be = testing::test_backend();
  auto acc = sim(1);
  testing::temp_dir tmp;
  auto m = mesh_xy(2, 1);
  std::deque<device_tensor> ts;
  std::vector<named_tensor> named;
  for (int i = 0; i < 40; ++i) {  // 40 x 4 MiB: batches of 64 MiB, the buffers reused
    ts.push_back(device_tensor::create(*acc, dtype::float32, {1024, 1024}, layout::create({"x", "unsharded"}, m).value()));
    named.push_back({"t" + std::to_string(i), ts.back().view});
    ts.back().fill(named.back().key, 31);
  }
  REQUIRE(write_tensors(*be, tmp / "ck", named));
  for (int i = 0; i < 40; ++i) ts[static_cast<std::size_t>(i)].fill(named[static_cast<std::size_t>(i)].key, 32);
  REQUIRE(read_tensors(*be, tmp / "ck", named));
  for (int i = 0; i < 40; ++i) CHECK(ts[static_cast<std::size_t>(i)].matches(named[static_cast<std::size_t>(i)].key, 31));
}

TEST_CASE("the Checkpoint API with device variables: copy mode, lazy and direct saves, restores", "[device][api]") {
  auto acc = sim(2);
  for (int mode = 0; mode < 3; ++mode) {  // copy mode, lazy, no snapshot
    INFO("mode " << mode);
    testing::temp_dir tmp;
    device_state st(*acc, mesh_xy(2, 4));
    state_of state(st.named);
    checkpoint_options opt;
    opt.backend = testing::test_backend();
    opt.snapshot = mode != 2;
    auto c = checkpoint::create(mesh_xy(2, 4), &state.sd, {}, opt).value();
    st.fill(41);
    std::string path;
    if (mode == 1) {
      auto pending = c->save_lazy(tmp / "ck");
      REQUIRE(pending.wait_snapshot());
      st.fill(42);  // after the snapshot: must not reach the checkpoint
      path = pending.wait_committed().value();
    } else {
      path = c->save(tmp / "ck").value();
      st.fill(42);
    }
    REQUIRE(c->restore(path).value().assert_consumed());
    CHECK(st.matches(41));

    // Restored by another checkpoint into device variables of another layout and mesh.
    auto m2 = mesh_xy(4, 2);
    device_state other(*acc, m2);
    state_of state2(other.named);
    auto c2 = checkpoint::create(m2, &state2.sd, {}, opt).value();
    REQUIRE(c2->restore(path).value().assert_consumed());
    CHECK(other.matches(41));
    CHECK(only_checkpoint_files(tmp.str()));
  }
}

TEST_CASE("a failed device copy: a save fails cleanly or falls back; a restore reports it", "[device][faults]") {
  auto be = testing::test_backend();
  auto acc = sim(2);
  testing::temp_dir tmp;
  device_state st(*acc, mesh_xy(2, 4));
  st.fill(51);
  REQUIRE(write_tensors(*be, tmp / "ck", st.named));
  const auto save_copies = [&] {
    auto n0 = device::copies_started(*acc);
    REQUIRE(write_tensors(*be, tmp / "probe", st.named));
    return device::copies_started(*acc) - n0;
  }();
  REQUIRE(save_copies > 3);

  SECTION("a direct write: the save fails, nothing is left, the earlier checkpoint stays") {
    for (std::uint64_t skip : {std::uint64_t{0}, std::uint64_t{2}, save_copies - 1}) {
      INFO("failing save copy " << skip);
      st.fill(52);
      device::fail_copy(*acc, skip);
      auto w = write_tensors(*be, tmp / "ck", st.named);
      REQUIRE_FALSE(w);
      CHECK(w.error().code == std::errc::io_error);
      CHECK_THAT(w.error().what(), Catch::Contains("injected") && Catch::Contains("from simulated device"));
      CHECK(only_checkpoint_files(tmp.str()));
      REQUIRE(read_tensors(*be, tmp / "ck", st.named));
      CHECK(st.matches(51));
      auto v = verify(*be, tmp / "ck");
      REQUIRE(v);
      CHECK(v->ok());
    }
  }
  SECTION("a copy-mode snapshot: the write copies from the device itself, the save succeeds") {
    state_of state(st.named);
    checkpoint_options opt;
    opt.backend = testing::test_backend();
    auto c = checkpoint::create(mesh_xy(2, 4), &state.sd, {}, opt).value();
    // A save without failure copies each distinct slice once, into the snapshot.
    auto n0 = device::copies_started(*acc);
    REQUIRE(c->save(tmp / "snap"));
    const auto snapshot_copies = device::copies_started(*acc) - n0;
    st.fill(53);
    device::fail_copy(*acc, 1);
    n0 = device::copies_started(*acc);
    auto path = c->save(tmp / "snap");
    REQUIRE(path);
    CHECK(device::copies_started(*acc) - n0 > snapshot_copies);  // the write copied from the device again
    st.fill(54);
    REQUIRE(c->restore(*path).value().assert_consumed());
    CHECK(st.matches(53));
  }
  SECTION("a restore: the error names the device copy; a retry restores") {
    st.fill(55);
    device::fail_copy(*acc, 3);
    auto r = read_tensors(*be, tmp / "ck", st.named);
    REQUIRE_FALSE(r);
    CHECK_THAT(r.error().what(), Catch::Contains("injected") && Catch::Contains("to the device"));
    REQUIRE(read_tensors(*be, tmp / "ck", st.named));
    CHECK(st.matches(51));
  }
  SECTION("IO errors while device shards are written: nothing left, the earlier checkpoint stays") {
    for (int from : {0, 1, 3}) {
      auto failing = std::make_shared<testing::failing_writes>(testing::test_backend(), from, ENOSPC);
      st.fill(56);
      auto w = write_tensors(*failing, tmp / "ck", st.named);
      REQUIRE_FALSE(w);
      CHECK(only_checkpoint_files(tmp.str()));
      REQUIRE(read_tensors(*be, tmp / "ck", st.named));
      CHECK(st.matches(51));
    }
  }
}

TEST_CASE("device shards with dtype conversion, safetensors, the manager; host-only calls refuse them", "[device][api]") {
  auto be = testing::test_backend();
  auto acc = sim(1);
  testing::temp_dir tmp;
  auto m = mesh_xy(2, 1);
  auto src = device_tensor::create(*acc, dtype::float32, {64, 33}, layout::create({"x", "unsharded"}, m).value());
  testing::host_image h(src.view);
  for (std::size_t i = 0; i < h.view.shards().size(); ++i) {
    auto* p = reinterpret_cast<float*>(h.view.shards()[i].data.data());
    for (std::size_t k = 0; k < h.view.shards()[i].data.size() / 4; ++k) p[k] = static_cast<float>(k % 97) * 0.5f + static_cast<float>(i);
  }
  h.store(src.view);
  std::vector<named_tensor> one = {{"w", src.view}};
  REQUIRE(write_tensors(*be, tmp / "ck", one));

  // float32 on disk into bfloat16 device shards (the values are exact in bfloat16).
  auto bf = device_tensor::create(*acc, dtype::bfloat16, {64, 33}, layout::create({"unsharded", "unsharded"}, m).value());
  read_options ro;
  ro.convert_dtypes = true;
  std::vector<named_tensor> bf_named = {{"w", bf.view}};
  REQUIRE(read_tensors(*be, tmp / "ck", bf_named, ro));
  testing::host_image bf_host(bf.view);
  auto expect = dtensor::create(dtype::bfloat16, {64, 33}, layout::create({"unsharded", "unsharded"}, m).value()).value();
  std::vector<named_tensor> expect_named = {{"w", expect.view()}};
  REQUIRE(read_tensors(*be, tmp / "ck", expect_named, ro));
  for (const auto& sh : expect.view().shards())
    CHECK(std::memcmp(sh.data.data(), bf_host.view.shard_of(sh.device)->data.data(), sh.data.size()) == 0);

  // A safetensors file read into device shards.
  auto whole = testing::whole_tensor(dtype::float32, {40, 8}, "s", 61);
  testing::write_safetensors_file(tmp / "m.safetensors", {{"s", &whole}});
  auto dst = device_tensor::create(*acc, dtype::float32, {40, 8}, layout::create({"x", "unsharded"}, m).value());
  std::vector<named_tensor> st_named = {{"s", dst.view}};
  REQUIRE(read_safetensors(*be, tmp / "m.safetensors", st_named));
  CHECK(dst.matches("s", 61));

  // The manager over device variables.
  graph::state_dict sd;
  graph::variable var(src.view);
  sd.insert("w", var);
  auto c = checkpoint::create(m, &sd).value();
  manager_options mo;
  mo.max_to_keep = 2;
  auto mgr = checkpoint_manager::create(*c, tmp / "managed", mo).value();
  for (int i = 0; i < 3; ++i) REQUIRE(mgr->save());
  CHECK(mgr->checkpoints().size() == 2);

  // Whole-array copies are host memory only: refused with a reason, not a crash.
  std::vector<std::byte> global(static_cast<std::size_t>(src.view.global_bytes()));
  auto r = var.assign_global(global);
  REQUIRE_FALSE(r);
  CHECK(r.error().code == errc::unsupported);
  CHECK_THAT(r.error().what(), Catch::Contains("device shards"));
  CHECK_FALSE(var.copy_to_global(global));
}

TEST_CASE("the suites' *_device runs: MESHCKPT_TEST_SHARDS=simulated puts the models' shards on the device", "[device][support]") {
  // This suite's other cases build their device tensors themselves; the switch is read once.
  ::setenv("MESHCKPT_TEST_SHARDS", "simulated", 1);
  auto v = testing::make_variable(dtype::float32, {16, 8}, layout::create({"x", "y"}, mesh_xy(2, 4)).value());
  REQUIRE(testing::shard_device() != nullptr);
  for (const auto& sh : v.view().shards()) CHECK(sh.on_device());
  testing::fill(v.view(), "v", 3);
  CHECK(testing::matches(v.view(), "v", 3));
  CHECK_FALSE(testing::matches(v.view(), "v", 4));
}
