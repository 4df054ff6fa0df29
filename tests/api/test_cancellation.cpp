// Asio per-operation cancellation on the async saves (checkpoint and manager): a cancellation
// slot bound to the completion token (asio::bind_cancellation_slot) or an awaitable_operators
// `||` with a timer. Cancelled before the commit: errc::cancelled, no new file, the previous
// checkpoint of the name intact, the manager's state untouched. The save is held at its first
// data write (a gated backend) so that the cancellation lands before the commit. Cancelled after
// the commit (held between the manifest's rename and its completion): the checkpoint stands and
// the save reports it.

#include <catch2/catch.hpp>

#include <boost/asio/bind_cancellation_slot.hpp>
#include <boost/asio/cancellation_signal.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/use_future.hpp>

#include <future>
#include <mutex>
#include <thread>

#include "meshckpt/api/checkpoint_async.hpp"
#include "reliability.hpp"

using namespace meshckpt;
using namespace meshckpt::testing;
namespace asio = boost::asio;

namespace {

std::set<std::string> names_in(const std::string& dir) {
  std::set<std::string> out;
  for (const auto& e : fs::directory_iterator(dir)) out.insert(e.path().filename().string());
  return out;
}

// A committed checkpoint "ck" holding step 1, written without gate.
void commit_first(const std::string& dir) {
  model mdl;
  mdl.set(1);
  auto c = checkpoint::create(mesh8(), &mdl, {}, opts(backends::make_posix_backend())).value();
  REQUIRE(c->write(dir + "/ck"));
}

bool holds_step(const std::string& prefix, int step) {
  model back;
  auto c = checkpoint::create(mesh8(), &back, {}, opts(backends::make_posix_backend())).value();
  auto st = c->read(prefix);
  return st && back.holds(step);
}

// Holds the completion of the manifest's rename — the commit has happened, the save does not know
// it yet — until released; `committed` is ready once the rename is done.
class hold_after_commit final : public forwarding_backend {
 public:
  using forwarding_backend::forwarding_backend;
  std::promise<void> committed;
  void release() {
    std::function<void()> go;
    {
      std::lock_guard lk(mu_);
      open_ = true;
      go.swap(held_);
    }
    if (go) go();
  }
  std::string_view name() const noexcept override { return "hold-after-commit"; }
  void rename(io::handle dir, std::string from, std::string to, io::completion<void> d) override {
    if (!to.ends_with(".manifest")) return inner_->rename(dir, std::move(from), std::move(to), std::move(d));
    inner_->rename(dir, std::move(from), std::move(to), [this, d = std::move(d)](result<void> r) mutable {
      {
        std::lock_guard lk(mu_);
        if (!open_) {
          held_ = [d = std::move(d), r = std::move(r)]() mutable { d(std::move(r)); };
          committed.set_value();
          return;
        }
      }
      d(std::move(r));
    });
  }

 private:
  std::mutex mu_;
  bool open_ = false;
  std::function<void()> held_;
};

}  // namespace

TEST_CASE("a save cancelled after its commit stands and reports success", "[api][cancel]") {
  temp_dir tmp;
  commit_first(tmp.str());
  auto held = std::make_shared<hold_after_commit>(backends::make_posix_backend());
  model mdl;
  mdl.set(2);
  auto c = checkpoint::create(mesh8(), &mdl, {}, opts(held)).value();
  asio::cancellation_signal signal;
  auto f = async_write(*c, tmp / "ck", asio::bind_cancellation_slot(signal.slot(), asio::use_future));
  held->committed.get_future().wait();  // the manifest is renamed: the checkpoint is committed
  signal.emit(asio::cancellation_type::terminal);
  held->release();
  auto r = f.get();
  REQUIRE(r);
  CHECK(*r == tmp / "ck");
  CHECK(holds_step(tmp / "ck", 2));
  CHECK(run_verify_cli(tmp.str()).first);
}

TEST_CASE("a save cancelled through its cancellation slot before the commit leaves the previous checkpoint and no file", "[api][cancel]") {
  temp_dir tmp;
  commit_first(tmp.str());
  const auto before = names_in(tmp.str());
  auto gated = std::make_shared<gated_backend>(backends::make_posix_backend());
  model mdl;
  mdl.set(2);
  auto c = checkpoint::create(mesh8(), &mdl, {}, opts(gated)).value();
  asio::cancellation_signal signal;
  auto f = async_write(*c, tmp / "ck", asio::bind_cancellation_slot(signal.slot(), asio::use_future));
  signal.emit(asio::cancellation_type::terminal);  // the save is held at its first data write
  gated->release();
  auto r = f.get();
  REQUIRE_FALSE(r);
  CHECK(r.error().code == errc::cancelled);
  CHECK(names_in(tmp.str()) == before);
  CHECK(holds_step(tmp / "ck", 1));
  // The slot is free again: the next save of the same checkpoint commits.
  auto again = async_write(*c, tmp / "ck", asio::bind_cancellation_slot(signal.slot(), asio::use_future)).get();
  REQUIRE(again);
  CHECK(holds_step(tmp / "ck", 2));
}

TEST_CASE("a save raced against a timer with || is cancelled when the timer wins", "[api][cancel]") {
  using namespace asio::experimental::awaitable_operators;
  temp_dir tmp;
  commit_first(tmp.str());
  const auto before = names_in(tmp.str());
  auto gated = std::make_shared<gated_backend>(backends::make_posix_backend());
  model mdl;
  mdl.set(3);
  auto c = checkpoint::create(mesh8(), &mdl, {}, opts(gated)).value();
  asio::io_context ctx;
  std::optional<std::size_t> winner;
  // || returns once the cancelled save has finished too: the gate opens after the timer fired.
  std::thread opener([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    gated->release();
  });
  asio::co_spawn(
      ctx,
      [&]() -> asio::awaitable<void> {
        asio::steady_timer timer(ctx, std::chrono::milliseconds(20));
        auto r = co_await (async_write(*c, tmp / "ck", asio::use_awaitable) || timer.async_wait(asio::use_awaitable));
        winner = r.index();
      },
      asio::detached);
  ctx.run();
  opener.join();
  REQUIRE(winner);
  CHECK(*winner == 1);  // the timer
  CHECK(names_in(tmp.str()) == before);
  CHECK(holds_step(tmp / "ck", 1));
}

TEST_CASE("a cancelled managed save changes neither the state file nor the kept checkpoints", "[api][cancel][manager]") {
  temp_dir tmp;
  auto gated = std::make_shared<gated_backend>(backends::make_posix_backend());
  model mdl;
  auto c = checkpoint::create(mesh8(), &mdl, {}, opts(gated)).value();
  auto m = checkpoint_manager::create(*c, tmp.str(), mopts()).value();
  gated->release();
  for (int s = 1; s <= 2; ++s) {
    mdl.set(s);
    REQUIRE(m->save().value());
  }
  const auto state_before = read_checkpoint_state(tmp.str()).value();
  const auto before = names_in(tmp.str());
  auto held = std::make_shared<gated_backend>(backends::make_posix_backend());
  auto c2 = checkpoint::create(mesh8(), &mdl, {}, opts(held)).value();
  c2->set_save_counter(2);
  mdl.set(3);
  {
    auto m2 = checkpoint_manager::create(*c2, tmp.str(), mopts()).value();
    asio::cancellation_signal signal;
    auto f = async_save(*m2, asio::bind_cancellation_slot(signal.slot(), asio::use_future));
    signal.emit(asio::cancellation_type::terminal);
    held->release();
    auto r = f.get();
    REQUIRE_FALSE(r);
    CHECK(r.error().code == errc::cancelled);
    CHECK(m2->latest_checkpoint() == tmp / "ckpt-2");
  }
  CHECK(names_in(tmp.str()) == before);  // ckpt-1 not deleted, no ckpt-3 file
  const auto state_after = read_checkpoint_state(tmp.str()).value();
  CHECK(state_after.all_model_checkpoint_paths == state_before.all_model_checkpoint_paths);
  CHECK(state_after.model_checkpoint_path == "ckpt-2");
  auto v = run_verify_cli(tmp.str());
  INFO(v.second);
  CHECK(v.first);
}
