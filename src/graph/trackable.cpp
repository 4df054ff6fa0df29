#include "meshckpt/graph/trackable.hpp"

#include <algorithm>
#include <deque>
#include <unordered_map>

#include "meshckpt/graph/object_graph.hpp"
#include "meshckpt/plan/global_copy.hpp"

namespace meshckpt::graph {

std::string escape_name(std::string_view name) {
  std::string out;
  out.reserve(name.size());
  for (char c : name) {
    if (c == '.')
      out += "..";
    else if (c == '/')
      out += ".S";
    else
      out += c;
  }
  return out;
}

result<std::string> unescape_name(std::string_view e) {
  std::string out;
  for (std::size_t i = 0; i < e.size(); ++i) {
    if (e[i] != '.') {
      out += e[i];
      continue;
    }
    if (i + 1 < e.size() && e[i + 1] == '.')
      out += '.';
    else if (i + 1 < e.size() && e[i + 1] == 'S')
      out += '/';
    else
      return make_error(errc::invalid_argument, "malformed escape in object name \"" + std::string(e) + "\"");
    ++i;
  }
  return out;
}

std::string join_key(const std::vector<std::string>& names) {
  std::string out;
  for (std::size_t i = 0; i < names.size(); ++i) {
    if (i) out += '/';
    out += escape_name(names[i]);
  }
  return out;
}

result<std::vector<std::string>> split_key(std::string_view key) {
  std::vector<std::string> out;
  std::size_t start = 0;
  while (true) {
    auto slash = key.find('/', start);
    BOOST_OUTCOME_TRY(auto n, unescape_name(key.substr(start, slash == std::string_view::npos ? std::string_view::npos : slash - start)));
    out.push_back(std::move(n));
    if (slash == std::string_view::npos) break;
    start = slash + 1;
  }
  return out;
}

namespace {

void replace_all(std::vector<trackable*>& v, const trackable* from, trackable* to) {
  std::replace(v.begin(), v.end(), const_cast<trackable*>(from), to);
}

}  // namespace

// No allocation on a move: every edge is rewritten in place, so the graph is never half moved.
trackable::trackable(trackable&& o) noexcept
    : children_(std::move(o.children_)), index_(std::move(o.index_)), parents_(std::move(o.parents_)), pending_(std::move(o.pending_)) {
  o.children_.clear();
  o.index_.clear();
  o.parents_.clear();
  o.pending_.clear();
  for (auto& [n, c] : children_)
    if (c == &o) c = this;  // an object that tracks itself
  for (auto& [n, c] : index_)
    if (c == &o) c = this;
  for (auto& p : parents_)
    if (p == &o) p = this;
  for (auto& [n, c] : children_)
    if (c != this) replace_all(c->parents_, &o, this);
  for (auto* p : parents_)
    if (p != this) {
      for (auto& [n, c] : p->children_)
        if (c == &o) c = this;
      for (auto& [n, c] : p->index_)
        if (c == &o) c = this;
    }
}

trackable::~trackable() {
  for (auto& [n, c] : children_)
    if (c != this) std::erase(c->parents_, this);
  for (auto* p : parents_)
    if (p != this) p->drop_edges_to(this);
}

// Removes every edge to `c`, keeping the other children in order. Children mostly die in the
// reverse order of their tracking (members after their parent's body, owned children popped
// from the back), so the search starts at the back and stops at the last edge: dropping the
// children of a module of n children costs O(n), not O(n^2).
void trackable::drop_edges_to(const trackable* c) noexcept {
  auto edges = std::count(c->parents_.begin(), c->parents_.end(), this);
  for (auto i = children_.size(); i-- > 0 && edges > 0;) {
    if (children_[i].second != c) continue;
    index_.erase(children_[i].first);
    children_.erase(children_.begin() + static_cast<std::ptrdiff_t>(i));
    --edges;
  }
}

trackable* trackable::child(std::string_view name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : it->second;
}

void trackable::add_child(std::string name, trackable& c) {
  auto found = index_.find(name);
  auto it =
      found == index_.end() ? children_.end() : std::find_if(children_.begin(), children_.end(), [&](auto& e) { return e.first == name; });
  if (it != children_.end()) {
    if (it->second != &c) {
      c.parents_.push_back(this);  // first: it may throw
      auto gone = std::find(it->second->parents_.begin(), it->second->parents_.end(), this);
      if (gone != it->second->parents_.end()) it->second->parents_.erase(gone);
      it->second = &c;
      found->second = &c;
    }
  } else {
    c.parents_.push_back(this);
    try {
      index_.emplace(name, &c);
      try {
        children_.emplace_back(name, &c);
      } catch (...) {
        index_.erase(name);
        throw;
      }
    } catch (...) {
      c.parents_.pop_back();
      throw;
    }
  }
  if (auto p = pending_.find(name); p != pending_.end()) {
    auto pending = std::move(p->second);
    pending_.erase(p);
    pending->apply(c);
  }
}

result<value_snapshot> trackable::value_for_save(const mesh&) { return make_error(errc::invalid_argument, describe() + " holds no value"); }

result<dtensor_view> trackable::value_for_restore(dtype, const shape&, const mesh&) {
  return make_error(errc::invalid_argument, describe() + " holds no value");
}

namespace detail {

void set_pending(trackable& parent, const std::string& name, std::shared_ptr<pending_restore> p) {
  auto& slot = parent.pending_[name];
  if (!slot || slot->seq < p->seq) slot = std::move(p);
}

std::shared_ptr<pending_restore> take_pending(trackable& parent, const std::string& name) {
  auto it = parent.pending_.find(name);
  if (it == parent.pending_.end()) return nullptr;
  auto p = std::move(it->second);
  parent.pending_.erase(it);
  return p;
}

}  // namespace detail

// ---------------------------------------------------------------- variable

variable::variable(dtensor t) : owned_(std::make_unique<dtensor>(std::move(t))), view_(owned_->view()) {}
variable::variable(dtensor_view v) : view_(std::move(v)) {}

result<std::unique_ptr<variable>> variable::create(dtype t, shape s, layout l) {
  BOOST_OUTCOME_TRY(auto d, dtensor::create(t, std::move(s), std::move(l)));
  return std::make_unique<variable>(std::move(d));
}

std::span<std::byte> variable::shard_bytes(std::int64_t device) const {
  const local_shard* s = view_.shard_of(device);
  return s ? s->data : std::span<std::byte>{};
}

result<void> variable::assign_global(std::span<const std::byte> global) const { return meshckpt::assign_global(view_, global); }

result<void> variable::copy_to_global(std::span<std::byte> global) const { return meshckpt::copy_to_global(view_, global); }

result<value_snapshot> variable::value_for_save(const mesh&) { return value_snapshot{view_, nullptr}; }

result<dtensor_view> variable::value_for_restore(dtype t, const shape& s, const mesh&) {
  if (t != view_.type())
    return make_error(errc::dtype_mismatch,
                      "saved dtype " + std::string(dtype_name(t)) + ", variable has " + std::string(dtype_name(view_.type())));
  if (s != view_.global_shape())
    return make_error(errc::shape_mismatch, "saved shape " + to_string(s) + ", variable has " + to_string(view_.global_shape()));
  return view_;
}

std::string variable::describe() const { return "variable " + std::string(dtype_name(view_.type())) + to_string(view_.global_shape()); }

// ---------------------------------------------------------------- replicated_value

result<value_snapshot> replicated_value::value_for_save(const mesh& m) {
  // A copy owned by the save: this object may change, or be saved again, before it completes.
  BOOST_OUTCOME_TRY(auto d, dtensor::create(type_, shape_, layout::replicated(shape_.size(), m)));
  for (const auto& sh : d.view().shards()) std::copy(bytes_.begin(), bytes_.end(), sh.data.begin());
  auto copy = std::make_shared<const dtensor>(std::move(d));
  return value_snapshot{copy->view(), copy};
}

result<dtensor_view> replicated_value::value_for_restore(dtype t, const shape& s, const mesh& m) {
  if (t != type_)
    return make_error(errc::dtype_mismatch,
                      "saved dtype " + std::string(dtype_name(t)) + ", " + describe() + " expects " + std::string(dtype_name(type_)));
  if (s != shape_ && !(resizable_ && s.size() == 1))
    return make_error(errc::shape_mismatch, "saved shape " + to_string(s) + ", " + describe() + " has " + to_string(shape_));
  BOOST_OUTCOME_TRY(auto d, dtensor::create(t, s, layout::replicated(s.size(), m)));
  staging_ = std::make_unique<dtensor>(std::move(d));
  return staging_->view();
}

void replicated_value::value_restored() {
  if (!staging_ || staging_->view().shards().empty()) return;
  auto src = staging_->view().shards().front().data;
  bytes_.assign(src.begin(), src.end());
  shape_ = staging_->view().global_shape();
  staging_.reset();
}

// ---------------------------------------------------------------- state_dict

result<variable*> state_dict::emplace(std::string name, dtype t, shape s, layout l) {
  BOOST_OUTCOME_TRY(auto v, variable::create(t, std::move(s), std::move(l)));
  variable* raw = v.get();
  owned_.push_back(std::move(v));
  add_child(std::move(name), *raw);
  return raw;
}

variable* state_dict::find_variable(std::string_view name) const { return dynamic_cast<variable*>(child(name)); }

// ---------------------------------------------------------------- walk

live_graph walk(trackable& root, const std::vector<std::pair<std::string, trackable*>>& extra) {
  live_graph g;
  std::unordered_map<const trackable*, std::uint32_t> ids;
  std::vector<std::vector<std::string>> paths;
  std::deque<std::uint32_t> queue;
  auto visit = [&](trackable* t, std::vector<std::string> path) -> std::uint32_t {
    auto [it, fresh] = ids.emplace(t, static_cast<std::uint32_t>(g.objects.size()));
    if (fresh) {
      g.objects.push_back(t);
      g.graph.nodes.emplace_back();
      auto& n = g.graph.nodes.back();
      n.has_value = t->has_value();
      if (n.has_value) n.key = path.empty() ? std::string(".ROOT") : join_key(path);
      paths.push_back(std::move(path));
      queue.push_back(it->second);
    }
    return it->second;
  };
  visit(&root, {});
  bool first = true;
  while (!queue.empty()) {
    std::uint32_t id = queue.front();
    queue.pop_front();
    std::vector<std::pair<std::string, trackable*>> edges = g.objects[id]->children();
    if (first) edges.insert(edges.end(), extra.begin(), extra.end());
    first = false;
    for (const auto& [name, c] : edges) {
      auto p = paths[id];
      p.push_back(name);
      std::uint32_t cid = visit(c, std::move(p));
      g.graph.nodes[id].children.emplace_back(name, cid);
    }
  }
  return g;
}

}  // namespace meshckpt::graph
