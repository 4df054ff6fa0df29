// load_status: the outcome of a restore and its assertions (TensorFlow's CheckpointLoadStatus),
// and where warnings of incomplete restores go.

#include "meshckpt/api/load_status.hpp"

#include <cstdio>
#include <mutex>

#include "checkpoint_impl.hpp"

namespace meshckpt {

namespace {

std::mutex warning_mu;
std::function<void(std::string_view)> warning_handler = [](std::string_view msg) {
  std::fprintf(stderr, "meshckpt warning: %.*s\n", static_cast<int>(msg.size()), msg.data());
};

void report_warning(const std::string& msg) {
  std::function<void(std::string_view)> h;
  {
    std::lock_guard lk(warning_mu);
    h = warning_handler;
  }
  if (h) h(msg);
}

}  // namespace

std::function<void(std::string_view)> set_warning_handler(std::function<void(std::string_view)> h) {
  std::lock_guard lk(warning_mu);
  std::swap(h, warning_handler);
  return h;
}

void detail::warn(const std::string& msg) { report_warning(msg); }

namespace {

error no_checkpoint() { return make_error(errc::invalid_argument, "no checkpoint specified (restore(std::nullopt) only initializes)"); }

std::string list(const std::vector<std::string>& v) {
  std::string out;
  for (std::size_t i = 0; i < v.size() && i < 20; ++i) out += (i ? ", " : "") + v[i];
  if (v.size() > 20) out += ", and " + std::to_string(v.size() - 20) + " more";
  return out;
}

}  // namespace

result<load_status> load_status::assert_existing_objects_matched() const {
  if (!s_->s) return no_checkpoint();
  if (auto e = deferred_errors(); !e.empty()) return e.front();
  auto live = graph::walk(*s_->root, s_->extra);
  std::vector<std::string> missing;
  bool counter_missing = false;
  {
    std::lock_guard lk(s_->s->mu);
    for (std::size_t i = 0; i < live.objects.size(); ++i) {
      const auto& n = live.graph.nodes[i];
      if (!n.has_value || s_->s->restored.count(live.objects[i])) continue;
      if (n.key == "save_counter") {
        if (!s_->s->counter_expected()) continue;
        counter_missing = !s_->s->saved_counter;
      }
      missing.push_back(n.key);
    }
  }
  if (!missing.empty())
    return make_error(errc::not_found, "restore of " + s_->path + ": " + std::to_string(missing.size()) +
                                           " existing object(s) not matched to the checkpoint: " + list(missing) +
                                           (counter_missing ? " (restore() creates save_counter, and this checkpoint, which has an object "
                                                              "graph, holds none: it was written by write(); read() does not expect it)"
                                                            : ""));
  return *this;
}

result<load_status> load_status::assert_consumed() const {
  BOOST_OUTCOME_TRY(assert_existing_objects_matched());
  auto unused = unused_keys();
  std::vector<std::string> unmatched;
  {
    std::lock_guard lk(s_->s->mu);
    unmatched = s_->s->unmatched_nodes();
  }
  if (!unused.empty() || !unmatched.empty())
    return make_error(errc::not_found, "restore of " + s_->path + " did not consume the checkpoint: " +
                                           (unused.empty() ? std::string() : "unused values: " + list(unused)) +
                                           (unused.empty() || unmatched.empty() ? "" : "; ") +
                                           (unmatched.empty() ? std::string() : "unmatched objects: " + list(unmatched)));
  return *this;
}

result<load_status> load_status::assert_nontrivial_match() const {
  if (!s_->s) return no_checkpoint();
  std::lock_guard lk(s_->s->mu);
  if (s_->s->graph) {
    for (std::size_t i = 1; i < s_->s->node_matched.size(); ++i)
      if (s_->s->node_matched[i] && i != s_->s->save_counter_node) return *this;
  } else {
    for (std::size_t i = 0; i < s_->s->key_used.size(); ++i)
      if (s_->s->key_used[i] && s_->s->manifest.tensors[i].key != "save_counter") return *this;
  }
  return make_error(errc::not_found, "restore of " + s_->path + " matched nothing besides the root object");
}

load_status load_status::expect_partial() const {
  if (s_->s) {
    std::lock_guard lk(s_->s->mu);
    s_->s->expect_partial = true;
  }
  return *this;
}

std::vector<std::string> load_status::unused_keys() const {
  if (!s_->s) return {};
  std::lock_guard lk(s_->s->mu);
  return s_->s->unused_keys();
}

std::vector<std::string> load_status::unrestored_objects() const {
  if (!s_->s) return {};
  std::lock_guard lk(s_->s->mu);
  return s_->s->unrestored_objects();
}
std::vector<error> load_status::deferred_errors() const {
  if (!s_->s) return {};
  std::lock_guard lk(s_->s->mu);
  return s_->s->deferred_errors;
}
std::string load_status::path() const { return s_->path; }

}  // namespace meshckpt
