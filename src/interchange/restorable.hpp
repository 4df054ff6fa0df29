#pragma once
// Private: what a restore reads, whoever wrote it. A meshckpt checkpoint is its manifest; a
// TensorFlow bundle is presented as one (format::checksum_kind::crc32c_whole: each tensor or
// partitioned-variable slice is a slice of one CRC-32C), with its object graph translated, so
// that the same matching, read planner and pipeline restore it onto any mesh and layout.

#include <map>
#include <optional>
#include <string>

#include "../pipeline/common.hpp"
#include "meshckpt/graph/object_graph.hpp"

namespace meshckpt::detail {

struct restorable {
  std::string prefix;  // where its files are: for a SavedModel directory D, D/variables/variables
  format::manifest manifest;
  std::optional<graph::object_graph> graph;  // none: matched by name (TF1, flat, imported)
  bool tensorflow = false;
  std::int32_t tf_producer = 0, tf_min_consumer = 0;    // a bundle header's version
  std::optional<format::tf::trackable_graph> tf_graph;  // TensorFlow's object graph as it was saved
  // TensorFlow's dtype numbers of tensors held as their storage (quantized types), by key.
  std::map<std::string, int> tf_dtypes;
  // With `read_strings`: the DT_STRING scalars that the object graph names as a variable's
  // value (how meshckpt exports an opaque value), or every one of a bundle without an object
  // graph, decoded and checked, by key.
  std::map<std::string, std::string> strings;
  // A torch file's state: meshckpt.torch's skeleton (format/torch_file.hpp), whose leaves name
  // the manifest's keys verbatim.
  std::string torch_skeleton;
};

// The checkpoint at `path`: meshckpt's (`path.manifest`), else TensorFlow's (`path.index`, or
// a SavedModel directory with `path/variables/variables.index`), in that order; with
// `tensorflow_only`, only the last two. not_found, naming what was looked for, when none is
// there.
// With `read_strings` (an import), a TensorFlow checkpoint's opaque values are read too
// (`restorable::strings`) and its object graph names them as values.
task<restorable> load_restorable(io::backend& b, std::string path, bool tensorflow_only = false, bool read_strings = false);

// Whether `prefix_dir/name` exists: false when it or its directory does not, an error for any
// other failure.
task<bool> has_file(io::backend& b, std::string prefix_dir, std::string name);

// A torch.save file at `path`, or a PyTorch distributed checkpoint (DCP) directory (format::checksum_kind::crc32_whole: each storage a slice of its
// zip record's CRC-32; a DCP directory's tensors chunk by chunk, each chunk a torch.save zip in a
// .distcp file, its bytes items' states under their keys); not_found when there is no such file
// or it is not a torch.save zip.
task<restorable> load_torch(io::backend& b, std::string path);
// The same, knowing which: the DCP directory `dir`, or the torch.save file `path`.
task<restorable> load_dcp(io::backend& b, std::string dir);
task<restorable> load_torch_file(io::backend& b, std::string path);

// Writes what `found` holds as the meshckpt checkpoint `to`: every tensor whole on one device,
// streamed from its files; its object graph, TensorFlow's records and a torch skeleton as
// extensions and entries. On error nothing is committed.
task<write_report> import_restorable(io::backend& b, restorable found, std::string to, write_options wopt);

// TensorFlow's object graph as meshckpt's: the same nodes and edges; a node that saved a
// variable ("VARIABLE_VALUE") whose key `m` (or `strings`) holds has that key as its value; an
// optimizer's slot "m" of the variable at path P is its child "m"'s child "P". Exposed for tests.
graph::object_graph from_tf_graph(const format::tf::trackable_graph& g, const format::manifest& m,
                                  const std::map<std::string, std::string>& strings = {});

}  // namespace meshckpt::detail
