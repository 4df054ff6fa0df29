#include "meshckpt/format/pickle.hpp"

#include <bit>
#include <cstring>
#include <unordered_map>

namespace meshckpt::format::pickle {

namespace {

constexpr std::uint32_t no_node = ~std::uint32_t{0};

const char* opcode_name(std::uint8_t op) {
  switch (op) {
    case 'S': return "STRING";
    case 'V': return "UNICODE";
    case 'I': return "INT";
    case 'L': return "LONG";
    case 'F': return "FLOAT";
    case 'g': return "GET";
    case 'p': return "PUT";
    case 'i': return "INST";
    case 'o': return "OBJ";
    case 0x82: return "EXT1";
    case 0x83: return "EXT2";
    case 0x84: return "EXT4";
    case 0x8f: return "EMPTY_SET";
    case 0x90: return "ADDITEMS";
    case 0x91: return "FROZENSET";
    case 0x96: return "BYTEARRAY8";
    case 0x97: return "NEXT_BUFFER";
    case 0x98: return "READONLY_BUFFER";
    default: return nullptr;
  }
}

class machine {
 public:
  machine(std::span<const std::byte> in, const policy& p, std::string_view what) : in_(in), p_(p), what_(what) {}

  result<document> run(std::size_t* consumed, bool* ran_out) {
    while (true) {
      if (pos_ >= in_.size()) {
        if (ran_out) *ran_out = true;
        return fail("the pickle ends without a STOP opcode");
      }
      op_at_ = pos_;
      op_ = u8();
      if (op_ == '.') break;
      if (auto r = step(); !r) {
        if (ran_out) *ran_out = short_ || pos_ >= in_.size();
        return r.error();
      }
      if (doc_.nodes.size() > max_nodes_)
        return make_error(errc::limit_exceeded, std::string(what_) + ": more values than its size allows");
    }
    if (stack_.size() != 1 || !marks_.empty()) return fail("STOP with " + std::to_string(stack_.size()) + " values on the stack");
    doc_.root = stack_.back();
    if (consumed) *consumed = pos_;
    return std::move(doc_);
  }

 private:
  std::span<const std::byte> in_;
  const policy& p_;
  std::string_view what_;
  std::size_t pos_ = 0, op_at_ = 0;
  std::uint8_t op_ = 0;
  std::size_t max_nodes_ = in_.size() + 16;
  document doc_;
  std::vector<std::uint32_t> stack_;
  std::vector<std::size_t> marks_;
  std::unordered_map<std::uint64_t, std::uint32_t> memo_;
  bool short_ = false;

  error fail(const std::string& why) const {
    char op[8];
    if (op_ >= 0x20 && op_ < 0x7f)
      std::snprintf(op, sizeof op, "'%c'", op_);
    else
      std::snprintf(op, sizeof op, "0x%02x", op_);
    return make_error(errc::corrupt_manifest,
                      std::string(what_) + ": pickle opcode " + op + " at byte " + std::to_string(op_at_) + ": " + why);
  }
  std::uint8_t u8() { return pos_ < in_.size() ? static_cast<std::uint8_t>(in_[pos_++]) : (short_ = true, 0); }
  std::uint64_t le(int n) {
    if (in_.size() - pos_ < static_cast<std::size_t>(n)) {
      short_ = true;
      pos_ = in_.size();
      return 0;
    }
    std::uint64_t v = 0;
    for (int i = 0; i < n; ++i) v |= std::uint64_t{static_cast<std::uint8_t>(in_[pos_++])} << (8 * i);
    return v;
  }
  result<std::string> take(std::uint64_t n) {
    if (short_ || n > in_.size() - pos_) {
      short_ = true;
      return fail("a length of " + std::to_string(n) + " bytes past the end of the input");
    }
    std::string s(reinterpret_cast<const char*>(in_.data() + pos_), static_cast<std::size_t>(n));
    pos_ += static_cast<std::size_t>(n);
    return s;
  }
  std::uint32_t add(node n) {
    doc_.nodes.push_back(std::move(n));
    return static_cast<std::uint32_t>(doc_.nodes.size() - 1);
  }
  std::uint32_t push_new(node::kind k) {
    node n;
    n.k = k;
    const auto i = add(std::move(n));
    stack_.push_back(i);
    return i;
  }
  result<std::uint32_t> pop() {
    if (stack_.empty() || (!marks_.empty() && stack_.size() == marks_.back())) return fail("pops an empty stack");
    const auto v = stack_.back();
    stack_.pop_back();
    return v;
  }
  result<std::vector<std::uint32_t>> pop_mark() {
    if (marks_.empty()) return fail("no MARK to pop to");
    const std::size_t m = marks_.back();
    marks_.pop_back();
    std::vector<std::uint32_t> items(stack_.begin() + static_cast<std::ptrdiff_t>(m), stack_.end());
    stack_.resize(m);
    return items;
  }
  result<std::uint32_t> top(node::kind k, const char* what) {
    if (stack_.empty() || (!marks_.empty() && stack_.size() == marks_.back())) return fail("no " + std::string(what) + " on the stack");
    const auto t = stack_.back();
    if (doc_.nodes[t].k != k) return fail("expects " + std::string(what) + ", finds " + describe(doc_, t));
    return t;
  }
  result<void> global(std::string module, std::string name) {
    const bool getattr = module == "builtins" && name == "getattr" && !p_.getattr_members.empty();
    if (!getattr && (!p_.allow_global || !p_.allow_global(module, name)))
      return fail("refuses the global " + module + "." + name + " (only the globals of tensors, storages, dtypes and containers are read)");
    node n;
    n.k = node::kind::global;
    n.text = module + "." + name;
    stack_.push_back(add(std::move(n)));
    return success();
  }
  std::string text_of(std::uint32_t i) const { return doc_.nodes[i].text; }

  // A call whose only effect would be to build a container is resolved here; others recorded.
  result<void> call(std::uint32_t fn, std::vector<std::uint32_t> args, bool newobj) {
    if (doc_.nodes[fn].k != node::kind::global) return fail("calls " + describe(doc_, fn) + ", not a global");
    const std::string name = doc_.nodes[fn].text;  // a copy: adding nodes moves them
    if (!newobj && name == "collections.OrderedDict" && args.empty()) {
      push_new(node::kind::dict);
      return success();
    }
    if (!newobj && name == "torch.Size" && args.size() == 1 && doc_.nodes[args[0]].k == node::kind::tuple) {
      stack_.push_back(args[0]);
      return success();
    }
    if (name == "builtins.getattr") {
      if (newobj || args.size() != 2 || doc_.nodes[args[0]].k != node::kind::global || doc_.nodes[args[1]].k != node::kind::string)
        return fail("refuses builtins.getattr except on an allowed class and member name");
      const std::string cls = text_of(args[0]), member = text_of(args[1]);
      bool allowed = false;
      for (const auto& [c, m] : p_.getattr_members) allowed = allowed || (c == cls && m == member);
      if (!allowed) return fail("refuses builtins.getattr(" + cls + ", \"" + member + "\") (only enum members of the allowed records)");
      node n;
      n.k = node::kind::global;
      n.text = cls + "." + member;
      stack_.push_back(add(std::move(n)));
      return success();
    }
    node n;
    n.k = node::kind::call;
    n.text = name;
    n.items = std::move(args);
    stack_.push_back(add(std::move(n)));
    return success();
  }

  result<void> string_node(node::kind k, std::uint64_t n) {
    BOOST_OUTCOME_TRY(auto s, take(n));
    node v;
    v.k = k;
    v.text = std::move(s);
    stack_.push_back(add(std::move(v)));
    return success();
  }
  result<void> int_node(std::int64_t i, node::kind k = node::kind::integer) {
    if (short_) return fail("the input ends inside its argument");
    node v;
    v.k = k;
    v.i = i;
    stack_.push_back(add(std::move(v)));
    return success();
  }
  result<void> put(std::uint64_t idx) {
    if (short_) return fail("the input ends inside its argument");
    if (stack_.empty()) return fail("memoizes an empty stack");
    memo_[idx] = stack_.back();
    return success();
  }
  result<void> get(std::uint64_t idx) {
    if (short_) return fail("the input ends inside its argument");
    auto it = memo_.find(idx);
    if (it == memo_.end()) return fail("memo entry " + std::to_string(idx) + " was never stored");
    stack_.push_back(it->second);
    return success();
  }
  result<void> sequence(node::kind k, std::vector<std::uint32_t> items) {
    node v;
    v.k = k;
    v.items = std::move(items);
    stack_.push_back(add(std::move(v)));
    return success();
  }
  result<void> set_items(std::vector<std::uint32_t> kv) {
    if (kv.size() % 2) return fail("an odd number of keys and values");
    BOOST_OUTCOME_TRY(auto d, top(node::kind::dict, "a dict"));
    for (std::size_t i = 0; i < kv.size(); i += 2) doc_.nodes[d].entries.emplace_back(kv[i], kv[i + 1]);
    return success();
  }
  result<void> long_node(std::uint64_t n) {
    if (short_) return fail("the input ends inside its argument");
    if (n > 8) return fail("an integer of " + std::to_string(n) + " bytes (at most 64 bits are read)");
    if (n > in_.size() - pos_) return fail("an integer past the end of the input");
    std::uint64_t v = 0;
    for (std::uint64_t k = 0; k < n; ++k) v |= std::uint64_t{static_cast<std::uint8_t>(in_[pos_++])} << (8 * k);
    if (n > 0 && n < 8 && (v >> (8 * n - 1)) & 1) v |= ~std::uint64_t{0} << (8 * n);  // sign-extend
    return int_node(static_cast<std::int64_t>(v));
  }

  result<void> step() {
    using K = node::kind;
    switch (op_) {
      case 0x80: {
        const auto v = u8();
        if (short_ || v > 5) return fail("protocol " + std::to_string(v) + " (0 to 5 are read)");
        return success();
      }
      case 0x95: {  // FRAME: a length hint only
        const auto n = le(8);
        if (short_ || n > in_.size() - pos_) return fail("a frame past the end of the input");
        return success();
      }
      case '(': marks_.push_back(stack_.size()); return success();
      case '0': {
        BOOST_OUTCOME_TRY(pop());
        return success();
      }
      case '1': {
        BOOST_OUTCOME_TRY(pop_mark());
        return success();
      }
      case '2':
        if (stack_.empty()) return fail("duplicates an empty stack");
        stack_.push_back(stack_.back());
        return success();
      case 'N': push_new(K::none); return success();
      case 0x88: return int_node(1, K::boolean);
      case 0x89: return int_node(0, K::boolean);
      case 'J': return int_node(static_cast<std::int32_t>(static_cast<std::uint32_t>(le(4))));
      case 'K': return int_node(static_cast<std::int64_t>(le(1)));
      case 'M': return int_node(static_cast<std::int64_t>(le(2)));
      case 0x8a: return long_node(le(1));
      case 0x8b: return long_node(le(4));
      case 'G': {
        const std::uint64_t bits = le(8);
        if (short_) return fail("the input ends inside its argument");
        node v;
        v.k = K::floating;
        v.f = std::bit_cast<double>(__builtin_bswap64(bits));  // big-endian
        stack_.push_back(add(std::move(v)));
        return success();
      }
      case 'X': return string_node(K::string, le(4));
      case 0x8c: return string_node(K::string, le(1));
      case 0x8d: return string_node(K::string, le(8));
      case 'T': return string_node(K::string, le(4));
      case 'U': return string_node(K::string, le(1));
      case 'B': return string_node(K::bytes, le(4));
      case 'C': return string_node(K::bytes, le(1));
      case 0x8e: return string_node(K::bytes, le(8));
      case ')': return sequence(K::tuple, {});
      case ']': return sequence(K::list, {});
      case '}': push_new(K::dict); return success();
      case 't': {
        BOOST_OUTCOME_TRY(auto items, pop_mark());
        return sequence(K::tuple, std::move(items));
      }
      case 'l': {
        BOOST_OUTCOME_TRY(auto items, pop_mark());
        return sequence(K::list, std::move(items));
      }
      case 'd': {
        BOOST_OUTCOME_TRY(auto items, pop_mark());
        push_new(K::dict);
        return set_items(std::move(items));
      }
      case 0x85:
      case 0x86:
      case 0x87: {
        std::vector<std::uint32_t> items(static_cast<std::size_t>(op_ - 0x84));
        for (auto it = items.rbegin(); it != items.rend(); ++it) {
          BOOST_OUTCOME_TRY(*it, pop());
        }
        return sequence(K::tuple, std::move(items));
      }
      case 'a': {
        BOOST_OUTCOME_TRY(auto v, pop());
        BOOST_OUTCOME_TRY(auto l, top(K::list, "a list"));
        doc_.nodes[l].items.push_back(v);
        return success();
      }
      case 'e': {
        BOOST_OUTCOME_TRY(auto items, pop_mark());
        BOOST_OUTCOME_TRY(auto l, top(K::list, "a list"));
        auto& dst = doc_.nodes[l].items;
        dst.insert(dst.end(), items.begin(), items.end());
        return success();
      }
      case 's': {
        BOOST_OUTCOME_TRY(auto v, pop());
        BOOST_OUTCOME_TRY(auto k, pop());
        return set_items({k, v});
      }
      case 'u': {
        BOOST_OUTCOME_TRY(auto items, pop_mark());
        return set_items(std::move(items));
      }
      case 'q': return put(le(1));
      case 'r': return put(le(4));
      case 0x94: return put(memo_.size());
      case 'h': return get(le(1));
      case 'j': return get(le(4));
      case 'c': {
        std::string parts[2];
        for (auto& part : parts) {
          const std::size_t start = pos_;
          while (pos_ < in_.size() && in_[pos_] != std::byte{'\n'} && pos_ - start < 256) ++pos_;
          if (pos_ >= in_.size() || in_[pos_] != std::byte{'\n'}) return fail("a global name that does not end in a newline");
          part.assign(reinterpret_cast<const char*>(in_.data() + start), pos_ - start);
          ++pos_;
        }
        return global(std::move(parts[0]), std::move(parts[1]));
      }
      case 0x93: {
        BOOST_OUTCOME_TRY(auto name, pop());
        BOOST_OUTCOME_TRY(auto module, pop());
        if (doc_.nodes[name].k != K::string || doc_.nodes[module].k != K::string)
          return fail("a global named by values that are not strings");
        return global(text_of(module), text_of(name));
      }
      case 'R': {
        BOOST_OUTCOME_TRY(auto args, pop());
        BOOST_OUTCOME_TRY(auto fn, pop());
        if (doc_.nodes[args].k != K::tuple) return fail("calls with " + describe(doc_, args) + " as its arguments, not a tuple");
        return call(fn, doc_.nodes[args].items, false);
      }
      case 0x81: {
        BOOST_OUTCOME_TRY(auto args, pop());
        BOOST_OUTCOME_TRY(auto cls, pop());
        if (doc_.nodes[args].k != K::tuple) return fail("builds with " + describe(doc_, args) + " as its arguments, not a tuple");
        return call(cls, doc_.nodes[args].items, true);
      }
      case 0x92: {
        BOOST_OUTCOME_TRY(auto kwargs, pop());
        BOOST_OUTCOME_TRY(auto args, pop());
        BOOST_OUTCOME_TRY(auto cls, pop());
        if (doc_.nodes[args].k != K::tuple || doc_.nodes[kwargs].k != K::dict || !doc_.nodes[kwargs].entries.empty())
          return fail("keyword arguments, which no record read here uses");
        return call(cls, doc_.nodes[args].items, true);
      }
      case 'b': {
        BOOST_OUTCOME_TRY(auto state, pop());
        // An object, or a dict given attributes (a state dict's `_metadata`).
        if (!stack_.empty() && (marks_.empty() || stack_.size() > marks_.back()) && doc_.nodes[stack_.back()].k == K::dict) {
          doc_.nodes[stack_.back()].state = state;
          return success();
        }
        BOOST_OUTCOME_TRY(auto obj, top(K::call, "an object"));
        if (doc_.nodes[obj].state != no_node) return fail("sets an object's state twice");
        doc_.nodes[obj].state = state;
        return success();
      }
      case 'Q': {
        BOOST_OUTCOME_TRY(auto pid, pop());
        return sequence(K::persistent, {pid});
      }
      case 'P': {
        const std::size_t start = pos_;
        while (pos_ < in_.size() && in_[pos_] != std::byte{'\n'}) ++pos_;
        if (pos_ >= in_.size()) return fail("a persistent id that does not end in a newline");
        node id;
        id.k = K::string;
        id.text.assign(reinterpret_cast<const char*>(in_.data() + start), pos_ - start);
        ++pos_;
        const auto i = add(std::move(id));
        return sequence(K::persistent, {i});
      }
      default: {
        const char* name = opcode_name(op_);
        return fail(name ? std::string("the opcode ") + name + " is not read (no tensor, storage or record uses it)" : "an unknown opcode");
      }
    }
  }
};

}  // namespace

result<document> read(std::span<const std::byte> bytes, const policy& p, std::string_view what, std::size_t* consumed, bool* ran_out) {
  machine m(bytes, p, what);
  if (ran_out) *ran_out = false;
  try {
    return m.run(consumed, ran_out);
  } catch (const std::bad_alloc&) {
    return make_error(errc::limit_exceeded, std::string(what) + ": out of memory reading the pickle");
  }
}

std::string describe(const document& d, std::uint32_t i) {
  if (i >= d.nodes.size()) return "nothing";
  const node& n = d.nodes[i];
  switch (n.k) {
    case node::kind::none: return "None";
    case node::kind::boolean: return n.i ? "True" : "False";
    case node::kind::integer: return "the integer " + std::to_string(n.i);
    case node::kind::floating: return "a float";
    case node::kind::string: return "a string";
    case node::kind::bytes: return "bytes";
    case node::kind::list: return "a list";
    case node::kind::tuple: return "a tuple of " + std::to_string(n.items.size());
    case node::kind::dict: return "a dict";
    case node::kind::global: return "the global " + n.text;
    case node::kind::call: return "a call of " + n.text;
    case node::kind::persistent: return "a persistent id";
  }
  return "a value";
}

}  // namespace meshckpt::format::pickle
