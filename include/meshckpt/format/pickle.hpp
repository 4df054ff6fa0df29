#pragma once
/// \file
/// A pickle reader that executes nothing. It runs the pickle machine's opcodes over data only:
/// a global is a name checked against an allowlist, never imported; a call (REDUCE, NEWOBJ) is
/// recorded as a node holding the callable's name and its arguments, never made; BUILD records
/// the state an object would receive. What the nodes mean is for the caller to decide
/// (format/torch_file.hpp reads torch's files from them).
///
/// Only the opcodes that torch.save (protocol 2) and PyTorch's distributed checkpoint metadata
/// (protocol 4) use are interpreted; any other opcode is refused by name. Three calls are
/// resolved while reading, because they only build containers: `collections.OrderedDict()` is
/// an empty dict, `torch.Size(t)` the tuple `t`, and `builtins.getattr(C, "M")` — allowed only
/// for the class and member pairs of the policy (a general getattr is a way from an allowed
/// class to any other object) — the global `C.M`.
///
/// The input is hostile: every length is checked against the bytes left, integers wider than
/// 64 bits are refused, the node count is bounded by the input's size, and memo references
/// are checked. Nodes refer to each other by index, so a pickle that makes a cycle (a list
/// appended to itself) is representable; consumers bound their recursion.

#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "meshckpt/error.hpp"

namespace meshckpt::format::pickle {

/// One value of the pickle.
struct node {
  enum class kind : std::uint8_t {
    none,
    boolean,
    integer,
    floating,
    string,
    bytes,
    list,
    tuple,
    dict,
    global,      ///< `text` is "module.name"
    call,        ///< REDUCE / NEWOBJ of the global `text` with `items` as arguments; `state` set by BUILD
    persistent,  ///< a persistent id: `items[0]` is the id's value
  };
  kind k = kind::none;
  std::int64_t i = 0;                                            ///< integer, boolean
  double f = 0;                                                  ///< floating
  std::string text;                                              ///< string (UTF-8 as pickled), bytes, global or call name
  std::vector<std::uint32_t> items;                              ///< list, tuple, call arguments, persistent
  std::vector<std::pair<std::uint32_t, std::uint32_t>> entries;  ///< dict items, in order
  std::uint32_t state = ~std::uint32_t{0};                       ///< call or dict: the BUILD state (a dict's attributes), or none
};

/// A read pickle: its nodes, and the one the pickle returns.
struct document {
  std::vector<node> nodes;
  std::uint32_t root = 0;
  const node& at(std::uint32_t i) const { return nodes[i]; }
};

/// What a pickle may name.
struct policy {
  /// Whether the global `module`.`name` may appear.
  std::function<bool(std::string_view module, std::string_view name)> allow_global;
  /// The `builtins.getattr(C, M)` calls allowed, as pairs of "module.C" and "M".
  std::vector<std::pair<std::string, std::string>> getattr_members;
};

/// Reads the pickle at the start of `bytes`; `consumed`, when given, receives its length (a
/// file may hold several pickles one after the other). `what` names the input in errors.
/// Errors: `corrupt_manifest` naming the opcode, its byte and the reason (a global the policy
/// refuses is named as such), `limit_exceeded`. On an error, `ran_out`, when given, says
/// whether it came from reaching the end of `bytes` (so that a reader of a file's prefix knows
/// to read more).
result<document> read(std::span<const std::byte> bytes, const policy& p, std::string_view what, std::size_t* consumed = nullptr,
                      bool* ran_out = nullptr);

/// A short description of node `i` for error messages ("a dict", "the global os.system", ...).
std::string describe(const document& d, std::uint32_t i);

}  // namespace meshckpt::format::pickle
