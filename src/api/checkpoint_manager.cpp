// checkpoint_manager: TensorFlow's CheckpointManager. Retention runs only after the new commit
// is durable (checkpoint::write returns then) and never deletes the newest checkpoint; deletion
// goes through delete_checkpoint (manifest first, directory fsync, then data files).

#include "meshckpt/api/checkpoint_manager.hpp"

#include <algorithm>
#include <chrono>

#include "meshckpt/format/names.hpp"

namespace meshckpt {

namespace {

double now_seconds() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

}  // namespace

result<std::unique_ptr<checkpoint_manager>> checkpoint_manager::create(checkpoint& ckpt, std::string directory, manager_options opt) {
  if (opt.max_to_keep && *opt.max_to_keep <= 0)
    return make_error(errc::invalid_argument, "max_to_keep must be at least 1 (or unset to keep every checkpoint), got " + std::to_string(*opt.max_to_keep));
  if (opt.checkpoint_interval && !opt.step_counter)
    return make_error(errc::invalid_argument, "checkpoint_interval needs a step_counter");
  if (opt.checkpoint_interval && *opt.checkpoint_interval < 0)
    return make_error(errc::invalid_argument, "checkpoint_interval must not be negative");
  BOOST_OUTCOME_TRY(format::check_base_name(opt.checkpoint_name));
  while (directory.size() > 1 && directory.ends_with('/')) directory.pop_back();
  if (directory.empty()) directory = ".";
  std::unique_ptr<checkpoint_manager> m(new checkpoint_manager(ckpt, std::move(directory), std::move(opt)));
  double now = now_seconds();
  auto st = read_checkpoint_state(ckpt.backend(), m->dir_);
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

checkpoint_manager::~checkpoint_manager() { (void)ckpt_.sync(); }

std::vector<std::string> checkpoint_manager::checkpoints() const {
  std::lock_guard lk(mu_);
  std::vector<std::string> out;
  for (const auto& [b, t] : maybe_delete_) out.push_back(full(b));
  return out;
}

result<void> checkpoint_manager::record_state() {
  checkpoint_state st;
  st.model_checkpoint_path = latest_ ? split_prefix(*latest_).second : std::string();
  for (const auto& [b, t] : maybe_delete_) {
    st.all_model_checkpoint_paths.push_back(b);
    st.all_model_checkpoint_timestamps.push_back(t);
  }
  st.last_preserved_timestamp = last_preserved_;
  if (!ckpt_.writes_shared_files()) return success();  // process 0 of a multi-process job writes it
  return write_checkpoint_state(ckpt_.backend(), dir_, st);
}

result<void> checkpoint_manager::sweep() {
  if (!opt_.max_to_keep) return success();
  const std::string newest = latest_ ? split_prefix(*latest_).second : std::string();
  while (maybe_delete_.size() > static_cast<std::size_t>(*opt_.max_to_keep)) {
    auto [base, stamp] = maybe_delete_.front();
    if (base == newest) break;  // never the newest (cannot happen with max_to_keep >= 1)
    maybe_delete_.erase(maybe_delete_.begin());
    if (opt_.keep_checkpoint_every_n_hours && stamp - *opt_.keep_checkpoint_every_n_hours * 3600.0 >= last_preserved_) {
      last_preserved_ = stamp;
      continue;
    }
    if (ckpt_.writes_shared_files()) {
      BOOST_OUTCOME_TRY(delete_checkpoint(ckpt_.backend(), full(base)));
    }
  }
  return success();
}

void checkpoint_manager::start_save(std::optional<std::int64_t> number, bool check_interval,
                                    io::completion<std::optional<std::string>> done, io::completion<void> snapshot_taken) {
  std::optional<std::int64_t> step;
  if (opt_.step_counter) step = opt_.step_counter();
  {
    std::lock_guard lk(mu_);
    if (opt_.checkpoint_interval && check_interval && last_step_ &&
        (*step == *last_step_ || *step < *last_step_ + *opt_.checkpoint_interval)) {
      if (snapshot_taken) snapshot_taken(success());
      done(std::optional<std::string>());
      return;
    }
  }
  // As TensorFlow does: the save counter advances on every managed save, whatever the number.
  std::int64_t counter = ckpt_.save_counter() + 1;
  ckpt_.set_save_counter(counter);
  std::string base = opt_.checkpoint_name + "-" + std::to_string(number.value_or(counter));
  ckpt_.start_save(full(base), false, [this, base, step, done = std::move(done)](result<std::string> r) {
    if (!r) {
      done(r.error());
      return;
    }
    // The commit is durable here; only now may retention delete anything.
    auto after = [&]() -> result<void> {
      std::lock_guard lk(mu_);
      if (step) last_step_ = step;
      std::erase_if(maybe_delete_, [&](auto& e) { return e.first == base; });
      maybe_delete_.emplace_back(base, now_seconds());
      latest_ = full(base);
      BOOST_OUTCOME_TRY(record_state());
      BOOST_OUTCOME_TRY(sweep());
      BOOST_OUTCOME_TRY(record_state());
      // Best effort: files of interrupted saves and deletions of managed names (no manifest).
      // A failure here leaves them for the next save; the checkpoint is committed either way.
      if (ckpt_.writes_shared_files()) (void)remove_orphans(ckpt_.backend(), dir_, opt_.checkpoint_name);
      return success();
    };
    if (auto a = after(); !a) {
      done(a.error());
      return;
    }
    done(std::optional<std::string>(full(base)));
  }, std::move(snapshot_taken));
}

lazy_save<std::optional<std::string>> checkpoint_manager::save_lazy(std::optional<std::int64_t> number, bool check_interval) {
  lazy_save<std::optional<std::string>> ls;
  start_save(number, check_interval, ls.commit_completion(), ls.snapshot_completion());
  return ls;
}

result<std::optional<std::string>> checkpoint_manager::save(std::optional<std::int64_t> number, bool check_interval) {
  return io::wait<std::optional<std::string>>([&](auto d) { start_save(number, check_interval, std::move(d)); });
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
