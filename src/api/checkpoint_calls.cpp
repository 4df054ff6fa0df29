// The checkpoint's entry points over its jobs (checkpoint.cpp): the blocking faces, each one
// call of the one bridge (runtime/bridge.hpp); the lazy forms; and the asynchronous entries of
// api/checkpoint_async.hpp, whose jobs run on the caller's executor.

#include <boost/asio/system_executor.hpp>

#include "checkpoint_impl.hpp"
#include "meshckpt/api/checkpoint_async.hpp"
#include "meshckpt/api/lazy_save.hpp"

namespace meshckpt {

namespace asio = boost::asio;

namespace detail {

asio::any_io_executor job_place(const job_executor* where) {
  if (!where || !where->ex || where->ex.target<asio::system_executor>()) return {};
  return where->ex;
}

error refuse_wait_on_caller(const checkpoint_impl&, std::string_view what) {
  return make_error(errc::unsupported, std::string(what) +
                                           " called on a thread that runs the executor of an unfinished asynchronous save or "
                                           "restore of this checkpoint: that call needs this thread, so waiting here would "
                                           "never end; await it first, or use the asynchronous form");
}

void async_entry::save(checkpoint& c, asio::any_io_executor where, std::string prefix, bool numbered, io::completion<std::string> done,
                       std::stop_token stop) {
  const job_executor at{std::move(where)};
  c.start_save(std::move(prefix), numbered, std::move(done), {}, std::move(stop), nullptr, &at);
}

void async_entry::restore(checkpoint& c, asio::any_io_executor where, std::optional<std::string> path, bool is_restore,
                          io::completion<load_status> done) {
  const job_executor at{std::move(where)};
  c.start_restore(std::move(path), is_restore, std::move(done), &at);
}

result<void> block_until(std::function<void(io::completion<void>)> subscribe, const char* what) {
  return runtime::run_blocking<void>(what, [&](auto, io::completion<void> done) { subscribe(std::move(done)); });
}

}  // namespace detail

result<std::string> checkpoint::save(std::string_view prefix) {
  if (impl_->jobs.runs_here()) return detail::refuse_wait_on_caller(*impl_, "checkpoint::save");
  return runtime::run_blocking<std::string>("checkpoint::save", [&](auto, auto d) { start_save(std::string(prefix), true, std::move(d)); });
}

result<std::string> checkpoint::write(std::string_view prefix) {
  if (impl_->jobs.runs_here()) return detail::refuse_wait_on_caller(*impl_, "checkpoint::write");
  return runtime::run_blocking<std::string>("checkpoint::write",
                                            [&](auto, auto d) { start_save(std::string(prefix), false, std::move(d)); });
}

lazy_save<std::string> checkpoint::save_lazy(std::string_view prefix) {
  lazy_save<std::string> ls;
  start_save(std::string(prefix), true, ls.commit_completion(), ls.snapshot_completion());
  return ls;
}

lazy_save<std::string> checkpoint::write_lazy(std::string_view prefix) {
  lazy_save<std::string> ls;
  start_save(std::string(prefix), false, ls.commit_completion(), ls.snapshot_completion());
  return ls;
}

result<load_status> checkpoint::read(std::string_view path) {
  if (impl_->jobs.runs_here()) return detail::refuse_wait_on_caller(*impl_, "checkpoint::read");
  return runtime::run_blocking<load_status>("checkpoint::read",
                                            [&](auto, auto d) { start_restore(std::string(path), false, std::move(d)); });
}

result<load_status> checkpoint::restore(std::optional<std::string> path) {
  if (impl_->jobs.runs_here()) return detail::refuse_wait_on_caller(*impl_, "checkpoint::restore");
  return runtime::run_blocking<load_status>("checkpoint::restore",
                                            [&](auto, auto d) { start_restore(std::move(path), true, std::move(d)); });
}

result<void> checkpoint::sync() {
  auto& impl = *impl_;
  if (impl.jobs.runs_here()) return detail::refuse_wait_on_caller(impl, "checkpoint::sync");
  // A job of its own, behind every job queued so far.
  return runtime::run_blocking<void>("checkpoint::sync", [&impl](auto, io::completion<void> done) {
    impl.jobs.push([&impl, done = std::move(done)]() -> asio::awaitable<void> {
      std::optional<error> e;
      {
        std::lock_guard lk(impl.mu);
        e = impl.last_error;
      }
      done(e ? result<void>(*e) : result<void>(success()));
      co_return;
    });
  });
}

}  // namespace meshckpt
