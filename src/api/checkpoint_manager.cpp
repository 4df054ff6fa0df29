// checkpoint_manager: TensorFlow's CheckpointManager. Retention runs only after the new commit
// is durable (checkpoint::write returns then) and never deletes the newest checkpoint; deletion
// goes through delete_checkpoint (manifest first, directory fsync, then data files).

#include "meshckpt/api/checkpoint_manager.hpp"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>

#include "../pipeline/dir_lock.hpp"
#include "checkpoint_impl.hpp"
#include "meshckpt/api/checkpoint_async.hpp"
#include "state_file.hpp"
#include "meshckpt/api/checkpoint_files.hpp"
#include "meshckpt/format/names.hpp"
#include "meshckpt/io/url.hpp"

namespace meshckpt {

namespace {

double now_seconds() { return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count(); }

}  // namespace

namespace {

// On an object store a manifest is created once (If-None-Match), where a disk's rename replaces
// it. A save killed after its manifest but before the state file recorded it leaves a committed
// checkpoint under the next number, which the resumed manager would then collide with. This
// writer holds the prefix's lease: such checkpoints (named NAME-N above the state's latest, or
// any NAME-N without a state file) are removed, as the next save would replace them on disk.
detail::task<void> remove_unrecorded(io::backend& b, std::string dir_, std::string name, std::optional<checkpoint_state> st) {
  std::int64_t latest = -1;
  if (st) {
    auto dash = st->model_checkpoint_path.rfind('-');
    if (dash != std::string::npos) latest = std::strtoll(st->model_checkpoint_path.c_str() + dash + 1, nullptr, 10);
  }
  auto ex = co_await boost::asio::this_coro::executor;
  auto d = co_await io::async_open_dir(b, ex, dir_, false, runtime::use_awaitable);
  if (!d) co_return success();  // nothing there yet
  auto entries = co_await io::async_list(b, ex, *d, runtime::use_awaitable);
  (void)co_await io::async_close(b, ex, *d, runtime::use_awaitable);
  if (!entries) co_return entries.error();
  const std::string stem = name + "-";
  for (const auto& e : *entries) {
    auto k = format::classify(e.name);
    if (k.k != format::name_kind::manifest || !k.base.starts_with(stem)) continue;
    const std::string digits = k.base.substr(stem.size());
    if (digits.empty() || digits.find_first_not_of("0123456789") != std::string::npos || digits.size() > 18) continue;
    if (std::strtoll(digits.c_str(), nullptr, 10) <= latest) continue;
    auto deleted = detail::delete_checkpoint(b, dir_ + "/" + k.base);
    BOOST_OUTCOME_CO_TRY(co_await std::move(deleted));
  }
  co_return success();
}

// The state a manager starts from (and its version), with the unrecorded checkpoints of an
// s3:// prefix removed.
detail::task<checkpoint_state> starting_state(io::backend& b, std::string dir, std::string name, std::string* version) {
  auto read = detail::read_state(b, dir, version);
  auto st = co_await std::move(read);
  if (io::is_url(dir) && (st || st.error().code == errc::not_found)) {
    auto removed = remove_unrecorded(b, dir, name, st ? std::optional(*st) : std::nullopt);
    BOOST_OUTCOME_CO_TRY(co_await std::move(removed));
  }
  co_return st;
}

}  // namespace

result<std::unique_ptr<checkpoint_manager>> checkpoint_manager::create(checkpoint& ckpt, std::string directory, manager_options opt) {
  if (opt.max_to_keep && *opt.max_to_keep <= 0)
    return make_error(errc::invalid_argument,
                      "max_to_keep must be at least 1 (or unset to keep every checkpoint), got " + std::to_string(*opt.max_to_keep));
  if (opt.checkpoint_interval && !opt.step_counter) return make_error(errc::invalid_argument, "checkpoint_interval needs a step_counter");
  if (opt.checkpoint_interval && *opt.checkpoint_interval < 0)
    return make_error(errc::invalid_argument, "checkpoint_interval must not be negative");
  BOOST_OUTCOME_TRY(format::check_base_name(opt.checkpoint_name));
  while (directory.size() > 1 && directory.ends_with('/')) directory.pop_back();
  if (directory.empty()) directory = ".";
  std::unique_ptr<checkpoint_manager> m(new checkpoint_manager(ckpt, std::move(directory), std::move(opt)));
  if (ckpt.writes_shared_files() && (ckpt.backend().caps().host_filesystem || io::is_url(m->dir_))) {  // an s3:// prefix: its lease
    // The directory exists durably before its lock file is made in it.
    auto& b = ckpt.backend();
    BOOST_OUTCOME_TRY(runtime::run_blocking<void>("checkpoint_manager::create", [&](auto ex, auto done) {
      runtime::spawn<void>(ex, detail::make_directory(b, m->dir_), std::move(done));
    }));
    BOOST_OUTCOME_TRY(m->lock_, detail::lock_dir_blocking(m->dir_, m->opt_.lock_timeout));
  }
  double now = now_seconds();
  std::string version;
  auto st = runtime::run_blocking<checkpoint_state>("checkpoint_manager::create", [&](auto ex, auto done) {
    runtime::spawn<checkpoint_state>(ex, starting_state(ckpt.backend(), m->dir_, m->opt_.checkpoint_name, &version), std::move(done));
  });
  if (st || st.error().code == errc::not_found) m->state_version_ = version;
  if (!st) {
    if (st.error().code != errc::not_found) return st.error();
    m->last_preserved_ = now - 1;
    return m;
  }
  m->latest_ = m->full(st->model_checkpoint_path);
  m->last_preserved_ = std::min(st->last_preserved_timestamp, now);  // time may have gone backwards
  auto stamps = st->all_model_checkpoint_timestamps;
  if (stamps.empty()) stamps.assign(st->all_model_checkpoint_paths.size(), m->last_preserved_);
  for (std::size_t i = 0; i < st->all_model_checkpoint_paths.size(); ++i) {
    double t = std::min(stamps[i], now);
    if (t > m->last_preserved_) m->maybe_delete_.emplace_back(st->all_model_checkpoint_paths[i], t);
  }
  return m;
}

checkpoint_manager::~checkpoint_manager() {
  if (ckpt_.impl_->jobs.runs_here()) {
    // The save's job uses this manager after its commit and runs on this thread's executor:
    // it cannot finish while the destructor waits for it.
    std::fprintf(stderr,
                 "meshckpt: checkpoint_manager destroyed on a thread that runs the executor of its own unfinished "
                 "asynchronous save; await it before destroying the manager\n");
    std::abort();
  }
  (void)ckpt_.sync();
}

std::vector<std::string> checkpoint_manager::checkpoints() const {
  std::lock_guard lk(mu_);
  std::vector<std::string> out;
  for (const auto& [b, t] : maybe_delete_) out.push_back(full(b));
  return out;
}

checkpoint_state checkpoint_manager::state() const {
  checkpoint_state st;
  st.model_checkpoint_path = latest_ ? split_prefix(*latest_).second : std::string();
  for (const auto& [b, t] : maybe_delete_) {
    st.all_model_checkpoint_paths.push_back(b);
    st.all_model_checkpoint_timestamps.push_back(t);
  }
  st.last_preserved_timestamp = last_preserved_;
  return st;
}

std::vector<std::string> checkpoint_manager::plan_sweep() {
  std::vector<std::string> doomed;
  if (!opt_.max_to_keep) return doomed;
  const std::string newest = latest_ ? split_prefix(*latest_).second : std::string();
  while (maybe_delete_.size() > static_cast<std::size_t>(*opt_.max_to_keep)) {
    auto [base, stamp] = maybe_delete_.front();
    if (base == newest) break;  // never the newest (cannot happen with max_to_keep >= 1)
    maybe_delete_.erase(maybe_delete_.begin());
    if (opt_.keep_checkpoint_every_n_hours && stamp - *opt_.keep_checkpoint_every_n_hours * 3600.0 >= last_preserved_) {
      last_preserved_ = stamp;
      continue;
    }
    doomed.push_back(std::move(base));
  }
  return doomed;
}

void checkpoint_manager::start_save(std::optional<std::int64_t> number, bool check_interval,
                                    io::completion<std::optional<std::string>> done, io::completion<void> snapshot_taken,
                                    std::stop_token stop) {
  start_save(number, check_interval, std::move(done), std::move(snapshot_taken), std::move(stop), nullptr);
}

void detail::async_entry::save(checkpoint_manager& m, asio::any_io_executor where, std::optional<std::int64_t> number, bool check_interval,
                               io::completion<std::optional<std::string>> done, std::stop_token stop) {
  const job_executor at{std::move(where)};
  m.start_save(number, check_interval, std::move(done), {}, std::move(stop), &at);
}

void checkpoint_manager::start_save(std::optional<std::int64_t> number, bool check_interval,
                                    io::completion<std::optional<std::string>> done, io::completion<void> snapshot_taken,
                                    std::stop_token stop, const detail::job_executor* where) {
  std::optional<std::int64_t> step;
  if (opt_.step_counter) step = opt_.step_counter();
  {
    std::lock_guard lk(mu_);
    // As TensorFlow: a save at the step of the last one is skipped even when check_interval is
    // false (that only waives the interval).
    if (opt_.checkpoint_interval && last_step_ &&
        (*step == *last_step_ || (check_interval && *step < *last_step_ + *opt_.checkpoint_interval))) {
      if (snapshot_taken) snapshot_taken(success());
      done(std::optional<std::string>());
      return;
    }
  }
  // As TensorFlow does: the save counter advances on every managed save, whatever the number.
  std::int64_t counter = ckpt_.save_counter() + 1;
  ckpt_.set_save_counter(counter);
  std::string base = opt_.checkpoint_name + "-" + std::to_string(number.value_or(counter));
  // After the commit, inside the save's job (the next save or restore waits for it): the state
  // file, then retention, then cleanup. The commit is durable by then; only now may retention
  // delete anything.
  auto after = std::make_shared<detail::after_commit>();
  after->run = [this, base, step]() -> detail::task<void> {
    std::vector<std::string> doomed;
    checkpoint_state st;
    std::vector<std::pair<std::string, double>> managed;
    double preserved = 0;
    {
      std::lock_guard lk(mu_);
      if (step) last_step_ = step;
      std::erase_if(maybe_delete_, [&](auto& e) { return e.first == base; });
      maybe_delete_.emplace_back(base, now_seconds());
      latest_ = full(base);
      // TRICKY: the state file must never name a checkpoint that is gone, whenever the process
      // dies. So the new state (new latest, the kept list without the doomed ones) is durable
      // first, and only then are the doomed checkpoints deleted. A crash in between leaves
      // checkpoints that no state lists: whole ones (still restorable by path) or, once their
      // manifest is gone, leftovers that the next save removes.
      managed = maybe_delete_;
      preserved = last_preserved_;
      doomed = plan_sweep();
      st = state();
    }
    if (!ckpt_.writes_shared_files()) co_return success();  // process 0 of a multi-process job writes and deletes
    // On an object store the state is replaced by compare and swap. Should another writer have
    // replaced it meanwhile (this one holds the lease, so a tool, or a writer whose lease ran
    // out), the checkpoints it lists that this manager does not know are kept, and managed from
    // now on, as a manager starting now would.
    detail::state_cas cas;
    std::vector<std::pair<std::string, double>> adopted;
    {
      std::lock_guard lk(mu_);
      cas.version = state_version_;
    }
    auto merge = [&adopted, &doomed](checkpoint_state mine, const checkpoint_state& theirs) {
      adopted.clear();
      for (std::size_t i = 0; i < theirs.all_model_checkpoint_paths.size(); ++i) {
        const auto& p = theirs.all_model_checkpoint_paths[i];
        if (std::ranges::count(mine.all_model_checkpoint_paths, p) || std::ranges::count(doomed, p)) continue;
        adopted.emplace_back(p, i < theirs.all_model_checkpoint_timestamps.size() ? theirs.all_model_checkpoint_timestamps[i]
                                                                                  : theirs.last_preserved_timestamp);
      }
      mine.all_model_checkpoint_paths.insert(mine.all_model_checkpoint_paths.begin(), adopted.size(), {});
      mine.all_model_checkpoint_timestamps.insert(mine.all_model_checkpoint_timestamps.begin(), adopted.size(), 0.0);
      for (std::size_t i = 0; i < adopted.size(); ++i) {
        mine.all_model_checkpoint_paths[i] = adopted[i].first;
        mine.all_model_checkpoint_timestamps[i] = adopted[i].second;
      }
      return mine;
    };
    auto recorded = detail::write_state(ckpt_.backend(), dir_, std::move(st), &cas, merge);
    if (auto rs = co_await std::move(recorded); !rs) {
      std::lock_guard lk(mu_);
      maybe_delete_ = managed;  // nothing was deleted: they stay managed
      last_preserved_ = preserved;
      state_version_.reset();  // read again before the next swap
      co_return rs.error();
    }
    {
      std::lock_guard lk(mu_);
      state_version_ = cas.version;
      maybe_delete_.insert(maybe_delete_.begin(), adopted.begin(), adopted.end());
    }
    for (const auto& d : doomed) {
      auto deleted = detail::delete_checkpoint(ckpt_.backend(), full(d));
      BOOST_OUTCOME_CO_TRY(co_await std::move(deleted));
    }
    // Best effort: files of interrupted saves and deletions of managed names (no manifest).
    // A failure here leaves them for the next save; the checkpoint is committed either way.
    auto cleaned = detail::remove_orphans(ckpt_.backend(), dir_, opt_.checkpoint_name);
    (void)co_await std::move(cleaned);
    co_return success();
  };
  ckpt_.start_save(
      full(base), false,
      [done = std::move(done)](result<std::string> r) {
        if (!r) return done(r.error());
        done(std::optional<std::string>(std::move(*r)));
      },
      std::move(snapshot_taken), std::move(stop), std::move(after), where);
}

lazy_save<std::optional<std::string>> checkpoint_manager::save_lazy(std::optional<std::int64_t> number, bool check_interval) {
  lazy_save<std::optional<std::string>> ls;
  start_save(number, check_interval, ls.commit_completion(), ls.snapshot_completion());
  return ls;
}

result<std::optional<std::string>> checkpoint_manager::save(std::optional<std::int64_t> number, bool check_interval) {
  if (ckpt_.impl_->jobs.runs_here()) return detail::refuse_wait_on_caller(*ckpt_.impl_, "checkpoint_manager::save");
  return runtime::run_blocking<std::optional<std::string>>("checkpoint_manager::save",
                                                           [&](auto, auto d) { start_save(number, check_interval, std::move(d)); });
}

std::optional<std::string> checkpoint_manager::latest_checkpoint() const {
  std::lock_guard lk(mu_);
  return latest_;
}

result<std::optional<std::string>> checkpoint_manager::restore_or_initialize() {
  if (auto latest = latest_checkpoint()) {
    BOOST_OUTCOME_TRY(ckpt_.restore(*latest));  // an incomplete match warns when the status goes away
    std::lock_guard lk(mu_);
    if (opt_.step_counter) last_step_ = opt_.step_counter();
    return latest;
  }
  if (opt_.init_fn) opt_.init_fn();
  return std::optional<std::string>();
}

}  // namespace meshckpt
