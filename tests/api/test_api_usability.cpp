// What a new user hit writing a program against the installed package (regressions of each):
// a Checkpoint without a root had to be given a null root before its children; the manager's async_save took its
// completion token second while every other async call takes it last; read_checkpoint_state
// needed a backend where latest_checkpoint does not; a corrupt manifest's error did not name its
// directory; trackable modules could not be returned from functions (not movable).

#include <catch2/catch.hpp>

#include <deque>
#include <fstream>
#include <future>
#include <vector>

#include <boost/asio/use_future.hpp>

#include "meshckpt/api/checkpoint_async.hpp"
#include "reliability.hpp"

using namespace meshckpt;
using namespace meshckpt::testing;

TEST_CASE("a checkpoint without a root takes its children as its second argument", "[api][usability]") {
  temp_dir tmp;
  model a;
  graph::scalar<std::int64_t> step{7};
  auto c = checkpoint::create(mesh8(), {{"model", &a}, {"step", &step}}, opts(backends::make_posix_backend()));
  REQUIRE(c);
  a.set(3);
  REQUIRE((*c)->save(tmp / "ck"));
  model b;
  graph::scalar<std::int64_t> step2{0};
  auto d = checkpoint::create(mesh8(), {{"model", &b}, {"step", &step2}}, opts(backends::make_posix_backend())).value();
  REQUIRE(d->restore(tmp / "ck-1").value().assert_consumed());
  CHECK(b.holds(3));
  CHECK(step2.get() == 7);
  // The same errors as the form with a root.
  CHECK(checkpoint::create(mesh8(), {{"save_counter", &step}}).error().code == errc::invalid_argument);
}

TEST_CASE("every async call takes its completion token last, the manager's async_save included", "[api][usability]") {
  temp_dir tmp;
  model mdl;
  auto c = checkpoint::create(mesh8(), &mdl, {}, opts(backends::make_posix_backend())).value();
  auto m = checkpoint_manager::create(*c, tmp.str(), mopts()).value();
  mdl.set(1);
  auto f1 = async_save(*m, boost::asio::use_future);
  CHECK(f1.get().value() == tmp / "ckpt-1");
  mdl.set(2);
  auto f2 = async_save(*m, std::optional<std::int64_t>(40), true, boost::asio::use_future);
  CHECK(f2.get().value() == tmp / "ckpt-40");
  std::promise<result<std::optional<std::string>>> p;
  async_save(*m, std::nullopt, false, [&](result<std::optional<std::string>> r) { p.set_value(std::move(r)); });
  CHECK(p.get_future().get().value() == tmp / "ckpt-3");  // the counter advances on every managed save: 1, 2 (saved as 40), 3
}

TEST_CASE("read_checkpoint_state needs no backend, like latest_checkpoint", "[api][usability]") {
  temp_dir tmp;
  model mdl;
  auto c = checkpoint::create(mesh8(), &mdl, {}, opts(backends::make_posix_backend())).value();
  REQUIRE(c->save(tmp / "ck"));
  auto st = read_checkpoint_state(tmp.str());
  REQUIRE(st);
  CHECK(st->model_checkpoint_path == "ck-1");
  CHECK(read_checkpoint_state(tmp / "absent").error().code == errc::not_found);
}

TEST_CASE("a corrupt manifest's error names its directory, like every other error", "[api][usability]") {
  temp_dir tmp;
  model mdl;
  auto c = checkpoint::create(mesh8(), &mdl, {}, opts(backends::make_posix_backend())).value();
  REQUIRE(c->write(tmp / "ck"));
  {
    std::fstream f(tmp / "ck.manifest", std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(20);
    f.put('\x7f');
  }
  auto r = c->read(tmp / "ck");
  REQUIRE_FALSE(r);
  CHECK_THAT(r.error().what(), Catch::Contains(tmp / "ck.manifest"));
  auto v = verify(c->backend(), tmp / "ck");
  REQUIRE_FALSE(v);
  CHECK_THAT(v.error().what(), Catch::Contains(tmp / "ck.manifest"));
}

namespace {

model make_model(std::int64_t s) {
  model m;  // a named object: returning it moves it (no guaranteed elision)
  m.set(s);
  return m;
}

struct two_layers : graph::module {
  model first, second;
  two_layers() {
    track("first", first);
    track("second", second);
  }
};

// Every edge under `t` points at an object whose parents include `t`, and back.
bool edges_consistent(const graph::trackable& t, const graph::trackable* want_first_child = nullptr) {
  if (want_first_child && (t.children().empty() || t.children().front().second != want_first_child)) return false;
  for (const auto& [name, c] : t.children())
    if (!edges_consistent(*c)) return false;
  return true;
}

}  // namespace

TEST_CASE("trackable modules can be returned from functions and kept in containers; the graph follows them", "[api][usability]") {
  temp_dir tmp;
  model a = make_model(5);
  // The moved model tracks its own members, at their new addresses.
  REQUIRE(a.children().size() == 5);
  CHECK(a.child("w") == &a.w);
  CHECK(a.child("step") == &a.step);
  CHECK(edges_consistent(a, &a.w));

  // Nested modules: the outer module moves, and so do the inner ones and their members.
  std::vector<two_layers> stack;
  stack.emplace_back();
  stack.front().first.set(1);
  stack.emplace_back();  // grows the vector: the first element is moved
  stack.emplace_back();
  auto& moved = stack.front();
  CHECK(moved.child("first") == &moved.first);
  CHECK(moved.first.child("w") == &moved.first.w);
  CHECK(moved.first.holds(1));

  // A checkpoint follows its root when the root moves, and saves what the moved object holds.
  auto holder = std::make_unique<model>(make_model(9));
  auto c = checkpoint::create(mesh8(), holder.get(), {}, opts(backends::make_posix_backend())).value();
  model relocated = std::move(*holder);
  holder.reset();  // the moved-from object is gone
  CHECK(&c->root() == &relocated);
  REQUIRE(c->save(tmp / "ck"));
  model back;
  auto d = checkpoint::create(mesh8(), &back, {}, opts(backends::make_posix_backend())).value();
  REQUIRE(d->restore(tmp / "ck-1").value().assert_consumed());
  CHECK(back.holds(9));

  // A destroyed child leaves the graph: no dangling edge in its parent.
  graph::module parent;
  {
    graph::scalar<std::int64_t> temporary{1};
    parent.add_child("t", temporary);
    CHECK(parent.children().size() == 1);
  }
  CHECK(parent.children().empty());
  // A destroyed parent leaves its children's parent lists: moving the child later is safe.
  graph::scalar<std::int64_t> kept{2};
  {
    graph::module short_lived;
    short_lived.add_child("k", kept);
  }
  graph::scalar<std::int64_t> kept2 = std::move(kept);
  CHECK(kept2.get() == 2);
}

TEST_CASE("a child is found by name in a module of 20,000, after moves, replacements and deaths", "[api][usability][graph]") {
  graph::module parent;
  std::deque<graph::scalar<std::int64_t>> values;
  for (int i = 0; i < 20000; ++i) {
    values.emplace_back(i);
    parent.add_child("t" + std::to_string(i), values.back());
  }
  for (int i = 0; i < 20000; i += 997) CHECK(parent.child("t" + std::to_string(i)) == &values[static_cast<std::size_t>(i)]);
  CHECK(parent.child("t20000") == nullptr);
  // A moved child is found at its new address; a replaced one gives way; a dead one is gone.
  graph::scalar<std::int64_t> moved = std::move(values[5]);
  CHECK(parent.child("t5") == &moved);
  graph::scalar<std::int64_t> other{7};
  parent.add_child("t6", other);
  CHECK(parent.child("t6") == &other);
  CHECK(parent.children()[6].second == &other);  // in its place, order kept
  values.pop_back();
  CHECK(parent.child("t19999") == nullptr);
  CHECK(parent.children().size() == 19999);
  // A moved parent keeps its index.
  graph::module parent2 = std::move(parent);
  CHECK(parent2.child("t5") == &moved);
  CHECK(parent.child("t5") == nullptr);
}
